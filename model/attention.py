"""Attention's one dispatch point: which positions a query may read (the mask), and which kernel computes it.

Document isolation (`model.attention = "document"`, the default; docs/TRAINING.md, "Document-isolated attention").
A packed row holds several documents, each ending with EOT. A query reads only earlier tokens of its own document:

- the boundaries come from the input ids alone (`document_ids`): the EOT belongs to the document it ends, as
  Megatron's `--reset-attention-mask` and torchtitan's document mask place it, so a document is predicted up to and
  including its end, and generation learns to stop;
- nothing predicts a document's first token: the position before it is the previous document's EOT (or nothing, at
  the start of a row), and GPT-2's vocabulary has no BOS to predict it from. The loader drops that target
  (`data.loader.read_micro_batch(document_targets=True)`, Megatron's `--eod-mask-loss`), which also removes the
  target a filler piece would otherwise get a second time from another document's EOT;
- positions do not restart per document: with RoPE a score depends only on the distance between query and key,
  so a document's logits are the same wherever it sits in the row (tests/test_attention.py shows it).

`model.attention = "causal"` is the plain causal mask over the whole row (the model before document isolation), for
ablations and for checkpoints trained that way.

Kernels (`model.attention_backend`, "auto" picks per device and dropout):

| backend | mask | dropout | where "auto" picks it |
| --- | --- | --- | --- |
| `sdpa_causal` | `is_causal=True` (the flash path) | yes | every `"causal"` model |
| `sdpa` | additive (B, 1, Tq, Tk), activation dtype | yes | CPU; CUDA with dropout > 0 (memory-efficient kernel) |
| `flex` | FlexAttention `BlockMask`, compiled | no | CUDA with dropout 0 |

On the CPU FlexAttention has no backward and its eager forward is 7-33x slower than SDPA with a mask
(`scripts/bench/attention.py`, docs/PERFORMANCE.md), so the CPU always runs SDPA. On CUDA, FlexAttention skips the
blocks the mask empties (torchtitan's default for document masks), but it takes no dropout, so the base config's
dropout 0.1 runs SDPA's memory-efficient kernel, which takes a mask and dropout. `varlen_attn` (flash varlen) is not
offered: it takes no dropout either, and its per-batch `cu_seqlens` length is a new shape for `torch.compile` at
every batch.

The mask is built once per forward (per micro-batch) by `build_attention_mask` and handed to every layer: a few
elementwise ops on the device, no host read, and tensors of a fixed shape, so a compiled block does not recompile.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from model.config import ATTENTION_BACKENDS, ATTENTION_KINDS


def document_ids(idx: torch.Tensor, eot: int) -> torch.Tensor:
    """(B, T) int32: the index of each position's document within its row, counting EOTs strictly before it (so an
    EOT belongs to the document it ends)."""
    is_eot = (idx == eot).to(torch.int32)
    return torch.cumsum(is_eot, dim=1, dtype=torch.int32) - is_eot


def document_positions(idx: torch.Tensor, eot: int) -> torch.Tensor:
    """(B, T) int64: each position's offset from the start of its document. Fed to a Hugging Face export as
    `position_ids` (with `use_cache=False`), it makes transformers mask each document of a packed row off the others
    (its packed-sequence detection, masking_utils.find_packed_sequence_indices), which computes what "document"
    computes here: RoPE scores depend only on distances, so restarting positions changes nothing within a document."""
    doc = document_ids(idx, eot)
    pos = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
    first = torch.ones_like(idx, dtype=torch.bool)
    first[:, 1:] = doc[:, 1:] != doc[:, :-1]
    return pos - torch.where(first, pos, 0).cummax(dim=1).values


@dataclasses.dataclass
class AttentionMask:
    """What every layer of one forward attends with: built once by `build_attention_mask`."""

    backend: str
    """"sdpa_causal", "sdpa" or "flex" (the kernel `attend` calls)."""
    additive: torch.Tensor | None = None
    """"sdpa": (B, 1, Tq, Tk) in the activation dtype, 0 where a query may read a key and -inf elsewhere."""
    block_mask: object | None = None
    """"flex": the `torch.nn.attention.flex_attention.BlockMask`."""


def resolve_backend(kind: str, backend: str, device: torch.device, dropout: float) -> str:
    """The kernel for this model on this device (see the module table). A forced backend that cannot run here is a
    ValueError naming the fix."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"model.attention must be one of {list(ATTENTION_KINDS)}, got {kind!r}")
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {backend!r}")
    if kind == "causal":
        return "sdpa_causal"
    if backend == "flex":
        if dropout > 0:
            raise ValueError(f"model.attention_backend 'flex': FlexAttention takes no dropout, and model.dropout is "
                             f"{dropout}; set model.dropout to 0 or model.attention_backend to 'sdpa' or 'auto'")
        if device.type != "cuda":
            raise ValueError("model.attention_backend 'flex' trains on CUDA only (FlexAttention has no backward on "
                             "the CPU); use 'sdpa' or 'auto' here")
        return "flex"
    if backend == "sdpa" or device.type != "cuda" or dropout > 0:
        return "sdpa"
    return "flex"


