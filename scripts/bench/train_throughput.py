"""Training throughput: tokens/s (per device), MFU and the share of step time spent waiting for data.

Runs launcher/train.py for a few steps (no periodic checkpoints; one eval at the start and the end, outside the
measured intervals) and reads the per-interval records of its train log, skipping the first interval (warm-up).
The target is a data wait below 1% of step time.

    # CPU, the tiny demo config on 2 ranks (the demo data must exist: make demo, or the demo build command)
    python scripts/bench/train_throughput.py --config_file configs/tiny/demo_cpu.json --num_gpus 2 --steps 60
    # GPU: the 750M config on 8 GPUs (needs data/unified_phase1_circuit etc.; bf16 H100 peak from the config)
    python scripts/bench/train_throughput.py --config_file configs/base/750M_unified_v1.json --num_gpus 8 \\
        --steps 60 --log_interval 10 --eval_iters 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from scripts.bench.harness import REPO, bench_config, launch, records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", default="configs/tiny/demo_cpu.json", help="training config to measure")
    p.add_argument("--num_gpus", type=int, default=2, help="ranks (1: plain python; more: the deepspeed launcher)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps to run")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="launcher/train.py's --device (cpu for the tiny config; cuda on a GPU machine)")
    p.add_argument("--log_interval", type=int, default=10, help="steps per measured interval")
    p.add_argument("--eval_iters", type=int, default=2, help="eval micro-batches per set (evals are not measured)")
    p.add_argument("--deepspeed_config", default=None, help="override the config's ds_config")
    p.add_argument("--out", default=None, help="keep the run's logs here (default: a temp dir, deleted)")
    args = p.parse_args(argv)
    if args.steps < 2 * args.log_interval:
        raise SystemExit("error: --steps must cover at least two --log_interval intervals (the first is warm-up)")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="throughput_"))
    try:
        cfg = bench_config(REPO / args.config_file, out, args.steps, {
            "logging.log_interval": args.log_interval, "eval.eval_interval": args.steps,
            "eval.eval_iters": args.eval_iters})
        extra = ["--deepspeed_config", args.deepspeed_config] if args.deepspeed_config else []
        launch(cfg, "throughput", args.num_gpus, extra, device=args.device)
        rows = [r for r in records(out, "throughput", "train") if "loss" in r][1:]
        train_cfg = json.loads(cfg.read_text())
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    if not rows:
        raise SystemExit("error: no measured interval (raise --steps)")
    tok_s = sum(r["tokens_per_s"] for r in rows) / len(rows)
    mfu = sum(r["mfu"] for r in rows) / len(rows)
    wait = sum(r["data_wait_share"] for r in rows) / len(rows)
    step_s = sum(r["step_seconds"] for r in rows) / len(rows)
    m, b = train_cfg["model"], train_cfg["batch"]
    print(f"config {args.config_file} ({m['n_layer']} layers x {m['n_embd']}, block {m['block_size']}), "
          f"{args.num_gpus} ranks, global batch {b['global_batch_size']} x micro {b['micro_batch_size']}")
    print("| ranks | tokens/s | tokens/s/rank | step s | MFU | data wait share |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {args.num_gpus} | {tok_s:,.0f} | {tok_s / args.num_gpus:,.0f} | {step_s:.3f} | {mfu:.2%} | "
          f"{wait:.3%} |")
    print(json.dumps({"tokens_per_s": tok_s, "tokens_per_s_per_rank": tok_s / args.num_gpus, "mfu": mfu,
                      "data_wait_share": wait, "step_seconds": step_s, "intervals": len(rows)}))
    if wait >= 0.01:
        print(f"WARNING: data wait {wait:.2%} >= 1% of step time (raise data.prefetch_batches?)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
