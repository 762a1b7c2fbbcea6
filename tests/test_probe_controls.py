"""Positive and negative controls of the probes (launcher/probes/): models whose circuit is known by construction
must read what the circuit implies, so a probe that stops responding (wrong target, wrong span, wrong bucket) fails
here. Thresholds and their reasons: docs/PROBES.md, "Controls".

The circuits are written as attention over one-hot token features (exact, deterministic, milliseconds), not trained:
a tiny model trained on this 2-core machine forms neither circuit within the test budget
(scripts/experiments/probe_claims.py measures what training does). They answer through the probes' own code on
the probes' own items: the default induction sequences (GPT-2 ids) and retrieval prompts in the pipeline's template
laid out by `build_retrieval_items` (synthetic single-token facts, `launcher.probes.synthetic`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from data.formats import NOT_IN_CONTEXT
from data.tokenizer import EOT, get_tokenizer
from launcher.probes import NUM_BUCKETS, PROBE_SEED, build_probes, induction_sequences, run_probes
from launcher.probes.synthetic import qa_records
from model.config import ModelConfig
from model.transformer import Transformer

ENC = get_tokenizer()
VOCAB = 50304
LN_V = math.log(VOCAB)
BETA = 20.0  # attention logit of a match; a null slot at BETA/2 (or 1.5 BETA for two-feature keys) wins otherwise
ALPHA = 30.0  # output logit of a copied token: its log-prob is -V * e^-30 ~ 0, any other token's ~ -30


def _attend(scores: torch.Tensor, values: torch.Tensor, null: float) -> torch.Tensor:
    """Causal softmax attention (B, T, T) with one extra key of score `null` and value 0 (attend-to-nothing)."""
    T = scores.size(-1)
    t = torch.arange(T)
    scores = scores.masked_fill(t[None, :] > t[:, None], float("-inf"))
    scores = torch.cat([scores, torch.full_like(scores[..., :1], null)], dim=-1)
    return torch.softmax(scores, dim=-1)[..., :T] @ values


def _positional(T: int, source: torch.Tensor) -> torch.Tensor:
    """Scores (T, T) of a head at query t attending to key position source[t] (a positional head)."""
    return BETA * (torch.arange(T)[None, :] == source[:, None]).float()


def _back(x: torch.Tensor, k: int) -> torch.Tensor:
    """A positional head attending exactly k back, in its sharp limit: x shifted by k, zeros where t < k (the same
    as `_attend(_positional(T, t - k), x, null)` up to e^-10, without a (B, T, T) softmax per head and call)."""
    out = torch.zeros_like(x)
    out[:, k:] = x[:, : x.size(1) - k]
    return out


class Features:
    """Token id -> one-hot of a small feature index (the ids the probe set uses); -1 features are all-zero."""

    def __init__(self, keys_of_ids: dict[int, str]):
        names = sorted(set(keys_of_ids.values()))
        self.d = len(names)
        self.lookup = torch.full((VOCAB,), -1, dtype=torch.long)
        for i, k in keys_of_ids.items():
            self.lookup[i] = names.index(k)
        self.names = names

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        f = self.lookup[idx]
        return torch.nn.functional.one_hot(f.clamp(min=0), self.d).float() * (f >= 0)[..., None]


class InductionCircuit(torch.nn.Module):
    """Two layers: a previous-token head writes tok(t-1) at t (`prev` picks the source position per t); an
    induction head at t attends where that previous token equals tok(t) and copies the token there.
    `copy_offset` replaces both by one positional head predicting tok(t + 1 - copy_offset) (DESIGN.md's shortcut)."""

    def __init__(self, ids, prev: str = "t-1", copy_offset: int | None = None, seed: int = 0):
        super().__init__()
        self.ids = torch.as_tensor(sorted(set(int(i) for i in ids)))
        self.feat = Features({int(i): str(int(i)) for i in self.ids})
        self.to_id = torch.as_tensor([int(n) for n in self.feat.names])
        self.prev, self.copy_offset, self.seed = prev, copy_offset, seed

    def forward(self, idx):
        B, T = idx.shape
        x = self.feat(idx)  # (B, T, d)
        t = torch.arange(T)
        if self.copy_offset is not None:
            out = _attend(_positional(T, t + 1 - self.copy_offset).expand(B, T, T), x, BETA / 2)
        else:
            if self.prev == "t-1":
                source = t - 1
            else:  # "shuffled": a fixed random earlier position other than t-1
                g = torch.Generator().manual_seed(self.seed)
                source = torch.tensor([-1, -1] + [int(torch.randint(0, k - 1, (1,), generator=g)) for k in
                                                  range(2, T)])
            prev = _attend(_positional(T, source).expand(B, T, T), x, BETA / 2)  # (B, T, d): tok(source[t])
            out = _attend(BETA * x @ prev.transpose(1, 2), x, BETA / 2)  # match tok(t) against prev(s), copy tok(s)
        logits = torch.zeros(B, T, VOCAB)
        logits[..., self.to_id] = ALPHA * out
        return logits, None


def _word(token: int) -> str:
    return ENC.decode([token]).strip()


class RetrievalCircuit(torch.nn.Module):
    """Grounded extractive QA for the facts "<name> <relation> <number>." in the retrieval template.

    Layer 1: positional heads write tok(t-1), tok(t-2) (what precedes a fact's number) and tok(t-5), tok(t-4) (the
    question's name and relation, seen from the ":" of "\\nAnswer:"). Layer 2: a head at t attends to the position
    (at least 6 back, before the question) whose (t-2, t-1) tokens equal the question's (name, relation) and copies
    its number; with no such fact it attends to nothing. A bigram table then continues: ":" -> " The" (the start
    of NOT_IN_CONTEXT, weaker than a copy), NOT_IN_CONTEXT word by word, and a number or its final "." -> EOT.

    Negative variants: `ground=False` matches the relation only (copies from any passage, not the subject's);
    `max_position` lets the copy head see only key positions below it (a head tied to absolute positions)."""

    def __init__(self, probes, ground: bool = True, max_position: int | None = None):
        super().__init__()
        ids = {t for it in probes.retrieval for seq in (it.prompt, it.answer_tokens, it.prompt_without or ())
               for t in seq}
        # Word identity: "Anna" opening the context and " Anna" in the question are one feature.
        self.feat = Features({t: _word(t) for t in ids})
        self.ground, self.max_position = ground, max_position
        # Output weights over the few ids this circuit ever emits (numbers, NOT_IN_CONTEXT, EOT), scattered into
        # the full vocabulary in forward: a dense (d, 50304) product per call would cost seconds per probe run.
        nic = ENC.encode_ordinary(" " + NOT_IN_CONTEXT)
        emit = {EOT, *nic}
        spaced = {k: ENC.encode_ordinary(" " + w) for k, w in enumerate(self.feat.names) if w.isdigit()}
        emit |= {ids[0] for ids in spaced.values() if len(ids) == 1}
        self.emit = torch.as_tensor(sorted(emit))
        col = {int(e): j for j, e in enumerate(self.emit)}
        self.copy_out = torch.zeros(self.feat.d, len(self.emit))
        for k, ids in spaced.items():
            if len(ids) == 1:
                self.copy_out[k, col[ids[0]]] = ALPHA  # a copied number is emitted as " 47", as the answer continues
        self.bigram = torch.zeros(self.feat.d, len(self.emit))
        chain = [ENC.encode_ordinary(":")[0], *nic]
        for a, b in zip(chain, [*nic, EOT], strict=True):
            self.bigram[self.feat.lookup[a], col[b]] = ALPHA / 2
        # Starting NOT_IN_CONTEXT is weaker than any copy holding >= 1/5 of the head's attention: a head split over
        # a few matching facts (the ungrounded variant) still answers with one of them.
        self.bigram[self.feat.lookup[chain[0]], col[nic[0]]] = ALPHA / 5
        for k in spaced:
            self.bigram[k, col[EOT]] = ALPHA / 2

    def forward(self, idx, logits_index=None):
        B, T = idx.shape
        x = self.feat(idx)  # (B, T, d)
        t = torch.arange(T)
        back = {k: _back(x, k) for k in (1, 2, 4, 5)}
        q_name, q_rel, k_name, k_rel = back[5], back[4], back[2], back[1]
        scores = BETA * q_rel @ k_rel.transpose(1, 2)
        scores = scores + (BETA * q_name @ k_name.transpose(1, 2) if self.ground else scores)
        # Keys inside the question itself ("Carl owes?" ends at t-3 and matches too) are not facts to copy from.
        scores = scores.masked_fill(t[None, :] > t[:, None] - 6, -1e4)
        if self.max_position is not None:
            scores = scores.masked_fill(t[None, None, :] >= self.max_position, -1e4)
        copied = _attend(scores, x, 1.5 * BETA)  # (B, T, d): the number whose fact matches both, or ~0
        small = copied @ self.copy_out + x @ self.bigram  # (B, T, emitted ids)
        if logits_index is not None:  # only the positions the probe reads, as Transformer.forward does
            small = small.gather(1, logits_index[..., None].expand(-1, -1, small.size(-1)))
        logits = torch.zeros(B, small.size(1), VOCAB)
        logits[..., self.emit] = small
        return logits, None


@pytest.fixture(scope="module")
def probes():
    # The trainer's induction sequences at the demo's block size (default seed and GPT-2-wide ids: the same array
    # `probes_for_block_size(64)` evaluates), and retrieval prompts from the same builder on held-out synthetic facts
    # (the controls' circuits answer those; the demo QA's multi-token facts would need a bigger circuit).
    return build_probes(ENC, 64, seed=PROBE_SEED, per_bucket=2, unanswerable_per_bucket=1,
                        records=list(qa_records(400, PROBE_SEED)))


def _induction(model, probes):
    return run_probes(model, replace(probes, retrieval=[]), 0, 1, "cpu")


def test_an_induction_circuit_reads_the_full_score_and_broken_or_positional_copiers_do_not(probes):
    ids = probes.induction.ravel()
    good = _induction(InductionCircuit(ids), probes)
    # First copy: nothing earlier matches, uniform logits: ln V. Second copy: the copied token at logit 30 against 0,
    # loss V e^-30 ~ 5e-9. So the score is ln V = 10.83; 0.05 nats of slack is what 8 sequences' rare repeated ids
    # inside a block (a wrong match) could cost, far below any broken reading.
    assert good["probe/induction_loss_first"] == pytest.approx(LN_V, abs=0.05)
    assert good["probe/induction_loss_second"] < 0.01
    assert good["probe/induction_score"] > LN_V - 0.06
    # The same induction head fed a previous-token head wired to random earlier positions: it matches the wrong
    # positions and copies confidently wrong tokens, so the second copy is no better than the first (score <= 0).
    shuffled = _induction(InductionCircuit(ids, prev="shuffled"), probes)
    assert shuffled["probe/induction_score"] < 0.0
    # DESIGN.md's shortcut: a positional copy head at offset 33 (the probe repeats at 32) is confidently wrong.
    off = _induction(InductionCircuit(ids, copy_offset=probes.half + 1), probes)
    assert off["probe/induction_score"] < -10
    # ... but at exactly the probe's offset it reads like induction: the score alone cannot tell the two apart, which
    # is why training controls must vary the offset (docs/PROBES.md).
    at = _induction(InductionCircuit(ids, copy_offset=probes.half), probes)
    assert at["probe/induction_score"] > LN_V - 0.06


def test_an_untrained_transformer_reads_no_induction_and_no_retrieval(probes):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_embd=64, n_head=4, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False))
    m = run_probes(model, probes, 0, 1, "cpu")
    # Random init (std 0.02): logits within ~0.1 of uniform, the same on both copies; 0.05 nats bounds the
    # difference of two means over 8 sequences x 31 tokens (measured: |score| < 0.01).
    assert abs(m["probe/induction_score"]) < 0.05
    assert m["probe/induction_loss_first"] == pytest.approx(LN_V, abs=0.2)
    assert [m[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)] == [0.0] * NUM_BUCKETS
    assert m["probe/unanswerable_not_in_context"] == 0.0


