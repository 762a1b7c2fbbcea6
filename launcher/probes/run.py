"""Running a model on the probe items: logits at chosen positions, teacher-forced answer log-likelihoods, greedy
answers, and this rank's sums and counts of every probe (`probe_sums`, laid out as `metrics.SUM_NAMES`).

Every rank evaluates a contiguous share of the fixed items; the caller all-reduces the sums and passes them to
`metrics.finalize` (`run_probes` does both). `model(idx)` may return our `(logits, loss)` tuple, a Hugging Face
output with `.logits`, or a logits tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from data.sampler import shard_for_rank
from data.tokenizer import EOT
from launcher.grounded_qa import normalize_answer
from launcher.probes.items import ProbeSet
from launcher.probes.metrics import SUM_NAMES, finalize


def _takes_logits_index(model) -> bool:
    forward = getattr(model, "forward", None)
    try:
        return forward is not None and "logits_index" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins and C extensions have no inspectable signature
        return False


def _logits(model, idx: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V), or (B, K, V) at positions `index` (B, K). A model whose forward takes `logits_index` (our
    Transformer, the hand-built circuits of tests/test_probe_controls.py) computes only those positions; others
    (Hugging Face) compute all and are gathered: the same numbers either way."""
    if index is not None and _takes_logits_index(model):
        return model(idx, logits_index=index)[0]
    out = model(idx)
    if isinstance(out, tuple):
        out = out[0]
    logits = out.logits if hasattr(out, "logits") else out
    if index is not None:
        logits = logits.gather(1, index[..., None].expand(-1, -1, logits.size(-1)))
    return logits


def _padded(rows: list[Sequence[int]], device) -> torch.Tensor:
    # Right padding: with causal attention no real position sees a pad, so each row's logits are its own.
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), EOT, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


@torch.no_grad()
def answer_loglik(model, prompts: list[Sequence[int]], answers: list[Sequence[int]], device,
                  batch_size: int = 8) -> list[float]:
    """Mean log-probability per answer token of `answers[i]` after `prompts[i]` (teacher forced)."""
    out: list[float] = []
    for s in range(0, len(prompts), batch_size):
        rows = [list(p) + list(a) for p, a in zip(prompts[s : s + batch_size], answers[s : s + batch_size],
                                                  strict=True)]
        chunk = list(zip(prompts[s : s + batch_size], answers[s : s + batch_size], strict=True))
        width = max(len(a) for _, a in chunk)
        # Positions predicting each answer token (padded by repeating the last one; the pads are not read).
        index = torch.tensor([[len(p) - 1 + min(k, len(a) - 1) for k in range(width)] for p, a in chunk],
                             device=device)
        logp = torch.log_softmax(_logits(model, _padded(rows, device), index).float(), dim=-1)  # (B, width, V)
        for i, (_, a) in enumerate(chunk):
            target = torch.tensor(list(a), device=logp.device)
            out.append(float(logp[i, torch.arange(len(a), device=logp.device), target].double().mean()))
    return out


def _can_still_match(tokenizer, generated: list[int], gold: str) -> bool:
    # Once the normalised text so far is no prefix of the normalised gold answer, no continuation can match:
    # stopping there saves most of the generation steps of a model that answers wrongly (the common case early).
    text = normalize_answer(tokenizer.decode(generated))
    return normalize_answer(gold).startswith(text)


@torch.no_grad()
def greedy_answers(model, prompts: list[Sequence[int]], probes: ProbeSet, device, batch_size: int = 8,
                   golds: list[str] | None = None) -> list[str]:
    """Greedy continuation of each prompt up to EOT, a newline or `max_new_tokens`, decoded (newline cut off).
    With `golds`, a row stops as soon as it can no longer match its gold answer (its text is then cut short).
    Our Transformer decodes with the KV cache (model/generate.py: one position per new token instead of the whole
    prompt); other models (the Hugging Face export, hand-built circuits) re-run the forward each token."""
    if _takes_cache(model):
        return _cached_greedy_answers(model, prompts, probes, batch_size, golds)
    texts: list[str] = []
    for s in range(0, len(prompts), batch_size):
        rows = [list(p) for p in prompts[s : s + batch_size]]
        row_golds = golds[s : s + batch_size] if golds is not None else None
        done = [False] * len(rows)
        generated: list[list[int]] = [[] for _ in rows]
        for _ in range(probes.max_new_tokens):
            active = [i for i in range(len(rows)) if not done[i]]  # finished rows leave the batch
            index = torch.tensor([[len(rows[i]) - 1] for i in active], device=device)
            logits = _logits(model, _padded([rows[i] for i in active], device), index)  # (B', 1, V)
            for j, i in enumerate(active):
                r = rows[i]
                token = int(logits[j, 0].float().argmax())
                if token in probes.stop_ids:
                    done[i] = True
                    if token != EOT:  # keep what precedes the newline inside this token
                        generated[i].append(token)
                    continue
                generated[i].append(token)
                r.append(token)
                if row_golds is not None and not _can_still_match(probes.tokenizer, generated[i], row_golds[i]):
                    done[i] = True
            if all(done):
                break
        for g in generated:
            texts.append(probes.tokenizer.decode(g).split("\n")[0].strip())
    return texts


