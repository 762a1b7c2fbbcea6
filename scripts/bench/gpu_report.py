"""One command for the first GPU session: every GPU measurement docs/PERFORMANCE.md is waiting for, in one Markdown
report named after the card.

    python scripts/bench/gpu_report.py                      # on the GPU pod (all its GPUs), into reports/
    python scripts/bench/gpu_report.py --num_gpus 8 --out reports   # -> reports/gpu_report_<card>_<date>.md
    python scripts/bench/gpu_report.py --skip throughput    # without the 699M training runs
    python scripts/bench/gpu_report.py --dry_run            # CPU: every section at a tiny size (checks this script)

Without a GPU (and without --dry_run) it prints "no GPU" and exits 0. Sections, in order (a failing section is
reported and the others still run; the exit status is 1 if any failed):
1. environment: card, count, driver-side versions of torch, triton, deepspeed;
2. gpu_tests: `pytest -m gpu tests/` (the tests skipped on CPU);
3. selfcheck: the fused kernels' start-up check (model/kernels/selfcheck.py) at the real micro-batch shape,
   12 x 1024 rows of width 1280 and 3456, bf16;
4. kernels: scripts/bench/kernels.py --markdown --ab-steps 200 (fused vs eager, F.rms_norm, torch.compile; and
   RMSNorm with the fixed rule vs autotuned, RAGLLM_TRITON_AUTOTUNE off / stages / full side by side, with the config
   picked per width and whether its bits match the fixed rule's: what the first GPU session updates
   BWD_NUM_STAGES and the warps rule from), plus the same shapes timed with Liger-Kernel's RMSNorm and SwiGLU when
   `liger_kernel` is installed;
5. memory: scripts/bench/model_memory.py at the full 750M model, micro-batch 12 x 1024, bf16 (chunked loss vs
   full logits);
6. throughput: 60 steps of configs/base/750M_unified_v1.json at micro-batch 12 x 1024 on --num_gpus GPUs, eager
   and with `model.compile` (tokens/s/GPU, MFU, peak memory per GPU, the checkpoint save seconds the trainer
   prints at the last step). Needs the dataset (python scripts/unified_build/build_unified_dataset.py).

--dry_run runs the same code on CPU at tiny sizes: the reference functions stand in for the Triton kernels, the
kernel and memory benchmarks run their CPU paths (the kernel tuning table's code under TRITON_INTERPRET=1 at
6 x 37), the throughput run uses configs/tiny/demo_cpu.json (the demo data: make demo) for 4 steps. Its numbers
mean nothing; it exists so that no line of this script first runs on a rented GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.bench._run import REPO, bench_config, launch, records  # noqa: E402

SECTIONS = ("environment", "gpu_tests", "selfcheck", "kernels", "memory", "throughput")
BASE_CONFIG = "configs/base/750M_unified_v1.json"
DRY_CONFIG = "configs/tiny/demo_cpu.json"
MICRO_ROWS = 12 * 1024  # the spec's micro-batch: 12 sequences of 1024 tokens
SAVE_LINE = re.compile(r"checkpoint step (\d+) saved to \S+ in ([0-9.]+)s")


def _run(cmd: list[str], timeout: int, env: dict | None = None) -> tuple[int, str]:
    """Run a command from the repository root; its exit status and its output (stdout then stderr)."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    return proc.returncode, proc.stdout + proc.stderr


def _fence(text: str, limit: int = 6000) -> str:
    text = text.strip()
    if len(text) > limit:
        text = "... (cut)\n" + text[-limit:]
    return f"```\n{text}\n```"


def card_name(dry_run: bool) -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.backends.cpu.get_cpu_capability()}, dry run)" if dry_run else "none"


def section_environment(args) -> str:
    import deepspeed

    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - report what is there
        triton_version = f"not importable ({e.__class__.__name__})"
    lines = [f"- card: {card_name(args.dry_run)} x {args.num_gpus}",
             f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}, "
             f"deepspeed {deepspeed.__version__}, python {sys.version.split()[0]}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- {torch.cuda.device_count()} visible GPUs; GPU 0: {props.total_memory / 2**30:.1f} GiB, "
                     f"{props.multi_processor_count} SMs, compute capability {props.major}.{props.minor}")
    return "\n".join(lines)


def section_gpu_tests(args) -> str:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"]
    if args.dry_run:  # every gpu test skips on CPU; one file is enough to run this section's code
        cmd[-1] = "tests/test_kernel_selfcheck.py"
    code, out = _run(cmd, timeout=3600)
    if code not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {code}:\n{_fence(out)}")
    return f"`{' '.join(cmd[2:])}`: exit {code}\n\n{_fence(out.splitlines()[-1] if out.strip() else '')}"


