"""Triton plumbing shared by the fused ops: interpreter detection, the `jit` decorator, block sizes, reshaping.

Triton's interpreter mode is fixed per process, when `triton` is first imported. `@triton.jit` reads
`TRITON_INTERPRET` at decoration time, and Triton's own library functions (`tl.sum`, `tl.sigmoid`, ...) are
decorated when `triton.language` is imported: with the variable unset they are compiled-mode `JITFunction`s that the
interpreter cannot call ("Cannot call @triton.jit'd outside of the scope of a kernel"); with it set they are
`InterpretedFunction`s that the compiler cannot build (so no sm_90 ahead-of-time build in that process). Setting
the variable later changes nothing that works. Hence:

- `INTERPRETER` records the mode Triton's library was built in, and `interpreting()` reports it;
- `jit` decorates our kernels in that same mode, whatever the environment says when our modules are imported;
- to run the kernels on the CPU, set `TRITON_INTERPRET=1` before the process imports triton (the kernel tests
  start a subprocess for this, see `tests/test_kernels.py`).

Import this module only after `model.kernels.triton_available()` said yes; it imports Triton at the top.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

INTERPRETER = isinstance(tl.sum, InterpretedFunction)

# Rows wider than this would not fit one program's registers; the dispatcher falls back to the reference.
MAX_FUSED_HIDDEN = 65536

# FMA contraction stays on, as in Triton's current default. Passing it explicitly pins the behaviour across the
# Triton 3.10 default change and silences the warning Triton prints when it is left unset.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def interpreting() -> bool:
    """True when this process runs Triton kernels in the CPU interpreter (TRITON_INTERPRET=1 at triton import)."""
    return INTERPRETER


def jit(fn):
    """`@triton.jit`, in the mode Triton's own library was built in, so our kernels can call `tl.sum` & co."""
    return InterpretedFunction(fn) if INTERPRETER else JITFunction(fn)


def row_block(n_cols: int) -> tuple[int, int]:
    """Power-of-two block covering a whole row, and its warp count: 16 lanes per thread, 1 to 16 warps.

    16 lanes per thread is two 16-byte vectors of bf16 per live tensor. At hidden 1280 (block 2048) that is 4 warps:
    with 8 (Liger-Kernel's `calculate_settings` rule, used here before) the layout gives each warp 256 contiguous
    lanes, so warps 5-7 sit entirely in the masked tail (1280..2047) and only issue predicated-off instructions; at
    4 warps every warp holds real columns. The ahead-of-time table in docs/KERNELS.md shows the registers this costs
    (no spills at 1280, 3456 or 4096); the timing on a GPU is `scripts/bench/kernels.py`.
    """
    block = triton.next_power_of_2(n_cols)
    return block, max(1, min(16, block // (16 * 32)))


# --- launching ------------------------------------------------------------------------------------------------------
#
# Every kernel launch goes through `launch`, for three reasons:
# - under `torch.library.triton_op` a launch must be wrapped in `torch.library.wrap_triton` so that torch.compile and
#   torch.export can record the kernel in a graph (torch/_library/triton.py, `triton_op` and `wrap_triton`);
# - under the interpreter `wrap_triton` returns the plain interpreted kernel (same file: "TRITON_INTERPRET=1 makes
#   @triton.jit return InterpretedFunction"), which would read the data pointer of the fake tensors torch.compile
#   propagates shapes with; a fake-tensor launch has nothing to compute, so it is skipped;
# - the ahead-of-time build (`aot.py`) records the launches of a real call instead of running them, so it compiles
#   exactly the arguments, grid and options the JIT would see.


class _Capture:
    def __init__(self, sm_count: int):
        self.sm_count = sm_count
        self.launches: list[tuple] = []


_CAPTURE: _Capture | None = None


@contextlib.contextmanager
def capture_launches(sm_count: int):
    """Record (kernel, grid, args, kwargs) of every launch instead of running it, as if on a GPU with `sm_count`
    streaming multiprocessors (the backward grid depends on it). Compiled mode only."""
    global _CAPTURE
    if INTERPRETER:
        raise RuntimeError("capture_launches is for ahead-of-time builds; this process runs Triton's interpreter")
    previous, _CAPTURE = _CAPTURE, _Capture(sm_count)
    try:
        yield _CAPTURE.launches
    finally:
        _CAPTURE = previous


def multiprocessor_count(device: torch.device) -> int | None:
    """SMs of the GPU the kernels run on: the captured target's while capturing, the CUDA device's, else None."""
    if _CAPTURE is not None:
        return _CAPTURE.sm_count
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return None


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return isinstance(t, torch.Tensor) and is_fake(t)


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """`kernel[grid](*args, **kwargs)`, traceable by torch.compile (see the note above)."""
    if _CAPTURE is not None:
        _CAPTURE.launches.append((kernel, grid, args, kwargs))
        return
    if INTERPRETER:
        from torch._subclasses.functional_tensor import FunctionalTensor

        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(isinstance(t, FunctionalTensor) for t in tensors):
            # AOTAutograd is decomposing the triton_op into a graph; an interpreted kernel cannot be recorded in one.
            raise RuntimeError(
                "the Triton interpreter's kernels cannot be traced into a graph: under TRITON_INTERPRET=1 compile "
                "with torch._functorch.config.patch(decompose_custom_triton_ops=False), which keeps the ops opaque"
            )
        if any(_is_fake(t) for t in tensors):
            return
        kernel[grid](*args, **kwargs)
        return
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def first_order_only(op: str):
    """Decorator for a `register_autograd` backward whose kernels have no derivative of their own.

    Like `torch.autograd.function.once_differentiable` (the backward runs without building a graph), but with an
    error that names the op: `once_differentiable` only marks outputs when an incoming gradient requires grad, so
    `autograd.grad(y.sum(), x, create_graph=True)` would return a gradient that silently has no graph and fail later
    with "element 0 of tensors does not require grad". Grad mode is on inside a backward only under
    `create_graph=True` (AOTAutograd traces the joint graph without it, graph_capture_wrappers.py), so compiling is
    unaffected.
    """

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            if torch.is_grad_enabled() and any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in (*grads, *ctx.saved_tensors)
            ):
                raise RuntimeError(
                    f"{op}: double backward (create_graph=True) is not implemented by the fused Triton kernels; "
                    "use impl='torch' (model.fused_kernels: false) where second derivatives are needed"
                )
            with torch.no_grad():
                return backward(ctx, *grads)

        return wrapper

    return decorate


def compute_dtype(dtype) -> tl.dtype:
    """Accumulation dtype inside the kernels: fp32, or fp64 for fp64 inputs (so gradcheck sees fp64 math)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def as_rows(t):
    """View `t` as (rows, hidden) with unit column stride; copies only when no such view exists.

    Row strides may be anything (a slice of a wider tensor is fine): the kernels take a stride per tensor. A
    width-1 (or empty) tensor's column stride is never used, so it is not worth a copy.
    """
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])
