"""Ahead-of-time builds of every fused kernel for NVIDIA targets, on any machine (no GPU needed).

The CPU interpreter executes the kernels' Python but compiles nothing, so a kernel can pass every interpreter
test and still fail to build on an H100 (an op without a lowering, a block too large for shared memory, ...).
`build_all` runs the real compiler (`triton.compile` down to PTX and a cubin via the bundled `ptxas`) for each
kernel variant and reports the resources of each build; the kernel tests and the benchmark header use it.

The builds compile what a launch on the GPU would compile: the ops are called on CPU tensors of the real micro-batch
shape (12 x 1024 rows) with their launches recorded instead of run (`triton_support.capture_launches`, with the
target's SM count so the backward's grid and rows per program are the GPU's), and each recorded launch goes through
the JIT's own argument binding and specialization (`jit_specialization`). An autotuned launch is built once per config
the autotuner may pick there (`expand_autotuned`). CPU tensors are 64-byte aligned and the
CUDA caching allocator's blocks 512-byte aligned, so the pointers' divisibility hints are the same on both.
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
from triton.compiler.compiler import make_backend
from triton.runtime.autotuner import Autotuner

from model.kernels import rmsnorm_triton, swiglu_triton
from model.kernels.triton_support import capture_launches, interpreting

# The cards the project trains on: H100 SXM (sm_90, 132 SMs) and A100 (sm_80, 108 SMs). Warp size is 32 on both.
TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}
SM_COUNTS = {"sm_90": 132, "sm_80": 108}


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
    """Shared memory Triton allocates for the kernel (reduction scratch, pipelined loads), from the build's metadata."""
    ptx_chars: int
    cubin_bytes: int
    specialization: str = ""
    """The JIT's per-argument specialization this build was compiled with: `D` = divisible by 16 (pointer 16-byte
    aligned, integer a multiple of 16), `=1` = an integer equal to 1 (the JIT makes it a constant), `-` = none."""
    ptx: str = ""


def all_calls() -> list[tuple[str, object]]:
    """(label, call) of every op call whose launches the builds come from."""
    return rmsnorm_triton.aot_calls() + swiglu_triton.aot_calls()


def jit_specialization(kernel, args: tuple, kwargs: dict, target: GPUTarget):
    """(signature, constexprs, attrs, options) exactly as `JITFunction.run` derives them at launch, for `target`.

    Triton 3.7.1 (and 3.9), triton/runtime/jit.py: `JITFunction.run` binds the launch arguments with the function
    built by `create_function_from_signature`, which calls the native `specialize_impl` per argument: a tensor becomes
    `*bf16`/`*fp32`... with "D" when its data pointer is a multiple of 16, an int becomes i32/i64 with "D" when it is a
    multiple of 16 or a constexpr when it equals 1, a Python float becomes fp32 (backends/compiler.py
    `BaseBackend.get_tensor_specialization` / `get_int_specialization` give the rule). `JITFunction._pack_args` turns
    that into the signature, constexprs and `tt.divisibility=16` attributes (`BaseBackend.parse_attr`; the CUDA
    backend, backends/nvidia/compiler.py, does not override these) that `_do_compile` hands to `ASTSource`. Before this
    the builds passed no attributes, so the table described a kernel without the 16-byte vectorised loads the real
    launch compiles to.
    """
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    # The options `JITFunction.run` adds before binding: debug and instrumentation_mode in Triton 3.7.1 (the version
    # torch 2.13.0 pins); later releases add fpsan_homomorphic_casts too, which 3.7.1's binder would reject.
    kwargs = {
        **kwargs,
        "debug": kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug,
        "instrumentation_mode": triton.knobs.compilation.instrumentation_mode,
    }
    if hasattr(triton.knobs.compilation, "fpsan_homomorphic_casts"):
        kwargs["fpsan_homomorphic_casts"] = triton.knobs.compilation.fpsan_homomorphic_casts
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options, specialization


