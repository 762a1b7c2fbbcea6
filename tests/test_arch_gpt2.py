"""The GPT-2 ablation architecture (`ModelConfig.arch = "gpt2"`): parameter count, structure, positions, export refusal,
and that "llama" is untouched."""

from __future__ import annotations

import math

import pytest
import torch

from launcher.export import export
from model.config import ModelConfig
from model.io import load_model_checkpoint, save_model_checkpoint
from model.transformer import Transformer
from scripts.model import smoke_test_arch

TINY = dict(n_embd=64, n_head=4, n_layer=2, block_size=32, dropout=0.0, fused_kernels=False)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_parameter_count_matches_the_closed_form(bias, tie):
    config = ModelConfig(**TINY, arch="gpt2", bias=bias, tie_weights=tie)
    assert Transformer(config).num_params() == config.expected_num_params()


def test_gpt2_750m_shape_is_the_specs_old_model_and_llama_count_is_unchanged():
    llama = ModelConfig.from_json("configs/base/750M_unified_v1.json")
    assert llama.arch == "llama" and llama.expected_num_params() == 698_860_800
    # The old model: GPT-2 architecture at the same width/depth, biases as in GPT-2 ("~695M").
    gpt2 = ModelConfig(**{**llama.to_dict(), "arch": "gpt2", "bias": True})
    with torch.device("meta"):
        model = Transformer(gpt2)
    assert model.num_params() == gpt2.expected_num_params() == 695_380_480


def test_gpt2_modules_are_layernorm_gelu_and_learned_positions():
    model = Transformer(ModelConfig(**TINY, arch="gpt2", bias=True))
    names = dict(model.named_parameters())
    assert "pos_embeddings.weight" in names and model.rotary is None
    assert isinstance(model.layers[0].attention_norm, torch.nn.LayerNorm)
    assert "layers.0.attention_norm.bias" in names and "norm.bias" in names
    assert not hasattr(model.layers[0].feed_forward, "w3")  # GELU MLP: two matrices, not SwiGLU's three
    assert model.layers[0].feed_forward.w1.weight.shape == (4 * 64, 64)
    no_bias = dict(Transformer(ModelConfig(**TINY, arch="gpt2", bias=False)).named_parameters())
    assert not any(n.endswith(".bias") for n in no_bias)


def test_gpt2_forward_matches_a_hand_written_gpt2_block():
    # One layer computed by hand from the module's weights: LayerNorm -> causal attention -> residual ->
    # LayerNorm -> tanh-GELU MLP -> residual, on token + position embeddings.
    config = ModelConfig(**{**TINY, "n_layer": 1}, arch="gpt2", bias=True)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-trivial norm gains and biases
    idx = torch.randint(0, 50257, (2, 16))
    layer = model.layers[0]
    with torch.no_grad():
        x = model.tok_embeddings.weight[idx] + model.pos_embeddings.weight[:16]
        h = torch.nn.functional.layer_norm(x, (64,), layer.attention_norm.weight, layer.attention_norm.bias, 1e-5)
        # attention.wqkv stacks GPT-2's c_attn rows as q, k, v (each n_embd rows)
        q, k, v = (h @ w.t() + b for w, b in zip(layer.attention.wqkv.weight.chunk(3),
                                                 layer.attention.wqkv.bias.chunk(3), strict=True))
        q, k, v = (t.view(2, 16, 4, 16).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(16)
        att = att.masked_fill(torch.triu(torch.ones(16, 16, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + layer.attention.wo((att @ v).transpose(1, 2).reshape(2, 16, 64))
        h = torch.nn.functional.layer_norm(x, (64,), layer.ffn_norm.weight, layer.ffn_norm.bias, 1e-5)
        ff = layer.feed_forward
        x = x + ff.w2(0.5 * ff.w1(h) * (1 + torch.tanh(math.sqrt(2 / math.pi) * (ff.w1(h) + 0.044715 * ff.w1(h) ** 3))))
        expected = model.output(torch.nn.functional.layer_norm(x, (64,), model.norm.weight, model.norm.bias, 1e-5))
        got, _ = model(idx)
    assert (got - expected).abs().max().item() < 1e-5


def test_gpt2_positions_are_absolute_so_a_shifted_copy_changes_logits():
    # With learned absolute positions, the same tokens at another offset give other logits; the model is causal.
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY, arch="gpt2")).eval()
    with torch.no_grad():
        model.pos_embeddings.weight.normal_(0, 1.0)
        tokens = torch.randint(0, 50257, (1, 8))
        alone, _ = model(tokens)
        shifted, _ = model(torch.cat([torch.randint(0, 50257, (1, 4)), tokens], dim=1))
        assert (alone[0, 0] - shifted[0, 4]).abs().max().item() > 1e-3
    results = {name: (ok, detail) for name, ok, detail in smoke_test_arch.run_checks(
        ModelConfig(**TINY, arch="gpt2"), full=True)}
    assert all(ok for ok, _ in results.values()), results
    assert "skipped" in results["rope"][1]


def test_gpt2_checkpoint_round_trip_and_export_refusal(tmp_path):
    config = ModelConfig(**TINY, arch="gpt2", bias=True)
    torch.manual_seed(0)
    model = Transformer(config)
    save_model_checkpoint(tmp_path / "gold", model, config, {"step": 1})
    loaded, loaded_config, _ = load_model_checkpoint(tmp_path / "gold")
    assert loaded_config.arch == "gpt2"
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(idx)[0], loaded(idx)[0])
    with pytest.raises(ValueError, match="arch='gpt2'.*only arch 'llama'"):
        export(tmp_path / "gold", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_unknown_arch_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"model.arch must be one of \['llama', 'gpt2'\]"):
        ModelConfig(**TINY, arch="mamba")


def test_llama_weights_and_logits_unchanged_by_the_arch_field():
    # Golden values printed by the model code as committed before `arch` existed (commit 4a290e9), same seed and
    # input: adding the GPT-2 ablation must not change what "llama" initialises or computes.
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY)).eval()
    assert not any("pos_embeddings" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        logits, _ = model(torch.arange(100, 116)[None] * 37)
    assert logits.double().sum().item() == pytest.approx(171.27206829462807, abs=1e-3)
    expected = [-0.216319277882576, 0.16069504618644714, -0.05981888622045517, -0.023541850969195366]
    assert logits[0, -1, :4].tolist() == pytest.approx(expected, abs=1e-6)
