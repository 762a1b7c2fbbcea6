"""Training a tiny `model.transformer.Transformer` on the synthetic tasks (`launcher.probes.synthetic`) in seconds on
a CPU: padded batches with their supervised positions, a softmax restricted to the task's tokens, and an AdamW loop.

- `Batch` / `make_batch`: rows right-padded with EOT, the positions whose next token is supervised and its targets.
- `restricted_output`: while training, logits for the task's few hundred token ids only (a sampled softmax); the
  probes always decode over the full vocabulary.
- `train_steps`: AdamW on the model through its public forward only, the loss computed at the supervised positions
  only (`logits_index`): the 50,304-row vocabulary projection of every position would cost 30x the rest of a
  64-wide model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from data.tokenizer import EOT


@dataclass
class Batch:
    """A training batch: inputs (B, T), the positions whose next token is supervised (B, K), their targets (B, K)
    with -1 where a row has fewer than K supervised positions."""

    idx: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor


def make_batch(rows: Sequence[Sequence[int]], supervised: Sequence[Sequence[int]], width: int | None = None) -> Batch:
    """Rows right-padded with EOT (causal attention: no real position sees a pad); `supervised[i]` are the
    positions of row i whose next token is a target."""
    width = width or max(len(r) for r in rows) - 1
    k = max(len(s) for s in supervised)
    idx = torch.full((len(rows), width), EOT, dtype=torch.long)
    index = torch.zeros((len(rows), k), dtype=torch.long)
    targets = torch.full((len(rows), k), -1, dtype=torch.long)
    for i, (row, sup) in enumerate(zip(rows, supervised, strict=True)):
        n = min(len(row) - 1, width)
        idx[i, :n] = torch.as_tensor(row[:n], dtype=torch.long)
        for j, t in enumerate(sup):
            index[i, j], targets[i, j] = t, row[t + 1]
    return Batch(idx, index, targets)


@contextmanager
def restricted_output(model: torch.nn.Module, token_ids: Sequence[int]):
    """Within the block, `model(idx, logits_index=...)` returns logits over `token_ids` only (column j is token
    `token_ids[j]`; the same weight rows, so training updates the real output projection, tied or not). Yields a
    function mapping full-vocabulary targets to those columns (-1 stays -1; a target outside the set is an error).
    A softmax over the task's ~200 tokens instead of 50,304 makes a tiny model's step ~3x cheaper; tokens outside
    the set are never trained as outputs and keep their initial logits, and the probes, run outside the block,
    decode over the full vocabulary, so they can still pick one of them."""
    full = model.output
    columns = torch.as_tensor(sorted(set(token_ids)), dtype=torch.long, device=full.weight.device)
    lookup = torch.full((full.weight.shape[0],), -1, dtype=torch.long, device=full.weight.device)
    lookup[columns] = torch.arange(len(columns), device=full.weight.device)

    class _Restricted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.full = full  # keeps the projection's parameters registered (the optimizer sees the same ones)

        def forward(self, x):
            bias = None if self.full.bias is None else self.full.bias[columns]
            return torch.nn.functional.linear(x, self.full.weight[columns], bias)

    def to_columns(targets: torch.Tensor) -> torch.Tensor:
        mapped = torch.where(targets >= 0, lookup[targets.clamp(min=0)], targets)
        if bool(((targets >= 0) & (mapped < 0)).any()):
            outside = sorted(set(targets[(targets >= 0) & (mapped < 0)].tolist()))[:5]
            raise ValueError(f"restricted_output: target ids {outside} are not in the restricted token set")
        return mapped

    model.output = _Restricted()
    try:
        yield to_columns
    finally:
        model.output = full


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup then cosine to lr / 10 (the trainer's schedule shape)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr / 10 + 0.5 * (lr - lr / 10) * (1 + math.cos(math.pi * frac))


def train_steps(model: torch.nn.Module, next_batch: Callable[[int], Batch], steps: int, lr: float = 3e-3,
                warmup: int = 20, weight_decay: float = 0.0,
                on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """`steps` AdamW steps on `next_batch(step)`; returns the losses. Loss: cross-entropy over the
    supervised positions (`logits_index`; `targets` -1 where a row has fewer positions is ignored)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    model.train()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        b = next_batch(step)
        # Logits only at the supervised positions (the forward takes targets OR logits_index, not both; with
        # targets it would project every position onto the 50,304-row vocabulary); padding entries (-1) ignored.
        logits, _ = model(b.idx, logits_index=b.index)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), b.targets.flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
