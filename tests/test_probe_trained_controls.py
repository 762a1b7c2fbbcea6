"""Trained controls of the retrieval probe (launcher/probes/): the repository's own `Transformer`, trained on
grounded QA in the pipeline's template, must read on held-out probe items what it was trained to do. docs/PROBES.md
("Controls") gives the thresholds and what is not covered.

- The "not in the context" share: the same recipe is trained here twice, in seconds, once on rows that are all
  unanswerable and once on rows that are all answerable; the probe's unanswerable share must follow that training
  share (1.0 and 0.0), and the answers must not be credited to a model that only ever says the phrase.
- High exact match: a copier trained for 3,000 steps on the marked-fact task ("What is the code?" answered from "The
  code is 47." anywhere in the window) by scripts/experiments/retrieval_control.py, too long for the suite, so the
  test loads the file it wrote (tests/fixtures/retrieval_control, through `tests/controls.py`) and runs the real
  probe on it: exact match in every bucket and "not in the context" on prompts without the fact. Its question never
  varies: a model that matches a varying question against the context is still only hand-built
  (tests/test_probe_controls.py); no scout trained one.
- The helpers of the scouts (scripts/experiments/retrieval_scout.py), in `launcher.probes.synthetic` and
  `launcher.probes.tiny_training`: question-session rows and the restricted softmax.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.tokenizer import get_tokenizer
from launcher.probes import NUM_BUCKETS, PROBE_SEED, build_probes, build_retrieval_items, run_probes
from launcher.probes.synthetic import qa_example_rows, qa_records
from launcher.probes.tiny_training import make_batch, train_steps
from model.config import ModelConfig
from model.transformer import Transformer

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
        return make_batch([rows[i] for i in ids], [supervised[i] for i in ids], 63)

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


# ----------------------------------------------------------------- the scouts' data and softmax (retrieval_scout.py)


def test_question_session_rows_open_with_the_probe_prompt_and_answer_every_question_from_the_context():
    import re

    from data.formats import NOT_IN_CONTEXT, render_retrieval
    from launcher.probes.synthetic import qa_session_rows

    rows, supervised = qa_session_rows(np.random.Generator(np.random.PCG64(7)), ENC, 200)
    unanswerable = answerable = 0
    for row, sup in zip(rows, supervised, strict=True):
        assert row[-1] == ENC.eot_token and len(row) <= 128
        text = ENC.decode(row[:-1])
        context = text.split("\n\nQuestion:")[0].removeprefix("Context:\n")
        stated = {(a, r): v for a, r, v in re.findall(r"(\w+) (\w+) (\d+)\.", context)}
        people = {a for a, _ in stated}
        blocks = re.findall(r"Question: (\w+) (\w+)\?\nAnswer: ([^\n]+)", text)
        assert blocks and len({(a, r) for a, r, _ in blocks}) == len(blocks)  # no question asked twice
        a, r, _ = blocks[0]
        assert text.startswith(render_retrieval(context, f"{a} {r}?"))  # the probe's prompt, exactly
        for a, r, answer in blocks:
            assert a in people  # an unanswerable question is about someone the context names
            if (a, r) in stated:
                answerable += 1
                assert answer == stated[(a, r)]
            else:
                unanswerable += 1
                assert answer == NOT_IN_CONTEXT
        targets = [ENC.decode([row[p + 1]]) for p in sup]
        terminators = [t for t in targets if "\n" in t or t == "<|endoftext|>"]
        assert len(terminators) == len(blocks)  # every answer's end is supervised (the probe stops there)
        firsts = [t.strip() for t in targets if t not in terminators]
        for _, _, answer in blocks:  # every answer's first token is supervised
            assert answer.split()[0] in firsts
    assert 0.15 < unanswerable / (answerable + unanswerable) < 0.35  # the 25% share


def test_restricted_output_gives_the_full_projections_columns_and_trains_the_same_rows():
    from launcher.probes.synthetic import task_token_ids
    from launcher.probes.tiny_training import restricted_output

    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_embd=32, n_head=2, n_layer=1, block_size=16, dropout=0.0, fused_kernels=False,
                                    tie_weights=False))
    idx = torch.randint(0, 50257, (2, 16))
    index = torch.tensor([[3, 15], [0, 7]])
    ids = task_token_ids(ENC)
    assert ids == sorted(ids) and ENC.eot_token in ids and ENC.encode_ordinary(" 47")[0] in ids
    full, _ = model(idx, logits_index=index)
    original = model.output
    with restricted_output(model, list(reversed(ids))) as to_columns:
        restricted, _ = model(idx, logits_index=index)
        targets = torch.tensor([[ids[5], -1], [ids[0], ids[-1]]])
        assert to_columns(targets).tolist() == [[5, -1], [0, len(ids) - 1]]
        with pytest.raises(ValueError, match=r"\[11\]"):
            to_columns(torch.tensor([[11]]))  # "," is no token of the tasks
        torch.nn.functional.cross_entropy(restricted.flatten(0, 1), to_columns(targets).flatten(),
                                          ignore_index=-1).backward()
    assert model.output is original
    torch.testing.assert_close(restricted, full[..., ids], rtol=1e-5, atol=1e-5)
    grad = model.output.weight.grad
    assert grad[ids].abs().sum() > 0
    outside = torch.ones(grad.shape[0], dtype=torch.bool)
    outside[ids] = False
    assert grad[outside].abs().sum() == 0  # only the task's rows are trained
    with pytest.raises(RuntimeError), restricted_output(model, ids):
        raise RuntimeError("the block failed")
    assert model.output is original  # restored on the way out of an error too


# ------------------------------------------------------ a trained copier: high exact match (retrieval_control.py)


@pytest.fixture(scope="module")
def code_probes():
    from launcher.probes.synthetic import code_records

    # Held out: the probe's own seed for the code sentences, the decoys and the filler facts; training drew its rows
    # from DATA_SEED. 8 answerable prompts per bucket (bucket exact match in steps of 1/8) and 2 unanswerable ones.
    return build_probes(ENC, 64, seed=PROBE_SEED, per_bucket=8, unanswerable_per_bucket=2, induction_vocab=256,
                        records=list(code_records(400, PROBE_SEED)), filler_records=list(qa_records(400, PROBE_SEED)))


def test_a_trained_copier_reads_high_exact_match_in_every_bucket_and_not_in_the_context_without_it(code_probes):
    from launcher.probes.trained_control import init_model
    from tests.controls import load_fixture_control

    model, meta = load_fixture_control()
    trained = run_probes(model, code_probes, 0, 1, "cpu")
    untrained = run_probes(init_model().eval(), code_probes, 0, 1, "cpu")
    em = [trained[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)]
    # The copier was trained to a loss of ~0 (metadata log) with answers anywhere in the window, and reads 1.0 in every
    # bucket (measured). The threshold leaves one miss in 8 per bucket (0.875) for a CPU whose arithmetic differs in
    # the last bits; a probe that scores the wrong span, decodes past the answer's end or misreads the answer reads
    # far lower (0 in the breaks tried). Unanswerable prompts (a decoy "The gate is 12." instead of the code) must
    # read "not in the context" for at least 15 of 16.
    assert min(em) >= 0.875, em
    assert trained["probe/unanswerable_not_in_context"] >= 15 / 16
    assert meta["log"][-1]["loss"] < 0.01
    # Negative control on the same prompts: the same model at its initialisation answers nothing and never says the
    # phrase.
    assert [untrained[f"probe/retrieval_em_b{b}"] for b in range(NUM_BUCKETS)] == [0.0] * NUM_BUCKETS
    assert untrained["probe/unanswerable_not_in_context"] == 0.0
    assert meta["recipe"]["task"].startswith("code_rows")


def test_the_control_file_rebuilds_the_trained_model_exactly(tmp_path):
    from launcher.probes.trained_control import load_control, save_control, train

    model, columns, log = train(steps=12, lr=1e-3, batch=4, log_every=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model2, meta = load_control(save_control(model, columns, tmp_path, {"log": log}))
    assert list(model2.state_dict()) == list(state)
    for name, tensor in model2.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert meta["log"] == log and len(log) == 2


def test_code_rows_put_the_answer_where_asked_and_the_code_sentence_only_in_answerable_rows():
    from data.formats import NOT_IN_CONTEXT
    from launcher.probes.synthetic import CODE_QUESTION, code_rows

    key_is = ENC.encode_ordinary(" code is")
    for answer_before, latest in ((None, 40), (24, 23)):
        rows, supervised = code_rows(np.random.Generator(np.random.PCG64(3)), ENC, 300, max_len=65,
                                     answer_before=answer_before)
        positions = []
        for row, sup in zip(rows, supervised, strict=True):
            assert len(row) <= 65 and row[-1] == ENC.eot_token
            text = ENC.decode(row[:-1])
            assert f"\n\nQuestion: {CODE_QUESTION}\nAnswer:" in text
            answer = text.rsplit("Answer:", 1)[1].strip()
            at = [i + len(key_is) for i in range(len(row)) if row[i : i + len(key_is)] == key_is]
            if answer == NOT_IN_CONTEXT:
                assert at == []  # only decoys: "The gate is 12."
            else:
                assert len(at) == 1 and ENC.decode([row[at[0]]]).strip() == answer  # the copied span
                positions.append(at[0])
            assert ENC.decode([row[sup[0] + 1]]).strip() == answer.split()[0]  # the answer's first token is supervised
        # The first-half rows of the position experiment never place an answer at or after `answer_before`; the
        # unrestricted rows do reach the second half of the window.
        assert max(positions) <= latest if answer_before else max(positions) >= latest
