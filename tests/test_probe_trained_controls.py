"""A trained control of the retrieval probe (launcher/probes.py): the repository's own `Transformer`, trained here in
seconds on grounded-QA rows laid out by the probe's own builder in the pipeline's template, must read on held-out
items what it was trained to say. docs/PROBES.md, "Controls", gives the thresholds and what is not covered.

What fits the test budget (seconds of 2 shared CPU cores) is the "not in the context" decision, not the exact match
of copied answers: no recipe scouted on this machine trained a model that answers held-out questions from their
passage (docs/PROBES.md, "Scouting"), while the fixed phrase `NOT_IN_CONTEXT` is learned in ~40 steps. So the
same recipe is trained twice, once on rows that are all unanswerable and once on rows that are all answerable: the
probe's unanswerable share must follow that training share (1.0 and 0.0), and the answers must not be credited to a
model that only ever says the phrase. The hand-built circuits of tests/test_probe_controls.py cover high exact match.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.tokenizer import get_tokenizer
from launcher.probes import NUM_BUCKETS, PROBE_SEED, build_probes, build_retrieval_items, run_probes
from model.config import ModelConfig
from model.transformer import Transformer
from scripts.experiments.synthetic_tasks import _batch, qa_example_rows, qa_records, train_steps

ENC = get_tokenizer()
TRAIN_SEED = 4242  # training facts and layouts; the probe items use PROBE_SEED (held out)
STEPS = 40


@pytest.fixture(scope="module")
def probes():
    return build_probes(ENC, 64, seed=PROBE_SEED, per_bucket=2, unanswerable_per_bucket=1,
                        records=list(qa_records(400, PROBE_SEED)))


def _trained(unanswerable: bool) -> tuple[Transformer, list[float]]:
    """A 2-layer, 32-wide llama trained STEPS steps (16 rows each) on 32 rows in the probe's layout at block 64 (all
    8 buckets), every row unanswerable ("... Answer: The answer is not in the context.") or every row answerable
    ("... Answer: 47"). Seeded and single-threaded, so deterministic on a CPU."""
    # The builder needs answerable records to place its bucket edges even when it places none of them.
    records = list(qa_records(400, TRAIN_SEED, unanswerable_share=0.8 if unanswerable else 0.0))
    items, _, _ = build_retrieval_items(ENC, 64, records, range(NUM_BUCKETS), 0 if unanswerable else 4,
                                        4 if unanswerable else 0, TRAIN_SEED)
    assert items and all(it.answerable != unanswerable for it in items)
    rows, supervised = qa_example_rows(items)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_embd=32, n_head=2, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False))
    rng = np.random.Generator(np.random.PCG64(TRAIN_SEED))

    def batch(step):
        ids = rng.choice(len(rows), size=16, replace=False)
        return _batch([rows[i] for i in ids], [supervised[i] for i in ids], 63)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = train_steps(model, batch, STEPS, lr=1e-2, warmup=5)
    finally:
        torch.set_num_threads(threads)
    return model, losses


def test_a_trained_models_not_in_the_context_share_follows_its_training_share(probes):
    always, always_losses = _trained(unanswerable=True)
    never, never_losses = _trained(unanswerable=False)
    # Both models learned what they were shown: the loss starts at ln 50304 = 10.8 and ends far below it (measured, mean
    # of the last 5 steps: 0.88 for the phrase, whose 9 tokens are fixed; 1.90 for the answerable rows, number and EOT,
    # the number not yet copied).
    assert always_losses[0] > 10 and np.mean(always_losses[-5:]) < 2.0
    assert never_losses[0] > 10 and np.mean(never_losses[-5:]) < 3.0
    a = run_probes(always, probes, 0, 1, "cpu")
    n = run_probes(never, probes, 0, 1, "cpu")
    # The rule: a model trained on unanswerable rows only says the phrase to every held-out unanswerable prompt
    # (share 1.0: no slack, greedy decoding of a fixed learned phrase); trained on answerable rows only, it never does
    # (0.0). An inverted or mis-decoded unanswerable score fails one side.
    assert a["probe/unanswerable_not_in_context"] == 1.0
    assert n["probe/unanswerable_not_in_context"] == 0.0
    # It says the phrase to answerable prompts too: none of that is credited as an answer, in any bucket.
    assert [a[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)] == [0.0] * NUM_BUCKETS
    # The answerable-only model answers with numbers, but without a retrieval circuit not the right ones beyond a
    # lucky few: at most 1 of the 2 items in any bucket (chance over the ~10 numbers of a prompt is ~0.1 per item).
    assert n["probe/retrieval_em"] <= 0.25
    assert n["probe/retrieval_em_best_bucket"] <= 0.5
