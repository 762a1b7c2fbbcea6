"""Triton plumbing shared by the fused ops: availability, interpreter detection, and the `Kernel` wrapper.

Why kernels are plain functions wrapped in `Kernel` instead of `@triton.jit`: in Triton 3.9 the `@triton.jit`
decorator reads `TRITON_INTERPRET` once, when the decorated module is imported, and returns either a compiling
`JITFunction` or an `InterpretedFunction` for good. That would make the mode depend on import order (pytest
imports every test module into one process) and would leave no `JITFunction` to compile ahead of time for
sm_90/sm_80 when the interpreter is on. `Kernel` holds both and picks one at each launch from
`triton.knobs.runtime.interpret`, which reads the environment variable on every access, so a test can switch the
interpreter on for its own duration with `monkeypatch.setenv("TRITON_INTERPRET", "1")`.

Import this module only after `triton_available()` said yes; it imports Triton at the top.
"""

from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401  (re-exported for the kernel files)
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

# Rows wider than this would not fit one program's registers; the dispatcher falls back to the reference.
MAX_FUSED_HIDDEN = 65536

# FMA contraction stays on, as in Triton's current default. Passing it explicitly pins the behaviour across the
# Triton 3.10 default change and silences the warning Triton prints when it is left unset.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`), read at call time."""
    return bool(triton.knobs.runtime.interpret)


class Kernel:
    """A Triton kernel usable both compiled (CUDA, ahead-of-time builds) and in the interpreter.

    `kernel[grid](*args, num_warps=...)` launches in whichever mode is active at that moment; `kernel.jit` is the
    `JITFunction` that `triton.compile(ASTSource(...))` needs.
    """

    def __init__(self, fn):
        self.fn = fn
        self.jit = JITFunction(fn)
        self._interpreted: InterpretedFunction | None = None

    @property
    def __name__(self) -> str:
        return self.fn.__name__

    def __getitem__(self, grid):
        if interpreting():
            if self._interpreted is None:
                self._interpreted = InterpretedFunction(self.fn)
            return self._interpreted[grid]
        return self.jit[grid]


def aot_signature(kernel: Kernel, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Full `ASTSource` signature of `kernel`: `types` for pointers and floats, "constexpr" for `constexprs`, and
    "i32" for every other argument (sizes and strides, typed as the JIT types them for the model's shapes)."""
    unknown = set(types) - set(kernel.jit.arg_names)
    assert not unknown, f"{kernel.__name__} has no argument(s) {sorted(unknown)}"
    return {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in kernel.jit.arg_names}


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


def as_rows(t, name: str):
    """View `t` as (rows, hidden) with unit column stride; copies only when no such view exists.

    Row strides may be anything (a slice of a wider tensor is fine): the kernels take a stride per tensor.
    """
    if t.stride(-1) != 1:
        t = t.contiguous()
    t2 = t.reshape(-1, t.shape[-1])
    assert t2.stride(-1) == 1, f"{name}: reshape kept a non-unit column stride"
    return t2
