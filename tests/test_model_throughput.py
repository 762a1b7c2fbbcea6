"""The model's throughput changes against the math they replace: fused q/k/v and w1/w3 (old checkpoints load),
the chunked linear + cross-entropy (same loss and gradients as full logits), RoPE in the activation dtype, the
residual adds fused into the norms, and the opt-in per-block torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model.config import ModelConfig
from model.io import WEIGHTS_FILE, load_model_checkpoint, save_model_checkpoint
from model.loss import chunk_rows, chunked_linear_cross_entropy, plain_linear_cross_entropy
from model.transformer import RotaryEmbedding, Transformer, apply_rotary, split_fused

TINY = dict(n_embd=64, n_head=4, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False)


def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    loss = fn(*tensors)
    loss.backward()
    return loss.detach(), [t.grad for t in tensors]


@pytest.mark.parametrize("chunk", [7, None])  # 7: 41 rows in 5 chunks of 7 and one of 6; None: the default rule
def test_chunked_loss_equals_full_logits_in_value_and_gradients(chunk):
    gen = torch.Generator().manual_seed(0)
    rows, hidden, vocab = 41, 32, 500
    h = torch.randn(rows, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * 0.3
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[[3, 17, 40]] = -1  # ignored positions count neither in the loss nor in the mean
    ref_loss, (ref_h, ref_w) = _grads(lambda a, b: plain_linear_cross_entropy(a, b, target) * 0.37, h, w)
    loss, (gh, gw) = _grads(lambda a, b: chunked_linear_cross_entropy(a, b, target, chunk) * 0.37, h, w)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(gh, ref_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, ref_w, rtol=1e-5, atol=1e-7)
    assert gh[[3, 17, 40]].abs().max() == 0


def test_chunked_loss_under_no_grad_computes_no_gradients(monkeypatch):
    # Evaluation calls the loss under torch.no_grad() with parameters that require grad; autograd still reports
    # needs_input_grad=True inside the Function there, so the gradients must be skipped on grad mode, not on that.
    import model.loss as loss_module

    asked = []
    real = loss_module._chunk_loss_and_grad
    monkeypatch.setattr(loss_module, "_chunk_loss_and_grad",
                        lambda *a: asked.append(a[3]) or real(*a))
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(9, 8, generator=gen, requires_grad=True)
    w = torch.randn(50, 8, generator=gen, requires_grad=True)
    t = torch.randint(0, 50, (9,), generator=gen)
    with torch.no_grad():
        quiet = chunked_linear_cross_entropy(h, w, t, chunk=4)
    assert asked == [False] * 3 and not quiet.requires_grad
    asked.clear()
    loud = chunked_linear_cross_entropy(h, w, t, chunk=4)
    assert asked == [True] * 3 and torch.equal(quiet, loud.detach())
    loud.backward()
    assert h.grad is not None and w.grad is not None


def test_chunk_rule_bounds_a_chunk_of_logits_to_the_input_size():
    # 12 x 1024 rows at the 750M shape: 40 chunks of vocabulary/hidden -> 512 rows (a power of two, as Liger's rule).
    assert chunk_rows(12 * 1024, 1280, 50304) == 512
    # A tiny model gets the floor (256 rows x 50,304 >= 2^23 logits) instead of one-row chunks; never more than rows.
    assert chunk_rows(8 * 64, 64, 50304) == 256
    assert chunk_rows(5, 64, 50304) == 5 and chunk_rows(3, 4096, 1000) == 3


def test_model_loss_and_gradients_equal_the_full_logits_path():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY))
    tokens = torch.randint(0, 50257, (3, 33), generator=torch.Generator().manual_seed(1))
    idx, targets = tokens[:, :-1], tokens[:, 1:].clone()
    targets[0, :5] = -1
    logits, _ = model(idx)
    ref = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    no_logits, loss = model(idx, targets)
    loss.backward()
    assert no_logits is None
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    for name, p in model.named_parameters():
        # fp32 sums in another order: elementwise error relative to the tensor's largest gradient (a tiny entry's
        # own relative error can be large; a wrong scale, mask or missing term would be ~1e-1, not 1e-5).
        err = (p.grad - ref_grads[name]).abs().max() / ref_grads[name].abs().max()
        assert err < 2e-5, (name, err.item())


def _unfused_forward(model, idx):
    """The block loop as written before the residual adds were fused into the norms: `x = x + sublayer(norm(x))`."""
    x = model.tok_embeddings(idx)
    cos, sin = model.rotary(idx.shape[1], idx.device, x.dtype)
    mask = model.attention_mask(idx, x.dtype)
    for layer in model.layers:
        x = x + layer.attention(layer.attention_norm(x), cos, sin, mask)
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.norm(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_residual_adds_fused_into_the_norms_compute_exactly_the_unfused_blocks(dtype):
    # Bitwise, not close: the (delta, residual) form only moves each add into the norm that reads it. Logits, the
    # few-positions path and the loss with its gradients, in both dtypes (bf16 rounds the sum once either way).
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**TINY, "n_layer": 3})).to(dtype)
    with torch.no_grad():
        for layer in model.layers:  # non-trivial gains, so a norm applied to the wrong tensor shows
            layer.ffn_norm.weight.add_(0.1 * torch.randn_like(layer.ffn_norm.weight))
    tokens = torch.randint(0, 50257, (2, 17), generator=torch.Generator().manual_seed(2))
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        h = _unfused_forward(model, idx)
        assert torch.equal(model(idx)[0], model.output(h))
        index = torch.tensor([[0, 5, 15], [3, 3, 9]])
        assert torch.equal(model(idx, logits_index=index)[0],
                           model.output(h.gather(1, index[..., None].expand(-1, -1, h.size(-1)))))
    _, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = chunked_linear_cross_entropy(_unfused_forward(model, idx).flatten(0, 1), model.output.weight,
                                       targets.reshape(-1))
    ref.backward()
    assert torch.equal(loss, ref)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]), name


def _rope_before(x, head_dim, theta=10000.0):
    """The RoPE this module computed before: full-width fp32 tables, fp32 rotation through chunk/cat, cast back."""
    T = x.shape[1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def test_rope_in_the_activation_dtype_equals_the_fp32_rotation():
    x = torch.randn(2, 1024, 3, 64, generator=torch.Generator().manual_seed(0))
    rope = RotaryEmbedding(64, 10000.0)
    cos, sin = rope(1024, torch.device("cpu"))
    torch.testing.assert_close(apply_rotary(x, cos, sin), _rope_before(x, 64), rtol=1e-6, atol=1e-6)
    # bf16: exactly Hugging Face Llama's bf16 RoPE (full-width tables cast to bf16, `x * cos + rotate_half(x) * sin`
    # in bf16; transformers models/llama/modeling_llama.py apply_rotary_pos_emb), and within bf16 rounding of the
    # fp32 round trip it replaces (error relative to the pair |x1| + |x2| that each output element mixes).
    xb = x.bfloat16()
    cos_b, sin_b = rope(1024, torch.device("cpu"), torch.bfloat16)
    assert cos_b.dtype == torch.bfloat16
    got = apply_rotary(xb, cos_b, sin_b)
    x1, x2 = xb.chunk(2, dim=-1)
    full_cos, full_sin = (torch.cat((t, t), dim=-1)[None, :, None, :] for t in (cos_b, sin_b))
    assert torch.equal(got, xb * full_cos + torch.cat((-x2, x1), dim=-1) * full_sin)
    pair = (x1.float().abs() + x2.float().abs()).repeat(1, 1, 1, 2)
    assert ((got.float() - _rope_before(xb, 64).float()).abs() / pair).max() < 2 * 2**-8


def test_old_checkpoints_with_separate_projections_load_as_fused(tmp_path):
    config = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    save_model_checkpoint(tmp_path / "old", model, config)
    # Rewrite the weights file the way the unfused model saved it: wq/wk/wv and w1/w3 as separate tensors.
    old = {}
    for name, tensor in model.state_dict().items():
        if name != "output.weight":
            old.update({k: v.contiguous() for k, v in split_fused(name, tensor).items()})
    assert "layers.1.attention.wk.weight" in old and "layers.1.feed_forward.w3.weight" in old
    save_file(old, str(tmp_path / "old" / WEIGHTS_FILE))
    loaded, _, _ = load_model_checkpoint(tmp_path / "old")
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_compiled_blocks_keep_names_and_numbers():
    from launcher.engine import compile_blocks

    torch.manual_seed(0)
    eager = Transformer(ModelConfig(**{**TINY, "n_layer": 1}))
    compiled = Transformer(ModelConfig(**{**TINY, "n_layer": 1}))
    compiled.load_state_dict(eager.state_dict())
    # aot_eager: Dynamo and AOTAutograd trace each block (graph, guards, backward) without Inductor's C++ build,
    # which takes minutes on this CPU; the GPU path uses the default backend.
    assert compile_blocks(compiled, backend="aot_eager") == 1
    assert list(compiled.state_dict()) == list(eager.state_dict())
    tokens = torch.randint(0, 50257, (2, 17), generator=torch.Generator().manual_seed(2))
    losses = []
    for model in (eager, compiled):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def test_a_ds_config_compile_section_is_refused_with_the_fix(tmp_path):
    import json

    from launcher.config import TrainConfig
    from launcher.engine import build_ds_config

    ds = json.loads(open("ds_configs/zero2_bf16.json").read())
    ds["compile"] = {"deepcompile": True}
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    cfg = TrainConfig.from_json("configs/tiny/test_cpu.json")
    with pytest.raises(ValueError, match=r"ds\.json: the `compile` section is not used.*\"compile\": true"):
        build_ds_config(cfg, tmp_path / "ds.json", world_size=1, on_cuda=False)
