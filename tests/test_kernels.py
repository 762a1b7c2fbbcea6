"""Fused Triton kernels: the checks that run in the ordinary (compiled-mode) test process.

- the interpreter suite (`tests/test_kernels_interpreter.py`), run in a subprocess started with TRITON_INTERPRET=1:
  Triton fixes interpreter-vs-compiled mode when it is first imported, so one process cannot hold both; a
  subprocess keeps the interpreter out of every other test module and lets this process build for the GPU;
- ahead-of-time builds of every kernel for sm_90 (H100) and sm_80 (A100), which need no GPU, specialized as the JIT
  specializes a real launch at the micro-batch shape, the RMSNorm backward once per config of its autotune space
  (each must compile to the fixed rule's floating-point instructions); an fp64-typed eps (as Inductor passes it) adds
  no fp64 math; the default autotune space varies only math-preserving parameters;
- the dispatcher's choices and error messages on a CPU without the interpreter;
- on a CUDA machine only (marked `gpu`): fused vs reference at the 750M model's shapes, determinism, "auto"
  picking the kernels, and the same bits from every config of the autotune space.

The tolerance rule shared with the interpreter suite lives here (`check_rule`).

Run: .venv/bin/pytest tests/test_kernels.py -q          (about a minute on 2 cores, most of it the subprocess)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

from model.kernels import rms_norm, rms_norm_residual, swiglu, triton_available
from model.kernels.selfcheck import rule_violation
from tests.process_group import run

REPO = Path(__file__).resolve().parents[1]
EPS = 1e-5

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not importable")


def _interpreting() -> bool:
    if not triton_available():
        return False
    from model.kernels.triton_support import interpreting

    return interpreting()


compiled_mode_only = pytest.mark.skipif(
    _interpreting(), reason="this process imported triton with TRITON_INTERPRET=1; run without it"
)


def is_fused(t: torch.Tensor) -> bool:
    """True when `t` came out of one of the fused custom ops (their autograd nodes are generated per op)."""
    return type(t.grad_fn).__name__.startswith("GeneratedBackwardFor_ragllm_")


def check_rule(name: str, fused: torch.Tensor, same_dtype: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype):
    """The kernels issue's tolerance rule (`model/kernels/selfcheck.py`), as an assertion."""
    problem = rule_violation(name, fused, same_dtype, ref64, dtype)
    assert problem is None, problem


# --- the interpreter suite, in its own process ------------------------------------------------------------------


