"""Benchmark the fused Triton RMSNorm (plain and with the residual add) and SwiGLU kernels against eager PyTorch,
F.rms_norm and torch.compile.

GPU only: on a machine without CUDA it prints "no GPU" and exits 0 (use --aot-only there to see the builds).

Usage:
    python scripts/bench/kernels.py                       # header (builds) + timing table, bf16, both shapes
    python scripts/bench/kernels.py --markdown            # the same table as Markdown, for docs/PERFORMANCE.md
    python scripts/bench/kernels.py --no-compile          # skip the torch.compile baselines (faster)
    python scripts/bench/kernels.py --ab-steps 200        # also: tiny model fused vs reference, DeepSpeed ZeRO-2 bf16
    python scripts/bench/kernels.py --aot-only            # only the sm_90/sm_80 build table (works without a GPU)
    python scripts/bench/kernels.py --no-tuning           # skip the fixed-rule vs autotuned RMSNorm table
    TRITON_INTERPRET=1 python scripts/bench/kernels.py --interpret-check   # CPU: run the tuning table's code, tiny

What it measures (medians of `triton.testing.do_bench`, CUDA-event timed, L2 flushed between runs):
  shapes        750M: RMSNorm rows 12 x 1024, hidden 1280; SwiGLU 12 x 1024 x 3456.  large: hidden 4096 (SwiGLU
                11008, LLaMA-7B's ratio).
  fwd/bwd/both  forward; backward only (`torch.autograd.grad` on a retained graph, out of place); both.
  GB/s, %copy   ideal bytes / time, and that as % of the measured device-to-device copy bandwidth. Ideal bytes
                per element at 2-byte dtypes: RMSNorm fwd 4 (read x, write y), bwd 6 (read x and dy, write dx);
                RMSNorm + residual fwd 8 (read x, residual; write h, y), bwd 8 (read dy, dh, h; write dx);
                SwiGLU fwd 6 (read gate and up, write y), bwd 10 (read dy, gate, up; write d_gate, d_up).
  speedup       baseline time / fused time for eager HF-style PyTorch, F.rms_norm, torch.compile of the reference.
  MLP peak      peak allocated memory of one MLP block (ffn_norm + w1/w3 + SwiGLU + w2), forward and backward.
  tuning        RMSNorm forward/backward ms with the fixed rule (RAGLLM_TRITON_AUTOTUNE=off), the default
                autotune ("stages": pipelining depth only, math-preserving) and "full" (also num_warps), the config
                each autotuner picked per width (warps/stages), whether its output is bit-identical to the fixed
                rule's, and the first call's seconds (compile + benchmark). The first GPU session updates
                BWD_NUM_STAGES / `row_block` from it.
Targets (H100): RMSNorm fwd >= 80% of copy bandwidth, bwd >= 60%; SwiGLU >= 85% / 70%; never slower than
torch.compile. Each row says whether it meets its target.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from model.kernels import rms_norm, rms_norm_residual, swiglu, triton_available
from model.kernels.reference import rms_norm_reference, rms_norm_residual_reference, swiglu_reference

EPS = 1e-5
SHAPES = {
    # name: (rows, hidden, ffn_hidden)
    "750m": (12 * 1024, 1280, 3456),
    "large": (12 * 1024, 4096, 11008),
}
# Ideal bytes per element (at the given element size) of each pass, see the docstring.
RMS_BYTES = {"fwd": 2, "bwd": 3, "both": 5}  # tensors of the activation's size read or written
RES_BYTES = {"fwd": 4, "bwd": 4, "both": 8}  # fwd: read x, residual, write h, y; bwd: read dy, dh, h, write dx
SWIGLU_BYTES = {"fwd": 3, "bwd": 5, "both": 8}
TARGETS = {("rms_norm", "fwd"): 0.80, ("rms_norm", "bwd"): 0.60, ("swiglu", "fwd"): 0.85, ("swiglu", "bwd"): 0.70}


def bench_ms(fn, warmup: int, rep: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def copy_bandwidth(warmup: int, rep: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), on 1 GiB buffers."""
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), warmup, rep)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def pass_fns(fn, inputs, dy):
    """(forward, backward-only, forward+backward) closures for `fn(*inputs)` with upstream gradient dy (a tuple of
    gradients when `fn` returns a tuple)."""
    y = fn(*inputs)

    def fwd():
        return fn(*inputs)

    def bwd():
        return torch.autograd.grad(y, inputs, dy, retain_graph=True)

    def both():
        return torch.autograd.grad(fn(*inputs), inputs, dy)

    return {"fwd": fwd, "bwd": bwd, "both": both}


