"""The first command on a GPU that has never run this code: every GPU measurement docs/PERFORMANCE.md is waiting
for, in one Markdown report named after the card, inside a time budget, and kept section by section.

    python scripts/bench/gpu_report.py                      # all visible GPUs, 12-minute budget, into reports/
    python scripts/bench/gpu_report.py --budget-s 1500      # a longer look: the compiled run fits too
    python scripts/bench/gpu_report.py --skip gpu_tests     # leave sections out
    python scripts/bench/gpu_report.py --dry_run            # CPU: every section at a tiny size (checks this script)

Without a GPU (and without --dry_run) it prints "no GPU" and exits 0. Sections run in order of value; before each
it prints its estimate and the budget left, after each its time; a section whose estimate does not fit in what is
left of `--budget-s` is skipped (and says so), every launch it makes is killed when the budget runs out, and the
report file is rewritten after every section, so a run killed at minute 10 leaves what it measured. A failing
section (an exception or a SystemExit) is reported and the next one runs; the exit status is 1 if any failed.

1. environment: card, count, memory, driver, torch (and its CUDA build), triton, deepspeed, python, free disk;
2. gpu_tests: `pytest -m gpu tests/` (the tests skipped on CPU; the Docker image carries tests/ and pytest);
3. selfcheck: the fused kernels' start-up check (model/kernels/selfcheck.py) at the real micro-batch shape,
   12 x 1024 rows of width 1280 and 3456, bf16;
4. kernels: scripts/bench/kernels.py --markdown --ab-steps 100 (fused vs eager, F.rms_norm, torch.compile; RMSNorm's
   fixed rule vs autotuned; a fused-vs-reference A/B of the tiny model under ZeRO-2 bf16 with torch's AdamW), plus
   Liger-Kernel's RMSNorm and SwiGLU at the same shapes when `liger_kernel` is installed;
5. throughput_eager: --steps optimizer steps of configs/base/750M_unified_v1.json on all visible GPUs, the batch the
   launcher derives (micro-batch 12 x 1024, global 96 sequences: 8 micro-steps on 1 GPU), the first log interval
   skipped as warm-up: tokens/s/GPU, MFU, peak memory per GPU, data wait, and the seconds of the checkpoint save at
   the last step. Token directories that do not exist are synthesised (random ids, packed), so it runs on a bare pod;
   the report says which;
6. attention: scripts/bench/attention.py --model-step at the 750M config, micro-batch 12 x 1024, bf16: forward +
   backward of the whole model with causal vs document-isolated attention, at dropout 0 (document: FlexAttention)
   and at the base config's 0.1 (document: SDPA with a mask), side by side in one process;
7. reduce_dtype: with 2 or more GPUs, two short throughput runs that differ only in the ds_config's
   `communication_data_type`, fp32 (the shipped default) vs bf16: what reducing gradients in fp32 costs per step
   (one GPU reduces nothing: the section says so and measures nothing);
8. memory: scripts/bench/model_memory.py at the full 750M model, micro-batch 12 x 1024, bf16 (chunked loss vs full
   logits);
9. throughput_compiled: the same run with `model.compile` (compile time included in its wall time).

--dry_run runs the same code on CPU at tiny sizes: the reference functions stand in for the Triton kernels, the
kernel and memory benchmarks run their CPU paths (the kernel tuning table's code under TRITON_INTERPRET=1 at
6 x 37), the throughput runs use configs/tiny/demo_cpu.json for 4 steps (with synthetic data where the demo data is
not built). Its numbers mean nothing; it exists so that no line of this script first runs on a rented GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from data.atomic import atomic_write_text
from scripts.bench.harness import (
    REPO,
    bench_config,
    launch,
    records,
    run_process_group,
    synthesize_missing_data,
)

# In order of value: what a first look at a new GPU needs most comes first.
SECTIONS = ("environment", "gpu_tests", "selfcheck", "kernels", "throughput_eager", "attention", "reduce_dtype",
            "memory", "throughput_compiled")
# Seconds each section is expected to take on one H100/H200 (GPU) and on the 2-core CPU VM (--dry_run). The GPU
# figures are estimates until a report replaces them (docs/PERFORMANCE.md, "First contact with a GPU").
ESTIMATE_S = {
    "environment": (15, 10), "gpu_tests": (150, 40), "selfcheck": (30, 10), "kernels": (180, 60),
    "throughput_eager": (180, 90), "attention": (90, 40), "reduce_dtype": (150, 5), "memory": (60, 30),
    "throughput_compiled": (300, 150),
}
DEFAULT_BUDGET_S = 720  # 12 minutes of one GPU: a first look on a rented GPU, start-up aside
BASE_CONFIG = "configs/base/750M_unified_v1.json"
DRY_CONFIG = "configs/tiny/demo_cpu.json"
MICRO_ROWS = 12 * 1024  # the base config's micro-batch: 12 sequences of 1024 tokens


class Budget:
    """Seconds left of --budget-s; every subprocess a section starts gets what is left as its timeout."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def timeout(self, floor: float = 5.0) -> float:
        return max(floor, self.left())


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run a command from the repository root in a process group of its own; its exit status and its output (stdout
    then stderr). Past `timeout` the group is killed and RuntimeError says so (nothing escapes as SystemExit)."""
    code, out, err = run_process_group(cmd, REPO, None if env is None else {**os.environ, **env}, timeout)
    if code is None:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` ran past its {timeout:.0f} s (the budget left) and was killed:\n"
                           f"{_fence(out + err)}")
    return code, out + err


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
    from launcher.device_check import driver_version

    disk = shutil.disk_usage(args.out)
    lines = [f"- card: {card_name(args.dry_run)} x {args.num_gpus}",
             f"- torch {torch.__version__} (CUDA build {torch.version.cuda}), NVIDIA driver {driver_version()}, "
             f"triton {triton_version}, deepspeed {deepspeed.__version__}, python {sys.version.split()[0]}",
             f"- free disk where the report and its runs' checkpoints go ({Path(args.out).resolve()}): "
             f"{disk.free / 1e9:.0f} GB of {disk.total / 1e9:.0f} GB (a 750M checkpoint is ~10 GB)",
             f"- CPU: {os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- {torch.cuda.device_count()} visible GPUs; GPU 0: {props.total_memory / 2**30:.1f} GiB, "
                     f"{props.multi_processor_count} SMs, compute capability {props.major}.{props.minor}")
    return "\n".join(lines)


def section_gpu_tests(args) -> str:
    import importlib.util

    if not (REPO / "tests").is_dir() or importlib.util.find_spec("pytest") is None:
        raise RuntimeError(f"the GPU tests need {REPO / 'tests'} and pytest: pip install -r requirements-dev.txt in a "
                           "checkout of the repository (the Docker image has both)")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/"]
    if args.dry_run:  # every gpu test skips on CPU; one file is enough to run this section's code
        cmd[-1] = "tests/test_kernel_selfcheck.py"
    code, out = _run(cmd, timeout=args.budget.timeout())
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
    cmd = [sys.executable, "scripts/bench/kernels.py", "--markdown", "--ab-steps", "100"]
    if args.dry_run:
        cmd = [sys.executable, "scripts/bench/kernels.py", "--no-compile"]  # on CPU: says "no GPU", times nothing
    code, out = _run(cmd, timeout=args.budget.timeout())
    if code != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {code}:\n{_fence(out)}")
    if args.dry_run:  # the tuning table's code, which only a GPU times, runs here on the interpreter
        check = [sys.executable, "scripts/bench/kernels.py", "--interpret-check", "--markdown"]
        code, more = _run(check, timeout=args.budget.timeout(), env={"TRITON_INTERPRET": "1"})
        if code != 0:
            raise RuntimeError(f"`TRITON_INTERPRET=1 {' '.join(check[1:])}` exited {code}:\n{_fence(more)}")
        out += f"\n\n`TRITON_INTERPRET=1 {' '.join(check[1:])}`:\n\n{more.strip()}"
    return f"`{' '.join(cmd[1:])}`:\n\n{out.strip()}\n\nLiger-Kernel, same shapes:\n\n{liger_table(args)}"


def section_attention(args) -> str:
    cmd = [sys.executable, "scripts/bench/attention.py", "--model-step", BASE_CONFIG, "--batch", "12", "--reps", "5"]
    if args.dry_run:
        cmd = [sys.executable, "scripts/bench/attention.py", "--model-step", DRY_CONFIG, "--batch", "1", "--reps", "1"]
    code, out = _run(cmd, timeout=args.budget.timeout())
    if code != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {code}:\n{_fence(out)}")
    table = "\n".join(line for line in out.splitlines() if line.startswith("|"))
    return f"`{' '.join(cmd[1:])}`:\n\n{table}"


def section_reduce_dtype(args) -> str:
    if args.num_gpus < 2 and not args.dry_run:
        return (f"skipped: {args.num_gpus} GPU reduces no gradients across ranks; the bf16 vs fp32 reduction needs "
                "2 or more (rerun on a multi-GPU pod)")
    if args.dry_run:  # one CPU process reduces nothing either
        return ("dry run: one process has no gradient reduction to time; on 2 or more GPUs this section trains "
                "twice, communication_data_type fp32 and bf16")
    import json

    rows = []
    for dtype in ("fp32", "bf16"):
        ds = json.loads((REPO / "ds_configs/zero2_bf16.json").read_text())
        ds["communication_data_type"] = dtype
        path = Path(tempfile.mkdtemp(prefix=".gpu_report_ds_", dir=args.out)) / f"zero2_bf16_reduce_{dtype}.json"
        path.write_text(json.dumps(ds))
        try:
            r = throughput_run(args, compile_blocks=False, extra=["--deepspeed_config", str(path)],
                               steps=max(2 * args.log_interval, args.steps // 2))
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        rows.append(f"| {dtype} | {r['num_gpus']} | {r['tokens_per_s_per_gpu']:,.0f} | {r['step_seconds']:.3f} | "
                    f"{r['mfu']:.1%} |")
    return ("`configs/base/750M_unified_v1.json`, ds_config `zero2_bf16.json` with `communication_data_type` set as "
            "below, the first interval skipped\n\n| gradient reduction | GPUs | tokens/s/GPU | step s | MFU |\n"
            "| --- | --- | --- | --- | --- |\n" + "\n".join(rows))


def section_memory(args) -> str:
    cmd = [sys.executable, "scripts/bench/model_memory.py", "--device", "cuda", "--dtype", "bfloat16",
           "--layers", "32", "--batch", "12", "--seq", "1024"]
    if args.dry_run:
        cmd = [sys.executable, "scripts/bench/model_memory.py", "--layers", "1", "--batch", "1", "--seq", "64"]
    code, out = _run(cmd, timeout=args.budget.timeout())
    if code != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {code}:\n{_fence(out)}")
    return f"`{' '.join(cmd[1:])}`:\n\n{out.strip()}"


def throughput_run(args, compile_blocks: bool, extra: list[str] | None = None, steps: int | None = None) -> dict:
    """One short training run; tokens/s/GPU, MFU, peak memory and save seconds from its JSONL records. `extra`:
    more launcher/train.py arguments (another --deepspeed_config)."""
    config, steps, interval, num_gpus = BASE_CONFIG, steps or args.steps, args.log_interval, args.num_gpus
    device = "cuda"
    if args.dry_run:
        config, steps, interval, num_gpus, device = DRY_CONFIG, 4, 2, 1, "cpu"
    # Beside the report, not in /tmp: the run ends with a full checkpoint (~10 GB for the 750M model), which the
    # volume holds and a container's disk may not, and its save seconds are then the volume's, where training saves.
    out = Path(tempfile.mkdtemp(prefix=".gpu_report_run_", dir=args.out))
    try:
        cfg = bench_config(REPO / config, out, steps, {
            "logging.log_interval": interval, "eval.eval_interval": steps, "eval.eval_iters": 2,
            "model.compile": compile_blocks, "gold.enabled": False})
        synthetic = synthesize_missing_data(cfg, out / "synthetic")
        launch(cfg, "report", num_gpus, extra or [], device=device, timeout=args.budget.timeout())
        train_records = records(out, "report", "train")
        rows = [r for r in train_records if "loss" in r][1:]  # the first interval is warm-up
        saves = [r["seconds"] for r in train_records if r.get("event") == "checkpoint"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not rows:
        raise RuntimeError(f"no measured interval in {steps} steps at log interval {interval}")
    tok_s = sum(r["tokens_per_s"] for r in rows) / len(rows)
    peaks = [r["peak_memory_gib"] for r in rows if r.get("peak_memory_gib") is not None]
    return {"config": config, "steps": steps, "interval": interval, "num_gpus": num_gpus, "synthetic": synthetic,
            "tokens_per_s_per_gpu": tok_s / num_gpus, "step_seconds": sum(r["step_seconds"] for r in rows) / len(rows),
            "mfu": sum(r["mfu"] for r in rows) / len(rows), "peak_memory_gib": max(peaks) if peaks else None,
            "save_seconds": saves[-1] if saves else None,
            "data_wait_share": sum(r["data_wait_share"] for r in rows) / len(rows)}


def _throughput_table(args, compile_blocks: bool) -> str:
    r = throughput_run(args, compile_blocks)
    peak = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "-"
    save = f"{r['save_seconds']:.1f} s" if r["save_seconds"] is not None else "-"
    data = (f"synthetic token directories for {', '.join(r['synthetic'])} (not built here)" if r["synthetic"]
            else "the built datasets")
    return (f"`{r['config']}`{' with model.compile' if compile_blocks else ''}, {r['steps']} steps on "
            f"{r['num_gpus']} GPU(s), the batch the launcher derives, the first {r['interval']}-step interval skipped "
            f"(warm-up); data: {data}\n\n"
            "| variant | GPUs | tokens/s/GPU | step s | MFU | peak memory/GPU | checkpoint save (last step) "
            "| data wait |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
            f"| {'model.compile' if compile_blocks else 'eager'} | {r['num_gpus']} | "
            f"{r['tokens_per_s_per_gpu']:,.0f} | {r['step_seconds']:.3f} | {r['mfu']:.1%} | {peak} | {save} | "
            f"{r['data_wait_share']:.2%} |")


def section_throughput_eager(args) -> str:
    return _throughput_table(args, compile_blocks=False)


def section_throughput_compiled(args) -> str:
    return _throughput_table(args, compile_blocks=True)


def write_report(path: Path, parts: list[str]) -> None:
    atomic_write_text(path, "\n".join(parts))  # a reader never sees half a report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_gpus", type=int, default=0, help="GPUs for the throughput runs (0: all visible)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps of each throughput run")
    p.add_argument("--log_interval", type=int, default=5, help="steps per measured interval of the throughput runs")
    p.add_argument("--budget-s", dest="budget_s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for the whole report (default {DEFAULT_BUDGET_S}: 12 minutes of one GPU); sections "
                        "whose estimate does not fit what is left are skipped, launches are killed at the end")
    p.add_argument("--out", default="reports", help="folder for the report (created)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument("--dry_run", action="store_true", help="run every section at a tiny size on CPU (no GPU needed)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_report: no GPU (torch.cuda.is_available() is False); nothing to measure. "
              "--dry_run runs every section at a tiny size on CPU.")
        return 0
    if args.steps < 2 * args.log_interval:
        raise SystemExit(f"gpu_report: --steps {args.steps} is below two --log_interval intervals "
                         f"({2 * args.log_interval}): the throughput runs skip the first as warm-up")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 1
    args.num_gpus = args.num_gpus or visible
    if args.num_gpus > visible:
        raise SystemExit(f"gpu_report: --num_gpus {args.num_gpus} but {visible} GPU(s) are visible")
    args.budget = Budget(args.budget_s)
    card = card_name(args.dry_run)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", card).strip("_")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_report_{slug}_{date[:10]}.md"
    parts = [f"# GPU report: {card}\n", f"{date}; `python scripts/bench/gpu_report.py "
             f"{' '.join(argv if argv is not None else sys.argv[1:])}` at commit {_commit()}, budget "
             f"{args.budget_s:.0f} s\n"]
    write_report(path, parts)
    print(f"gpu_report: writing {path} (rewritten after every section); budget {args.budget_s:.0f} s", flush=True)
    failed, skipped = [], []
    todo = [name for name in SECTIONS if name not in args.skip]
    for i, name in enumerate(todo, 1):
        estimate = ESTIMATE_S[name][1 if args.dry_run else 0]
        if name == "reduce_dtype" and args.num_gpus < 2:
            estimate = 1  # one GPU has no reduction: the section only says so
        left = args.budget.left()
        if estimate > left:
            skipped.append(name)
            print(f"gpu_report: [{i}/{len(todo)}] {name}: skipped, its estimate {estimate} s exceeds the {left:.0f} s "
                  "left of --budget-s", flush=True)
            parts.append(f"## {name}\n\nskipped: its estimate ({estimate} s) exceeds the {left:.0f} s left of the "
                         f"{args.budget_s:.0f} s budget (rerun with a larger --budget-s, or --skip the others)\n")
            write_report(path, parts)
            continue
        print(f"gpu_report: [{i}/{len(todo)}] {name}: estimate {estimate} s, {left:.0f} s of the budget left ...",
              flush=True)
        t0 = time.perf_counter()
        try:
            body, status = globals()[f"section_{name}"](args), "ok"
        except KeyboardInterrupt:
            parts.append(f"## {name}\n\n**INTERRUPTED** after {time.perf_counter() - t0:.0f} s\n")
            write_report(path, parts)
            print(f"gpu_report: interrupted; {path} holds the sections before {name}")
            return 130
        except (Exception, SystemExit) as e:  # noqa: BLE001 - one section must not lose the others' figures
            failed.append(name)
            body, status = f"**FAILED**: {e}\n\n{_fence(traceback.format_exc(), 3000)}", "FAILED"
        seconds = time.perf_counter() - t0
        parts.append(f"## {name} ({seconds:.0f} s; estimate {estimate} s)\n\n{body}\n")
        write_report(path, parts)
        print(f"gpu_report: [{i}/{len(todo)}] {name}: {status} in {seconds:.0f} s", flush=True)
    summary = "every section ran" if not failed and not skipped else (
        f"FAILED: {failed}; " if failed else "") + (f"skipped for the budget: {skipped}" if skipped else "")
    parts.append(f"---\n{summary.rstrip('; ')}; {args.budget_s - args.budget.left():.0f} s in all\n")
    write_report(path, parts)
    print(f"gpu_report: wrote {path}; {summary.rstrip('; ')}")
    return 1 if failed else 0


def _commit() -> str:
    try:
        code, out = _run(["git", "rev-parse", "--short", "HEAD"], timeout=30)
    except (OSError, RuntimeError):  # no git in the image: the report still runs
        return "unknown"
    return out.strip() if code == 0 else "unknown"


if __name__ == "__main__":
    sys.exit(main())