@pytest.mark.slow
@needs_triton
@compiled_mode_only
def test_interpreter_suite_passes_in_a_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "tests/test_kernels_interpreter.py", "-q", "-p", "no:cacheprovider"]
    proc = run(cmd, cwd=REPO, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    rerun = "TRITON_INTERPRET=1 .venv/bin/pytest tests/test_kernels_interpreter.py -q"
    assert proc.returncode == 0, f"interpreter suite failed ({summary}); rerun: {rerun}\n{out[-6000:]}"
    # A module-level skip also exits 0: make sure the cases really ran.
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 100 and "skipped" not in summary, summary


# --- ahead-of-time builds for the GPUs the project trains on ----------------------------------------------------


@needs_triton
@compiled_mode_only
def test_every_kernel_builds_for_sm90_and_sm80_as_the_jit_specializes_it(tmp_path, monkeypatch):
    """The interpreter compiles nothing; this runs the real compiler to PTX and cubin for H100 and A100, on the
    launches a real call at the micro-batch shape makes, specialized as the JIT specializes them at launch."""
    from model.kernels.aot import build_all
    from model.kernels.rmsnorm_triton import BWD_NUM_STAGES, autotune_mode_override

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # a real build every time, not a cache hit
    with autotune_mode_override("stages"):  # the default space, whatever this process's environment says
        builds = build_all(("sm_90", "sm_80"))
    kernels = {b.label.split()[0] for b in builds}
    assert kernels == {"rms_norm_fwd", "rms_norm_bwd", "dw_reduce", "swiglu_fwd", "swiglu_bwd"}, kernels
    for b in builds:
        assert b.cubin_bytes > 0 and b.ptx_chars > 0, b
        assert b.registers is not None and 0 < b.registers <= 255, b
        assert b.spill_bytes == 0, f"{b.label} on {b.arch} spills {b.spill_bytes} B/thread to local memory"
        # Every pointer and every width of the model's shapes is 16-divisible, as at a real launch.
        assert b.specialization.split()[0] == "D", b
    assert any(p.suffix == ".cubin" for p in tmp_path.rglob("*")), "no cubin written: was anything compiled?"
    by_label = {(b.label, b.arch): b for b in builds}
    for arch in ("sm_90", "sm_80"):
        # The divisibility hints are what let the compiler use 16-byte loads (8 bf16 per instruction); without them
        # (the builds before) every bf16 row load was 2 bytes wide.
        fwd = by_label[("rms_norm_fwd bf16 h=1280", arch)]
        assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", fwd.ptx), "no 16-byte vector load in rms_norm_fwd"
        # The pipelined backward row loop prefetches the next row's x and dy into shared memory (cp.async).
        bwd = by_label[(f"rms_norm_bwd bf16 h=1280 stages={BWD_NUM_STAGES}", arch)]
        assert "cp.async" in bwd.ptx and bwd.shared_bytes >= 2 * 2048 * 2, (bwd.shared_bytes, arch)  # x and dy rows
    check_autotune_space_preserves_the_math(builds)


# Floating-point arithmetic, conversions to and from bf16 and warp shuffles (the in-row reductions), in PTX order.
_FP_OPS = re.compile(
    r"^\s*((?:fma|add|sub|mul|div|rsqrt|sqrt|max|min|neg|abs)(?:\.\w+)*\.f(?:32|64)\b|shfl\.[\w.]+|"
    r"cvt\.\w+\.(?:bf16|f32)\.(?:f32|bf16)\b)",
    re.M,
)


def check_autotune_space_preserves_the_math(builds):
    """Every backward config the default autotune space holds (each built above, as the autotuner may pick it on a
    GPU) compiles to the same sequence of floating-point and shuffle instructions as the fixed rule's, so whichever
    config a process picks, dx and dW are bit-identical: runs stay bitwise resumable and ranks agree. A config that
    varied num_warps (or anything else that changes the in-row reduction tree) fails here."""
    from model.kernels.rmsnorm_triton import BWD_NUM_STAGES, BWD_STAGE_SPACE

    groups: dict[tuple[str, str], dict[str, list[str]]] = {}
    for b in builds:
        base, _, config = b.label.rpartition(" stages=")
        if base.startswith("rms_norm_bwd"):
            groups.setdefault((base, b.arch), {})[config] = _FP_OPS.findall(b.ptx)
    assert {len(g) for g in groups.values()} == {len(BWD_STAGE_SPACE)}, {k: sorted(g) for k, g in groups.items()}
    for (base, arch), by_config in groups.items():
        rule = by_config[str(BWD_NUM_STAGES)]
        assert len(rule) > 50, (base, arch, rule)  # the pattern finds the kernel's arithmetic
        for config, ops in by_config.items():
            assert ops == rule, f"{base} on {arch}: config {config} computes differently from the fixed rule"


@needs_triton
@compiled_mode_only
def test_the_default_autotune_space_holds_only_math_preserving_parameters():
    """The default space varies NUM_STAGES only, at the warps the fixed rule gives each width; NUM_STAGES is used by
    the kernel only as the row loop's pipelining depth. (The PTX comparison above is what shows that depth leaves the
    arithmetic alone; this catches a space or kernel edit without compiling.)"""
    import inspect

    from model.kernels import rmsnorm_triton as rt
    from model.kernels.triton_support import row_block

    for n_cols in (37, 1280, 3456, 4096, 65536):
        configs = rt.rms_norm_bwd_autotuned.early_config_prune(rt.BWD_CONFIGS, {"n_cols": n_cols})
        assert sorted(c.kwargs["NUM_STAGES"] for c in configs) == list(rt.BWD_STAGE_SPACE), n_cols
        for c in configs:
            assert set(c.kwargs) <= rt.MATH_PRESERVING, c
            assert (c.num_warps, c.num_ctas, c.maxnreg, c.num_stages, c.pre_hook, c.ir_override) == (
                row_block(n_cols)[1], 1, None, rt.KERNEL_NUM_STAGES, None, None), (n_cols, str(c))
    (c,) = rt.bwd_configs(1280, "off")
    assert (c.kwargs["NUM_STAGES"], c.num_warps) == (rt.BWD_NUM_STAGES, row_block(1280)[1])
    source = inspect.getsource(rt.rms_norm_bwd_kernel.fn)
    uses = re.findall(r"^.*\bNUM_STAGES\b.*$", source, re.M)
    assert len(uses) == 2 and "num_stages=NUM_STAGES)" in uses[1], uses  # the parameter, and tl.range's depth


def test_a_bad_autotune_setting_names_the_variable_and_the_choices():
    if not triton_available():
        pytest.skip("triton is not importable")
    from model.kernels.rmsnorm_triton import parse_autotune_mode

    assert [parse_autotune_mode(v) for v in (None, "", "stages", " OFF ", "full")] == ["stages", "stages", "stages",
                                                                                       "off", "full"]
    with pytest.raises(ValueError, match=r"RAGLLM_TRITON_AUTOTUNE='1' is not one of \('stages', 'off', 'full'\)"):
        parse_autotune_mode("1")


@needs_triton
@compiled_mode_only
def test_an_fp64_eps_from_inductor_does_not_turn_rms_norm_into_fp64_math(tmp_path, monkeypatch):
    """Inductor re-emits a launch with a Python-float argument typed fp64 (eager Triton types it fp32): the kernel
    casts eps to fp32 first, so the fp64 signature costs one conversion and no fp64 arithmetic."""
    import triton
    from triton.compiler import ASTSource

    from model.kernels.aot import TARGETS, captured_launches, jit_specialization
    from model.kernels.rmsnorm_triton import aot_calls

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    (label, (kernel, _, args, kwargs)), *_ = captured_launches("sm_90", aot_calls(hiddens=(1280,), rows=64)[:1])
    assert label.startswith("rms_norm_fwd")
    signature, constexprs, attrs, options, _ = jit_specialization(kernel, args, kwargs, TARGETS["sm_90"])
    assert signature["eps"] == "fp32"  # what eager launches compile
    signature["eps"] = "fp64"  # what Inductor's wrapper emits
    ptx = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGETS["sm_90"],
                         options=options.__dict__).asm["ptx"]
    assert "cvt.rn.f32.f64" in ptx  # eps really arrived as fp64...
    fp64_math = re.findall(r"\b(?:add|sub|mul|fma|div|sqrt|rsqrt)(?:\.\w+)*\.f64\b", ptx)
    assert not fp64_math, f"fp64 arithmetic in the fp64-eps build: {sorted(set(fp64_math))}"  # ...and stays there


