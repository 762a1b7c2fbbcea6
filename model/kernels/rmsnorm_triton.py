"""Fused RMSNorm, and fused residual-add + RMSNorm (forward and backward) in Triton, as torch custom ops.

Math (Hugging Face Llama order, as `reference.rms_norm_reference`):
    rstd = 1 / sqrt(mean(x^2) + eps)          in fp32
    y    = weight * (x * rstd).to(x.dtype)     the product rounded once to promote(x.dtype, weight.dtype)
Backward, with n = x * rstd (fp32) and n_c = n rounded to x.dtype (what the forward multiplied by the weight):
    dW = sum_rows(dy * n_c)
    dx = rstd * (dy*w - n * mean(dy*w * n))
The residual variant first forms h = (x + residual) rounded to x.dtype (what eager `x + residual` gives), stores it
(the block's new residual stream) and normalises h; its backward adds the gradient arriving at h from later layers to
dx in fp32 and rounds once, and x and residual both receive that gradient. One read of x and residual and one write
of h replace the separate add kernel's read-read-write and the norm's second read of h.

The forward saves (x or h, weight, rstd) with rstd in fp32; nothing is recomputed but n. The weight gradient is
reduced deterministically: each of a few programs per SM accumulates its rows in fp32 registers and writes its row of
a partial buffer with plain stores (no zero-fill needed: every element is written), and one small kernel sums the
buffer's columns in a fixed order and writes dW in the weight's dtype. No atomics, so the result does not depend on
scheduling; two launches in all (the previous version took four: zeros, kernel, sum, cast).

The backward's software-pipelining depth is autotuned (`triton.autotune`) over a space that cannot change a bit of the
results; see "Autotuning" below for what is tuned, what is not, and `RAGLLM_TRITON_AUTOTUNE`.

The ops are `torch.library.triton_op`s with `register_autograd` (torch/_library/triton.py, torch/_library/
custom_ops.py `CustomOpDef.register_autograd`): torch.compile traces through them with `fullgraph=True` and, on a
GPU, Inductor sees the kernels themselves. Double backward is not implemented (`first_order_only`).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton

from model.kernels.triton_support import (
    COMPILE_OPTIONS,
    as_rows,
    compute_dtype,
    first_order_only,
    interpreting,
    jit,
    launch,
    multiprocessor_count,
    row_block,
    tl,
)

# Programs per SM for the weight-gradient pass: enough resident warps to hide load latency while the partial
# buffer (programs x hidden fp32) stays a few percent of the bytes the pass reads. Not tuned on a GPU yet.
BWD_PROGRAMS_PER_SM = 4
# Programs for the backward pass under the interpreter: few enough that the CPU tests' 6, 7 and 123 rows give
# several rows per program (the in-register accumulation) and more than one program (the partial-buffer sum).
INTERPRETER_BWD_PROGRAMS = 4
# Software-pipeline depth of the backward row loop: the next row's x and dy loads are issued while this row is
# computed (Triton pipelines loads in a loop only with `tl.range(..., num_stages=...)`, triton/language/core.py
# `class range`; a plain `range` or the kernel's num_stages pipelines only loads that feed `dot`). Two stages: the
# next row's x and dy wait in shared memory, 8 KiB at hidden 1280 in bf16 (the smem column of the AOT table).
# This is the fixed rule (`RAGLLM_TRITON_AUTOTUNE=off`, and the interpreter); by default the depth is autotuned.
BWD_NUM_STAGES = 2
# Column block of the dW reduction: 1280 / 64 = 20 programs, each summing its columns over all partial rows.
DW_REDUCE_BLOCK_N = 64
DW_REDUCE_BLOCK_M = 32


@jit
def rms_norm_fwd_kernel(
    X,
    R,
    H,
    W,
    Y,
    RSTD,
    stride_x,
    stride_r,
    stride_h,
    stride_y,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # 64-bit: rows x stride can pass 2^31 at long sequences
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # Rounded to the input dtype once, as eager `x + residual` does: h is what later layers add to.
        x = (x.to(COMPUTE) + tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(COMPUTE)).to(
            X.dtype.element_ty
        )
        tl.store(H + row * stride_h + cols, x, mask=mask)
    x = x.to(COMPUTE)
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
    # eps arrives as fp32 from an eager launch but as fp64 when Inductor re-emits the launch under torch.compile
    # (pytorch/pytorch#190340; Liger-Kernel#1350): without the cast, mean + eps and the rsqrt would run in fp64.
    # Masked lanes load 0, so they add nothing to the sum; divide by the true width, not BLOCK.
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / n_cols + tl.cast(eps, COMPUTE))
    normed = (x * rstd).to(X.dtype.element_ty).to(COMPUTE)  # HF order: round to the input dtype first
    tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@jit
def rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DRES,
    DX,
    DW_PARTIAL,
    stride_dy,
    stride_x,
    stride_dres,
    stride_dx,
    n_rows,
    n_cols,
    rows_per_program,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
    HAS_DRES: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
    dw = tl.zeros((BLOCK,), dtype=COMPUTE)
    # 64-bit loop bounds make the induction variable 64-bit, so row x stride cannot overflow.
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for r in tl.range(row_start, row_end, num_stages=NUM_STAGES):
        x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(COMPUTE)
        dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(COMPUTE)
        rstd = tl.load(RSTD + r)
        n = x * rstd
        dw += dy * n.to(X.dtype.element_ty).to(COMPUTE)
        dn = dy * w
        dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
        if HAS_DRES:
            dx += tl.load(DRES + r * stride_dres + cols, mask=mask, other=0.0).to(COMPUTE)
        tl.store(DX + r * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


@jit
def dw_reduce_kernel(
    DW_PARTIAL, DW, n_partial, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr
):
    """dW[c] = sum over the partial rows of DW_PARTIAL[:, c], in a fixed order, written in DW's dtype."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
    for start in range(0, n_partial, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < n_partial) & col_mask[None, :]
        acc += tl.load(DW_PARTIAL + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    tl.store(DW + cols, tl.sum(acc, axis=0).to(DW.dtype.element_ty), mask=col_mask)


# --- autotuning ------------------------------------------------------------------------------------------------------
#
# Runs must be bitwise resumable, and ranks and reruns must agree, whichever config each process's autotuner picks
# (its pick depends on timing noise). So by default only parameters that leave every floating-point operation and
# its order untouched are tuned:
#
# - tuned: the backward row loop's pipelining depth, NUM_STAGES in 1..4 (`tl.range(..., num_stages=NUM_STAGES)`).
#   It decides whether the next rows' x and dy are loaded straight into registers or prefetched into shared memory
#   (cp.async), and how far ahead; the arithmetic on each row is the same. Checked, not assumed: the AOT test builds
#   every stage count for sm_90 and sm_80 and finds the same sequence of fp32 and shuffle instructions in each PTX
#   (tests/test_kernels.py). Any pick gives bit-identical dx and dW.
# - not tuned, num_warps: it sets how many of a row's elements each thread holds (BLOCK / (32 x warps)), and Triton
#   lowers `tl.sum` as a sequential sum over a thread's own elements, then butterfly shuffles across the lanes of a
#   warp, then a combine across warps through shared memory (triton-lang/triton
#   lib/Conversion/TritonGPUToLLVM/ReduceOpToLLVM.cpp: `reduceWithinThreads`, `warpReduce`, the cross-warp pass).
#   Another warp count is another summation tree for sum(x^2) and sum(dy*w*n), so rstd, y and dx can differ in the
#   last bit. Seen in Triton 3.9's PTX for the backward at 1280 on sm_90: 434, 228 and 126 fp32/shuffle instructions
#   at 2, 4 and 8 warps, 6, 7 and 8 shuffle rounds. The interpreter cannot show this (it ignores num_warps).
# - not tuned, rows per program (BWD_PROGRAMS_PER_SM): each program sums its rows' dy * n in registers, then
#   dw_reduce_kernel sums the programs' rows; another grouping is another order for dW. (It also sets the partial
#   buffer's shape, which is allocated before the launch.)
# - not tuned, dw_reduce_kernel's BLOCK_M, BLOCK_N and warps: they set that kernel's summation order likewise.
#
# RAGLLM_TRITON_AUTOTUNE (read once, at import) picks the space:
#   unset or "stages": the above (the default); "off": the fixed rule (BWD_NUM_STAGES stages, no benchmarking at
#   the first call of each shape); "full": also num_warps at half, the rule's and twice the rule's warps, for the
#   forward too. "full" may change the last bits from one process to the next, so it is not for training runs that
#   must resume bitwise; it exists so that a GPU session can measure whether the warps rule (`row_block`) is right
#   (`scripts/bench/kernels.py` prints the picks).
#
# Benchmarking runs a kernel several times on the real arguments. That is safe here without `restore_value` or
# `reset_to_zero`: DX, DW_PARTIAL (and Y, H, RSTD in the forward) are pure outputs, each element written by a plain
# store from inputs the kernel only reads, so every repeat writes the same values (tested under the interpreter).

AUTOTUNE_MODES = ("stages", "off", "full")
AUTOTUNE_ENV = "RAGLLM_TRITON_AUTOTUNE"
# The stage counts the default space holds; every one is built ahead of time (aot.py) and must not spill.
BWD_STAGE_SPACE = (1, 2, 3, 4)
# The kernel-level num_stages of every config: the default of a plain launch (CUDAOptions.num_stages, triton/
# backends/nvidia/compiler.py), so the fixed and tuned launches differ only where a config says so. With no `dot`
# in these kernels it pipelines nothing (see BWD_NUM_STAGES).
KERNEL_NUM_STAGES = 3
# The parameters a default-space config may vary: those that cannot change the results (see above).
MATH_PRESERVING = frozenset({"NUM_STAGES"})


def parse_autotune_mode(value: str | None) -> str:
    """The autotune mode for a value of RAGLLM_TRITON_AUTOTUNE (None or "" is the default, "stages")."""
    if value is None or value.strip() == "":
        return "stages"
    mode = value.strip().lower()
    if mode not in AUTOTUNE_MODES:
        raise ValueError(
            f"{AUTOTUNE_ENV}={value!r} is not one of {AUTOTUNE_MODES}: unset it (or 'stages') for the default "
            "math-preserving autotuning, 'off' for the fixed rule, 'full' to also tune num_warps (not bitwise "
            "reproducible across processes)"
        )
    return mode


_AUTOTUNE_MODE = parse_autotune_mode(os.environ.get(AUTOTUNE_ENV))


def autotune_mode() -> str:
    return _AUTOTUNE_MODE


@contextlib.contextmanager
def autotune_mode_override(mode: str):
    """Use `mode` inside the block (the benchmark times the modes side by side in one process)."""
    global _AUTOTUNE_MODE
    previous, _AUTOTUNE_MODE = _AUTOTUNE_MODE, parse_autotune_mode(mode)
    try:
        yield
    finally:
        _AUTOTUNE_MODE = previous


def _warps_space(rule_warps: int, mode: str) -> set[int]:
    if mode != "full":
        return {rule_warps}
    return {w for w in (rule_warps // 2, rule_warps, rule_warps * 2) if 1 <= w <= 16}


# Every config any mode can pick; `bwd_configs` / `fwd_configs` choose per width and mode.
BWD_CONFIGS = [
    triton.Config({"NUM_STAGES": s}, num_warps=w, num_stages=KERNEL_NUM_STAGES)
    for w in (1, 2, 4, 8, 16)
    for s in sorted({*BWD_STAGE_SPACE, BWD_NUM_STAGES})
]
FWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=KERNEL_NUM_STAGES) for w in (1, 2, 4, 8, 16)]


def bwd_configs(n_cols: int, mode: str) -> list:
    """The backward configs `mode` may pick at width `n_cols` ("off": the fixed rule's one)."""
    rule_warps = row_block(n_cols)[1]
    stages = set(BWD_STAGE_SPACE) if mode != "off" else {BWD_NUM_STAGES}
    warps = _warps_space(rule_warps, mode)
    return [c for c in BWD_CONFIGS if c.num_warps in warps and c.kwargs["NUM_STAGES"] in stages]


def fwd_configs(n_cols: int, mode: str) -> list:
    """The forward configs `mode` may pick at width `n_cols`: the rule's warps, or around it in "full" mode."""
    warps = _warps_space(row_block(n_cols)[1], mode)
    return [c for c in FWD_CONFIGS if c.num_warps in warps]


# `early_config_prune` of each autotuner (triton/runtime/autotuner.py `Autotuner.prune_configs`; torch.compile runs it
# at trace time, triton_kernel_wrap.py `do_prune_configs`). Under the interpreter only the fixed rule's config is
# left: the interpreter ignores warps and stages, so there is nothing to choose between.
def _mode_here(mode: str) -> str:
    return "off" if interpreting() else mode


def _interpreter_bench(kernel_call, quantiles):
    """The autotuner's timer under the interpreter: equal timings, nothing launched (one config is left there).

    Triton 3.7.1, the version torch 2.13.0 pins, benchmarks whatever pruning leaves, one config included
    (triton/runtime/autotuner.py `Autotuner.run`: the skip is `len(self.configs) > 1`, before pruning; later Triton
    releases skip a single pruned config). Its default timer asks the active GPU driver, which fails on a CPU
    ("0 active drivers"), so the CPU tests still launch through the autotuner only with this timer. Passed only under
    the interpreter: torch.compile accepts a user kernel's autotuner only with the default timer."""
    return [0.0 for _ in quantiles] if quantiles else 0.0


def prune_bwd_stages(configs, named_args, **kwargs):
    return bwd_configs(named_args["n_cols"], _mode_here("stages"))


def prune_bwd_full(configs, named_args, **kwargs):
    return bwd_configs(named_args["n_cols"], _mode_here("full"))


def prune_fwd_full(configs, named_args, **kwargs):
    return fwd_configs(named_args["n_cols"], _mode_here("full"))


def bwd_autotuner(prune=prune_bwd_stages, do_bench=None):
    """`triton.autotune` of the backward kernel, keyed by the shape and variant (the autotuner adds the tensors'
    dtypes to the key, `Autotuner.run`), so each (rows, width, residual, dtype) is benchmarked once per process, at
    its first call. Only arguments torch.compile supports for user kernels are used (configs, key, prune_configs_by:
    torch/_higher_order_ops/triton_kernel_wrap.py `init_variable` rejects non-default warmup/rep/use_cuda_graph and
    pre/post hooks); `do_bench` is for tests. One autotuner per mode: the mode is not part of the key."""
    if do_bench is None and interpreting():
        do_bench = _interpreter_bench
    return triton.autotune(
        configs=BWD_CONFIGS,
        key=["n_rows", "n_cols", "HAS_DRES"],
        prune_configs_by={"early_config_prune": prune},
        do_bench=do_bench,
    )(rms_norm_bwd_kernel)


rms_norm_bwd_autotuned = bwd_autotuner(prune_bwd_stages)
rms_norm_bwd_autotuned_full = bwd_autotuner(prune_bwd_full)
rms_norm_fwd_autotuned_full = triton.autotune(
    configs=FWD_CONFIGS,
    key=["n_cols", "HAS_RESIDUAL"],  # no row count among its arguments: the first shape of a width decides
    prune_configs_by={"early_config_prune": prune_fwd_full},
    do_bench=_interpreter_bench if interpreting() else None,
)(rms_norm_fwd_kernel)


def bwd_programs(n_rows: int, device: torch.device) -> int:
    """Programs the backward launches for `n_rows` rows: a few per SM on a GPU, 4 under the interpreter."""
    sms = None if interpreting() else multiprocessor_count(device)
    target = INTERPRETER_BWD_PROGRAMS if sms is None else sms * BWD_PROGRAMS_PER_SM
    return max(1, min(n_rows, target))


def bwd_grid(n_rows: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) of the backward; no program is left without rows."""
    programs = bwd_programs(n_rows, device)
    rows_per_program = -(-n_rows // programs)
    return (-(-n_rows // rows_per_program) if n_rows else 1), rows_per_program


def _forward(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """(y, h or None, rstd); y and h are new tensors of x's shape (custom ops may not return views of inputs)."""
    hidden = x.shape[-1]
    x2 = as_rows(x)
    r2 = as_rows(residual) if residual is not None else x2
    w = weight if weight.stride(0) == 1 else weight.contiguous()
    n_rows = x2.shape[0]
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    y2 = y.view(n_rows, hidden)
    h2 = h.view(n_rows, hidden) if h is not None else x2
    cdt = compute_dtype(x.dtype)
    rstd = torch.empty(n_rows, dtype=torch.float64 if cdt == tl.float64 else torch.float32, device=x.device)
    block, num_warps = row_block(hidden)
    # The forward has no loop to pipeline: its only knob is num_warps, which changes the row sum (see "autotuning"),
    # so it is tuned in "full" mode only.
    tuned = autotune_mode() == "full"
    if n_rows > 0:
        launch(
            rms_norm_fwd_autotuned_full if tuned else rms_norm_fwd_kernel,
            (n_rows,),
            x2,
            r2,
            h2,
            w,
            y2,
            rstd,
            x2.stride(0),
            r2.stride(0),
            h2.stride(0),
            y2.stride(0),
            hidden,
            eps,
            BLOCK=block,
            COMPUTE=cdt,
            HAS_RESIDUAL=residual is not None,
            **({} if tuned else {"num_warps": num_warps}),
            **COMPILE_OPTIONS,
        )
    return y, h, rstd


@torch.library.triton_op("ragllm::rms_norm", mutates_args=())
def rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): RMSNorm of x over its last dimension; rstd (fp32, one per row) is kept for the backward."""
    y, _, rstd = _forward(x, None, weight, eps)
    return y, rstd


@torch.library.triton_op("ragllm::rms_norm_residual", mutates_args=())
def rms_norm_residual_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, h, rstd) with h = x + residual and y = RMSNorm(h)."""
    return _forward(x, residual, weight, eps)


