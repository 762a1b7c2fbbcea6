"""The curriculum: which phase (token directory) trains at an optimizer step, a pure function of the step.

Phase i covers optimizer steps [start_i, until_step_i), with start_0 = 0 and start_i = until_step_{i-1}; the last
phase has no until_step and runs to the end of training. Every rank computes the same phase from the step alone,
so all ranks switch at the same step with no message passing, and a resume at any step lands in the right phase
at the right offset (step_in_phase restarts at 0 at each switch, so each phase's data stream starts at its own
position 0; see `data.sampler.StepSampler`).

    from data.curriculum import Curriculum
    cur = Curriculum(cfg.curriculum.phases)          # or Curriculum([("circuit", 9125), ("balanced", None)])
    phase, step_in_phase = cur.phase_at(step)        # 9124 -> (0, 9124); 9125 -> (1, 0)
    cur.is_switch_step(9125)                         # True: check all ranks agree, open the new phase's data
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Phase(Protocol):
    """What the curriculum reads of a phase. The trainer's `launcher.config.PhaseConfig` has these fields (and the
    phase's token directory, which is the trainer's business): the data layer names the shape, not the class, so
    it imports nothing from the trainer."""

    name: str
    until_step: int | None


class Curriculum:
    """Which phase trains at an optimizer step (pure function of the step)."""

    def __init__(self, phases: Sequence[Phase] | Sequence[tuple[str, int | None]]):
        pairs = [(p.name, p.until_step) if isinstance(p, Phase) else tuple(p) for p in phases]
        if not pairs:
            raise ValueError("curriculum needs at least one phase (curriculum.phases is empty)")
        previous = 0
        for i, pair in enumerate(pairs):
            if len(pair) != 2:
                raise ValueError(f"curriculum phase {i} must have name and until_step (a PhaseConfig) or be a "
                                 f"(name, until_step) pair, got {pair}")
            name, until = pair
            last = i == len(pairs) - 1
            if last and until is not None:
                raise ValueError(f"curriculum phase '{name}' is the last phase: set its until_step to null")
            if not last:
                if isinstance(until, bool) or not isinstance(until, int) or until <= previous:
                    raise ValueError(
                        f"curriculum phase '{name}' needs an integer until_step greater than {previous}, got "
                        f"{until!r} (phase boundaries must be strictly increasing optimizer steps)"
                    )
                previous = until
        self.names: list[str] = [name for name, _ in pairs]
        self._boundaries: list[int] = [until for _, until in pairs[:-1]]

    def __len__(self) -> int:
        return len(self.names)

    def boundaries(self) -> list[int]:
        """The steps where a new phase starts (every phase's until_step but the open-ended last one's)."""
        return list(self._boundaries)

    def phase_start(self, phase: int) -> int:
        """First optimizer step of phase `phase`."""
        if not 0 <= phase < len(self.names):
            raise ValueError(f"phase index {phase} is out of range (the curriculum has {len(self.names)} phases)")
        return 0 if phase == 0 else self._boundaries[phase - 1]

    def phase_at(self, step: int) -> tuple[int, int]:
        """(phase index, step within that phase) of optimizer step `step`."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        # bisect_right: a step equal to a boundary belongs to the phase that starts there.
        phase = bisect.bisect_right(self._boundaries, step)
        return phase, step - self.phase_start(phase)

    def is_switch_step(self, step: int) -> bool:
        """True at the first step of every phase but the first."""
        phase, step_in_phase = self.phase_at(step)
        return phase > 0 and step_in_phase == 0
