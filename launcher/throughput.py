"""Throughput of the training loop: tokens/s, MFU, the data-wait share and the ETA of each log interval.

The meter owns its cadence (`should_log`) and its clock. Evals and saves pause the clock (`paused()`), so tokens/s,
MFU and the data-wait share measure training steps only; the ETA counts them, as wall time should. It keeps no resume
state: a resumed run measures from its own start.

    meter = ThroughputMeter(tokens_per_step, flops_per_token, peak_flops, max_iters, log_interval, start_step)
    meter.add(step_loss)
    if meter.should_log(step): record = meter.measure(step, loader.wait_seconds)
    with meter.paused(): ...eval, save...
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any


def flops_per_token(num_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """PaLM's training FLOPs per token: 6N for the matmuls (forward + backward) + 12 L d T for attention."""
    return 6.0 * num_params + 12.0 * n_layer * n_embd * block_size


def format_seconds(seconds: float) -> str:
    """An ETA for the console: 1h05m, 12m03s."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ThroughputMeter:
    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float, max_iters: int,
                 log_interval: int, start_step: int, wait_seconds: float = 0.0):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.max_iters = max_iters
        self.log_interval = log_interval
        self.interval_t0, self.interval_wait0, self.losses = time.perf_counter(), wait_seconds, []
        self.run_t0, self.run_step0 = time.perf_counter(), start_step

    def add(self, step_loss: float) -> None:
        """One optimizer step's loss (NaN for a skipped update: left out of the interval's mean)."""
        self.losses.append(step_loss)

    def should_log(self, step: int) -> bool:
        """After optimizer step `step` (counted from 1): every log_interval steps and at the last."""
        return step % self.log_interval == 0 or step == self.max_iters

    def measure(self, step: int, wait_seconds: float) -> dict[str, Any]:
        """The interval that ends at `step` (loss mean, tokens/s, MFU, data-wait share, seconds per step, ETA), then
        a new interval starts. `wait_seconds`: the loader's total time waited for data so far."""
        now = time.perf_counter()
        elapsed = now - self.interval_t0
        steps_done = len(self.losses)
        tok_s = steps_done * self.tokens_per_step / elapsed
        finite = [v for v in self.losses if math.isfinite(v)]
        out = {"loss": sum(finite) / len(finite) if finite else math.nan, "tokens_per_s": tok_s,
               "mfu": self.flops_per_token * tok_s / self.peak_flops,
               "data_wait_share": (wait_seconds - self.interval_wait0) / elapsed, "step_seconds": elapsed / steps_done,
               "eta_seconds": (self.max_iters - step) * (now - self.run_t0) / max(1, step - self.run_step0)}
        self.interval_t0, self.interval_wait0, self.losses = now, wait_seconds, []
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count towards the interval's throughput."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.interval_t0 += time.perf_counter() - started
