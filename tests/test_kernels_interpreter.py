"""Fused Triton RMSNorm and SwiGLU against the plain-PyTorch reference, on the CPU with Triton's interpreter.

Triton fixes interpreter-vs-compiled mode when it is first imported (see `model/kernels/triton_support.py`), and
pytest imports every test module into one process, so this module cannot switch the interpreter on for itself. It
runs only in a process started with TRITON_INTERPRET=1 and skips otherwise; `tests/test_kernels.py` starts that
process during `make test`. To run it directly:

    TRITON_INTERPRET=1 .venv/bin/pytest tests/test_kernels_interpreter.py -q

Tolerance rule (`model/kernels/selfcheck.rule_violation`): against an fp64 reference computed from the
same (rounded) inputs, the kernel's max-abs error must be at most 2x the error of the same-dtype PyTorch reference,
plus a small absolute term: 1e-5 for fp32; for bf16 1e-2 but never below one bf16 ulp of the largest reference
value (the interpreter rounds to bf16 by truncation, so it can be one ulp off where the GPU rounds to nearest).

Coverage: rows {1, 7, 123} x hidden {37, 1280, 3456} x {fp32, bf16} and 4096 at 7 rows for 2-D inputs, plus 3-D,
row-strided (a slice of a wider tensor) and transposed (non-unit last stride) inputs on a subset of shapes; the fused
residual add + RMSNorm; the start-up self-check on the real kernels; torch.compile(fullgraph=True); double backward;
the autotuner's benchmark repeats leaving the backward's outputs as one launch would.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from model.kernels.triton_support import interpreting  # noqa: E402

if not interpreting():
    pytest.skip(
        "needs a process started with TRITON_INTERPRET=1; tests/test_kernels.py runs this module in one",
        allow_module_level=True,
    )

from model.kernels import rms_norm, rms_norm_residual, swiglu  # noqa: E402
from model.kernels.rmsnorm_triton import rms_norm_triton  # noqa: E402
from model.kernels.selfcheck import bf16_ulp  # noqa: E402
from model.kernels.swiglu_triton import swiglu_triton  # noqa: E402
from tests.test_kernels import check_rule, is_fused  # noqa: E402  (the assertion form of the rule)

ROWS = (1, 7, 123)
HIDDENS = (37, 1280, 3456, 4096)
# Rows x hidden for the 2-D comparisons: the full grid, except that 4096 (the one width that fills its block with no
# masked lanes) runs at 7 rows only; the 123-row cases at 4096 cost ~15 s of interpreter time and test nothing the
# 123-row cases at 3456 and the 7-row case at 4096 do not (`make test` must stay under 10 minutes on 2 cores).
GRID = [(r, h) for r in ROWS for h in HIDDENS if h != 4096] + [(7, 4096)]
DTYPES = (torch.float32, torch.bfloat16)
EPS = 1e-5


def make_input(rows: int, hidden: int, dtype: torch.dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    """A (rows, hidden)-shaped leaf tensor in the requested memory layout (values identical across layouts)."""
    data = torch.randn(rows, hidden, generator=gen).to(dtype)
    if layout == "2d":
        return data.clone().requires_grad_()
    if layout == "3d":
        assert rows % 3 == 0
        return data.reshape(3, rows // 3, hidden).clone().requires_grad_()
    if layout == "sliced":  # unit column stride, row stride hidden + 11: a view of a wider buffer
        wide = torch.zeros(rows, hidden + 11, dtype=dtype)
        wide[:, 3 : 3 + hidden] = data
        wide.requires_grad_()
        return wide[:, 3 : 3 + hidden]
    if layout == "transposed":  # last stride != 1: the wrapper must copy
        return data.t().contiguous().t().detach().requires_grad_()
    raise AssertionError(layout)


def leaf(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose .grad autograd fills (the wide buffer for a sliced view)."""
    return t if t.is_leaf else t._base


def grad_of(t: torch.Tensor) -> torch.Tensor:
    g = leaf(t).grad
    if t.is_leaf:
        return g
    return g[:, 3 : 3 + t.shape[-1]]


def detached_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).clone().requires_grad_()


def rms_norm_inputs(rows, hidden, dtype, layout, seed=0):
    """x (in `layout`), weight near 1 (so it matters), and an upstream gradient dy."""
    gen = torch.Generator().manual_seed(seed)
    x = make_input(rows, hidden, dtype, layout, gen)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype).requires_grad_()
    dy = torch.randn(x.shape, generator=gen).to(dtype)
    if layout == "transposed":
        dy = dy.t().contiguous().t()  # exercises the non-unit last stride path in backward too
    return x, weight, dy