def test_a_grounded_copier_reads_full_exact_match_in_every_bucket_and_says_not_in_context(probes):
    m = run_probes(RetrievalCircuit(probes), probes, 0, 1, "cpu")
    # The circuit answers every held-out item exactly, wherever its answer sits: no slack.
    assert [m[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)] == [1.0] * NUM_BUCKETS
    assert m["probe/retrieval_position_invariance"] == 1.0
    assert m["probe/unanswerable_not_in_context"] == 1.0
    # The copied number is at logit 30 against the bigram's 6; without the passage nothing is copied, so the gold
    # number gets logit 0 against " The" at 6 (log-prob < -6).
    assert m["probe/retrieval_ll_with"] > -1e-4 and m["probe/retrieval_ll_without"] < -6
    assert m["probe/retrieval_ll_gain"] > 6


def test_an_ungrounded_copier_reads_low_and_never_says_not_in_context(probes):
    # Matches the asked relation in any passage: the fillers state the same relations about other names, so it
    # copies some filler's number. Its exact match is what picking among ~3 same-relation facts gives, not 1.
    m = run_probes(RetrievalCircuit(probes, ground=False), probes, 0, 1, "cpu")
    assert m["probe/retrieval_em"] <= 0.5
    assert m["probe/unanswerable_not_in_context"] <= 0.25


