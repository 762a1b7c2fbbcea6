"""The fused kernels' tolerance rule, and a start-up self-check of the kernels on the device a run trains on.

A kernel that compiles but computes a wrong gradient would quietly spoil a multi-day run, and the CI machines have
no GPU: so before training with `fused_kernels: true` on CUDA, the launcher runs `check_fused_kernels` at the
model's widths, with several rows per backward program and at the micro-batch's shape, and stops with a clear message
if the kernels disagree with the reference. Inputs are drawn on the device, so the micro-batch shape (12 x 1024 rows
at 750M) costs the host nothing; its time on a GPU is not measured yet.

The rule (from the kernels issue), against an fp64 reference computed from the same rounded inputs:
max|fused - ref| <= 2 * max|same-dtype PyTorch - ref| + atol, with atol 1e-5 for fp32 and, for bf16, 1e-2 but never
below one bf16 ulp of the largest reference value (Triton's CPU interpreter rounds to bf16 by truncation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from model.kernels.reference import rms_norm_reference, rms_norm_residual_reference, swiglu_reference


def bf16_ulp(value: float) -> float:
    """Spacing of bf16 numbers (8 significant bits) at `value`."""
    if value == 0:
        return 2.0**-133
    return 2.0 ** (math.floor(math.log2(abs(value))) - 7)


def rule_violation(
    name: str, fused: torch.Tensor, same_dtype: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype
) -> str | None:
    """None when `fused` passes the tolerance rule, else a one-line description of the failure."""
    if fused is None:
        return f"{name}: missing (the fused op gave no gradient for this input)"
    if fused.shape != ref64.shape:
        return f"{name}: shape {tuple(fused.shape)} != {tuple(ref64.shape)}"
    if fused.dtype != same_dtype.dtype:
        return f"{name}: dtype {fused.dtype} != {same_dtype.dtype}"
    ref64 = ref64.double().cpu()
    err_fused = (fused.double().cpu() - ref64).abs().max().item()
    err_torch = (same_dtype.double().cpu() - ref64).abs().max().item()
    if dtype == torch.float32:
        atol = 1e-5
    elif dtype == torch.bfloat16:
        atol = max(1e-2, bf16_ulp(ref64.abs().max().item()))
    else:
        return f"{name}: no tolerance rule for {dtype}"
    bound = 2 * err_torch + atol
    if not err_fused <= bound:  # also catches NaN
        return f"{name}: fused error {err_fused:.3g} > bound {bound:.3g} (torch error {err_torch:.3g})"
    return None


def _grads(fn: Callable, inputs: list[torch.Tensor], dy: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy.to(dtype))
    return [y.detach()] + [t.grad for t in leaves]


def several_rows_per_program(device: torch.device | str, per_program: int = 4) -> int:
    """A row count that gives every backward program of RMSNorm about `per_program` rows on `device` (the last one
    fewer), so the in-register fp32 weight-gradient accumulation over rows really runs. At 259 rows an H100's
    528 backward programs got one row each, and the JIT, which turns an integer argument equal to 1 into a constant,
    compiled a variant without the row loop."""
    from model.kernels.rmsnorm_triton import bwd_programs

    return bwd_programs(1 << 30, torch.device(device)) * per_program - 1


def check_fused_kernels(
    device: torch.device | str,
    hidden: int,
    ffn_hidden: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
    rows: int | None = None,
    fused_rms_norm: Callable | None = None,
    fused_swiglu: Callable | None = None,
    fused_rms_norm_residual: Callable | None = None,
) -> list[str]:
    """Forward and backward of the fused ops vs the reference on `device`; returns the rule violations (empty: ok).

    Runs at `several_rows_per_program(device)` rows and, when `rows` is given (the trainer passes the micro-batch's
    micro_batch_size x block_size), also at that shape, which compiles and runs the same kernel variant as training.
    `fused_*` default to the Triton kernels; tests pass other functions to check that a wrong one is caught."""
    if fused_rms_norm is None or fused_swiglu is None or fused_rms_norm_residual is None:
        from model.kernels.rmsnorm_triton import rms_norm_residual_triton, rms_norm_triton
        from model.kernels.swiglu_triton import swiglu_triton

        fused_rms_norm = fused_rms_norm or rms_norm_triton
        fused_swiglu = fused_swiglu or swiglu_triton
        fused_rms_norm_residual = fused_rms_norm_residual or rms_norm_residual_triton
    shapes = [several_rows_per_program(device)]
    if rows is not None and rows not in shapes:
        shapes.append(rows)
    problems = []
    for n in shapes:
        problems += _check_at(device, n, hidden, ffn_hidden, eps, dtype, fused_rms_norm, fused_swiglu,
                              fused_rms_norm_residual)
    return problems


def _check_at(device, rows, hidden, ffn_hidden, eps, dtype, fused_rms_norm, fused_swiglu, fused_rms_norm_residual):
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(dtype)  # rounded to dtype once: one input for all

    def residual_sum(y_and_h):  # one output whose gradient reaches both: y and the new residual stream h
        y, h = y_and_h
        return y + 0.5 * h

    problems = []
    x, weight, dy = rand(rows, hidden), (1 + 0.1 * rand(hidden)), rand(rows, hidden)
    cases = [
        ("rms_norm", ("y", "dx", "dweight"), [x, weight], dy,
         lambda a, w: fused_rms_norm(a, w, eps), lambda a, w: rms_norm_reference(a, w, eps)),
        ("rms_norm_residual", ("y+h/2", "dx", "dresidual", "dweight"), [x, rand(rows, hidden), weight], dy,
         lambda a, r, w: residual_sum(fused_rms_norm_residual(a, r, w, eps)),
         lambda a, r, w: residual_sum(rms_norm_residual_reference(a, r, w, eps))),
        ("swiglu", ("y", "dgate", "dup"), [rand(rows, ffn_hidden), rand(rows, ffn_hidden)], rand(rows, ffn_hidden),
         fused_swiglu, swiglu_reference),
    ]
    for op, names, inputs, grad_out, fused_fn, reference_fn in cases:
        fused = _grads(fused_fn, inputs, grad_out, dtype)
        same = _grads(reference_fn, inputs, grad_out, dtype)
        ref = _grads(reference_fn, inputs, grad_out, torch.float64)
        for name, f, s, r in zip(names, fused, same, ref, strict=True):
            problem = rule_violation(f"{op} {name} ({rows} rows)", f, s, r, dtype)
            if problem:
                problems.append(problem)
    return problems
