"""Fault injection for the tests of the failure paths, switched on by environment variables; unset in real runs.

The loop knows nothing of it: `install(trainer)` wraps the trainer's hooks when a variable is set, so the tests drive
the real multi-rank run into a NaN step or a corrupt read. The checkpoint writer's faults (a full volume) live beside
the writer, in `launcher/checkpointing.py` (FAULT_SAVE_ERROR, FAULT_SKIP_SPACE_CHECK).
"""

from __future__ import annotations

import os
from typing import Any

# A comma-separated list of optimizer steps whose loss is made NaN on every rank (so their gradients are NaN and the
# update must be skipped).
NONFINITE_STEPS = "RAGLLM_FAULT_NONFINITE_STEPS"
# "<rank>:<step>": that rank's data read for that optimizer step raises, as a corrupt shard would.
DATA_ERROR = "RAGLLM_FAULT_DATA_ERROR"


def install(trainer: Any) -> None:
    """Wrap `trainer.micro_step_loss` and `trainer.make_batch` with the faults the environment asks for."""
    steps = {int(s) for s in os.environ.get(NONFINITE_STEPS, "").split(",") if s.strip()}
    if steps:
        loss_of = trainer.micro_step_loss

        def nan_loss(x, y, step):
            loss = loss_of(x, y, step)
            return loss * float("nan") if step in steps else loss

        trainer.micro_step_loss = nan_loss
    target = os.environ.get(DATA_ERROR)
    if target:
        make_batch = trainer.make_batch

        def failing_read(step):
            if target == f"{trainer.rank}:{step}":
                ds = trainer.plan.phases[trainer.curriculum.phase_at(step)[0]]
                raise OSError(f"injected read error ({DATA_ERROR}) in {ds.directory}")
            return make_batch(step)

        trainer.make_batch = failing_read