def section_selfcheck(args) -> str:
    from model.kernels.selfcheck import check_fused_kernels

    kwargs = {}
    device, rows, hidden, ffn = "cuda", MICRO_ROWS, 1280, 3456
    if args.dry_run:  # the reference stands in for the kernels: this checks the section, not the kernels
        from model.kernels.reference import rms_norm_reference, rms_norm_residual_reference, swiglu_reference

        # All three ops need a stand-in: one left out would be the Triton kernel, which cannot run on this CPU.
        kwargs = {"fused_rms_norm": rms_norm_reference, "fused_swiglu": swiglu_reference,
                  "fused_rms_norm_residual": rms_norm_residual_reference}
        device, rows, hidden, ffn = "cpu", 37, 64, 192
    t0 = time.perf_counter()
    violations = check_fused_kernels(device, hidden, ffn, 1e-5, torch.bfloat16, rows=rows, **kwargs)
    seconds = time.perf_counter() - t0
    shape = f"{rows:,} rows x {hidden} (RMSNorm) and x {ffn} (SwiGLU), bf16, forward and backward"
    if violations:
        raise RuntimeError(f"self-check FAILED at {shape}:\n" + "\n".join(f"- {v}" for v in violations))
    return f"self-check passed at {shape} in {seconds:.2f} s"


