"""Fixed, sharded evaluation: the same samples of each set every time, split across ranks, summed by all-reduce.

Each set evaluates `eval_iters x micro_batch_size` samples chosen by `eval_seed` alone (`data.sampler.
eval_sample_ids`); rank r takes its contiguous share (`shard_for_rank`), sums the token losses of its samples
and counts their tokens, padding (target -1) left out, and the ranks all-reduce both: the result is the mean token
loss over the fixed samples' real tokens, whatever the world size (DESIGN, "Evaluation is fixed and sharded").
Packed samples differ in their padding, so a mean of per-sample means would weigh a short sample's tokens more.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from data.loader import read_micro_batch
from data.sampler import eval_sample_ids, shard_for_rank
from data.token_dataset import TokenDataset
from launcher import distributed as dist


class FixedEvalSet:
    """One eval set: a dataset and this rank's share of its fixed sample ids."""

    def __init__(self, name: str, dataset: TokenDataset, block_size: int, count: int, seed: int, rank: int,
                 world_size: int, document_targets: bool = False):
        self.name = name
        self.document_targets = document_targets  # the targets training has (data.loader.read_micro_batch)
        self.dataset = dataset
        self.block_size = block_size
        self.all_ids = eval_sample_ids(dataset.num_samples(block_size), count, seed)
        self.ids = shard_for_rank(self.all_ids, rank, world_size)


@torch.no_grad()
def _sample_losses(model: torch.nn.Module, eval_set: FixedEvalSet, micro_batch_size: int,
                   device: torch.device) -> tuple[torch.Tensor, int]:
    """Sum of the token losses over this rank's samples, as a float64 tensor on `device` (not read here), and the
    number of tokens, padding excluded, counted on the host from the batch before it is copied."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for start in range(0, len(eval_set.ids), micro_batch_size):
        ids = eval_set.ids[start : start + micro_batch_size]
        x, y = read_micro_batch(eval_set.dataset, ids, eval_set.block_size,
                                document_targets=eval_set.document_targets)
        real = int((y != -1).sum())  # host tensor: no device read
        if not real:  # an all-padding micro-batch has a NaN mean and nothing to add
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # The training loss path (model.loss.chunked_linear_cross_entropy): the mean over targets != -1, without the
        # (B, T, vocab) logits or their fp32 copy (2.5 GB at 12 x 1024 on the GPU, on top of the training memory).
        _, mean_loss = model(x, y)
        total += mean_loss.double() * real  # stays on the device: the GPU never waits for the host here
        count += real
    return total, count


def evaluate(model: torch.nn.Module, sets: list[FixedEvalSet], micro_batch_size: int,
             device: torch.device) -> dict[str, float]:
    """Mean token loss per set over its fixed samples' real tokens. The sums stay on the device until every set is
    done; then one all-reduce and one host read for all sets together (before: two device reads per micro-batch,
    `float(mean_loss)` and the token count, each a stall of the host). Call on every rank."""
    was_training = model.training
    model.eval()
    try:
        sums, counts = [], []
        for s in sets:
            total, count = _sample_losses(model, s, micro_batch_size, device)
            sums.append(total)
            counts.append(float(count))
    finally:
        model.train(was_training)
    partial = torch.stack([torch.stack(sums), torch.tensor(counts, dtype=torch.float64).to(device)])  # (2, sets)
    summed = dist.all_reduce_tensor(partial, op="sum").cpu().tolist()  # the one host read of the eval
    out = {}
    for i, s in enumerate(sets):
        total, count = summed[0][i], summed[1][i]
        out[s.name] = total / count if count else math.nan
    return out


def fixed_sets(named: dict[str, TokenDataset], block_size: int, count: int, seed: int, rank: int,
               world_size: int, document_targets: bool = False) -> list[FixedEvalSet]:
    return [FixedEvalSet(name, ds, block_size, count, seed, rank, world_size, document_targets)
            for name, ds in named.items()]


def ids_digest(sets: list[FixedEvalSet]) -> dict[str, int]:
    """Number of fixed samples per set (logged once so a reader can see what an eval number averages over)."""
    return {s.name: int(np.asarray(s.all_ids).size) for s in sets}
