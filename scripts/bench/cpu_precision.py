"""bf16 vs fp32 on this CPU, side by side in one run: why `--precision auto` trains in fp32 on CPUs without native
bf16 (launcher/engine.py `resolve_precision`).

Two measurements, each as a bf16 / fp32 time ratio (the machine may be shared: read the ratios):
1. the demo model's output-layer matmul (micro-batch 4 x block 64 = 256 rows, width 64, vocabulary 50,304), forward,
   one thread as each demo rank runs;
2. the demo's training loop: `configs/tiny/demo_cpu.json` on 2 ranks for --steps steps, once with --precision bf16
   and once with --precision fp32 (tokens/s from the train log, the first interval skipped as warm-up).

    python scripts/bench/cpu_precision.py                 # both (needs the demo data: make demo)
    python scripts/bench/cpu_precision.py --matmul_only   # the matmul alone, in seconds
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from launcher.engine import cpu_has_native_bf16
from scripts.bench.harness import REPO, bench_config, launch, records


def matmul_seconds(dtype: torch.dtype, rows: int = 256, width: int = 64, vocab: int = 50304, repeats: int = 5) -> float:
    """Median seconds of one (rows x width) @ (width x vocab) product in `dtype`, one thread."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, width, generator=gen).to(dtype)
    b = torch.randn(width, vocab, generator=gen).to(dtype)
    a @ b  # warm-up (kernel selection)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def training_tokens_per_s(precision: str, steps: int, log_interval: int) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"cpu_precision_{precision}_"))
    try:
        cfg = bench_config(REPO / "configs/tiny/demo_cpu.json", out, steps, {
            "logging.log_interval": log_interval, "eval.eval_interval": steps, "eval.eval_iters": 1})
        launch(cfg, "precision", 2, ["--precision", precision], device="cpu")
        rows = [r for r in records(out, "precision", "train") if "loss" in r][1:]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not rows:
        raise SystemExit("error: no measured interval (raise --steps)")
    return sum(r["tokens_per_s"] for r in rows) / len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps of each training run")
    p.add_argument("--log_interval", type=int, default=10, help="steps per measured interval (the first is skipped)")
    p.add_argument("--matmul_only", action="store_true", help="skip the two training runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; native bf16: {cpu_has_native_bf16()}; "
          f"torch {torch.__version__}")
    fp32, bf16 = matmul_seconds(torch.float32), matmul_seconds(torch.bfloat16)
    print("| measurement | fp32 | bf16 | bf16 / fp32 time |")
    print("| --- | --- | --- | --- |")
    print(f"| output-layer matmul 256 x 64 x 50,304, 1 thread | {fp32 * 1e3:.1f} ms | {bf16 * 1e3:.1f} ms | "
          f"{bf16 / fp32:.1f} |")
    if not args.matmul_only:
        tok = {precision: training_tokens_per_s(precision, args.steps, args.log_interval)
               for precision in ("fp32", "bf16")}
        print(f"| demo training, 2 ranks, {args.steps} steps | {tok['fp32']:,.0f} tok/s | {tok['bf16']:,.0f} tok/s | "
              f"{tok['fp32'] / tok['bf16']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
