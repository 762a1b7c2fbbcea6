"""Fused SwiGLU activation `silu(gate) * up` (forward and backward) in Triton, with its `torch.autograd.Function`.

Forward computes in fp32 and rounds once (eager PyTorch rounds silu(gate) first, then the product). Backward saves
(gate, up) only and recomputes the sigmoid, so no fp32 or activation-sized intermediate is kept between passes:
    s = sigmoid(g);  d_up = dy * g * s;  d_gate = dy * up * s * (1 + g * (1 - s))
Both gradients are new tensors (no in-place reuse of the saved inputs).

The grid is 2-D (rows, column blocks) so gate and up may be row-strided views, e.g. the two halves of one fused
projection's output, without a copy.
"""

from __future__ import annotations

import torch

from model.kernels.triton_support import COMPILE_OPTIONS, aot_signature, as_rows, compute_dtype, jit, tl

# Columns per program: a power of two, masked at the row's end (3456 = 3 full blocks + one 384-wide tail).
SWIGLU_BLOCK = 1024
SWIGLU_WARPS = 4


@jit
def swiglu_fwd_kernel(G, U, Y, stride_g, stride_u, stride_y, n_cols, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(COMPUTE)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(COMPUTE)
    y = g * tl.sigmoid(g) * u
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@jit
def swiglu_bwd_kernel(
    DY,
    G,
    U,
    DG,
    DU,
    stride_dy,
    stride_g,
    stride_u,
    stride_dg,
    stride_du,
    n_cols,
    BLOCK: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(COMPUTE)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(COMPUTE)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(COMPUTE)
    s = tl.sigmoid(g)
    silu = g * s
    du = dy * silu
    dg = dy * u * s * (1.0 + g * (1.0 - s))
    tl.store(DG + row * stride_dg + cols, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + row * stride_du + cols, du.to(DU.dtype.element_ty), mask=mask)


def _grid(n_rows: int, n_cols: int) -> tuple[int, int]:
    # Rows go on grid axis 0 (up to 2^31 - 1 programs); axis 1 is limited to 65535, ample for column blocks.
    return (n_rows, -(-n_cols // SWIGLU_BLOCK))


class SwiGLUFunction(torch.autograd.Function):
    """Fused `silu(gate) * up` for two tensors of the same shape and dtype."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        n_cols = gate.shape[-1]
        g2 = as_rows(gate)
        u2 = as_rows(up)
        n_rows = g2.shape[0]
        y = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
        if y.numel() > 0:
            swiglu_fwd_kernel[_grid(n_rows, n_cols)](
                g2,
                u2,
                y,
                g2.stride(0),
                u2.stride(0),
                y.stride(0),
                n_cols,
                BLOCK=SWIGLU_BLOCK,
                COMPUTE=compute_dtype(gate.dtype),
                num_warps=SWIGLU_WARPS,
                **COMPILE_OPTIONS,
            )
        ctx.save_for_backward(g2, u2)
        ctx.shape = gate.shape
        return y.view(gate.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        g2, u2 = ctx.saved_tensors
        n_rows, n_cols = g2.shape
        dy2 = as_rows(dy)
        dg = torch.empty_like(g2, memory_format=torch.contiguous_format)
        du = torch.empty_like(u2, memory_format=torch.contiguous_format)
        if dg.numel() > 0:
            swiglu_bwd_kernel[_grid(n_rows, n_cols)](
                dy2,
                g2,
                u2,
                dg,
                du,
                dy2.stride(0),
                g2.stride(0),
                u2.stride(0),
                dg.stride(0),
                du.stride(0),
                n_cols,
                BLOCK=SWIGLU_BLOCK,
                COMPUTE=compute_dtype(g2.dtype),
                num_warps=SWIGLU_WARPS,
                **COMPILE_OPTIONS,
            )
        return dg.view(ctx.shape), du.view(ctx.shape)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Fused SwiGLU; the dispatcher in `model.kernels` validates arguments before calling this."""
    return SwiGLUFunction.apply(gate, up)


def aot_builds(dtypes=("bf16", "fp32")) -> list[tuple]:
    """(label, kernel, signature, constexprs, num_warps) for each ahead-of-time build the checks compile."""
    builds = []
    for dt in dtypes:
        const = {"BLOCK": SWIGLU_BLOCK, "COMPUTE": tl.float32}
        fwd_sig = aot_signature(swiglu_fwd_kernel, {p: f"*{dt}" for p in ("G", "U", "Y")}, const)
        bwd_sig = aot_signature(swiglu_bwd_kernel, {p: f"*{dt}" for p in ("DY", "G", "U", "DG", "DU")}, const)
        builds.append((f"swiglu_fwd {dt}", swiglu_fwd_kernel, fwd_sig, const, SWIGLU_WARPS))
        builds.append((f"swiglu_bwd {dt}", swiglu_bwd_kernel, bwd_sig, const, SWIGLU_WARPS))
    return builds
