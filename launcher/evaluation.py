"""Fixed, sharded evaluation: the same samples of each set every time, split across ranks, summed by all-reduce.

Each set evaluates `eval_iters x batch.micro_batch_size` samples chosen by `eval_seed` alone (`data.sampler.
eval_sample_ids`); rank r takes its contiguous share (`shard_for_rank`), sums the token losses of its samples
and counts their tokens, padding (target -1) left out, and the ranks all-reduce both: the result is the mean token
loss over the fixed samples' real tokens, whatever the world size (docs/DESIGN.md, "Evaluation is fixed and sharded").
Packed samples differ in their padding, so a mean of per-sample means would weigh a short sample's tokens more.
Bits per byte come from the same forward: the losses of the targets that stand for text, over their UTF-8 bytes.

The samples are read in micro-batches of `eval.micro_batch_size` (its own: no gradients are kept, so larger than
training's) through the training's prefetch thread and pinned memory; neither the micro-batch nor the world size
changes which samples are read or, beyond float rounding, the numbers (docs/PERFORMANCE.md, "What evaluation
costs").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import numpy as np
import torch

from data.loader import PrefetchLoader, StepBatch, read_micro_batch
from data.sampler import eval_sample_ids, shard_for_rank
from data.token_dataset import TokenDataset
from data.tokenizer import EOT, get_tokenizer
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


@functools.cache
def token_byte_lengths(vocab_size: int) -> np.ndarray:
    """UTF-8 bytes of each id's text (vocab_size,) int64: 0 for EOT and the embedding's padding ids, which stand for
    no text (nanochat's `token_bytes`, nanochat/loss_eval.py `evaluate_bpb`)."""
    enc = get_tokenizer()
    lengths = np.zeros(vocab_size, dtype=np.int64)
    lengths[:EOT] = [len(enc.decode_single_token_bytes(i)) for i in range(EOT)]
    return lengths


@dataclasses.dataclass
class EvalSums:
    """One rank's sums over its samples of one set, on the device (not read here), and host counts."""

    nats: torch.Tensor
    """Sum of the token losses (float64), padding left out."""
    nats_with_bytes: torch.Tensor
    """The same over the targets that stand for text (bytes > 0: not EOT), the numerator of bits per byte."""
    tokens: int = 0
    bytes: int = 0


def _micro_batches(sets: list[FixedEvalSet], micro_batch_size: int, pin_memory: bool,
                   prefetch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(set index, x, y) of every eval micro-batch of every set, read `prefetch` micro-batches ahead on the loader's
    background thread into pinned memory (on CUDA), as training reads (data/loader.py `PrefetchLoader`)."""
    jobs = [(i, start) for i, s in enumerate(sets) for start in range(0, len(s.ids), micro_batch_size)]

    def read(k: int) -> StepBatch:
        i, start = jobs[k]
        s = sets[i]
        ids = s.ids[start : start + micro_batch_size]
        x, y = read_micro_batch(s.dataset, ids, s.block_size, pin_memory, document_targets=s.document_targets)
        return StepBatch(step=k, phase=i, step_in_phase=start, micro_batches=[(x, y, ids)])

    # An eval micro-batch is no training step: a read error carries the reader's message, which names shard and sample.
    loader = PrefetchLoader(read, 0, len(jobs), prefetch, step_label=None)
    try:
        for batch in loader:
            x, y, _ = batch.micro_batches[0]
            yield batch.phase, x, y
    finally:
        loader.close()


@torch.no_grad()
def eval_sums(model: torch.nn.Module, sets: list[FixedEvalSet], micro_batch_size: int, device: torch.device,
               pin_memory: bool = False, prefetch: int = 2) -> list[EvalSums]:
    """Per set: the sums of the token losses over this rank's samples (device tensors, not read here) and the
    counts of tokens and bytes (host, from the batch before it is copied)."""
    zero = torch.zeros((), dtype=torch.float64, device=device)
    sums = [EvalSums(zero.clone(), zero.clone()) for _ in sets]
    table = token_byte_lengths(model.config.vocab_size)
    for i, x, y in _micro_batches(sets, micro_batch_size, pin_memory, prefetch):
        target_bytes = torch.from_numpy(table[y.clamp(min=0).numpy()]) * (y != -1)  # (B, T) host
        real = int((y != -1).sum())
        if not real:  # an all-padding micro-batch adds nothing
            continue
        has_bytes = (target_bytes > 0).to(device, non_blocking=True)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # Per-token losses through the chunked loss (model/loss.py): no (B, T, vocab) logits are kept.
        _, losses = model(x, y, per_token=True)  # (B, T) fp32, 0 on padding
        losses = losses.double()
        sums[i].nats += losses.sum()  # stays on the device: the GPU never waits for the host here
        sums[i].nats_with_bytes += (losses * has_bytes).sum()
        sums[i].tokens += real
        sums[i].bytes += int(target_bytes.sum())
    return sums


@dataclasses.dataclass
class EvalResult:
    losses: dict[str, float]
    """Mean token loss (nats) per set over its fixed samples' real tokens."""
    bits_per_byte: dict[str, float]
    """Bits per UTF-8 byte of the targets' text per set: sum of the losses of the targets that stand for text over
    ln 2 x their bytes (nanochat's definition; EOT, which stands for no text, is left out of both). Unlike the
    loss, it compares across tokenizers."""


def evaluate(model: torch.nn.Module, sets: list[FixedEvalSet], micro_batch_size: int,
             device: torch.device, pin_memory: bool = False, prefetch: int = 2) -> EvalResult:
    """Loss and bits per byte per set over its fixed samples. The sums stay on the device until every set is done;
    then one all-reduce and one host read for all sets together. `micro_batch_size` is eval's own (no gradients
    are kept, so it can be larger than training's); the samples and the numbers do not depend on it or on the
    world size. Call on every rank."""
    was_training = model.training
    model.eval()
    try:
        sums = eval_sums(model, sets, micro_batch_size, device, pin_memory, prefetch)
    finally:
        model.train(was_training)
    host = torch.tensor([[float(s.tokens) for s in sums], [float(s.bytes) for s in sums]], dtype=torch.float64)
    device_sums = torch.stack([torch.stack([s.nats for s in sums]), torch.stack([s.nats_with_bytes for s in sums])])
    partial = torch.cat([device_sums, host.to(device)])  # (4, sets): nats, nats of text, tokens, bytes
    summed = dist.all_reduce_tensor(partial, op="sum").cpu().tolist()  # the one host read of the eval
    losses, bpb = {}, {}
    for i, s in enumerate(sets):
        nats, nats_with_bytes, tokens, n_bytes = (row[i] for row in summed)
        losses[s.name] = nats / tokens if tokens else math.nan
        bpb[s.name] = nats_with_bytes / (math.log(2) * n_bytes) if n_bytes else math.nan
    return EvalResult(losses, bpb)


def fixed_sets(named: dict[str, TokenDataset], block_size: int, count: int, seed: int, rank: int,
               world_size: int, document_targets: bool = False) -> list[FixedEvalSet]:
    return [FixedEvalSet(name, ds, block_size, count, seed, rank, world_size, document_targets)
            for name, ds in named.items()]


def ids_digest(sets: list[FixedEvalSet]) -> dict[str, int]:
    """Number of fixed samples per set (logged once so a reader can see what an eval number averages over)."""
    return {s.name: int(np.asarray(s.all_ids).size) for s in sets}
