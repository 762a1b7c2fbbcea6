"""The checked-in trained retrieval control (tests/fixtures/retrieval_control), loaded for the tests that run a probe
or the grounded QA scorer on a model known to retrieve. `scripts/experiments/retrieval_control.py` writes the file;
its format and recipe are `launcher.probes.trained_control`."""

from __future__ import annotations

from pathlib import Path

from launcher.probes.trained_control import FILE, load_control
from model.transformer import Transformer

CONTROL_FILE = Path(__file__).resolve().parent / "fixtures" / "retrieval_control" / FILE


def load_fixture_control() -> tuple[Transformer, dict]:
    """The trained copier in eval mode and its metadata (recipe, training log), from the checked-in file."""
    return load_control(CONTROL_FILE)
