"""The start-up self-check of the fused kernels (run by the trainer on CUDA) passes a correct implementation and
names what a wrong one gets wrong. Here the "fused" functions are stand-ins on the CPU: the Triton kernels
themselves are checked by this same function in the interpreter suite (tests/test_kernels_interpreter.py) and on a
GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.kernels.reference import rms_norm_reference, rms_norm_residual_reference, swiglu_reference
from model.kernels.selfcheck import check_fused_kernels, several_rows_per_program

OK_RESIDUAL = {"fused_rms_norm_residual": rms_norm_residual_reference}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_correct_implementation_passes(dtype):
    assert check_fused_kernels("cpu", 128, 384, 1e-5, dtype, fused_rms_norm=rms_norm_reference,
                               fused_swiglu=swiglu_reference, **OK_RESIDUAL) == []


def test_weight_gradient_from_one_row_only_is_caught():
    def one_row_dweight(x, w, eps):
        return torch.cat([rms_norm_reference(x[:1], w, eps), rms_norm_reference(x[1:], w.detach(), eps)])

    problems = check_fused_kernels("cpu", 128, 384, 1e-5, fused_rms_norm=one_row_dweight,
                                   fused_swiglu=swiglu_reference, **OK_RESIDUAL)
    assert len(problems) == 1 and problems[0].startswith("rms_norm dweight")


def test_wrong_normalisation_and_wrong_silu_derivative_are_caught():
    def half_row_rms(x, w, eps):  # mean of squares over the first half of the row only
        half = x.shape[-1] // 2
        return w * x * torch.rsqrt(x[..., :half].float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)

    def gate_without_sigmoid_derivative(gate, up):
        return gate * torch.sigmoid(gate).detach() * up

    problems = check_fused_kernels("cpu", 128, 384, 1e-5, fused_rms_norm=half_row_rms,
                                   fused_swiglu=gate_without_sigmoid_derivative, **OK_RESIDUAL)
    assert any(p.startswith("rms_norm y") for p in problems)
    assert any(p.startswith("swiglu dgate") for p in problems)
    assert not any(p.startswith("swiglu y") for p in problems)  # the forward of that one is right


def test_nan_output_is_caught():
    problems = check_fused_kernels("cpu", 64, 192, 1e-5, fused_rms_norm=rms_norm_reference,
                                   fused_swiglu=lambda g, u: F.silu(g) * u * float("nan"), **OK_RESIDUAL)
    assert any(p.startswith("swiglu y") for p in problems)


def test_residual_add_that_drops_the_residual_gradient_is_caught_at_both_shapes():
    def no_residual_grad(x, r, w, eps):  # the new stream h gets no gradient into `residual`
        return rms_norm_residual_reference(x, r.detach(), w, eps)

    problems = check_fused_kernels("cpu", 64, 192, 1e-5, rows=6, fused_rms_norm=rms_norm_reference,
                                   fused_swiglu=swiglu_reference, fused_rms_norm_residual=no_residual_grad)
    assert problems and all(p.startswith("rms_norm_residual dresidual") for p in problems)
    assert any("(6 rows)" in p for p in problems) and any(f"({several_rows_per_program('cpu')} rows)" in p
                                                          for p in problems)


def test_the_check_gives_each_backward_program_several_rows():
    """At 259 rows an H100's 528 backward programs got one row each: the multi-row fp32 accumulation never ran."""
    from model.kernels.rmsnorm_triton import bwd_grid
    from model.kernels.triton_support import capture_launches

    programs, per_program = bwd_grid(several_rows_per_program("cpu"), torch.device("cpu"))
    assert programs >= 2 and per_program >= 4
    with capture_launches(sm_count=132):  # as the backward grid is computed on an H100
        rows = several_rows_per_program("cuda")
        programs, per_program = bwd_grid(rows, torch.device("cuda"))
        assert (programs, per_program) == (528, 4) and rows % per_program != 0  # a partial last program too
        assert bwd_grid(259, torch.device("cuda")) == (259, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_triton_kernels_pass_on_this_gpu_at_the_750m_widths_and_micro_batch():
    assert check_fused_kernels("cuda", 1280, 3456, 1e-5, rows=12 * 1024) == []