# --- torch.compile, compiled mode ------------------------------------------------------------------------------


class _Traced(Exception):
    """Raised once the joint graph is recorded: this CPU has no GPU driver to compile or launch the kernels with."""


@needs_triton
@compiled_mode_only
def test_the_ops_trace_into_one_graph_with_their_kernels():
    """torch.compile(fullgraph=True) of the three ops, forward and backward, as on a GPU: AOTAutograd decomposes
    each `triton_op` into its kernel launches (torch/_library/triton.py, `functional_decomp`), so Inductor can see
    them. The joint graph is recorded and nothing runs. Torch's analysis of which tensors a kernel writes needs a GPU
    driver, so here it falls back to assuming all are written (a warning; it only adds copies to this graph)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from model.kernels.rmsnorm_triton import rms_norm_op, rms_norm_residual_op
    from model.kernels.swiglu_triton import swiglu_op

    joint = []

    def partition(graph, joint_inputs, **kwargs):
        joint.append(graph)
        raise _Traced  # the joint graph is all this test needs; compiling it would need the GPU

    def block(x, residual, w, gate, up):
        normed, h, _ = rms_norm_residual_op(x, residual, w, EPS)
        return rms_norm_op(normed, w, EPS)[0] + h + swiglu_op(gate, up)

    backend = aot_autograd(fw_compiler=None, partition_fn=partition)
    args = [torch.randn(4, 64, requires_grad=True) for _ in range(2)] + [torch.ones(64, requires_grad=True)]
    args += [torch.randn(4, 64, requires_grad=True) for _ in range(2)]
    with pytest.raises(Exception) as raised:  # dynamo wraps what the backend raises
        torch.compile(block, fullgraph=True, backend=backend)(*args)
    cause = raised.value
    while cause is not None and not isinstance(cause, _Traced):
        cause = cause.__cause__ or getattr(cause, "inner_exception", None)
    assert isinstance(cause, _Traced), raised.value
    assert len(joint) == 1
    launches = [n for n in joint[0].graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__ for n in launches]
    assert sorted(kernels) == sorted(["rms_norm_fwd_kernel"] * 2 + ["rms_norm_bwd_kernel", "dw_reduce_kernel"] * 2
                                     + ["swiglu_fwd_kernel", "swiglu_bwd_kernel"]), kernels
    eps_args = [
        {**n.kwargs["kwargs"], **kernel_side_table.get_constant_args(n.kwargs["constant_args_idx"])}.get("eps")
        for n in launches
        if kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__ == "rms_norm_fwd_kernel"
    ]
    # A Python float: Inductor types it fp64 in the launch it emits (see the fp64-eps build test above).
    assert eps_args == [EPS, EPS], eps_args


# --- dispatcher ------------------------------------------------------------------------------------------------


@compiled_mode_only
def test_cpu_without_interpreter_uses_the_reference():
    x = torch.randn(3, 16, requires_grad=True)
    w = torch.ones(16, requires_grad=True)
    for impl in ("auto", "torch"):
        assert not is_fused(rms_norm(x, w, EPS, impl=impl))
        assert not is_fused(rms_norm_residual(x, x, w, EPS, impl=impl)[0])
        assert not is_fused(swiglu(x, x, impl=impl))
    if triton_available():
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            rms_norm(x, w, EPS, impl="triton")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            swiglu(x, x, impl="triton")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            rms_norm_residual(x, x, w, EPS, impl="triton")


def test_dispatcher_rejects_bad_arguments():
    x = torch.randn(3, 16)
    with pytest.raises(ValueError, match="impl='fast'"):
        rms_norm(x, torch.ones(16), EPS, impl="fast")
    with pytest.raises(ValueError, match=r"weight shape \(15,\)"):
        rms_norm(x, torch.ones(15), EPS)
    with pytest.raises(ValueError, match="must match"):
        swiglu(x, torch.randn(3, 15))
    with pytest.raises(ValueError, match="must match"):
        swiglu(x, x.to(torch.bfloat16))
    with pytest.raises(ValueError, match="impl='cuda'"):
        swiglu(x, x, impl="cuda")
    with pytest.raises(ValueError, match=r"residual \(3, 15\)"):
        rms_norm_residual(x, torch.randn(3, 15), torch.ones(16), EPS)
    with pytest.raises(ValueError, match=r"rms_norm_residual: weight shape \(15,\)"):
        rms_norm_residual(x, x, torch.ones(15), EPS)


def test_rule_accepts_equal_error_and_rejects_triple():
    ref = torch.linspace(-3, 3, 101, dtype=torch.float64)
    same = ref + 1e-4
    check_rule("y", (ref + 2e-4).float(), same.float(), ref, torch.float32)
    with pytest.raises(AssertionError, match="y: fused error"):
        check_rule("y", (ref + 3e-4).float(), same.float(), ref, torch.float32)


# --- on a GPU ---------------------------------------------------------------------------------------------------

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@gpu
@needs_cuda
@needs_triton
@compiled_mode_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_kernels_match_reference_at_750m_shapes(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows, hidden, ffn = 12 * 1024, 1280, 3456
    x = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=gen)).to(dtype).requires_grad_()
    dy = torch.randn(rows, hidden, device="cuda", generator=gen).to(dtype)
    outs = {}
    for name, impl, cast in (("fused", "triton", dtype), ("same", "torch", dtype), ("ref", "torch", torch.float64)):
        xi = x.detach().to(cast).requires_grad_()
        wi = w.detach().to(cast).requires_grad_()
        y = rms_norm(xi, wi, EPS, impl=impl)
        y.backward(dy.to(cast))
        outs[name] = (y.detach(), xi.grad, wi.grad)
    for i, what in enumerate(("y", "dx", "dweight")):
        check_rule(f"rms_norm {what}", outs["fused"][i], outs["same"][i], outs["ref"][i], dtype)

    g = torch.randn(12, 1024, ffn, device="cuda", generator=gen).to(dtype)
    u = torch.randn(12, 1024, ffn, device="cuda", generator=gen).to(dtype)
    dy = torch.randn(12, 1024, ffn, device="cuda", generator=gen).to(dtype)
    outs = {}
    for name, impl, cast in (("fused", "triton", dtype), ("same", "torch", dtype), ("ref", "torch", torch.float64)):
        gi, ui = g.to(cast).requires_grad_(), u.to(cast).requires_grad_()
        y = swiglu(gi, ui, impl=impl)
        y.backward(dy.to(cast))
        outs[name] = (y.detach(), gi.grad, ui.grad)
    for i, what in enumerate(("y", "dgate", "dup")):
        check_rule(f"swiglu {what}", outs["fused"][i], outs["same"][i], outs["ref"][i], dtype)


@gpu
@needs_cuda
@needs_triton
@compiled_mode_only
def test_cuda_weight_gradient_is_bitwise_deterministic_and_auto_picks_triton():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(12 * 1024, 1280, device="cuda", generator=gen, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    grads = []
    for _ in range(3):
        w = torch.ones(1280, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        y = rms_norm(x, w, EPS)  # auto
        assert is_fused(y)
        y.backward(dy)
        grads.append(w.grad)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@gpu
@needs_cuda
@needs_triton
@compiled_mode_only
def test_cuda_every_backward_config_of_the_autotune_space_gives_the_same_bits(monkeypatch):
    """On the GPU itself: each stage count of the default space, and the autotuner's own pick, give bit-identical dx
    and dW at the micro-batch shape (the CPU shows the same PTX arithmetic; this shows the same bits)."""
    from model.kernels import rmsnorm_triton as rt

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(12 * 1024, 1280, device="cuda", generator=gen, dtype=torch.bfloat16)
    dy, dres = torch.randn_like(x), torch.randn_like(x)
    w = (1 + 0.1 * torch.randn(1280, device="cuda", generator=gen)).to(torch.bfloat16)
    rstd = rt.rms_norm_op(x, w, EPS)[1]
    results = {}
    with rt.autotune_mode_override("off"):
        for stages in rt.BWD_STAGE_SPACE:
            monkeypatch.setattr(rt, "BWD_NUM_STAGES", stages)
            results[f"stages={stages}"] = rt.rms_norm_backward_op(dy, x, w, rstd, dres)
    with rt.autotune_mode_override("stages"):
        results["autotuned"] = rt.rms_norm_backward_op(dy, x, w, rstd, dres)
    first = results["stages=1"]
    for name, (dx, dw) in results.items():
        assert torch.equal(dx, first[0]) and torch.equal(dw, first[1]), name
