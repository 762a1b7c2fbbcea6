"""Ahead-of-time builds of every fused kernel for NVIDIA targets, on any machine (no GPU needed).

The CPU interpreter executes the kernels' Python but compiles nothing, so a kernel can pass every interpreter
test and still fail to build on an H100 (an op without a lowering, a block too large for shared memory, ...).
`build_all` runs the real compiler (`triton.compile` down to PTX and a cubin via the bundled `ptxas`) for each
kernel variant and reports the resources of each build; the kernel tests and the benchmark header use it.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from model.kernels import rmsnorm_triton, swiglu_triton
from model.kernels.triton_support import COMPILE_OPTIONS, interpreting

# The cards the project trains on: H100 (sm_90) and A100 (sm_80). Warp size is 32 on both.
TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}


@dataclass
class Build:
    label: str
    arch: str
    num_warps: int
    registers: int | None
    """Registers per thread, from `cuobjdump --dump-resource-usage` on the cubin (None if the tool is missing)."""
    spill_bytes: int | None
    """Local-memory bytes per thread; non-zero means register spills."""
    shared_bytes: int
    """Shared memory Triton allocates for the kernel (its reduction scratch), from the build's metadata."""
    ptx_chars: int
    cubin_bytes: int


def all_builds():
    """Every (label, kernel, signature, constexprs, num_warps) variant the project ships."""
    return rmsnorm_triton.aot_builds() + swiglu_triton.aot_builds()


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    tool = triton.knobs.nvidia.cuobjdump.path
    if not tool or not Path(tool).exists():
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True)
    regs = re.search(r"REG:(\d+)", out.stdout)
    local = re.search(r"LOCAL:(\d+)", out.stdout)
    return (int(regs.group(1)) if regs else None, int(local.group(1)) if local else None)


def build(label, kernel, signature, constexprs, num_warps, arch: str) -> Build:
    """Compile one variant for `arch` ("sm_90" or "sm_80"); raises whatever the compiler raises."""
    if interpreting():
        raise RuntimeError(
            "ahead-of-time builds need Triton's compiled mode, but this process imported triton with "
            "TRITON_INTERPRET=1; run them in a process without it"
        )
    src = ASTSource(kernel, signature, constexprs)
    compiled = triton.compile(src, target=TARGETS[arch], options={"num_warps": num_warps, **COMPILE_OPTIONS})
    regs, local = _resource_usage(compiled.asm["cubin"])
    return Build(
        label=label,
        arch=arch,
        num_warps=num_warps,
        registers=regs,
        spill_bytes=local,
        shared_bytes=int(compiled.metadata.shared),
        ptx_chars=len(compiled.asm["ptx"]),
        cubin_bytes=len(compiled.asm["cubin"]),
    )


def build_all(archs=("sm_90", "sm_80")) -> list[Build]:
    return [build(*variant, arch=arch) for arch in archs for variant in all_builds()]


def format_builds(builds: list[Build]) -> str:
    lines = [f"{'kernel':<28} {'arch':<6} {'warps':>5} {'regs':>5} {'spill':>5} {'smem B':>7} {'cubin B':>8}"]
    for b in builds:
        lines.append(
            f"{b.label:<28} {b.arch:<6} {b.num_warps:>5} {b.registers!s:>5} {b.spill_bytes!s:>5} "
            f"{b.shared_bytes:>7} {b.cubin_bytes:>8}"
        )
    return "\n".join(lines)
