"""The curriculum: phase and step-in-phase are a pure function of the optimizer step; switches happen exactly at
until_step; with the sampler, a resume (also at another world size) reads the same ids as an uninterrupted run."""

from pathlib import Path

import numpy as np
import pytest

from data.curriculum import Curriculum
from data.sampler import StepSampler
from launcher.config import PhaseConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_spec_config_switches_exactly_at_9125():
    cfg = TrainConfig.from_json(REPO / "configs/base/750M_unified_v1.json")
    cur = Curriculum(cfg.curriculum.phases)
    assert cur.names == ["circuit", "balanced"] and cur.boundaries() == [9125]
    assert cur.phase_at(0) == (0, 0)
    assert cur.phase_at(9124) == (0, 9124)
    assert cur.phase_at(9125) == (1, 0)
    assert cur.phase_at(9126) == (1, 1)
    assert cur.phase_at(74_999) == (1, 65_874)
    assert [s for s in range(0, 20_000) if cur.is_switch_step(s)] == [9125]


def test_three_phases_boundaries_and_step_in_phase_restart():
    cur = Curriculum([("a", 3), ("b", 5), ("c", None)])
    got = [cur.phase_at(s) for s in range(8)]
    assert got == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert [cur.is_switch_step(s) for s in range(8)] == [False, False, False, True, False, True, False, False]
    assert [cur.phase_start(i) for i in range(3)] == [0, 3, 5]
    assert len(cur) == 3


def test_single_phase_never_switches():
    cur = Curriculum([PhaseConfig(name="only", dataset_dir="d")])
    assert cur.boundaries() == [] and cur.phase_at(10**9) == (0, 10**9) and not cur.is_switch_step(0)


@pytest.mark.parametrize(
    "phases, match",
    [
        ([], "at least one phase"),
        ([("a", 5), ("b", 5), ("c", None)], "'b' needs an integer until_step greater than 5"),
        ([("a", None), ("b", None)], "'a' needs an integer until_step greater than 0"),
        ([("a", 3), ("b", 7)], "'b' is the last phase: set its until_step to null"),
        ([("a", 0), ("b", None)], "'a' needs an integer until_step greater than 0"),
    ],
)
def test_bad_phases_are_refused(phases, match):
    with pytest.raises(ValueError, match=match):
        Curriculum(phases)


def test_negative_step_is_refused():
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        Curriculum([("a", None)]).phase_at(-1)


def stream(curriculum, samplers, steps, world_size, micro):
    """What all ranks read together at each global step, as a list of arrays."""
    out = []
    for step in steps:
        phase, k = curriculum.phase_at(step)
        s = samplers[phase]
        per_rank = [s.micro_batches(k, r, world_size, micro) for r in range(world_size)]
        out.append(np.concatenate([per_rank[r][j] for j in range(len(per_rank[0])) for r in range(world_size)]))
    return out


def test_resume_across_the_switch_on_another_world_size_reads_the_same_ids():
    cur = Curriculum([("circuit", 9), ("balanced", None)])

    def samplers():
        return [StepSampler(23, 8, 1234, "circuit-fp"), StepSampler(31, 8, 1234, "balanced-fp")]

    uninterrupted = stream(cur, samplers(), range(20), world_size=2, micro=2)
    # The balanced phase starts at its own position 0, not where the circuit stream stopped.
    np.testing.assert_array_equal(uninterrupted[9], StepSampler(31, 8, 1234, "balanced-fp").sample_ids(0))
    for resume_at in (5, 9, 10):
        resumed = stream(cur, samplers(), range(resume_at, 20), world_size=1, micro=4)
        for a, b in zip(uninterrupted[resume_at:], resumed, strict=True):
            np.testing.assert_array_equal(a, b)