def time_op(variants: dict, inputs, dy, warmup: int, rep: int) -> dict:
    """{variant: {pass: ms}}."""
    results = {}
    for name, fn in variants.items():
        fns = pass_fns(fn, inputs, dy)
        results[name] = {p: bench_ms(f, warmup, rep) for p, f in fns.items()}
    return results


def mlp_peak_mib(rows: int, hidden: int, ffn: int, fused: bool, dtype: torch.dtype) -> float:
    """Peak memory above the block's weights and input for one forward+backward of ffn_norm -> FeedForward."""
    from model.config import ModelConfig
    from model.transformer import FeedForward, RMSNorm

    cfg = ModelConfig(n_embd=hidden, n_head=hidden // 64, dropout=0.0, fused_kernels=fused)
    norm = RMSNorm(hidden, EPS, fused).to("cuda", dtype)
    ffn_block = FeedForward(cfg).to("cuda", dtype)
    x = torch.randn(12, rows // 12, hidden, device="cuda", dtype=dtype, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = ffn_block(norm(x))
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_benchmarks(args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    copy_bw = copy_bandwidth(args.warmup, args.rep)
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    rows_out = []
    for shape in args.shapes:
        rows, hidden, ffn = SHAPES[shape]
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(rows, hidden, device="cuda", generator=gen, dtype=dtype).requires_grad_()
        w = torch.ones(hidden, device="cuda", dtype=dtype, requires_grad=True)
        dy = torch.randn(rows, hidden, device="cuda", generator=gen, dtype=dtype)
        variants = {
            "fused": lambda a, b: rms_norm(a, b, EPS, impl="triton"),
            "eager": lambda a, b: rms_norm_reference(a, b, EPS),
            "F.rms_norm": lambda a, b: F.rms_norm(a, (a.shape[-1],), b, EPS),
        }
        if args.compile:
            variants["compile"] = torch.compile(lambda a, b: rms_norm_reference(a, b, EPS))
        rows_out += summarize(
            "rms_norm",
            shape,
            rows * hidden,
            dtype,
            RMS_BYTES,
            time_op(variants, (x, w), dy, args.warmup, args.rep),
            copy_bw,
        )

        # Fused residual add + RMSNorm against the eager add followed by the norm (what the block does unfused).
        r = torch.randn(rows, hidden, device="cuda", generator=gen, dtype=dtype).requires_grad_()
        dh = torch.randn(rows, hidden, device="cuda", generator=gen, dtype=dtype)
        variants = {
            "fused": lambda a, b, c: rms_norm_residual(a, b, c, EPS, impl="triton"),
            "eager": lambda a, b, c: rms_norm_residual_reference(a, b, c, EPS),
        }
        if args.compile:
            variants["compile"] = torch.compile(lambda a, b, c: rms_norm_residual_reference(a, b, c, EPS))
        rows_out += summarize(
            "rms_norm_residual",
            shape,
            rows * hidden,
            dtype,
            RES_BYTES,
            time_op(variants, (x, r, w), (dy, dh), args.warmup, args.rep),
            copy_bw,
        )
        del r, dh

        g = torch.randn(rows, ffn, device="cuda", generator=gen, dtype=dtype).requires_grad_()
        u = torch.randn(rows, ffn, device="cuda", generator=gen, dtype=dtype).requires_grad_()
        dy = torch.randn(rows, ffn, device="cuda", generator=gen, dtype=dtype)
        variants = {"fused": lambda a, b: swiglu(a, b, impl="triton"), "eager": swiglu_reference}
        if args.compile:
            variants["compile"] = torch.compile(swiglu_reference)
        rows_out += summarize(
            "swiglu",
            shape,
            rows * ffn,
            dtype,
            SWIGLU_BYTES,
            time_op(variants, (g, u), dy, args.warmup, args.rep),
            copy_bw,
        )
        del x, w, g, u, dy
        peaks = {f: mlp_peak_mib(rows, hidden, ffn, f, dtype) for f in (True, False)}
        print(
            f"MLP block peak memory ({shape}, fwd+bwd above weights and input): fused {peaks[True]:.0f} MiB, "
            f"reference {peaks[False]:.0f} MiB"
        )
    return rows_out


def _pick(config) -> str:
    if config is None:
        return "-"
    return f"{config.num_warps}w" + (f"/{config.kwargs['NUM_STAGES']}s" if "NUM_STAGES" in config.kwargs else "")


def tuning_rows(args, device: str = "cuda", shapes: dict | None = None) -> list[dict]:
    """Fixed rule vs autotuned RMSNorm, side by side per width: the backward in each RAGLLM_TRITON_AUTOTUNE mode
    ("off" = the fixed rule, "stages" = the default math-preserving autotune, "full" = also num_warps) and the forward
    in "off" and "full" (its only knob is num_warps); the config each autotuner picked (warps/stages); whether the
    result is bit-identical to the fixed rule's; and the seconds of the first call (compile + benchmark).
    `device` and `shapes` let the CPU run this code under the interpreter at a tiny size (nothing tuned there)."""
    import time

    from model.kernels import rmsnorm_triton as rt
    from model.kernels.triton_support import row_block

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(mode, fn):
        with rt.autotune_mode_override(mode):
            sync()
            t0 = time.perf_counter()
            result = fn()  # the first call of this shape in this mode: compile, and benchmark the configs
            sync()
            first_s = time.perf_counter() - t0
            if device != "cuda":
                return result, first_s, first_s * 1e3
            return result, first_s, bench_ms(fn, args.warmup, args.rep)

    def shape_rows(shape):
        rows, hidden, _ = (shapes or SHAPES)[shape]
        gen = torch.Generator(device=device).manual_seed(0)
        x, dy, r = (torch.randn(rows, hidden, device=device, generator=gen, dtype=dtype) for _ in range(3))
        w = (1 + 0.1 * torch.randn(hidden, device=device, generator=gen)).to(dtype)
        rstd = rt.rms_norm_op(x, w, EPS)[1]
        cases = [
            ("rms_norm", "bwd", lambda: rt.rms_norm_backward_op(dy, x, w, rstd, None),
             {"stages": rt.rms_norm_bwd_autotuned, "full": rt.rms_norm_bwd_autotuned_full}),
            ("rms_norm_residual", "bwd", lambda: rt.rms_norm_backward_op(dy, x, w, rstd, r),
             {"stages": rt.rms_norm_bwd_autotuned, "full": rt.rms_norm_bwd_autotuned_full}),
            ("rms_norm", "fwd", lambda: rt.rms_norm_op(x, w, EPS), {"full": rt.rms_norm_fwd_autotuned_full}),
            ("rms_norm_residual", "fwd", lambda: rt.rms_norm_residual_op(x, r, w, EPS),
             {"full": rt.rms_norm_fwd_autotuned_full}),
        ]
        out = []
        for op, p, fn, tuners in cases:
            fixed, _, fixed_ms = timed("off", fn)
            rule = f"{row_block(hidden)[1]}w" + (f"/{rt.BWD_NUM_STAGES}s" if p == "bwd" else "")
            row = {"op": op, "shape": shape, "pass": p, "rule": rule, "fixed ms": fixed_ms}
            for mode, tuner in tuners.items():
                result, first_s, ms = timed(mode, fn)
                same = all(torch.equal(a, b) for a, b in zip(fixed, result, strict=True))
                row.update({f"{mode} ms": ms, f"{mode} pick": _pick(tuner.best_config),
                            f"{mode} same bits": "yes" if same else "NO", f"{mode} 1st call s": first_s})
            out.append(row)
        return out

    dtype = getattr(torch, args.dtype)
    return [row for shape in (shapes or args.shapes) for row in shape_rows(shape)]


def summarize(op, shape, numel, dtype, bytes_per, times, copy_bw) -> list[dict]:
    element = torch.empty((), dtype=dtype).element_size()
    out = []
    for p in ("fwd", "bwd", "both"):
        fused_ms = times["fused"][p]
        gbps = bytes_per[p] * numel * element / (fused_ms * 1e-3)
        row = {"op": op, "shape": shape, "pass": p, "fused_ms": fused_ms, "GB/s": gbps / 1e9, "%copy": gbps / copy_bw}
        for name, t in times.items():
            if name != "fused":
                row[f"x vs {name}"] = t[p] / fused_ms
        target = TARGETS.get((op, p))
        ok = (target is None or row["%copy"] >= target) and row.get("x vs compile", 1.0) >= 1.0
        row["target"] = ("met" if ok else "MISSED") + (f" (>= {target:.0%})" if target else "")
        out.append(row)
    return out


def print_table(rows: list[dict], markdown: bool):
    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    fmt = lambda c, v: (
        f"{v:.1%}"
        if c == "%copy"
        else f"{v:.3f}"
        if c == "fused_ms"
        # noqa: E731
        else (f"{v:.2f}" if isinstance(v, float) else str(v))
    )
    cells = [[fmt(c, r[c]) if c in r else "-" for c in cols] for r in rows]
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for line in cells:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for line in cells:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))


def ab_losses(steps: int, device: str) -> tuple[list[float], list[float]]:
    """Loss curves of the tiny model trained `steps` steps with fused kernels and with the reference, from the same
    init and the same synthetic batches, each under a real DeepSpeed ZeRO-2 bf16 engine (ds_configs/zero2_bf16.json).
    """
    import json

    import deepspeed

    from launcher.distributed import init_distributed
    from model.config import ModelConfig
    from model.transformer import Transformer

    init_distributed()  # the trainer's: a one-process group, and no JIT build of DeepSpeed's CPU shm op
    repo = Path(__file__).resolve().parents[2]
    model_cfg = json.loads((repo / "configs/tiny/demo_cpu.json").read_text())["model"]
    ds_config = json.loads((repo / "ds_configs/zero2_bf16.json").read_text())
    ds_config.update(train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=1, gradient_clipping=1.0)
    # torch's AdamW, as the trainer asks for it (launcher/engine.py `trainer_owned_values`): without `torch_adam`
    # DeepSpeed builds its FusedAdam op with nvcc on first use (minutes on a pod, a failure without CUDA_HOME).
    adam = {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1, "torch_adam": True}
    if device == "cuda":
        adam["fused"] = True
    ds_config["optimizer"] = {"type": "AdamW", "params": adam}
    curves = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**{**model_cfg, "fused_kernels": fused, "dropout": 0.0}))
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(steps):
            tokens = torch.randint(0, 50257, (8, model.config.block_size + 1), generator=gen).to(device)
            _, loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        curves.append(losses)
        del engine, model
    return curves[0], curves[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="shapes to time")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="activation and weight dtype"
    )
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time in ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench measuring time in ms")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile baselines")
    parser.add_argument("--markdown", action="store_true", help="print the timing table as Markdown")
    parser.add_argument(
        "--no-tuning",
        dest="tuning",
        action="store_false",
        help="skip the RMSNorm fixed-rule vs autotuned table (each autotune mode, the picks, same-bits check)",
    )
    parser.add_argument(
        "--ab-steps",
        type=int,
        default=0,
        help="also train the tiny model this many steps fused and unfused under DeepSpeed ZeRO-2 "
        "bf16 and print the largest loss difference (200 for the documented A/B)",
    )
    parser.add_argument(
        "--interpret-check",
        action="store_true",
        help="CPU, under TRITON_INTERPRET=1: run the tuning table's code at 6 x 37 (checks this script; the "
        "interpreter prunes every autotune space to the fixed rule, so its numbers mean nothing)",
    )
    parser.add_argument(
        "--aot-only",
        action="store_true",
        help="print the sm_90/sm_80 ahead-of-time build table and exit (no GPU needed)",
    )
    args = parser.parse_args(argv)
    if args.ab_steps < 0:
        raise SystemExit(f"--ab-steps must be >= 0, got {args.ab_steps}")
    if not triton_available():
        raise SystemExit("triton is not importable: install the project's requirements (triton is pinned there)")
    from model.kernels.triton_support import interpreting

    if args.interpret_check:
        if not interpreting():
            raise SystemExit("--interpret-check runs under Triton's interpreter: start it with TRITON_INTERPRET=1")
        print("interpreter check of the tuning table (CPU, 6 x 37 rows, nothing tuned):")
        print_table(tuning_rows(args, device="cpu", shapes={"tiny": (6, 37, 0)}), args.markdown)
        return 0
    if interpreting():
        raise SystemExit("TRITON_INTERPRET=1 is set: unset it, the benchmark times compiled kernels")

    if args.aot_only or torch.cuda.is_available():
        from model.kernels.aot import build_all, format_builds

        print("Ahead-of-time builds (registers/thread from cuobjdump, shared memory from Triton's metadata):")
        print(format_builds(build_all()))
    if args.aot_only:
        return 0
    if not torch.cuda.is_available():
        print("no GPU: the kernel benchmark needs CUDA; nothing timed (--aot-only prints the GPU builds)")
        return 0

    print_table(run_benchmarks(args), args.markdown)
    if args.tuning:
        print(
            "\nRMSNorm, fixed rule vs autotuned (picks as warps/stages; the default autotune varies stages only and "
            "must give the same bits; 'full' also varies warps and may not). To adopt a pick: BWD_NUM_STAGES in "
            "model/kernels/rmsnorm_triton.py, the warps rule `row_block` in model/kernels/triton_support.py."
        )
        print_table(tuning_rows(args), args.markdown)
    if args.ab_steps:
        fused, ref = ab_losses(args.ab_steps, "cuda")
        diffs = [abs(a - b) for a, b in zip(fused, ref, strict=True)]
        worst = max(range(len(diffs)), key=diffs.__getitem__)
        print(
            f"A/B {args.ab_steps} steps, ZeRO-2 bf16, tiny model: final loss fused {fused[-1]:.4f} reference "
            f"{ref[-1]:.4f}; largest |difference| {diffs[worst]:.4f} at step {worst + 1}; "
            f"median |difference| {statistics.median(diffs):.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
