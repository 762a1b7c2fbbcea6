"""Document-isolated attention (model/attention.py): the mask, every kernel against a dense reference, what the model
computes with it, and the settings around it."""

from __future__ import annotations

import json

import pytest
import torch

from model import attention as attn
from model.config import EOT_ID, ModelConfig
from model.transformer import Transformer

TINY = dict(n_embd=64, n_head=4, n_layer=2, block_size=128, dropout=0.0, fused_kernels=False)


def _rows(batch: int, length: int, seed: int, p_eot: float = 0.08) -> torch.Tensor:
    """Token rows with EOTs at random places (runs of EOT included, as padding gives)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, EOT_ID, (batch, length), generator=gen)
    return idx.masked_fill(torch.rand(batch, length, generator=gen) < p_eot, EOT_ID)


def _allowed_brute_force(keys: torch.Tensor, past: int) -> torch.Tensor:
    """(B, Tq, Tk) bool, written as the rule says: key j <= query i, and no EOT in [j, i) (j's document ends at or
    after i)."""
    b, tk = keys.shape
    out = torch.zeros(b, tk - past, tk, dtype=torch.bool)
    for r in range(b):
        row = keys[r].tolist()
        for i in range(past, tk):
            for j in range(i + 1):
                out[r, i - past, j] = EOT_ID not in row[j:i]
    return out


def test_document_ids_count_the_eots_strictly_before_each_position():
    idx = _rows(3, 50, seed=0)
    doc = attn.document_ids(idx, EOT_ID)
    for r in range(3):
        row = idx[r].tolist()
        assert doc[r].tolist() == [row[:t].count(EOT_ID) for t in range(50)]
    assert attn.dense_allowed(doc, doc, 0).equal(_allowed_brute_force(idx, 0))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("past", [0, 37], ids=["no_cache", "kv_cache"])
def test_sdpa_path_matches_the_dense_reference(dtype, tol, past):
    gen = torch.Generator().manual_seed(1)
    keys = _rows(2, 96, seed=2)
    b, h, tk, d = 2, 3, keys.shape[1], 16
    q = torch.randn(b, h, tk - past, d, generator=gen).to(dtype)
    k, v = (torch.randn(b, h, tk, d, generator=gen).to(dtype) for _ in range(2))
    mask = attn.build_attention_mask(keys[:, past:], "document", "auto", 0.0, dtype, EOT_ID,
                                     cache_ids=keys[:, :past] if past else None)
    assert mask.backend == "sdpa" and mask.additive.dtype == dtype
    got = attn.attend(q, k, v, mask, dropout_p=0.0).float()
    ref = attn.reference_attention(q.double(), k.double(), v.double(), _allowed_brute_force(keys, past)).float()
    assert (got - ref).abs().max().item() < tol
    # The tolerance tells the masks apart: the plain causal mask is far outside it.
    causal = attn.dense_allowed(*(torch.zeros(b, n, dtype=torch.int32) for n in (tk - past, tk)), past)
    wrong = attn.reference_attention(q.double(), k.double(), v.double(), causal).float()
    assert (wrong - ref).abs().max().item() > 20 * tol


def test_eager_flex_attention_matches_the_dense_reference_on_the_cpu():
    # The mask_mod the CUDA path compiles, run by FlexAttention's eager path (forward only: no backward on the CPU).
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    gen = torch.Generator().manual_seed(3)
    idx = _rows(2, 256, seed=4, p_eot=0.02)
    q, k, v = (torch.randn(2, 2, 256, 32, generator=gen) for _ in range(3))
    doc = attn.document_ids(idx, EOT_ID)
    block_mask = create_block_mask(attn.flex_mask_mod(doc), 2, None, 256, 256, device="cpu")
    got = flex_attention(q, k, v, block_mask=block_mask)
    ref = attn.reference_attention(q, k, v, _allowed_brute_force(idx, 0))
    assert (got - ref).abs().max().item() < 1e-5


def test_auto_backend_per_device_and_dropout_and_refusals():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attn.resolve_backend("causal", "auto", cuda, 0.0) == "sdpa_causal"
    assert attn.resolve_backend("document", "auto", cpu, 0.0) == "sdpa"
    assert attn.resolve_backend("document", "auto", cuda, 0.0) == "flex"
    assert attn.resolve_backend("document", "auto", cuda, 0.1) == "sdpa"  # FlexAttention takes no dropout
    with pytest.raises(ValueError, match="no backward on the CPU"):
        attn.resolve_backend("document", "flex", cpu, 0.0)
    with pytest.raises(ValueError, match="model.attention must be one of"):
        ModelConfig(**{**TINY, "attention": "doc"})
    with pytest.raises(ValueError, match="takes no dropout.*model.dropout to 0"):
        ModelConfig(**{**TINY, "dropout": 0.1, "attention_backend": "flex"})


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**TINY, **overrides})).eval()


@torch.no_grad()
def test_a_document_reads_nothing_of_the_one_before_it():
    a, b = _rows(1, 40, seed=5, p_eot=0), _rows(1, 60, seed=6, p_eot=0)
    other_a = _rows(1, 40, seed=7, p_eot=0)
    eot = torch.full((1, 1), EOT_ID)
    for attention, leaks in (("document", False), ("causal", True)):
        model = _model(attention=attention)
        one = model(torch.cat([a, eot, b], 1))[0][:, 41:]
        two = model(torch.cat([other_a, eot, b], 1))[0][:, 41:]
        change = (one - two).abs().max().item()
        assert (change > 1e-2) if leaks else (change == 0.0), (attention, change)


@torch.no_grad()
def test_a_document_s_logits_do_not_depend_on_where_it_sits_in_the_row():
    # Positions do not restart per document: with RoPE only distances matter, so B after A equals B alone.
    a, b = _rows(1, 50, seed=8, p_eot=0), _rows(1, 70, seed=9, p_eot=0)
    row = torch.cat([a, torch.full((1, 1), EOT_ID), b], 1)
    for arch, moves in (("llama", False), ("gpt2", True)):  # gpt2's learned absolute positions are the control
        model = _model(arch=arch)
        packed, alone = model(row)[0][:, 51:], model(b)[0]
        change = (packed - alone).abs().max().item()
        assert (change > 1e-2) if moves else (change < 1e-4), (arch, change)


def test_the_mask_is_built_once_per_forward(monkeypatch):
    calls = []
    real = attn.build_attention_mask
    monkeypatch.setattr("model.transformer.build_attention_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _model(n_layer=3).train()
    idx = _rows(2, 64, seed=10)
    _, loss = model(idx, idx.roll(-1, 1))
    loss.backward()
    assert len(calls) == 1


def test_compiled_blocks_do_not_recompile_for_another_document_layout():
    from launcher.engine import compile_blocks

    torch._dynamo.reset()
    model = _model().train()
    compile_blocks(model, backend="aot_eager")

    def step(seed: int) -> None:  # a different number and placement of documents per seed
        idx = _rows(2, 64, seed=seed, p_eot=0.05 * (seed - 10))
        _, loss = model(idx, idx.roll(-1, 1))
        loss.backward()

    step(11)  # compiles the first block (no delta yet) and the others (a delta): two graphs, once
    with torch._dynamo.config.patch(error_on_recompile=True):
        step(12)
        step(13)
    torch._dynamo.reset()


def test_eot_id_is_the_tokenizers():
    from data.tokenizer import EOT, get_tokenizer

    assert EOT_ID == EOT == get_tokenizer().eot_token


def test_a_checkpoint_from_before_the_setting_loads_as_causal(tmp_path):
    from model.io import CONFIG_FILE, load_model_checkpoint, save_model_checkpoint

    model = _model()
    save_model_checkpoint(tmp_path / "gold", model, model.config)
    values = json.loads((tmp_path / "gold" / CONFIG_FILE).read_text())
    assert values["attention"] == "document"
    loaded, config, _ = load_model_checkpoint(tmp_path / "gold")
    assert config.attention == "document"
    del values["attention"]
    (tmp_path / "gold" / CONFIG_FILE).write_text(json.dumps(values))
    _, config, _ = load_model_checkpoint(tmp_path / "gold")
    assert config.attention == "causal"


def test_the_fingerprint_of_a_causal_run_is_the_one_from_before_the_setting():
    from launcher.config import TrainConfig

    cfg = TrainConfig.from_json("configs/tiny/demo_cpu.json")
    document = cfg.fingerprint()
    cfg.model.attention = "causal"
    # configs/tiny/demo_cpu.json's fingerprint at the commit before model.attention existed: a run trained then
    # resumes with "attention": "causal".
    assert cfg.fingerprint() == "7c5e90fb7cbdea3c" != document
    cfg.model.attention_backend = "sdpa"  # the same numbers computed another way
    assert cfg.fingerprint() == "7c5e90fb7cbdea3c"


# --- on a GPU ---------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_cuda_kernels_match_the_dense_reference_with_gradients(backend):
    # The 750M layer's shape, bf16, forward and backward, the mask built without a host sync.
    gen = torch.Generator().manual_seed(0)
    idx = _rows(2, 1024, seed=14, p_eot=0.005).cuda()
    q, k, v = (torch.randn(2, 20, 1024, 64, generator=gen).cuda().bfloat16().requires_grad_() for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mask = attn.build_attention_mask(idx, "document", backend, 0.0, torch.bfloat16, EOT_ID)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert mask.backend == backend
    out = attn.attend(q, k, v, mask, dropout_p=0.0)
    grad = torch.randn_like(out)
    out.backward(grad)
    got = [t.float() for t in (out, q.grad, k.grad, v.grad)]
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    doc = attn.document_ids(idx, EOT_ID)
    ref = attn.reference_attention(qd, kd, vd, attn.dense_allowed(doc, doc, 0))
    ref.backward(grad.double())
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, (ref, qd.grad, kd.grad, vd.grad), strict=True):
        err = (g - r.float()).abs().max().item()
        assert err < 2e-2 * max(1.0, r.abs().max().item()), (name, err)


@pytest.mark.gpu
@needs_cuda
def test_cuda_compiled_model_does_not_recompile_for_another_document_layout():
    from launcher.engine import compile_blocks

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**TINY, "block_size": 256})).cuda().train()
    compile_blocks(model)

    def step(seed: int) -> None:
        idx = _rows(2, 256, seed=seed, p_eot=0.01 * (seed - 14)).cuda()
        with torch.autocast("cuda", torch.bfloat16):
            _, loss = model(idx, idx.roll(-1, 1))
        loss.backward()

    step(15)
    with torch._dynamo.config.patch(error_on_recompile=True):
        step(16)
        step(17)
    torch._dynamo.reset()