def swiglu_inputs(rows, hidden, dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gate = make_input(rows, hidden, dtype, layout, gen)
    up = make_input(rows, hidden, dtype, layout, gen)
    dy = torch.randn(gate.shape, generator=gen).to(dtype)
    if layout == "transposed":
        dy = dy.t().contiguous().t()
    return gate, up, dy


def run_rms_norm_case(rows, hidden, dtype, layout, seed=0):
    """(fused, same-dtype torch, fp64 reference) results: (y, dx, dweight) each."""
    x, weight, dy = rms_norm_inputs(rows, hidden, dtype, layout, seed)
    y = rms_norm_triton(x, weight, EPS)
    assert is_fused(y)
    y.backward(dy)
    fused = (y.detach(), grad_of(x).reshape(x.shape), weight.grad)

    results = []
    for ref_dtype in (dtype, torch.float64):
        xr, wr = detached_copy(x, ref_dtype), detached_copy(weight, ref_dtype)
        yr = rms_norm(xr, wr, EPS, impl="torch")
        yr.backward(dy.to(ref_dtype))
        results.append((yr.detach(), xr.grad, wr.grad))
    return fused, results[0], results[1]


def run_swiglu_case(rows, hidden, dtype, layout, seed=0):
    """(fused, same-dtype torch, fp64 reference) results: (y, dgate, dup) each."""
    gate, up, dy = swiglu_inputs(rows, hidden, dtype, layout, seed)
    y = swiglu_triton(gate, up)
    assert is_fused(y)
    y.backward(dy)
    fused = (y.detach(), grad_of(gate).reshape(gate.shape), grad_of(up).reshape(up.shape))

    results = []
    for ref_dtype in (dtype, torch.float64):
        gr, ur = detached_copy(gate, ref_dtype), detached_copy(up, ref_dtype)
        yr = swiglu(gr, ur, impl="torch")
        yr.backward(dy.to(ref_dtype))
        results.append((yr.detach(), gr.grad, ur.grad))
    return fused, results[0], results[1]


def check_all(names, fused, same, ref, dtype):
    for name, f, s, r in zip(names, fused, same, ref, strict=True):
        check_rule(name, f, s, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,hidden", GRID)
def test_rms_norm_matches_reference_2d(rows, hidden, dtype):
    check_all(("y", "dx", "dweight"), *run_rms_norm_case(rows, hidden, dtype, "2d"), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,hidden", GRID)
def test_swiglu_matches_reference_2d(rows, hidden, dtype):
    check_all(("y", "dgate", "dup"), *run_swiglu_case(rows, hidden, dtype, "2d"), dtype)


# 33 rows: 9 per backward program (4 programs), enough for the multi-row accumulation at a quarter of 123's cost.
LAYOUT_CASES = [(33, 1280), (3, 3456), (6, 37)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["3d", "sliced", "transposed"])
@pytest.mark.parametrize("rows,hidden", LAYOUT_CASES)
def test_rms_norm_layouts(rows, hidden, layout, dtype):
    check_all(("y", "dx", "dweight"), *run_rms_norm_case(rows, hidden, dtype, layout), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["3d", "sliced", "transposed"])
@pytest.mark.parametrize("rows,hidden", LAYOUT_CASES)
def test_swiglu_layouts(rows, hidden, layout, dtype):
    check_all(("y", "dgate", "dup"), *run_swiglu_case(rows, hidden, dtype, layout), dtype)


def test_swiglu_on_halves_of_one_projection():
    """The two halves of one fused gate/up projection are row-strided views; no copy, same result."""
    gen = torch.Generator().manual_seed(1)
    fused_proj = torch.randn(2, 5, 2 * 96, generator=gen, requires_grad=True)
    gate, up = fused_proj.chunk(2, dim=-1)
    y = swiglu(gate, up, impl="triton")
    y.sum().backward()
    grad_fused = fused_proj.grad.clone()
    fused_proj.grad = None
    ref = swiglu(gate, up, impl="torch")
    ref.sum().backward()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_fused, fused_proj.grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_rule_rejects_weight_gradient_of_one_row(dtype):
    """The tolerance is tight enough to catch a kernel that forgets to reduce dweight over all rows."""
    fused, same, ref = run_rms_norm_case(7, 1280, dtype, "2d")
    check_rule("dweight", fused[2], same[2], ref[2], dtype)  # the real kernel passes...
    x, _, dy = rms_norm_inputs(7, 1280, dtype, "2d")
    x0, dy0 = x[:1].detach().double(), dy[:1].double()
    one_row = (dy0 * (x0 * torch.rsqrt(x0.pow(2).mean(-1, keepdim=True) + EPS)).to(dtype)).sum(0).to(dtype)
    with pytest.raises(AssertionError, match="dweight"):  # ...and a one-row weight gradient fails
        check_rule("dweight", one_row, same[2], ref[2], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_rule_rejects_swiglu_without_silu_derivative(dtype):
    """A plausible backward bug (d_gate = dy * up * sigmoid(g): the silu derivative's second term dropped) fails."""
    fused, same, ref = run_swiglu_case(123, 37, dtype, "2d")
    check_rule("dgate", fused[1], same[1], ref[1], dtype)
    gate, up, dy = (t.detach().double() for t in swiglu_inputs(123, 37, dtype, "2d"))
    wrong = (dy * up * torch.sigmoid(gate)).to(dtype)
    with pytest.raises(AssertionError, match="dgate"):
        check_rule("dgate", wrong, same[1], ref[1], dtype)


def test_gradcheck_rms_norm_fp64():
    gen = torch.Generator().manual_seed(0)
    # 13: odd and below the block, so masked lanes are in every row; gradcheck perturbs every element (a few
    # interpreted launches each), so the shapes stay small.
    x = torch.randn(3, 2, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.1 * torch.randn(13, generator=gen, dtype=torch.float64)).requires_grad_()
    # fast_mode: a random projection of the Jacobian instead of every column (each column is interpreted launches).
    assert torch.autograd.gradcheck(lambda a, b: rms_norm_triton(a, b, EPS), (x, w), fast_mode=True)


def test_gradcheck_swiglu_fp64():
    gen = torch.Generator().manual_seed(0)
    gate = torch.randn(4, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 13, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu_triton, (gate, up), fast_mode=True)


def test_rms_norm_weight_gradient_is_deterministic():
    """Two backward passes give bit-identical weight gradients (fixed partial-buffer reduction, no atomics)."""
    grads = [run_rms_norm_case(33, 1280, torch.bfloat16, "2d")[0][2] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_autotuner_benchmark_repeats_leave_the_outputs_of_one_launch(monkeypatch):
    """The autotuner runs each config several times on the real arguments before the final launch. DX and
    DW_PARTIAL are pure outputs (plain stores of every element, inputs only read), so no restore_value/reset_to_zero
    is needed: the result after 2 configs x 3 benchmark runs + 1 launch equals one launch of the fixed rule, bit for
    bit. (Under the interpreter the configs compute alike; what this checks is that repeats do not accumulate.)"""
    from model.kernels import rmsnorm_triton as rt

    runs = []

    def bench(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        runs.append(3)
        return [1.0, 1.0, 1.0]

    def two_configs(configs, named_args, **kwargs):  # the interpreter's own prune keeps one; benchmark two here
        return [c for c in configs if c.num_warps == 4][:2]

    tuned = rt.bwd_autotuner(do_bench=bench, prune=two_configs)
    gen = torch.Generator().manual_seed(3)
    x, dy, dres = (torch.randn(7, 37, generator=gen) for _ in range(3))
    w = 1 + 0.1 * torch.randn(37, generator=gen)
    rstd = rt.rms_norm_op(x, w, EPS)[1]
    with rt.autotune_mode_override("off"):
        fixed = rt.rms_norm_backward_op(dy, x, w, rstd, dres)
    monkeypatch.setattr(rt, "rms_norm_bwd_autotuned", tuned)
    with rt.autotune_mode_override("stages"):
        autotuned = rt.rms_norm_backward_op(dy, x, w, rstd, dres)
    assert runs == [3, 3] and tuned.best_config.kwargs["NUM_STAGES"] in rt.BWD_STAGE_SPACE
    for a, b in zip(fixed, autotuned, strict=True):
        assert torch.equal(a, b)


def test_mixed_dtype_rms_norm_promotes_like_reference():
    """bf16 activations with an fp32 weight give an fp32 output, as `weight * x.to(bf16)` does in PyTorch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, generator=gen).to(torch.bfloat16)
    w = 1 + 0.1 * torch.randn(64, generator=gen)
    y = rms_norm(x, w, EPS, impl="triton")
    ref = rms_norm(x, w, EPS, impl="torch")
    assert y.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=0, atol=2 * bf16_ulp(ref.abs().max().item()))


# --- dispatcher ------------------------------------------------------------------------------------------------


def test_auto_and_triton_use_the_kernels_under_the_interpreter():
    x = torch.randn(3, 16, requires_grad=True)
    w = torch.ones(16, requires_grad=True)
    for impl in ("auto", "triton"):
        assert is_fused(rms_norm(x, w, EPS, impl=impl))
        assert is_fused(rms_norm_residual(x, x, w, EPS, impl=impl)[0])
        assert is_fused(swiglu(x, x, impl=impl))
    assert not is_fused(rms_norm(x, w, EPS, impl="torch"))
    assert not is_fused(rms_norm_residual(x, x, w, EPS, impl="torch")[0])
    assert not is_fused(swiglu(x, x, impl="torch"))


def test_empty_input():
    x = torch.randn(0, 32, requires_grad=True)
    w = torch.ones(32, requires_grad=True)
    y = rms_norm(x, w, EPS, impl="triton")
    y.sum().backward()
    assert y.shape == (0, 32) and torch.equal(w.grad, torch.zeros(32))
    assert swiglu(x, x, impl="triton").shape == (0, 32)


# --- the tiny model, fused vs reference -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_tiny_model_fused_matches_reference(dtype):
    """Same weights and batch: the fused (interpreted) model's loss and every parameter gradient are within the
    rule against an fp64 copy of the reference model, like the same-dtype reference model's."""
    from model.config import ModelConfig
    from model.transformer import Transformer

    cfg = dict(n_embd=64, n_head=4, n_layer=2, block_size=32, dropout=0.0, ffn_multiple_of=32)
    torch.manual_seed(0)
    fused = Transformer(ModelConfig(**cfg, fused_kernels=True)).to(dtype)
    plain = Transformer(ModelConfig(**cfg, fused_kernels=False)).to(dtype)
    plain.load_state_dict(fused.state_dict())
    ref64 = Transformer(ModelConfig(**cfg, fused_kernels=False)).double()
    ref64.load_state_dict(fused.state_dict())
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50257, (2, 32), generator=gen)
    targets = torch.randint(0, 50257, (2, 32), generator=gen)

    results = {}
    for name, model in (("fused", fused), ("plain", plain), ("ref64", ref64)):
        _, loss = model(idx, targets)
        loss.backward()
        results[name] = {"loss": loss.detach(), **{n: p.grad for n, p in model.named_parameters()}}
    # The fused path really ran: the reference model would pass this test trivially.
    _, loss = fused(idx, targets)
    assert _graph_has(loss, "GeneratedBackwardFor_ragllm_rms_norm_defaultBackward")
    assert _graph_has(loss, "GeneratedBackwardFor_ragllm_rms_norm_residual_defaultBackward")  # the blocks' adds
    assert _graph_has(loss, "GeneratedBackwardFor_ragllm_swiglu_defaultBackward")
    for n in results["ref64"]:
        check_rule(n, results["fused"][n], results["plain"][n], results["ref64"][n], dtype)


def _graph_has(t: torch.Tensor, node_name: str) -> bool:
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == node_name:
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


# --- fused residual add + RMSNorm ----------------------------------------------------------------------------------


def run_residual_case(rows, hidden, dtype, seed=0):
    """(fused, same-dtype torch, fp64 reference): (y, h, dx, dresidual, dweight) for the loss y.dy + h.dh, so
    both outputs carry a gradient (h is the residual stream later layers add to)."""
    gen = torch.Generator().manual_seed(seed)
    x, residual, dy, dh = (torch.randn(rows, hidden, generator=gen).to(dtype) for _ in range(4))
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    results = []
    for impl, cast in (("triton", dtype), ("torch", dtype), ("torch", torch.float64)):
        xi, ri, wi = (detached_copy(t, cast) for t in (x, residual, weight))
        y, h = rms_norm_residual(xi, ri, wi, EPS, impl=impl)
        assert is_fused(y) == (impl == "triton")
        torch.autograd.backward((y, h), (dy.to(cast), dh.to(cast)))
        results.append((y.detach(), h.detach(), xi.grad, ri.grad, wi.grad))
    return results


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,hidden", [(123, 1280), (7, 37)])
def test_rms_norm_residual_matches_reference(rows, hidden, dtype):
    check_all(("y", "h", "dx", "dresidual", "dweight"), *run_residual_case(rows, hidden, dtype), dtype)


@pytest.mark.parametrize("used", ["y", "h"])
def test_rms_norm_residual_with_one_output_unused(used):
    """Only y (a block whose stream ends here) or only h used: the missing gradient arrives as None, not zeros."""
    gen = torch.Generator().manual_seed(2)
    x, residual = torch.randn(7, 37, generator=gen), torch.randn(7, 37, generator=gen)
    weight = 1 + 0.1 * torch.randn(37, generator=gen)
    dout = torch.randn(7, 37, generator=gen)
    results = []
    for impl, cast in (("triton", torch.float32), ("torch", torch.float32), ("torch", torch.float64)):
        xi, ri, wi = (detached_copy(t, cast) for t in (x, residual, weight))
        y, h = rms_norm_residual(xi, ri, wi, EPS, impl=impl)
        (y if used == "y" else h).backward(dout.to(cast))
        grads = [xi.grad, ri.grad, wi.grad if wi.grad is not None else torch.zeros_like(wi)]
        results.append(grads)
    check_all(("dx", "dresidual", "dweight"), *results, torch.float32)


def test_gradcheck_rms_norm_residual_fp64():
    gen = torch.Generator().manual_seed(0)
    x, r = (torch.randn(5, 13, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = (1 + 0.1 * torch.randn(13, generator=gen, dtype=torch.float64)).requires_grad_()
    fn = lambda a, b, c: rms_norm_residual(a, b, c, EPS, impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, r, w), fast_mode=True)


# --- the start-up self-check with the real kernels ------------------------------------------------------------------


def test_selfcheck_passes_the_kernels_with_several_rows_per_backward_program():
    """The trainer's start-up check, on the interpreted kernels at the 750M widths: 15 rows over 4 backward
    programs (4, 4, 4, 3 rows), so the fp32 weight-gradient accumulation across rows and the partial sum both run,
    plus a 6-row shape as the trainer's micro-batch shape would add."""
    from model.kernels.rmsnorm_triton import bwd_grid
    from model.kernels.selfcheck import check_fused_kernels, several_rows_per_program

    rows = several_rows_per_program("cpu")
    assert bwd_grid(rows, torch.device("cpu")) == (4, 4)
    assert check_fused_kernels("cpu", 1280, 3456, EPS, rows=6) == []


# --- torch.compile and double backward -----------------------------------------------------------------------------


def _block(x, residual, w, gate, up):
    """A pre-norm block's fused ops in the order the model uses them."""
    normed, h = rms_norm_residual(x, residual, w, EPS, impl="triton")
    return rms_norm(normed, w, 1e-6, impl="triton") * 2 + h.sum(-1, keepdim=True) + swiglu(gate, up, impl="triton")


def test_torch_compile_fullgraph_runs_the_custom_ops():
    """fullgraph=True: one graph through all three ops and their backwards (a graph break would raise), run by
    AOTAutograd (`aot_eager`) and checked against the uncompiled ops.

    Under the interpreter the ops must stay opaque in the graph (decompose_custom_triton_ops=False): AOTAutograd
    would otherwise trace into the kernels, which `wrap_triton` can only record for compiled-mode JIT functions
    (torch/_library/triton.py). On a GPU the default decomposition lets Inductor see the kernels themselves; what the
    CPU can check of that path is `test_the_ops_trace_into_one_graph_with_their_kernels` in tests/test_kernels.py.
    """
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(3, 5, 64, generator=gen) for _ in range(2)] + [1 + 0.1 * torch.randn(64, generator=gen)]
    inputs += [torch.randn(3, 5, 64, generator=gen) for _ in range(2)]
    results = []
    compiled = torch.compile(_block, fullgraph=True, backend="aot_eager")
    for fn in (_block, compiled):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with torch._functorch.config.patch(decompose_custom_triton_ops=False):
            y = fn(*leaves)
        y.backward(torch.ones_like(y))
        results.append([y.detach()] + [t.grad for t in leaves])
    for eager, comp in zip(*results, strict=True):
        torch.testing.assert_close(comp, eager, rtol=0, atol=0)  # the same kernels on the same inputs


def test_torch_compile_with_decomposition_says_what_to_do():
    x, w = torch.randn(2, 32), torch.ones(32)
    compiled = torch.compile(lambda a, b: rms_norm(a, b, EPS, impl="triton"), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="decompose_custom_triton_ops=False"):
        compiled(x, w)


@pytest.mark.parametrize("op", ["rms_norm", "rms_norm_residual", "swiglu"])
def test_double_backward_raises_a_clear_error(op):
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    w = torch.ones(16, dtype=torch.float64, requires_grad=True)
    y = {
        "rms_norm": lambda: rms_norm(x, w, EPS, impl="triton"),
        "rms_norm_residual": lambda: rms_norm_residual(x, x.detach(), w, EPS, impl="triton")[0],
        "swiglu": lambda: swiglu(x, x * 2, impl="triton"),
    }[op]()
    (gx,) = torch.autograd.grad(y.sum(), x, retain_graph=True)  # first order is fine
    assert gx.shape == x.shape
    with pytest.raises(RuntimeError, match=f"ragllm::{op}: double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