@torch.library.triton_op("ragllm::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, dres: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) of RMSNorm at x; `dres`, when given, is added to dx (the residual stream's own gradient)."""
    hidden = x.shape[-1]
    x2 = as_rows(x)
    dy2 = as_rows(dy)
    dres2 = as_rows(dres) if dres is not None else dy2
    n_rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dx2 = dx.view(n_rows, hidden)
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    programs, rows_per_program = bwd_grid(n_rows, x.device)
    # Every element of the partial buffer is written by the kernel, so it needs no zero-fill.
    dw_partial = torch.empty((programs, hidden), dtype=rstd.dtype, device=x.device)
    block, num_warps = row_block(hidden)
    cdt = compute_dtype(x.dtype)
    # Autotuned, the configs give NUM_STAGES and num_warps (the autotuner refuses them as launch arguments too).
    mode = autotune_mode()
    kernel = {"off": rms_norm_bwd_kernel, "stages": rms_norm_bwd_autotuned, "full": rms_norm_bwd_autotuned_full}[mode]
    fixed = {"NUM_STAGES": BWD_NUM_STAGES, "num_warps": num_warps} if mode == "off" else {}
    if n_rows > 0:
        launch(
            kernel,
            (programs,),
            dy2,
            x2,
            weight,
            rstd,
            dres2,
            dx2,
            dw_partial,
            dy2.stride(0),
            x2.stride(0),
            dres2.stride(0),
            dx2.stride(0),
            n_rows,
            hidden,
            rows_per_program,
            BLOCK=block,
            COMPUTE=cdt,
            HAS_DRES=dres is not None,
            **fixed,
            **COMPILE_OPTIONS,
        )
    else:
        dw_partial.zero_()  # no rows: the gradient is zero, and the kernel above did not run
    launch(
        dw_reduce_kernel,
        (-(-hidden // DW_REDUCE_BLOCK_N),),
        dw_partial,
        dw,
        programs,
        hidden,
        BLOCK_M=DW_REDUCE_BLOCK_M,
        BLOCK_N=DW_REDUCE_BLOCK_N,
        COMPUTE=cdt,
        num_warps=4,
        **COMPILE_OPTIONS,
    )
    return dx, dw


def _setup_rms_norm(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.set_materialize_grads(False)  # rstd never gets a gradient: no zero tensor for it in every backward


@first_order_only("ragllm::rms_norm")
def _rms_norm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward_op(torch.zeros_like(x) if dy is None else dy, x, weight, rstd, None)
    return dx, dw, None


def _setup_rms_norm_residual(ctx, inputs, output):
    _, _, weight, _ = inputs
    ctx.save_for_backward(output[1], weight, output[2])
    ctx.set_materialize_grads(False)  # an unused h (or rstd) passes None, not a tensor of zeros to read


@first_order_only("ragllm::rms_norm_residual")
def _rms_norm_residual_backward(ctx, dy, dh, _drstd):
    h, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward_op(torch.zeros_like(h) if dy is None else dy, h, weight, rstd, dh)
    return dx, dx, dw, None  # d(x + residual)/dx = d/dresidual = 1


rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_setup_rms_norm)
rms_norm_residual_op.register_autograd(_rms_norm_residual_backward, setup_context=_setup_rms_norm_residual)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused RMSNorm; the dispatcher in `model.kernels` validates arguments before calling this."""
    return rms_norm_op(x, weight, eps)[0]


def rms_norm_residual_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused (RMSNorm(x + residual), x + residual); the dispatcher validates arguments before calling this."""
    y, h, _ = rms_norm_residual_op(x, residual, weight, eps)
    return y, h


def aot_calls(hiddens=(1280, 4096), rows: int = 12 * 1024, dtypes=(torch.bfloat16,)) -> list:
    """(label, call) pairs whose launches the ahead-of-time build records: forward and backward of both ops at the
    real micro-batch shape (12 x 1024 rows), for the widths the project trains (1280) and a wide one (4096)."""
    calls = []
    for dtype in dtypes:
        dt = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
        for hidden in hiddens:

            def plain(hidden=hidden, dtype=dtype):
                x, w = torch.empty(rows, hidden, dtype=dtype), torch.empty(hidden, dtype=dtype)
                _, rstd = rms_norm_op(x, w, 1e-5)
                rms_norm_backward_op(torch.empty_like(x), x, w, rstd, None)

            calls.append((f"{dt} h={hidden}", plain))
        if dtype == torch.bfloat16:

            def residual(dtype=dtype):
                x, w = torch.empty(rows, hiddens[0], dtype=dtype), torch.empty(hiddens[0], dtype=dtype)
                _, h, rstd = rms_norm_residual_op(x, torch.empty_like(x), w, 1e-5)
                rms_norm_backward_op(torch.empty_like(x), h, w, rstd, torch.empty_like(x))

            calls.append((f"bf16 h={hiddens[0]} +residual", residual))
    return calls
