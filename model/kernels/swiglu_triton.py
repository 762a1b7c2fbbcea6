"""Fused SwiGLU activation `silu(gate) * up` (forward and backward) in Triton, as torch custom ops.

Forward computes in fp32 and rounds once (eager PyTorch rounds silu(gate) first, then the product). Backward saves
(gate, up) only and recomputes the sigmoid, so no fp32 or activation-sized intermediate is kept between passes:
    s = sigmoid(g);  d_up = dy * g * s;  d_gate = dy * up * s * (1 + g * (1 - s))
Both gradients are new tensors (no in-place reuse of the saved inputs). The ops are `torch.library.triton_op`s with
`register_autograd`, like RMSNorm's (see `rmsnorm_triton.py`); double backward raises (`first_order_only`).

The grid is 2-D (rows, column blocks) so gate and up may be row-strided views, e.g. the two halves of one fused
projection's output, without a copy.
"""

from __future__ import annotations

import torch

from model.kernels.triton_support import COMPILE_OPTIONS, as_rows, compute_dtype, first_order_only, jit, launch, tl

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


@torch.library.triton_op("ragllm::swiglu", mutates_args=())
def swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, a new tensor of gate's shape."""
    n_cols = gate.shape[-1]
    g2 = as_rows(gate)
    u2 = as_rows(up)
    n_rows = g2.shape[0]
    y = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    y2 = y.view(n_rows, n_cols)
    if y.numel() > 0:
        launch(
            swiglu_fwd_kernel,
            _grid(n_rows, n_cols),
            g2,
            u2,
            y2,
            g2.stride(0),
            u2.stride(0),
            y2.stride(0),
            n_cols,
            BLOCK=SWIGLU_BLOCK,
            COMPUTE=compute_dtype(gate.dtype),
            num_warps=SWIGLU_WARPS,
            **COMPILE_OPTIONS,
        )
    return y


@torch.library.triton_op("ragllm::swiglu_backward", mutates_args=())
def swiglu_backward_op(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_gate, d_up), new contiguous tensors of gate's shape."""
    n_cols = gate.shape[-1]
    g2 = as_rows(gate)
    u2 = as_rows(up)
    dy2 = as_rows(dy)
    n_rows = g2.shape[0]
    dg = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    du = torch.empty(gate.shape, dtype=up.dtype, device=up.device)
    dg2, du2 = dg.view(n_rows, n_cols), du.view(n_rows, n_cols)
    if dg.numel() > 0:
        launch(
            swiglu_bwd_kernel,
            _grid(n_rows, n_cols),
            dy2,
            g2,
            u2,
            dg2,
            du2,
            dy2.stride(0),
            g2.stride(0),
            u2.stride(0),
            dg2.stride(0),
            du2.stride(0),
            n_cols,
            BLOCK=SWIGLU_BLOCK,
            COMPUTE=compute_dtype(gate.dtype),
            num_warps=SWIGLU_WARPS,
            **COMPILE_OPTIONS,
        )
    return dg, du


def _setup_swiglu(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@first_order_only("ragllm::swiglu")
def _swiglu_backward(ctx, dy):
    gate, up = ctx.saved_tensors
    return swiglu_backward_op(dy, gate, up)


swiglu_op.register_autograd(_swiglu_backward, setup_context=_setup_swiglu)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Fused SwiGLU; the dispatcher in `model.kernels` validates arguments before calling this."""
    return swiglu_op(gate, up)


def aot_calls(widths=(3456, 11008), rows: int = 12 * 1024, dtypes=(torch.bfloat16,)) -> list:
    """(label, call) pairs whose launches the ahead-of-time build records: forward and backward at the real
    micro-batch shape, on the two halves of one fused w1/w3 projection (row stride 2 x width, as the model will
    call it once its GEMMs are fused) for the 750M width 3456 and LLaMA-7B's 11008."""
    calls = []
    for dtype in dtypes:
        dt = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
        for width in widths:

            def call(width=width, dtype=dtype):
                gate, up = torch.empty(rows, 2 * width, dtype=dtype).chunk(2, dim=-1)
                swiglu_op(gate, up)
                swiglu_backward_op(torch.empty(rows, width, dtype=dtype), gate, up)

            calls.append((f"{dt} w={width}", call))
    return calls
