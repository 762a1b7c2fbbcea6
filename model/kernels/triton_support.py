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

import inspect

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


def aot_signature(kernel: JITFunction, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Full `ASTSource` signature of `kernel`: `types` for pointers and floats, "constexpr" for `constexprs`, and
    "i32" for every other argument (sizes and strides, typed as the JIT types them for the model's shapes)."""
    names = [p.name for p in inspect.signature(kernel.fn).parameters.values()]
    unknown = set(types) - set(names)
    assert not unknown, f"{kernel.fn.__name__} has no argument(s) {sorted(unknown)}"
    return {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in names}


def row_block(n_cols: int) -> tuple[int, int]:
    """Power-of-two block covering a whole row, and the warp count that keeps it in registers without spills.

    The thresholds are the usual ones for one-row-per-program norms (Liger-Kernel's `calculate_settings`):
    wider rows get more warps so each thread holds at most ~16 elements per live tensor.
    """
    block = triton.next_power_of_2(n_cols)
    if block >= 32768:
        return block, 32
    if block >= 8192:
        return block, 16
    if block >= 2048:
        return block, 8
    return block, 4


def compute_dtype(dtype) -> tl.dtype:
    """Accumulation dtype inside the kernels: fp32, or fp64 for fp64 inputs (so gradcheck sees fp64 math)."""
    import torch

    return tl.float64 if dtype == torch.float64 else tl.float32


def as_rows(t):
    """View `t` as (rows, hidden) with unit column stride; copies only when no such view exists.

    Row strides may be anything (a slice of a wider tensor is fine): the kernels take a stride per tensor. A
    width-1 (or empty) tensor's column stride is never used, so it is not worth a copy.
    """
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])