def _takes_cache(model) -> bool:
    try:
        return "cache" in inspect.signature(model.forward).parameters and hasattr(model, "config")
    except (TypeError, ValueError, AttributeError):
        return False


def _cached_greedy_answers(model, prompts: list[Sequence[int]], probes: ProbeSet, batch_size: int,
                           golds: list[str] | None) -> list[str]:
    """`greedy_answers` through the KV-cache generator: the same tokens, the same stops."""
    from model.generate import generate

    texts: list[str] = []
    for s in range(0, len(prompts), batch_size):
        row_golds = golds[s : s + batch_size] if golds is not None else None

        def keep_going(row: int, tokens: list[int], row_golds=row_golds) -> bool:
            if tokens[-1] in probes.stop_ids:  # a newline inside this token: keep what precedes it, then stop
                return False
            return row_golds is None or _can_still_match(probes.tokenizer, tokens, row_golds[row])

        out = generate(model, [list(p) for p in prompts[s : s + batch_size]], probes.max_new_tokens,
                       stop_ids=(EOT,), keep_going=keep_going)
        texts += [probes.tokenizer.decode(g.tokens).split("\n")[0].strip() for g in out]
    return texts


@torch.no_grad()
def probe_sums(model, probes: ProbeSet, rank: int, world_size: int, device, batch_size: int = 8,
               details: list | None = None) -> list[float]:
    """This rank's sums and counts (see `metrics.SUM_NAMES`); all-reduce them (sum) over ranks and pass to `finalize`.
    With `details` (a list), one dict per retrieval item of this rank is appended (prompt, answer, greedy)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        sums = dict.fromkeys(SUM_NAMES, 0.0)
        seq_ids = shard_for_rank(np.arange(len(probes.induction)), rank, world_size)
        for s in range(0, len(seq_ids), batch_size):
            seqs = torch.as_tensor(probes.induction[seq_ids[s : s + batch_size]], device=device)
            x, y = seqs[:, :-1], seqs[:, 1:]
            logits = _logits(model, x).float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            nll = nll.view(y.shape).double()
            h = probes.half
            # Targets 0..h-2 are the first copy's tokens 1..h-1; targets h..2h-2 the second copy's tokens 1..h-1
            # (its first token follows the end of the first copy, which nothing in context predicts).
            sums["induction_first"] += float(nll[:, : h - 1].mean(dim=1).sum())
            sums["induction_second"] += float(nll[:, h:].mean(dim=1).sum())
            sums["induction_n"] += len(seqs)

        item_ids = shard_for_rank(np.arange(len(probes.retrieval)), rank, world_size)
        items = [probes.retrieval[int(i)] for i in item_ids]
        greedy = greedy_answers(model, [it.prompt for it in items], probes, device, batch_size,
                                golds=[it.answer for it in items])
        answerable = [it for it in items if it.answerable]
        ll_with = answer_loglik(model, [it.prompt for it in answerable], [it.answer_tokens for it in answerable],
                                device, batch_size)
        ll_without = answer_loglik(model, [it.prompt_without for it in answerable],
                                   [it.answer_tokens for it in answerable], device, batch_size)
        lls = {id(it): (w, wo) for it, w, wo in zip(answerable, ll_with, ll_without, strict=True)}
        for it, text in zip(items, greedy, strict=True):
            correct = normalize_answer(text) == normalize_answer(it.answer)
            if it.answerable:
                b = it.bucket
                sums[f"em_{b}"] += float(correct)
                sums[f"ll_with_{b}"] += lls[id(it)][0]
                sums[f"ll_without_{b}"] += lls[id(it)][1]
                sums[f"n_{b}"] += 1
            else:
                sums["nic"] += float(correct)
                sums["nic_n"] += 1
            if details is not None:
                details.append({"id": it.record_id, "bucket": it.bucket, "answerable": it.answerable,
                                "answer": it.answer, "greedy": text, "correct": correct,
                                "ll_with": lls.get(id(it), (None, None))[0],
                                "ll_without": lls.get(id(it), (None, None))[1]})
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return [sums[k] for k in SUM_NAMES]


def run_probes(model, probes: ProbeSet, rank: int, world_size: int, device,
               all_reduce: Callable[[list[float]], list[float]] | None = None, batch_size: int = 8) -> dict[str, float]:
    """Probe metrics; call on every rank with a sum all-reduce (e.g. `launcher.distributed.all_reduce`)."""
    sums = probe_sums(model, probes, rank, world_size, device, batch_size)
    return finalize(probes, all_reduce(sums) if all_reduce is not None else sums)
