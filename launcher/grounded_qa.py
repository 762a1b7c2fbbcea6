"""Grounded QA scored the way SQuAD v2 scores it: EM and F1 of generated answers, and what the model does with a
question whose answer is not in the passage.

The items are the retrieval eval set's held-out QA items (`qa_items.jsonl`, written by the build: data/qa_items.py),
so nothing is downloaded. Each prompt is the training's retrieval template (`data.formats.render_retrieval`); the
answer is the greedy continuation up to the end of its line (model/generate.py, KV cache).

Scoring follows the official SQuAD v2.0 evaluation script (`evaluate-v2.0.py`, Rajpurkar et al. 2018):
`normalize_answer` (lower case, punctuation and the articles a/an/the removed, whitespace collapsed), EM and token
F1 against every gold answer, the best one counting; an unanswerable question's gold is the empty answer, so it
scores 1 exactly when the model abstains. The model abstains by saying `data.formats.NOT_IN_CONTEXT` ("The answer is
not in the context.", what training taught it for SQuAD v2's unanswerable questions), which is scored as the
official script's empty prediction. One deliberate difference: an empty answer is not an abstention here (the
official script takes it as one), since training never taught it, and an untrained model that stops at once would
otherwise score every unanswerable question.

    metrics = score_items(model, items, device)            # on one process
    metrics = score_items(model, items, device, rank, world, all_reduce=dist.all_reduce)   # in the training loop
    metrics["f1"], metrics["no_answer_not_in_context"], metrics["no_answer_answered_otherwise"]

`scripts/eval/grounded_qa.py` runs it on a checkpoint or an export.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
import torch

from data.formats import NOT_IN_CONTEXT, render_retrieval
from data.sampler import shard_for_rank
from data.tokenizer import EOT, get_tokenizer

# The sums every rank adds up; the metrics are ratios of them (`finalize`).
SUM_KEYS = ("items", "exact", "f1", "answerable", "answerable_exact", "answerable_f1", "answerable_abstained",
            "unanswerable", "unanswerable_not_in_context", "unanswerable_otherwise", "too_long")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (evaluate-v2.0.py): lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_score(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    """Token F1 of evaluate-v2.0.py `compute_f1`: an empty side scores 1 only against an empty other side."""
    gold_toks, pred_toks = _tokens(gold), _tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def abstains(prediction: str) -> bool:
    """The model says the answer is not in the context."""
    return normalize_answer(prediction) == normalize_answer(NOT_IN_CONTEXT)


def score_one(item: dict, prediction: str) -> dict[str, float]:
    """This item's contribution to the sums (SUM_KEYS)."""
    abstained = abstains(prediction)
    out = dict.fromkeys(SUM_KEYS, 0.0)
    if item["answerable"]:
        golds = [a for a in item["answers"] if normalize_answer(a)] or [""]
        said = "" if abstained else prediction
        exact = max(exact_score(g, said) for g in golds) if said else 0
        f1 = max(f1_score(g, said) for g in golds) if said else 0.0
        out.update(answerable=1, answerable_exact=exact, answerable_f1=f1, answerable_abstained=float(abstained))
    else:  # evaluate-v2.0.py: the only gold answer is the empty one, which the abstention is
        exact = f1 = float(abstained)
        out.update(unanswerable=1, unanswerable_not_in_context=float(abstained),
                   unanswerable_otherwise=float(not abstained and bool(normalize_answer(prediction))))
    out.update(items=1, exact=exact, f1=f1)
    return out


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """The metrics from the summed counts: shares in [0, 1] (NaN where a kind of question is absent)."""
    def ratio(a: str, b: str) -> float:
        return sums[a] / sums[b] if sums[b] else float("nan")

    return {"exact": ratio("exact", "items"), "f1": ratio("f1", "items"),
            "answerable_exact": ratio("answerable_exact", "answerable"),
            "answerable_f1": ratio("answerable_f1", "answerable"),
            "answerable_abstained": ratio("answerable_abstained", "answerable"),
            "no_answer_not_in_context": ratio("unanswerable_not_in_context", "unanswerable"),
            "no_answer_answered_otherwise": ratio("unanswerable_otherwise", "unanswerable"),
            "items": sums["items"], "answerable": sums["answerable"], "unanswerable": sums["unanswerable"],
            "too_long": sums["too_long"]}


