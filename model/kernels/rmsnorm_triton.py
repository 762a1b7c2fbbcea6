"""Fused RMSNorm (forward and backward) in Triton, with its `torch.autograd.Function`.

Math (Hugging Face Llama order, as `reference.rms_norm_reference`):
    rstd = 1 / sqrt(mean(x^2) + eps)          in fp32
    y    = weight * (x * rstd).to(x.dtype)     the product rounded once to promote(x.dtype, weight.dtype)
Backward, with n = x * rstd (fp32) and n_c = n rounded to x.dtype (what the forward multiplied by the weight):
    dW = sum_rows(dy * n_c)
    dx = rstd * (dy*w - n * mean(dy*w * n))
The forward saves (x, weight, rstd) with rstd in fp32; nothing is recomputed but n. The weight gradient is reduced
deterministically: each of a few programs per SM accumulates its rows in fp32 registers and writes one row of a
partial buffer, which one `sum(0)` reduces (no atomics, so the result does not depend on scheduling).
"""

from __future__ import annotations

import torch

from model.kernels.triton_support import (
    COMPILE_OPTIONS,
    aot_signature,
    as_rows,
    compute_dtype,
    interpreting,
    jit,
    row_block,
    tl,
)

# Programs per SM for the weight-gradient pass: enough resident warps to hide load latency while the partial
# buffer (programs x hidden fp32) stays a few percent of the bytes the pass reads. Not tuned on a GPU yet.
BWD_PROGRAMS_PER_SM = 4
# Programs for the backward pass under the interpreter: few enough that the CPU tests' 6, 7 and 123 rows give
# several rows per program (the in-register accumulation) and more than one program (the partial-buffer sum).
INTERPRETER_BWD_PROGRAMS = 4


@jit
def rms_norm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, n_cols, eps, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # 64-bit: rows x stride can pass 2^31 at long sequences
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(COMPUTE)
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
    # Masked lanes load 0, so they add nothing to the sum; divide by the true width, not BLOCK.
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = (x * rstd).to(X.dtype.element_ty).to(COMPUTE)  # HF order: round to the input dtype first
    tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@jit
def rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PARTIAL,
    stride_dy,
    stride_x,
    stride_dx,
    n_rows,
    n_cols,
    rows_per_program,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(COMPUTE)
    dw = tl.zeros((BLOCK,), dtype=COMPUTE)
    # 64-bit loop bounds make the induction variable 64-bit, so row x stride cannot overflow.
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for r in range(row_start, row_end):
        x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(COMPUTE)
        dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(COMPUTE)
        rstd = tl.load(RSTD + r)
        n = x * rstd
        dw += dy * n.to(X.dtype.element_ty).to(COMPUTE)
        dn = dy * w
        dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
        tl.store(DX + r * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


def _bwd_programs(n_rows: int, device: torch.device) -> int:
    if interpreting() or device.type != "cuda":
        target = INTERPRETER_BWD_PROGRAMS
    else:
        target = torch.cuda.get_device_properties(device).multi_processor_count * BWD_PROGRAMS_PER_SM
    return max(1, min(n_rows, target))


class RMSNormFunction(torch.autograd.Function):
    """Fused RMSNorm. Inputs: x (..., hidden) with unit column stride preferred, weight (hidden,), eps (float)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        hidden = x.shape[-1]
        x2 = as_rows(x)
        w = weight if weight.stride(0) == 1 else weight.contiguous()
        n_rows = x2.shape[0]
        out_dtype = torch.promote_types(x.dtype, weight.dtype)
        y = torch.empty((n_rows, hidden), dtype=out_dtype, device=x.device)
        cdt = compute_dtype(x.dtype)
        rstd = torch.empty(n_rows, dtype=torch.float64 if cdt == tl.float64 else torch.float32, device=x.device)
        block, num_warps = row_block(hidden)
        if n_rows > 0:
            rms_norm_fwd_kernel[(n_rows,)](
                x2,
                w,
                y,
                rstd,
                x2.stride(0),
                y.stride(0),
                hidden,
                float(eps),
                BLOCK=block,
                COMPUTE=cdt,
                num_warps=num_warps,
                **COMPILE_OPTIONS,
            )
        ctx.save_for_backward(x2, w, rstd)
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], hidden)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w, rstd = ctx.saved_tensors
        n_rows, hidden = x2.shape
        dy2 = as_rows(dy)
        dx = torch.empty((n_rows, hidden), dtype=x2.dtype, device=x2.device)
        programs = _bwd_programs(n_rows, x2.device)
        rows_per_program = -(-n_rows // programs)
        programs = -(-n_rows // rows_per_program) if n_rows else 1  # no program without rows
        dw_partial = torch.zeros((programs, hidden), dtype=rstd.dtype, device=x2.device)
        block, num_warps = row_block(hidden)
        if n_rows > 0:
            rms_norm_bwd_kernel[(programs,)](
                dy2,
                x2,
                w,
                rstd,
                dx,
                dw_partial,
                dy2.stride(0),
                x2.stride(0),
                dx.stride(0),
                n_rows,
                hidden,
                rows_per_program,
                BLOCK=block,
                COMPUTE=compute_dtype(x2.dtype),
                num_warps=num_warps,
                **COMPILE_OPTIONS,
            )
        dw = dw_partial.sum(0).to(w.dtype)
        return dx.view(ctx.x_shape), dw, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused RMSNorm; the dispatcher in `model.kernels` validates arguments before calling this."""
    return RMSNormFunction.apply(x, weight, eps)


def aot_builds(dtypes=("bf16", "fp32"), hiddens=(1280, 4096)) -> list[tuple]:
    """(label, kernel, signature, constexprs, num_warps) for each ahead-of-time build the checks compile.

    Strides and sizes are i32 as the JIT types them for the model's shapes; row offsets are 64-bit in-kernel.
    """
    builds = []
    for dt in dtypes:
        for hidden in hiddens:
            block, num_warps = row_block(hidden)
            const = {"BLOCK": block, "COMPUTE": tl.float32}
            fwd_types = {"X": f"*{dt}", "W": f"*{dt}", "Y": f"*{dt}", "RSTD": "*fp32", "eps": "fp32"}
            bwd_types = {"DY": f"*{dt}", "X": f"*{dt}", "W": f"*{dt}", "RSTD": "*fp32", "DX": f"*{dt}"}
            fwd_sig = aot_signature(rms_norm_fwd_kernel, fwd_types, const)
            bwd_sig = aot_signature(rms_norm_bwd_kernel, {**bwd_types, "DW_PARTIAL": "*fp32"}, const)
            builds.append((f"rms_norm_fwd {dt} h={hidden}", rms_norm_fwd_kernel, fwd_sig, const, num_warps))
            builds.append((f"rms_norm_bwd {dt} h={hidden}", rms_norm_bwd_kernel, bwd_sig, const, num_warps))
    return builds
