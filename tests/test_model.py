"""The model: parameter count, architecture checks, Hugging Face equivalence, checkpoint files, config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from launcher.export import export
from model.config import ModelConfig
from model.io import load_model_checkpoint, save_model_checkpoint
from model.transformer import Transformer
from scripts.model import smoke_test_arch

BASE_CONFIG = "configs/base/750M_unified_v1.json"
TINY = dict(n_embd=64, n_head=4, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False)


def test_750m_config_builds_exactly_698_860_800_parameters_on_meta():
    config = ModelConfig.from_json(BASE_CONFIG)
    with torch.device("meta"):
        model = Transformer(config)
    assert model.num_params() == 698_860_800
    assert config.ffn_hidden == 3456 and config.head_dim == 64


def test_smoke_test_passes_on_tiny_and_750m_count(capsys):
    assert smoke_test_arch.main(["--config", "configs/tiny/demo_cpu.json"]) == 0
    assert smoke_test_arch.main(["--config", BASE_CONFIG]) == 0
    out = capsys.readouterr().out
    assert "698,860,800" in out and "FAIL" not in out


def test_smoke_test_catches_a_non_causal_model(monkeypatch):
    # Attention without the causal mask: the causality check must fail.
    real_sdpa = F.scaled_dot_product_attention

    def leaky_sdpa(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0):
        return real_sdpa(q, k, v, is_causal=False, dropout_p=dropout_p)

    monkeypatch.setattr("model.attention.F.scaled_dot_product_attention", leaky_sdpa)
    for attention in ("document", "causal"):
        checks = smoke_test_arch.run_checks(ModelConfig(**TINY, attention=attention), full=True)
        results = {name: (ok, detail) for name, ok, detail in checks}
        assert results["causal"][0] is False, results["causal"]
        assert "Error" not in results["causal"][1]  # failed on the numbers, not on a crash


def test_smoke_test_catches_attention_across_documents(monkeypatch):
    # Document ids all zero: the mask is plain causal, so document B reads A.
    monkeypatch.setattr("model.attention.document_ids", lambda idx, eot: torch.zeros_like(idx, dtype=torch.int32))
    results = {name: ok for name, ok, _ in smoke_test_arch.run_checks(ModelConfig(**TINY), full=True)}
    assert results["document"] is False and results["causal"] is True
    skipped = {name: detail for name, _, detail in smoke_test_arch.run_checks(ModelConfig(**TINY, attention="causal"),
                                                                            full=True)}
    assert skipped["document"].startswith("skipped")


def test_smoke_test_catches_absolute_position_rope(monkeypatch):
    # A "RoPE" whose angle is not linear in position breaks the relative-position property.
    from model import transformer

    real_forward = transformer.RotaryEmbedding.forward

    def broken(self, seq_len, device):
        cos, sin = real_forward(self, seq_len, device)
        ramp = torch.linspace(0, 1, seq_len, device=device)[:, None] ** 2
        return torch.cos(torch.acos(cos) + ramp), torch.sin(torch.asin(sin) + ramp)

    monkeypatch.setattr(transformer.RotaryEmbedding, "forward", broken)
    results = {name: ok for name, ok, _ in smoke_test_arch.run_checks(ModelConfig(**TINY), full=True)}
    assert results["rope"] is False


def test_init_loss_is_close_to_uniform():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY)).eval()
    tokens = torch.randint(0, 50257, (4, 65))
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - math.log(50304)) < 0.1


def _export_and_load(tmp_path, config: ModelConfig, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = Transformer(config).eval()
    # Random norm gains so a swapped input/post-attention norm would show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    save_model_checkpoint(tmp_path / "ckpt", model, config, {"step": 7})
    export(tmp_path / "ckpt", tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    return model, hf


def test_hf_export_gives_the_same_logits(tmp_path):
    config = ModelConfig(**{**TINY, "n_layer": 3})
    model, hf = _export_and_load(tmp_path, config)
    tokens = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, _ = model(tokens)
        theirs = hf(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_hf_export_computes_document_attention_one_document_per_row_or_with_packed_position_ids(tmp_path):
    from model.attention import document_positions
    from model.config import EOT_ID

    model, hf = _export_and_load(tmp_path, ModelConfig(**TINY))
    assert json.loads((tmp_path / "hf" / "export_metadata.json").read_text())["attention"] == "document"
    gen = torch.Generator().manual_seed(4)
    docs = [torch.randint(0, EOT_ID, (n,), generator=gen) for n in (20, 25, 16)]
    eot = torch.tensor([EOT_ID])
    single = torch.cat([docs[0], eot])[None]
    row = torch.cat([torch.cat([d, eot]) for d in docs])[None]  # 3 documents packed, 64 tokens
    positions = document_positions(row, EOT_ID)
    assert positions[0, :21].tolist() == list(range(21)) and positions[0, 21:47].tolist() == list(range(26))
    with torch.no_grad():
        assert (model(single)[0] - hf(single).logits).abs().max().item() <= 1e-4
        ours = model(row)[0]
        assert (ours - hf(row, position_ids=positions, use_cache=False).logits).abs().max().item() <= 1e-4
        # The control: without the position ids, Hugging Face reads across documents and the later ones differ.
        assert (ours[:, 21:] - hf(row).logits[:, 21:]).abs().max().item() > 1e-2


def test_hf_equivalence_check_detects_swapped_gate_and_up(tmp_path):
    # The equivalence test must be able to fail: swap w1 (gate) and w3 (up) in the export and compare again.
    config = ModelConfig(**TINY)
    model, hf = _export_and_load(tmp_path, config)
    with torch.no_grad():
        for layer in hf.model.layers:
            gate = layer.mlp.gate_proj.weight.clone()
            layer.mlp.gate_proj.weight.copy_(layer.mlp.up_proj.weight)
            layer.mlp.up_proj.weight.copy_(gate)
    tokens = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model(tokens)[0] - hf(tokens).logits).abs().max().item()
    assert diff > 1e-3


def test_model_checkpoint_round_trip(tmp_path):
    config = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(config)
    save_model_checkpoint(tmp_path / "gold", model, config, {"step": 3, "val_loss": 1.5})
    loaded, loaded_config, metadata = load_model_checkpoint(tmp_path / "gold")
    assert loaded_config == config and metadata == {"step": 3, "val_loss": 1.5}
    assert loaded.output.weight is loaded.tok_embeddings.weight
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # Saving again replaces the directory atomically and leaves no temp directories behind.
    save_model_checkpoint(tmp_path / "gold", model, config, {"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gold"]


def test_load_model_checkpoint_rejects_a_non_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a model checkpoint"):
        load_model_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"n_embd": 130}, "n_head"),
        ({"vocab_size": 50000}, "vocab_size"),
        ({"n_layer": 0}, "n_layer"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_model_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**TINY, **change})


def test_model_config_rejects_unknown_and_missing_keys(tmp_path):
    with pytest.raises(ValueError, match="n_embed"):
        ModelConfig.from_dict({**TINY, "n_embed": 64})
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": {**TINY, "rope_scale": 2}}))
    with pytest.raises(ValueError, match="rope_scale"):
        ModelConfig.from_json(path)


def test_sequence_longer_than_block_size_is_a_clear_error():
    model = Transformer(ModelConfig(**TINY))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