def dense_allowed(doc_q: torch.Tensor, doc_k: torch.Tensor, q_start: int) -> torch.Tensor:
    """(B, Tq, Tk) bool: query i (at position q_start + i) may read key j. `doc_q`/`doc_k` are the document ids of
    the queries and keys (all equal for a plain causal mask). The reference every kernel is checked against."""
    tq, tk = doc_q.shape[1], doc_k.shape[1]
    q_pos = torch.arange(q_start, q_start + tq, device=doc_q.device)
    k_pos = torch.arange(tk, device=doc_k.device)
    causal = k_pos[None, :] <= q_pos[:, None]  # (Tq, Tk)
    return causal[None] & (doc_q[:, :, None] == doc_k[:, None, :])


def flex_mask_mod(doc: torch.Tensor):
    """FlexAttention's `mask_mod` for document ids `doc` (B, T): the same rule as `dense_allowed`, per element."""

    def same_document_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (doc[b, q_idx] == doc[b, kv_idx])

    return same_document_causal


_COMPILED: dict[str, object] = {}


def _flex_ops():
    """(flex_attention, create_block_mask), compiled once per process: eager FlexAttention materializes every score
    (torchtitan compiles both the same way, models/attention.py)."""
    if not _COMPILED:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        _COMPILED["flex_attention"] = torch.compile(flex_attention, dynamic=False)
        _COMPILED["create_block_mask"] = torch.compile(create_block_mask, dynamic=False)
    return _COMPILED["flex_attention"], _COMPILED["create_block_mask"]


def build_attention_mask(idx: torch.Tensor, kind: str, backend: str, dropout: float, dtype: torch.dtype,
                         eot: int, *, cache_ids: torch.Tensor | None = None,
                         key_valid: torch.Tensor | None = None) -> AttentionMask:
    """The mask of one forward over `idx` (B, T), queries at positions [P, P + T) where P is the length of
    `cache_ids` (B, P), the ids already in a KV cache (None: no cache). Keys are `cache_ids` then `idx`.
    `key_valid` (B, P + T) bool, False on left padding (batched generation): no query reads a pad key, except that a
    pad reads itself, so that no row of the softmax is empty (an all -inf row is NaN, and NaN values would reach
    the real rows through the next layer's keys, since 0 * NaN is NaN)."""
    chosen = resolve_backend(kind, backend, idx.device, dropout)
    past = 0 if cache_ids is None else cache_ids.shape[1]
    if chosen == "sdpa_causal" and past == 0 and key_valid is None:
        return AttentionMask("sdpa_causal")
    keys = idx if cache_ids is None else torch.cat([cache_ids, idx], dim=1)
    if kind == "causal":
        doc_k = torch.zeros(keys.shape, dtype=torch.int32, device=idx.device)
    else:
        doc_k = document_ids(keys, eot)
    doc_q = doc_k[:, past:]
    if chosen == "flex" and past == 0 and key_valid is None:
        _, create_block_mask = _flex_ops()
        t = idx.shape[1]
        return AttentionMask("flex", block_mask=create_block_mask(flex_mask_mod(doc_k), idx.shape[0], None, t, t,
                                                                  device=idx.device))
    allowed = dense_allowed(doc_q, doc_k, past)
    if key_valid is not None:
        k_pos = torch.arange(keys.shape[1], device=idx.device)
        itself = k_pos[None, :] == (past + torch.arange(idx.shape[1], device=idx.device))[:, None]  # (Tq, Tk)
        allowed &= key_valid[:, None, :] | itself[None]
    additive = torch.zeros(allowed.shape, dtype=dtype, device=idx.device).masked_fill_(~allowed, float("-inf"))
    return AttentionMask("sdpa", additive=additive[:, None])  # (B, 1, Tq, Tk): broadcast over heads


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, dropout_p: float) -> torch.Tensor:
    """Attention of q (B, H, Tq, D) over k, v (B, H, Tk, D) under `mask`; returns (B, H, Tq, D)."""
    if mask.backend == "sdpa_causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    if mask.backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.additive, dropout_p=dropout_p)
    flex_attention, _ = _flex_ops()  # dropout 0 here: resolve_backend never picks flex with dropout
    return flex_attention(q, k, v, block_mask=mask.block_mask)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention in fp32 with a dense (B, Tq, Tk) bool mask, written out: the reference for every kernel."""
    scores = (q.float() @ k.float().transpose(-2, -1)) / q.shape[-1] ** 0.5  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


__all__ = ["AttentionMask", "attend", "build_attention_mask", "dense_allowed",
           "document_ids", "document_positions", "flex_mask_mod", "reference_attention", "resolve_backend"]