def test_a_copier_tied_to_the_first_half_reads_zero_in_the_second_half(probes):
    # A copy head that sees only key positions before bucket 4 (as a model that learned answers only there with
    # absolute positions might): the per-bucket probe shows exactly where it fails.
    edge = probes.bucket_edges[NUM_BUCKETS // 2]
    m = run_probes(RetrievalCircuit(probes, max_position=edge), probes, 0, 1, "cpu")
    em = [m[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)]
    assert em == [1.0] * 4 + [0.0] * 4
    assert m["probe/retrieval_position_invariance"] == 0.0
    assert m["probe/retrieval_em_worst_bucket"] == 0.0 and m["probe/retrieval_em_best_bucket"] == 1.0


def test_the_controls_probe_the_trainers_induction_sequences_and_real_bucketed_items(probes):
    # The same induction array the trainer evaluates at block 64 (probes_for_block_size), so the controls above
    # speak for it; retrieval items laid out by the real builder: the answer at answer_pos, inside its bucket.
    assert (probes.induction == induction_sequences(64, 8, PROBE_SEED)[0]).all()
    assert sum(it.answerable for it in probes.retrieval) == 2 * NUM_BUCKETS
    for it in probes.retrieval:
        if it.answerable:
            assert probes.bucket_edges[it.bucket] <= it.answer_pos < probes.bucket_edges[it.bucket + 1]
            assert list(it.prompt[it.answer_pos : it.answer_pos + len(it.answer_tokens)]) == list(it.answer_tokens)