def _time_ms(fn, device: str, repeats: int) -> float:
    """Median milliseconds of fn() (forward and backward), synchronised on CUDA."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def liger_table(args) -> str:
    """Fused (ours) vs Liger-Kernel at the real shapes, forward + backward, when liger_kernel is installed.

    Liger's functional API (linkedin/Liger-Kernel src/liger_kernel/transformers/functional.py):
    liger_rms_norm(X, W, eps, offset=0.0, casting_mode="llama", in_place=True) and liger_swiglu(a, b)."""
    from model.kernels import rms_norm, swiglu

    try:
        from liger_kernel.transformers.functional import liger_rms_norm, liger_swiglu
    except ImportError:
        if not args.dry_run:
            return "Liger-Kernel: not installed (pip install liger-kernel to add it to this table)"
        from model.kernels.reference import rms_norm_reference, swiglu_reference  # stand-ins, dry run only

        def liger_rms_norm(x, w, eps, offset=0.0, casting_mode="llama", in_place=False):
            return rms_norm_reference(x, w, eps)

        liger_swiglu = swiglu_reference
    device = "cpu" if args.dry_run else "cuda"
    rows, hidden, ffn, repeats = (37, 64, 192, 3) if args.dry_run else (MICRO_ROWS, 1280, 3456, 50)
    impl = "torch" if args.dry_run else "triton"
    gen = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_(True)

    x, w, g, u = leaf(rows, hidden), leaf(hidden), leaf(rows, ffn), leaf(rows, ffn)
    cases = {
        "rms_norm": (lambda: rms_norm(x, w, 1e-5, impl=impl),
                     lambda: liger_rms_norm(x, w, 1e-5, 0.0, "llama", False), (rows, hidden)),
        "swiglu": (lambda: swiglu(g, u, impl=impl), lambda: liger_swiglu(g, u), (rows, ffn)),
    }
    lines = ["| op | shape | ours fwd+bwd ms | Liger fwd+bwd ms | Liger / ours |", "| --- | --- | --- | --- | --- |"]
    for name, (ours, liger, shape) in cases.items():
        def step(f, shape=shape):
            return lambda: f().backward(torch.ones(shape, device=device, dtype=torch.bfloat16))

        t_ours, t_liger = _time_ms(step(ours), device, repeats), _time_ms(step(liger), device, repeats)
        lines.append(f"| {name} | {shape[0]:,} x {shape[1]} | {t_ours:.3f} | {t_liger:.3f} | "
                     f"{t_liger / t_ours:.2f} |")
    return "\n".join(lines)


def section_kernels(args) -> str:
    cmd = [sys.executable, "scripts/bench/kernels.py", "--markdown", "--ab-steps", "200"]
    if args.dry_run:
        cmd = [sys.executable, "scripts/bench/kernels.py", "--no-compile"]  # on CPU: says "no GPU", times nothing
    code, out = _run(cmd, timeout=3600)
    if code != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {code}:\n{_fence(out)}")
    if args.dry_run:  # the tuning table's code, which only a GPU times, runs here on the interpreter
        check = [sys.executable, "scripts/bench/kernels.py", "--interpret-check", "--markdown"]
        code, more = _run(check, timeout=600, env={"TRITON_INTERPRET": "1"})
        if code != 0:
            raise RuntimeError(f"`TRITON_INTERPRET=1 {' '.join(check[1:])}` exited {code}:\n{_fence(more)}")
        out += f"\n\n`TRITON_INTERPRET=1 {' '.join(check[1:])}`:\n\n{more.strip()}"
    return f"`{' '.join(cmd[1:])}`:\n\n{out.strip()}\n\nLiger-Kernel, same shapes:\n\n{liger_table(args)}"


def section_memory(args) -> str:
    cmd = [sys.executable, "scripts/bench/model_memory.py", "--device", "cuda", "--dtype", "bfloat16",
           "--layers", "32", "--batch", "12", "--seq", "1024"]
    if args.dry_run:
        cmd = [sys.executable, "scripts/bench/model_memory.py", "--layers", "1", "--batch", "1", "--seq", "64"]
    code, out = _run(cmd, timeout=1800)
    if code != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {code}:\n{_fence(out)}")
    return f"`{' '.join(cmd[1:])}`:\n\n{out.strip()}"


def throughput_run(args, compile_blocks: bool) -> dict:
    """One short training run; tokens/s/GPU, MFU, peak memory and save seconds from its logs and console."""
    config, steps, interval, num_gpus = BASE_CONFIG, args.steps, 10, args.num_gpus
    if args.dry_run:
        config, steps, interval, num_gpus = DRY_CONFIG, 4, 2, 1
    out = Path(tempfile.mkdtemp(prefix="gpu_report_"))
    try:
        cfg = bench_config(REPO / config, out, steps, {
            "logging.log_interval": interval, "eval.eval_interval": steps, "eval.eval_iters": 2,
            "model.compile": compile_blocks})
        console = launch(cfg, "report", num_gpus, [])
        rows = [r for r in records(out, "report", "train") if "loss" in r][1:]  # the first interval is warm-up
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not rows:
        raise RuntimeError(f"no measured interval in {steps} steps at log interval {interval}")
    saves = [float(s) for _, s in SAVE_LINE.findall(console)]
    tok_s = sum(r["tokens_per_s"] for r in rows) / len(rows)
    peaks = [r["peak_memory_gib"] for r in rows if r.get("peak_memory_gib") is not None]
    return {"config": config, "steps": steps, "interval": interval, "num_gpus": num_gpus,
            "tokens_per_s_per_gpu": tok_s / num_gpus,
            "mfu": sum(r["mfu"] for r in rows) / len(rows), "peak_memory_gib": max(peaks) if peaks else None,
            "save_seconds": saves[-1] if saves else None,
            "data_wait_share": sum(r["data_wait_share"] for r in rows) / len(rows)}


def section_throughput(args) -> str:
    # Checked here, not left to the trainer: its failure reaches this script as SystemExit (scripts/bench/_run.py
    # `launch`), which would end the report unwritten instead of failing this one section.
    phases = json.loads((REPO / (DRY_CONFIG if args.dry_run else BASE_CONFIG)).read_text())["curriculum"]["phases"]
    missing = [p["dataset_dir"] for p in phases if not (REPO / p["dataset_dir"]).is_dir()]
    if missing:
        build = "make demo" if args.dry_run else "python scripts/unified_build/build_unified_dataset.py"
        raise RuntimeError(f"dataset(s) {missing} not built: run {build} first (or copy the built data/ folders in)")
    lines = ["| variant | GPUs | tokens/s/GPU | MFU | peak memory/GPU | checkpoint save (last step) | data wait |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for compile_blocks in (False, True) if args.compile_too else (False,):
        r = throughput_run(args, compile_blocks)
        peak = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
        save = f"{r['save_seconds']:.1f} s" if r["save_seconds"] is not None else "-"
        lines.append(f"| {'model.compile' if compile_blocks else 'eager'} | {r['num_gpus']} | "
                     f"{r['tokens_per_s_per_gpu']:,.0f} | {r['mfu']:.1%} | {peak} | {save} | "
                     f"{r['data_wait_share']:.2%} |")
    head = (f"`{r['config']}`, {r['steps']} steps, micro-batch from the config, the first {r['interval']}-step "
            "interval skipped (warm-up)")
    return head + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_gpus", type=int, default=0, help="GPUs for the throughput run (0: all visible)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps of each throughput run")
    p.add_argument("--out", default="reports", help="folder for the report (created)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument("--no_compile_run", dest="compile_too", action="store_false",
                   help="throughput: only the eager run, not also the model.compile one")
    p.add_argument("--dry_run", action="store_true", help="run every section at a tiny size on CPU (no GPU needed)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_report: no GPU (torch.cuda.is_available() is False); nothing to measure. "
              "--dry_run runs every section at a tiny size on CPU.")
        return 0
    if args.steps < 20:
        raise SystemExit(f"gpu_report: --steps {args.steps} is below 20: the throughput run needs two 10-step "
                         "intervals (the first is warm-up)")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 1
    args.num_gpus = args.num_gpus or visible
    if args.num_gpus > visible:
        raise SystemExit(f"gpu_report: --num_gpus {args.num_gpus} but {visible} GPU(s) are visible")
    card = card_name(args.dry_run)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# GPU report: {card}\n", f"{date}; `python scripts/bench/gpu_report.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}` at commit {_commit()}\n"]
    failed = []
    for name in SECTIONS:
        if name in args.skip:
            continue
        print(f"gpu_report: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            body = globals()[f"section_{name}"](args)
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others' figures
            failed.append(name)
            body = f"**FAILED**: {e}\n\n{_fence(traceback.format_exc(), 3000)}"
        parts.append(f"## {name} ({time.perf_counter() - t0:.0f} s)\n\n{body}\n")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", card).strip("_")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_report_{slug}_{date[:10]}.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)  # a reader never sees half a report
    print(f"gpu_report: wrote {path}" + (f"; FAILED sections: {failed}" if failed else "; every section ran"))
    return 1 if failed else 0


def _commit() -> str:
    code, out = _run(["git", "rev-parse", "--short", "HEAD"], timeout=30)
    return out.strip() if code == 0 else "unknown"


if __name__ == "__main__":
    sys.exit(main())