def line_stop_ids(tokenizer=None) -> tuple[int, ...]:
    """EOT and every id whose text holds a newline: a retrieval answer is one line, then EOT."""
    tokenizer = tokenizer or get_tokenizer()
    return (EOT, *(i for i in range(EOT) if b"\n" in tokenizer.decode_single_token_bytes(i)))


_STOPS: dict[int, tuple[int, ...]] = {}


def generate_answers(model, prompts: Sequence[str], device, max_new_tokens: int, batch_size: int = 16,
                     tokenizer=None) -> list[str]:
    """Greedy answers to rendered prompts, one line each. Our Transformer decodes with the KV cache; a Hugging Face
    model (an export) through its own `generate`, told the same stops."""
    tokenizer = tokenizer or get_tokenizer()
    stops = _STOPS.setdefault(id(tokenizer), line_stop_ids(tokenizer))
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        ids = [tokenizer.encode(p) for p in prompts[s : s + batch_size]]
        if hasattr(model, "generation_config"):  # transformers' PreTrainedModel
            rows = _hf_generate(model, ids, max_new_tokens, stops, device)
        else:
            from model.generate import generate

            rows = [g.tokens for g in generate(model, ids, max_new_tokens, stop_ids=stops)]
        out += [tokenizer.decode([t for t in r if t < EOT]).split("\n")[0].strip() for r in rows]
    return out


def _hf_generate(model, ids: list[list[int]], max_new_tokens: int, stops: tuple[int, ...], device) -> list[list[int]]:
    width = max(len(r) for r in ids)
    x = torch.tensor([[EOT] * (width - len(r)) + r for r in ids], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
    with torch.no_grad():
        y = model.generate(x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=list(stops), pad_token_id=EOT)
    rows = []
    for row in y[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return rows


def score_items(model, items: Sequence[dict], device, rank: int = 0, world_size: int = 1,
                all_reduce: Callable[[list[float]], list[float]] | None = None, batch_size: int = 16,
                block_size: int | None = None, details: list | None = None) -> dict[str, float]:
    """Generate an answer to each of this rank's share of `items` and score them; with `all_reduce`, the sums of
    every rank (call on every rank). Items whose prompt and answer cannot fit `block_size` are counted in
    `too_long` and not scored. With `details` (a list), this rank's (item id, prediction, scores) are appended."""
    tokenizer = get_tokenizer()
    block_size = block_size or getattr(getattr(model, "config", None), "block_size", None) or \
        model.config.max_position_embeddings
    mine = [items[i] for i in shard_for_rank(np.arange(len(items)), rank, world_size)]
    # Room for the longest gold answer or the abstention, and a little more: a longer answer is already wrong.
    longest = max([len(tokenizer.encode(" " + a)) for it in items for a in it["answers"]]
                  + [len(tokenizer.encode(" " + NOT_IN_CONTEXT))], default=8)
    max_new = longest + 4
    fits, prompts, sums = [], [], dict.fromkeys(SUM_KEYS, 0.0)
    for it in mine:
        prompt = render_retrieval(it["context"], it["question"])
        if len(tokenizer.encode(prompt)) + max_new > block_size:
            sums["too_long"] += 1
            continue
        fits.append(it)
        prompts.append(prompt)
    was_training = model.training
    model.eval()
    try:
        predictions = generate_answers(model, prompts, device, max_new, batch_size, tokenizer)
    finally:
        model.train(was_training)
    for it, pred in zip(fits, predictions, strict=True):
        one = score_one(it, pred)
        for k, v in one.items():
            sums[k] += v
        if details is not None:
            details.append({"id": it.get("id"), "question": it["question"], "answers": it["answers"],
                            "answerable": it["answerable"], "prediction": pred, "exact": one["exact"],
                            "f1": one["f1"]})
    if all_reduce is not None:
        sums = dict(zip(SUM_KEYS, all_reduce([sums[k] for k in SUM_KEYS]), strict=True))
    return finalize(sums)