def _spec_string(specialization) -> str:
    marks = []
    for ty, spec in specialization:
        if ty == "constexpr":
            marks.append("=1" if type(spec) is int and spec == 1 else "c")
        else:
            marks.append("D" if spec == "D" else "-")
    return " ".join(marks)


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


def captured_launches(arch: str, calls=None) -> list[tuple[str, tuple]]:
    """(label, (kernel, grid, args, kwargs)) of every distinct launch the calls make, as on `arch`'s SM count;
    launches the JIT would compile to one kernel (same specialization and options) are listed once."""
    if interpreting():
        raise RuntimeError(
            "ahead-of-time builds need Triton's compiled mode, but this process imported triton with "
            "TRITON_INTERPRET=1; run them in a process without it"
        )
    seen, out = set(), []
    for label, call in calls if calls is not None else all_calls():
        with capture_launches(SM_COUNTS[arch]) as launches:
            call()
        for record in launches:
            for suffix, (kernel, grid, args, kwargs) in expand_autotuned(record):
                _, _, _, options, spec = jit_specialization(kernel, args, kwargs, TARGETS[arch])
                key = (kernel.fn.__name__, str(spec), str(options))
                if key not in seen:
                    seen.add(key)
                    name = kernel.fn.__name__.removesuffix("_kernel")
                    out.append((f"{name} {label}{suffix}", (kernel, grid, args, kwargs)))
    return out


def expand_autotuned(record: tuple) -> list[tuple[str, tuple]]:
    """("", record) for a plain launch; for a `triton.autotune`d kernel, one (label suffix, launch of the JIT function
    with that config's arguments) per config the autotuner may pick for these arguments on a GPU (its
    `early_config_prune`, as `Autotuner.prune_configs` applies it, triton/runtime/autotuner.py): each may be the one
    that runs, so each is built and must fit without spills."""
    kernel, grid, args, kwargs = record
    if not isinstance(kernel, Autotuner):
        return [("", record)]
    configs = kernel.configs
    if kernel.early_config_prune:
        configs = kernel.early_config_prune(configs, dict(zip(kernel.arg_names, args, strict=False)), **kwargs)
    varying_warps = len({c.num_warps for c in configs}) > 1
    out = []
    for config in configs:
        suffix = "".join(f" {k.lower().removeprefix('num_')}={v}" for k, v in config.kwargs.items())
        suffix += f" warps={config.num_warps}" if varying_warps else ""
        out.append((suffix if len(configs) > 1 else "", (kernel.fn, grid, args, {**kwargs, **config.all_kwargs()})))
    return out


def build(label: str, launch_record: tuple, arch: str) -> Build:
    """Compile one recorded launch for `arch` ("sm_90" or "sm_80") as the JIT would; raises what the compiler raises."""
    kernel, _, args, kwargs = launch_record
    target = TARGETS[arch]
    signature, constexprs, attrs, options, spec = jit_specialization(kernel, args, kwargs, target)
    src = ASTSource(kernel, signature, constexprs, attrs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    regs, local = _resource_usage(compiled.asm["cubin"])
    return Build(
        label=label,
        arch=arch,
        num_warps=compiled.metadata.num_warps,
        registers=regs,
        spill_bytes=local,
        shared_bytes=int(compiled.metadata.shared),
        ptx_chars=len(compiled.asm["ptx"]),
        cubin_bytes=len(compiled.asm["cubin"]),
        specialization=_spec_string(spec),
        ptx=compiled.asm["ptx"],
    )


def build_all(archs=("sm_90", "sm_80"), calls=None) -> list[Build]:
    return [build(label, rec, arch) for arch in archs for label, rec in captured_launches(arch, calls)]


def format_builds(builds: list[Build]) -> str:
    lines = [f"{'kernel':<44} {'arch':<6} {'warps':>5} {'regs':>5} {'spill':>5} {'smem B':>7} {'cubin B':>8}"]
    for b in builds:
        lines.append(
            f"{b.label:<44} {b.arch:<6} {b.num_warps:>5} {b.registers!s:>5} {b.spill_bytes!s:>5} "
            f"{b.shared_bytes:>7} {b.cubin_bytes:>8}"
        )
    return "\n".join(lines)
