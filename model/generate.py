"""Text generation with a KV cache: greedy, temperature, top-k and top-p sampling, batched prompts, stop ids.

    from model.generate import generate
    out = generate(model, [prompt_ids, other_ids], max_new_tokens=64)              # greedy
    out = generate(model, prompts, 64, temperature=0.8, top_p=0.95, seed=0)        # sampled, reproducible
    out[0].tokens, out[0].finish   # the new ids (stop id excluded), "stop" or "length"

Prompts of different lengths are left-padded with EOT and the pads are masked (`KVCache.valid`), so a prompt reads
exactly what it reads alone; under document attention a pad is also a document of its own. The prompt is read in
one forward (prefill), then each new token costs one position (decode). `use_cache=False` re-runs the full forward
over the whole sequence every step instead: the reference the cache is checked against (tests/test_generate.py)
and the baseline of scripts/bench/generate.py.

Ids at or above the tokenizer's vocabulary (the embedding's padding rows, 50257..50303) are never sampled: no text
decodes to them. `scripts/generate.py` is the command line; data.formats renders RAG prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from model.config import EOT_ID, GPT2_TOKENIZER_VOCAB
from model.kv_cache import KVCache


@dataclasses.dataclass
class Generation:
    tokens: list[int]
    """The generated ids, the stop id excluded."""
    finish: str
    """"stop" (a stop id, or `keep_going` said no), or "length" (max_new_tokens or the block size was reached)."""


def next_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """One id per row from logits (B, V): argmax at temperature 0, else a sample from the tempered softmax, cut to
    the top_k ids (0: all) and to the smallest set whose probability reaches top_p (1.0: all), as Hugging Face's
    TopKLogitsWarper and TopPLogitsWarper do."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # the ids after the set reached top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu() if generator is not None else probs, 1,
                             generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop_ids: Sequence[int] = (EOT_ID,),
             seed: int | None = None, use_cache: bool = True, vocab_limit: int = GPT2_TOKENIZER_VOCAB,
             keep_going: Callable[[int, list[int]], bool] | None = None) -> list[Generation]:
    """Continue each prompt (a list of ids) by up to `max_new_tokens` ids, all prompts in one batch.

    A row stops at one of `stop_ids`, at `max_new_tokens`, at the model's block size, or when
    `keep_going(row, tokens_so_far)` returns False (probes stop a row that can no longer match its answer); the
    batch stops when every row has. `model` is our `Transformer` (model/transformer.py), in eval mode."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"generate: temperature must be >= 0 (got {temperature}), top_p in (0, 1] (got {top_p}), "
                         f"top_k >= 0 (got {top_k})")
    config = model.config
    longest = max(len(p) for p in prompts)
    if longest >= config.block_size:
        raise ValueError(f"generate: a prompt of {longest} tokens leaves no room in model.block_size "
                         f"{config.block_size}; shorten it (RAG: a shorter context)")
    steps = min(max_new_tokens, config.block_size - longest)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rows = torch.full((len(prompts), longest), EOT_ID, dtype=torch.long, device=device)
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    for i, p in enumerate(prompts):
        rows[i, longest - len(p):] = torch.tensor(list(p), dtype=torch.long)
    valid = torch.arange(longest, device=device)[None, :] >= pad[:, None]  # (B, longest): False on the pads
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stops = torch.tensor(list(stop_ids), device=device)
    out: list[list[int]] = [[] for _ in prompts]
    finish = ["length"] * len(prompts)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    cache = None
    if use_cache:
        cache = KVCache(config, len(prompts), longest + steps, device, dtype)
        cache.valid[:, :longest] = valid
        cache.pad.copy_(pad)
    seq = rows
    step_input = rows
    for _ in range(steps):
        if cache is not None:
            last = torch.full((len(prompts), 1), step_input.shape[1] - 1, device=device)
            logits, _ = model(step_input, logits_index=last, cache=cache)
        else:
            logits = _full_forward_last(model, seq, valid)
        logits = logits[:, -1, :vocab_limit]  # (B, vocab_limit)
        token = next_token(logits, temperature, top_k, top_p, generator)  # (B,)
        token = torch.where(done, EOT_ID, token)
        stopped = torch.isin(token, stops) & ~done
        host_tokens, host_stopped, host_done = token.tolist(), stopped.tolist(), done.tolist()
        for i, t in enumerate(host_tokens):
            if host_done[i]:
                continue
            if host_stopped[i]:
                finish[i] = "stop"
                continue
            out[i].append(t)
            if keep_going is not None and not keep_going(i, out[i]):
                finish[i] = "stop"
                stopped[i] = True
        done |= stopped
        if bool(done.all()):
            break
        step_input = token[:, None]
        seq = torch.cat([seq, step_input], dim=1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    return [Generation(tokens, reason) for tokens, reason in zip(out, finish, strict=True)]


def _full_forward_last(model: torch.nn.Module, seq: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The last position's logits (B, 1, V) from a forward over the whole sequence: what the cache must equal. Left
    pads change nothing under document attention with RoPE (each pad is a document of its own, and scores depend on
    distance only), so the plain forward serves; otherwise the pads are masked as the cache masks them, through an
    empty cache of the sequence's length."""
    last = torch.full((seq.shape[0], 1), seq.shape[1] - 1, device=seq.device)
    config = model.config
    if bool(valid.all()) or (config.attention == "document" and config.arch == "llama"):
        return model(seq, logits_index=last)[0]
    cache = KVCache(config, seq.shape[0], seq.shape[1], seq.device, next(model.parameters()).dtype)
    cache.valid.copy_(valid)
    cache.pad.copy_((~valid).sum(dim=1))
    return model(seq, logits_index=last, cache=cache)[0]
