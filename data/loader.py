"""Prefetching loader: a background thread reads the micro-batches of the next optimizer steps while the
accelerator computes the current one, so the trainer never waits on the memmap.

What a step reads is decided elsewhere (`data.sampler.StepSampler`, `data.curriculum.Curriculum`); this module only
turns "step k" into tensors ahead of time and measures how long the consumer had to wait.

    from data.loader import PrefetchLoader
    loader = PrefetchLoader(make_step_batch, start_step=0, stop_step=1000, prefetch=4)
    for batch in loader:            # StepBatch(step, phase, micro_batches=[(x, y, ids), ...]) in step order
        ...
    loader.wait_seconds             # total time __next__ blocked (the "data wait" of the throughput log)
    loader.close()

A thread (not a process) is enough: numpy's memmap slicing and torch's copies release the GIL, and one reader per
rank keeps up with ~100k tokens/s/GPU (scripts/bench/train_throughput.py measures it).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from data.packing import PAD
from data.token_dataset import TokenDataset
from data.tokenizer import EOT


@dataclass
class StepBatch:
    """One rank's data for one optimizer step."""

    step: int
    """Global optimizer step (0-based index of the step these batches feed)."""
    phase: int
    """Curriculum phase index of the step."""
    step_in_phase: int
    """Offset of the step within its phase (what the sampler was asked for)."""
    micro_batches: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]] = field(default_factory=list)
    """(inputs (B, T) int64, targets (B, T) int64, sample ids (B,)) for each micro-step, in order."""


class DataReadError(RuntimeError):
    """Reading a step's samples failed (a corrupt shard, a token id out of range, an I/O error of the volume); the
    message names the shard and sample (from the reader) and, from the prefetch loader, the step. launcher/train.py
    turns it into a one-line stop of the whole job, on every rank, without a traceback."""


def read_micro_batch(dataset: TokenDataset, ids: np.ndarray, block_size: int, pin_memory: bool = False, *,
                     document_targets: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples `ids` (each block_size + 1 tokens) into inputs and next-token targets.

    Padding (PAD = -1, at the end of a packed sample) stays -1 in the targets, which the loss ignores
    (`ignore_index=-1` in model/loss.py), and is EOT in the inputs: an embedding row must exist for it, and with
    causal attention no real position sees a later pad.

    `document_targets` (a model with `model.attention` "document"): the target after every EOT is -1 too. It is the
    next document's first token, which only another document (or nothing) precedes; and where a filler piece continues
    a long document after another document's EOT (data/packing.py), that token is already the target of its true
    predecessor in the sample before. So every target is predicted from its own document, and each once."""
    try:
        tokens = torch.from_numpy(np.stack([dataset.sample(int(i), block_size) for i in ids]))  # (B, T + 1)
    except (ValueError, IndexError, OSError) as e:  # the reader's message names the shard and the sample
        raise DataReadError(str(e)) from e
    y = tokens[:, 1:].contiguous()
    if document_targets:
        y.masked_fill_(tokens[:, :-1] == EOT, PAD)
    x = tokens[:, :-1].masked_fill(tokens[:, :-1] == PAD, EOT).contiguous()
    if pin_memory:
        # Pinned host memory lets the host-to-device copy run asynchronously (non_blocking=True).
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


_END = object()


class PrefetchLoader:
    """Calls `make_batch(step)` for steps [start_step, stop_step) on a background thread, `prefetch` steps ahead.

    Exceptions raised while reading (a corrupt shard, a token id out of range) are re-raised in the consumer as a
    DataReadError with the step they happened at (`step_label` None: with the reader's own message only).
    `prefetch=0` reads synchronously in the caller (for debugging and benchmarks).
    """

    def __init__(self, make_batch: Callable[[int], StepBatch], start_step: int, stop_step: int, prefetch: int = 4,
                 step_label: str | None = "step"):
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.make_batch = make_batch
        self.step_label = step_label  # how a read error names the item; None: the reader's message says it
        self.next_step = start_step
        self.stop_step = stop_step
        self.prefetch = prefetch
        self.wait_seconds = 0.0
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._thread = None
        if prefetch > 0:
            self._thread = threading.Thread(target=self._worker, args=(start_step,), name="prefetch", daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        # Bounded wait so close() can stop a worker blocked on a full queue.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _worker(self, start_step: int) -> None:
        for step in range(start_step, self.stop_step):
            try:
                item = self.make_batch(step)
            except BaseException as e:  # handed to the consumer, which raises it where the step is known
                self._put((step, e))
                return
            if not self._put(item):
                return
        self._put(_END)

    def __iter__(self):
        return self

    def __next__(self) -> StepBatch:
        if self.next_step >= self.stop_step:
            raise StopIteration
        t0 = time.perf_counter()
        if self._thread is None:
            try:
                item = self.make_batch(self.next_step)
            except Exception as e:  # the same error, with its step, as from the prefetch thread
                item = (self.next_step, e)
        else:
            item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if item is _END:
            raise StopIteration
        if isinstance(item, tuple):
            step, error = item
            where = f"reading the data of {self.step_label} {step} failed: " if self.step_label else ""
            raise DataReadError(f"{where}{error}") from error
        assert item.step == self.next_step, f"prefetch out of order: got step {item.step}, want {self.next_step}"
        self.next_step += 1
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
