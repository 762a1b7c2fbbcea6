"""Probes (launcher/probes/, scripts/eval/rag_probe.py): construction (answers really land in their bucket,
unanswerable prompts hold no answer, held out from training), the metrics on oracle models, world-size invariance,
and the same numbers from a checkpoint and from its Hugging Face export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from data.demo_corpus import FACTS, squad_v2_records
from data.formats import NOT_IN_CONTEXT, render_retrieval
from data.tokenizer import EOT, get_tokenizer
from launcher.export import export
from launcher.probes import (
    NUM_BUCKETS,
    PROBE_SEED,
    build_probes,
    finalize,
    probe_sums,
    run_probes,
    training_qa_seed,
)
from model.config import ModelConfig
from model.io import save_model_checkpoint
from model.transformer import Transformer
from scripts.eval import rag_probe

ENC = get_tokenizer()


@pytest.fixture(scope="module")
def probes128():
    return build_probes(ENC, block_size=128, per_bucket=3, unanswerable_per_bucket=2)


@pytest.mark.parametrize("block_size", [64, 128, 512])
def test_every_answer_lands_in_its_bucket_once_in_the_training_template(block_size, probes128):
    probes = probes128 if block_size == 128 else build_probes(ENC, block_size, per_bucket=2)
    edges = probes.bucket_edges
    assert len(edges) == NUM_BUCKETS + 1 and edges == sorted(edges) and edges[-1] < block_size
    per_bucket = {b: 0 for b in range(NUM_BUCKETS)}
    for item in probes.retrieval:
        ids = list(item.prompt)
        text = ENC.decode(ids)
        assert ENC.encode_ordinary(text) == ids  # the tokens are exactly what tokenizing the text gives
        assert len(ids) + probes.max_new_tokens <= block_size
        assert text.startswith("Context:\n") and text.endswith("\nAnswer:")
        question = text[text.rindex("\n\nQuestion: ") + len("\n\nQuestion: ") : -len("\nAnswer:")]
        assert render_retrieval(text[len("Context:\n") : text.rindex("\n\nQuestion: ")], question) == text
        assert item.gold_passage in text
        if not item.answerable:
            continue
        per_bucket[item.bucket] += 1
        # The answer's tokens are at answer_pos, which is inside the named bucket ...
        assert edges[item.bucket] <= item.answer_pos < edges[item.bucket + 1]
        span = ids[item.answer_pos : item.answer_pos + len(item.answer_tokens)]
        assert span == list(item.answer_tokens) and ENC.decode(span) == " " + item.answer
        # ... and nowhere else in the context: fillers never contain it.
        assert text.lower().count(item.answer.lower()) == 1
        # Without the passage the answer is gone and everything else stays.
        without = ENC.decode(list(item.prompt_without))
        assert item.answer.lower() not in without.lower()
        assert without == text.replace(item.gold_passage + " ", "").replace(" " + item.gold_passage, "")
    assert all(n == (3 if block_size == 128 else 2) for n in per_bucket.values()), per_bucket


def test_unanswerable_prompts_state_nothing_about_the_asked_fact(probes128):
    unanswerable = [i for i in probes128.retrieval if not i.answerable]
    assert len(unanswerable) == 2 * NUM_BUCKETS
    for item in unanswerable:
        text = ENC.decode(list(item.prompt))
        subject = item.gold_passage.split(" is a ")[0]
        question = text[text.rindex("Question: ") :]
        asked = [k for k, (_, q, _) in FACTS.items() if q.format(name=subject) in question]
        assert len(asked) == 1, (subject, question)
        statement = FACTS[asked[0]][0]
        # The fixed words of the asked fact's sentence (e.g. "was founded in") do not follow the subject anywhere:
        # the only sentences about the subject are the gold passage's, which the generator wrote without it.
        fixed = max(statement.replace("{", "}").split("}")[::2], key=len).strip()
        assert fixed not in item.gold_passage
        context = text[: text.rindex("\n\nQuestion:")]
        assert context.count(subject) == item.gold_passage.count(subject)
        assert item.answer == NOT_IN_CONTEXT and item.prompt_without is None and item.answer_pos == -1


def test_probe_set_is_deterministic_and_the_training_seed_is_refused(probes128):
    again = build_probes(ENC, block_size=128, per_bucket=3, unanswerable_per_bucket=2)
    assert again.retrieval == probes128.retrieval
    assert (again.induction == probes128.induction).all() and again.bucket_edges == probes128.bucket_edges
    with pytest.raises(ValueError, match="training QA generator's seed"):
        build_probes(ENC, block_size=128, seed=1234)
    with pytest.raises(ValueError, match="block_size 32"):
        build_probes(ENC, block_size=32)


def test_probe_articles_never_occur_in_the_training_stream(probes128):
    # Regenerate exactly what data/sources/demo.json trains on and check no probe article is among it.
    sources = json.loads(Path("data/sources/demo.json").read_text())["sources"]
    kwargs = sources["demo_qa"]["inputs"][0]["loader"]["kwargs"]
    assert kwargs["seed"] != PROBE_SEED and training_qa_seed() == kwargs["seed"]  # the seed build_probes refuses
    training = {r["context"] for r in squad_v2_records(**kwargs) if True}
    probe_contexts = {r["context"] for r in squad_v2_records(num_articles=400, seed=PROBE_SEED)}
    assert not probe_contexts & training


def test_induction_sequences_are_a_block_repeated_twice(probes128):
    seqs, half = probes128.induction, probes128.half
    assert seqs.shape == (8, 2 * half) and (seqs[:, :half] == seqs[:, half:]).all()
    assert seqs.max() < EOT and seqs.shape[1] - 1 <= 128


class InductionOracle(torch.nn.Module):
    """Perfect induction head: at each position, predicts the token that followed the previous occurrence of the
    current token; uniform where the token has not occurred before."""

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, 50304)
        for b in range(B):
            seen: dict[int, int] = {}
            for t in range(T):
                tok = int(idx[b, t])
                if tok in seen and seen[tok] + 1 < T:
                    logits[b, t, int(idx[b, seen[tok] + 1])] = 100.0
                seen[tok] = t
        return logits, None


def test_induction_score_is_first_minus_second_copy_loss(probes128):
    metrics = run_probes(InductionOracle(), _only_induction(probes128), 0, 1, "cpu")
    assert metrics["probe/induction_loss_first"] == pytest.approx(math.log(50304), abs=0.01)
    # The second copy excludes its first token (unpredictable); with it the loss would be ~ln(V)/64 = 0.17.
    assert metrics["probe/induction_loss_second"] < 1e-6
    assert metrics["probe/induction_score"] == pytest.approx(math.log(50304), abs=0.01)


def _only_induction(probes):
    from dataclasses import replace

    return replace(probes, retrieval=[])


class AnswerOracle(torch.nn.Module):
    """Answers correctly (the gold tokens, then EOT) only in buckets < 4, a wrong answer elsewhere; unanswerable
    prompts get NOT_IN_CONTEXT. Logits come from looking the prompt up, so padding and batching are exercised."""

    def __init__(self, probes):
        super().__init__()
        self.table = []
        for item in probes.retrieval:
            right = item.bucket < 4 or not item.answerable
            answer = list(item.answer_tokens) if right else ENC.encode_ordinary(" Nowhere")
            for prompt in (item.prompt, item.prompt_without):
                if prompt is not None:
                    self.table.append((list(prompt), answer + [EOT] if prompt is item.prompt else [EOT] * 8))

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, 50304)
        for b in range(B):
            row = idx[b].tolist()
            for prompt, answer in self.table:
                if row[: len(prompt)] == prompt:
                    for k, tok in enumerate(answer):
                        if len(prompt) - 1 + k < T:
                            logits[b, len(prompt) - 1 + k, tok] = 30.0
                    break
        return logits, None


def test_retrieval_metrics_per_bucket_and_world_size_invariance():
    probes128 = build_probes(ENC, block_size=128, induction_count=2, per_bucket=1, unanswerable_per_bucket=1)
    oracle = AnswerOracle(probes128)
    one = run_probes(oracle, probes128, 0, 1, "cpu", batch_size=5)
    for b in range(NUM_BUCKETS):
        assert one[f"probe/retrieval_em_b{b}"] == (1.0 if b < 4 else 0.0)
        if b < 4:  # the gold tokens were predicted with logit 30 against 0: log-prob ~ -50304 * e^-30 ~ 0
            assert one[f"probe/retrieval_ll_with_b{b}"] > -1e-6
            assert one[f"probe/retrieval_ll_without_b{b}"] < -20
    assert one["probe/retrieval_em"] == 0.5
    assert one["probe/retrieval_em_worst_bucket"] == 0.0 and one["probe/retrieval_em_best_bucket"] == 1.0
    assert one["probe/retrieval_position_invariance"] == 0.0
    assert one["probe/unanswerable_not_in_context"] == 1.0
    # Three ranks, each its share, sums added as the all-reduce would: the same numbers.
    parts = [probe_sums(oracle, probes128, r, 3, "cpu", batch_size=2) for r in range(3)]
    three = finalize(probes128, [sum(col) for col in zip(*parts, strict=True)])
    assert three.keys() == one.keys()
    for k in one:
        assert (math.isnan(one[k]) and math.isnan(three[k])) or three[k] == pytest.approx(one[k], abs=1e-9), k


def test_probe_script_gives_the_same_numbers_on_a_checkpoint_and_its_hf_export(tmp_path, capsys):
    config = ModelConfig(n_embd=64, n_head=4, n_layer=2, block_size=128, dropout=0.0, fused_kernels=False)
    torch.manual_seed(0)
    save_model_checkpoint(tmp_path / "gold", Transformer(config), config, {"step": 1})
    export(tmp_path / "gold", tmp_path / "hf")
    ours, ours_details, _ = rag_probe.probe_checkpoint(tmp_path / "gold", per_bucket=1, unanswerable=1, induction=4)
    # The export through the command line, as a user runs it.
    assert rag_probe.main([str(tmp_path / "hf"), "--per-bucket", "1", "--unanswerable", "1", "--induction", "4",
                           "--json", str(tmp_path / "out" / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "position invariance" in out
    saved = json.loads((tmp_path / "out" / "p.json").read_text())
    hf, hf_details = saved["metrics"], saved["details"]
    assert [d["greedy"] for d in ours_details] == [d["greedy"] for d in hf_details]
    assert ours.keys() == hf.keys()
    for k in ours:
        assert (math.isnan(ours[k]) and hf[k] is None) or hf[k] == pytest.approx(ours[k], abs=1e-4), k
    # A random model knows nothing: no exact match, no induction.
    assert ours["probe/retrieval_em"] == 0.0 and abs(ours["probe/induction_score"]) < 0.5
    with pytest.raises(SystemExit, match="neither a model checkpoint"):
        rag_probe.main([str(tmp_path)])


def test_plot_run_draws_losses_phase_switch_gold_and_probes(tmp_path):
    from scripts import plot_run

    evals = [{"step": s, "losses": {"val": 5.0 - s / 100, "code": 5.5 - s / 100}, "gold_saved": "g" if s else None,
              "probe": {"induction_score": s / 100, "retrieval_em": 0.1, "retrieval_em_worst_bucket": 0.0,
                        "retrieval_em_best_bucket": 0.25, "unanswerable_not_in_context": None}} for s in (0, 40, 80)]
    (tmp_path / "run_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    (tmp_path / "run_train.jsonl").write_text(json.dumps({"step": 50, "event": "phase_switch", "phase": "b"}) + "\n"
                                              + json.dumps({"step": 10, "loss": 6.0}) + "\n")
    assert plot_run.main([str(tmp_path)]) == 0
    png = (tmp_path / "run.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    with pytest.raises(SystemExit, match="no eval records"):
        plot_run.main([str(tmp_path), "--model_name", "other"])
