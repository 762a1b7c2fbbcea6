"""The KV-cache generator (model/generate.py): cached logits equal the full forward, batched prompts equal each
prompt alone, greedy tokens equal Hugging Face `generate` on the export, and the samplers keep to their sets."""

from __future__ import annotations

import pytest
import torch

from model.config import EOT_ID, GPT2_TOKENIZER_VOCAB, ModelConfig
from model.generate import generate, next_token
from model.kv_cache import KVCache
from model.transformer import Transformer

TINY = dict(n_embd=64, n_head=4, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False)


def _model(seed: int = 0, **change) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**TINY, "init_std": 0.3, **change})).eval()
    with torch.no_grad():  # wide init and random norm gains: a greedy path of many tokens, not one repeated
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 3.0)
    return model


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 50000, (9,), generator=g).tolist()
    b = torch.randint(0, 50000, (5,), generator=g).tolist() + [EOT_ID] + torch.randint(0, 50000, (7,),
                                                                                       generator=g).tolist()
    c = torch.randint(0, 50000, (3,), generator=g).tolist()
    return [a, b, c]


@pytest.mark.parametrize("change", [{}, {"attention": "causal"}, {"arch": "gpt2"}],
                         ids=["document", "causal", "gpt2"])
def test_cached_logits_equal_the_full_forward_at_every_position(change):
    model = _model(**{"init_std": 0.02, **change})  # logits of order 1, so that 1e-5 is float rounding
    seq = torch.tensor([_prompts()[1] + _prompts()[0]])  # an EOT inside: the document mask must hold across steps
    full, _ = model(seq)  # (1, T, V)
    cache = KVCache(model.config, 1, seq.shape[1], "cpu", torch.float32)
    prefill = 6
    logits, _ = model(seq[:, :prefill], cache=cache)
    torch.testing.assert_close(logits, full[:, :prefill], atol=1e-5, rtol=0)
    for t in range(prefill, seq.shape[1]):
        step, _ = model(seq[:, t:t + 1], cache=cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=0)
    assert cache.length == seq.shape[1]


@pytest.mark.parametrize("change", [{}, {"attention": "causal"}, {"arch": "gpt2"}],
                         ids=["document", "causal", "gpt2"])
def test_batched_greedy_equals_each_prompt_alone_and_the_uncached_loop(change):
    model = _model(**change)
    prompts = _prompts()
    batched = generate(model, prompts, 10)
    for prompt, got in zip(prompts, batched, strict=True):
        alone = generate(model, [prompt], 10)[0]
        uncached = generate(model, [prompt], 10, use_cache=False)[0]
        assert got.tokens == alone.tokens == uncached.tokens
        assert got.finish == "length" and len(got.tokens) == 10
    assert [g.tokens for g in generate(model, prompts, 10, use_cache=False)] == [g.tokens for g in batched]
    assert len(set(batched[0].tokens)) > 1, "the test model must not repeat one token"


def test_greedy_equals_hugging_face_generate_on_the_export(tmp_path):
    from transformers import LlamaForCausalLM

    from launcher.export import export
    from model.io import save_model_checkpoint

    model = _model()
    save_model_checkpoint(tmp_path / "ckpt", model, model.config, {"step": 1})
    export(tmp_path / "ckpt", tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    # One document per prompt: a prompt with an EOT inside is two documents to our model, and one to HF's generate
    # (transformers isolates packed documents only without a KV cache: scripts/export_hf.py).
    prompts = [p for p in _prompts() if EOT_ID not in p]
    ours = generate(model, prompts, 12)
    # Our generator never samples the embedding's padding ids (no text decodes to them); HF is told the same.
    suppress = list(range(GPT2_TOKENIZER_VOCAB, model.config.vocab_size))
    for prompt, got in zip(prompts, ours, strict=True):
        theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, suppress_tokens=suppress, eos_token_id=EOT_ID,
                             pad_token_id=EOT_ID)
        assert theirs[0, len(prompt):].tolist() == got.tokens
    # HF's batched path: left padding with an attention mask (positions then count from each row's first token).
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[EOT_ID] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, suppress_tokens=suppress,
                         eos_token_id=EOT_ID, pad_token_id=EOT_ID)
    assert [row[width:].tolist() for row in theirs] == [g.tokens for g in ours]


def test_a_stop_id_ends_the_row_and_keep_going_can_end_it_early():
    model = _model()
    prompts = _prompts()
    free = generate(model, prompts, 8)
    stop = free[0].tokens[3]
    first = free[0].tokens.index(stop)
    stopped = generate(model, prompts, 8, stop_ids=(stop,))
    assert stopped[0].tokens == free[0].tokens[:first] and stopped[0].finish == "stop"
    cut = generate(model, prompts, 8, keep_going=lambda row, tokens: len(tokens) < 2 + row)
    assert [len(g.tokens) for g in cut] == [2, 3, 4] and all(g.finish == "stop" for g in cut)
    assert [g.tokens for g in cut] == [f.tokens[:2 + i] for i, f in enumerate(free)]


def test_sampling_is_reproducible_by_seed_and_keeps_to_top_k_and_top_p():
    model = _model()
    prompts = _prompts()
    a = generate(model, prompts, 8, temperature=1.0, seed=3)
    assert [g.tokens for g in a] == [g.tokens for g in generate(model, prompts, 8, temperature=1.0, seed=3)]
    assert [g.tokens for g in a] != [g.tokens for g in generate(model, prompts, 8, temperature=1.0, seed=4)]
    greedy = [g.tokens for g in generate(model, prompts, 8)]
    assert [g.tokens for g in generate(model, prompts, 8, temperature=1.0, top_k=1, seed=1)] == greedy
    assert [g.tokens for g in generate(model, prompts, 8, temperature=1.0, top_p=1e-6, seed=1)] == greedy
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(4000, -1)
    gen = torch.Generator().manual_seed(0)
    top_p = next_token(logits, 1.0, 0, 0.7, gen)  # the smallest set reaching 0.7 is {0, 1}
    assert set(top_p.tolist()) == {0, 1}
    assert abs((top_p == 0).float().mean().item() - 0.5 / 0.8) < 0.03  # renormalised inside the set
    top_k = next_token(logits, 1.0, 3, 1.0, gen)
    assert set(top_k.tolist()) == {0, 1, 2}
    assert abs((top_k == 2).float().mean().item() - 0.15 / 0.95) < 0.03


def test_bad_arguments_are_refused_before_any_forward():
    model = _model()
    with pytest.raises(ValueError, match="block_size"):
        generate(model, [[1] * 64], 4)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1, 2]], 4, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 4)


def test_probe_greedy_answers_are_the_same_through_the_cache():
    from data.tokenizer import get_tokenizer
    from launcher.probes import build_probes, greedy_answers

    model = _model(block_size=256)

    class NoCache(torch.nn.Module):  # the same model seen as one without a cache (as the HF export is)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx, logits_index=None):
            return self.inner(idx, logits_index=logits_index)

    probes = build_probes(get_tokenizer(), 256, per_bucket=1, unanswerable_per_bucket=1, num_articles=60)
    prompts = [it.prompt for it in probes.retrieval][:6]
    golds = [it.answer for it in probes.retrieval][:6]
    cached = greedy_answers(model, prompts, probes, "cpu", batch_size=4)
    assert cached == greedy_answers(NoCache(model), prompts, probes, "cpu", batch_size=4)
    assert any(cached), "the test model must answer something"
    assert (greedy_answers(model, prompts, probes, "cpu", batch_size=4, golds=golds)
            == greedy_answers(NoCache(model), prompts, probes, "cpu", batch_size=4, golds=golds))
