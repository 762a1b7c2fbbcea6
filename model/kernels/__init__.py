"""The one dispatch point for the model's fused ops.

`rms_norm(x, weight, eps, impl)`, `rms_norm_residual(x, residual, weight, eps, impl)` and `swiglu(gate, up, impl)`
pick an implementation per call:

- `impl="torch"`: the plain-PyTorch reference in `reference.py`, always.
- `impl="triton"`: the fused Triton kernels (`rmsnorm_triton.py`, `swiglu_triton.py`); a ValueError if Triton is
  not importable or the tensors can run neither on CUDA nor in the interpreter.
- `impl="auto"` (the model's choice when `fused_kernels` is true): Triton when it is importable and the input is on
  CUDA or the interpreter is on, otherwise the reference.

"The interpreter is on" means the process imported triton with `TRITON_INTERPRET=1` already set: Triton fixes the
mode at import (see `triton_support.py`), so set the variable when starting the process, not later.
Triton is imported lazily, so machines without it (or where it is broken) run the reference under "auto".

The Triton path is a set of `torch.library.triton_op` custom ops (`ragllm::rms_norm`, `ragllm::rms_norm_residual`,
`ragllm::swiglu` and their backwards), so `torch.compile(fullgraph=True)` traces a model that uses them.
"""

from __future__ import annotations

import torch

from model.kernels.reference import rms_norm_reference, rms_norm_residual_reference, swiglu_reference

IMPLS = ("auto", "triton", "torch")


_TRITON_AVAILABLE: bool | None = None


def triton_available() -> bool:
    """True when Triton imports; remembered, since the answer cannot change within a process. (A module global, not
    `functools.cache`: torch.compile warns on every traced call of an lru_cache-wrapped function.)"""
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_AVAILABLE = True
        except Exception:  # a broken install (missing libs) must fall back like a missing one
            _TRITON_AVAILABLE = False
    return _TRITON_AVAILABLE


def _triton_runnable(t: torch.Tensor) -> bool:
    if t.is_cuda:
        return True
    from model.kernels.triton_support import interpreting

    return interpreting()


def _use_triton(op: str, impl: str, t: torch.Tensor, hidden: int) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {IMPLS}")
    if impl == "torch":
        return False
    if not triton_available():
        if impl == "triton":
            raise ValueError(f"{op}: impl='triton' but Triton cannot be imported; install triton or use impl='torch'")
        return False
    from model.kernels.triton_support import MAX_FUSED_HIDDEN

    if impl == "triton":
        if not _triton_runnable(t):
            raise ValueError(
                f"{op}: impl='triton' needs a CUDA tensor or Triton's CPU interpreter (got a {t.device.type} "
                "tensor); move the tensor to CUDA, start the process with TRITON_INTERPRET=1 (it must be set before "
                "triton is imported), or use impl='torch'"
            )
        if hidden > MAX_FUSED_HIDDEN:
            raise ValueError(
                f"{op}: last dimension {hidden} exceeds the fused kernels' limit {MAX_FUSED_HIDDEN}; use impl='torch'"
            )
        return True
    return _triton_runnable(t) and hidden <= MAX_FUSED_HIDDEN


def _check_norm_args(op: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(
            f"{op}: weight shape {tuple(weight.shape)} must be (hidden,) = ({x.shape[-1] if x.dim() else '?'},) "
            f"for x of shape {tuple(x.shape)}"
        )
    if weight.device != x.device:
        raise ValueError(f"{op}: x is on {x.device} but weight is on {weight.device}; put both on one device")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dimension in the Hugging Face Llama order (see `reference.rms_norm_reference`)."""
    _check_norm_args("rms_norm", x, weight)
    if _use_triton("rms_norm", impl, x, x.shape[-1]):
        from model.kernels.rmsnorm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def rms_norm_residual(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rms_norm(x + residual, weight, eps), x + residual)`: the pre-norm block's residual add fused into the next
    norm, so the sum is written once and read by nobody but the next residual add. Use as

        normed, h = rms_norm_residual(attn_out, h, attention_norm.weight, eps)   # h: the new residual stream
    """
    if x.shape != residual.shape or x.dtype != residual.dtype or x.device != residual.device:
        raise ValueError(
            f"rms_norm_residual: x {tuple(x.shape)} {x.dtype} on {x.device} and residual {tuple(residual.shape)} "
            f"{residual.dtype} on {residual.device} must match in shape, dtype and device (no broadcasting)"
        )
    _check_norm_args("rms_norm_residual", x, weight)
    if _use_triton("rms_norm_residual", impl, x, x.shape[-1]):
        from model.kernels.rmsnorm_triton import rms_norm_residual_triton

        return rms_norm_residual_triton(x, residual, weight, eps)
    return rms_norm_residual_reference(x, residual, weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """SwiGLU activation `silu(gate) * up` for two tensors of one shape, dtype and device."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(
            f"swiglu: gate {tuple(gate.shape)} {gate.dtype} on {gate.device} and up {tuple(up.shape)} {up.dtype} on "
            f"{up.device} must match in shape, dtype and device (no broadcasting)"
        )
    if gate.dim() < 1:
        raise ValueError("swiglu: gate and up must have at least one dimension")
    if _use_triton("swiglu", impl, gate, gate.shape[-1]):
        from model.kernels.swiglu_triton import swiglu_triton

        return swiglu_triton(gate, up)
    return swiglu_reference(gate, up)


__all__ = [
    "IMPLS",
    "rms_norm",
    "rms_norm_residual",
    "swiglu",
    "rms_norm_reference",
    "rms_norm_residual_reference",
    "swiglu_reference",
    "triton_available",
]
