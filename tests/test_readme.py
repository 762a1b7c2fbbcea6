"""The README stays true: its config reference matches the config dataclasses."""

from __future__ import annotations

from scripts import config_reference


def test_readme_config_reference_matches_the_dataclasses():
    text = config_reference.README.read_text()
    assert config_reference.readme_table(text) == config_reference.reference_table(), (
        "README.md's config reference is stale: run `python scripts/config_reference.py --write`"
    )


def test_every_config_field_is_documented():
    table = config_reference.reference_table()
    for key in ("model.n_embd", "optim.warmup_iters", "curriculum.phases[].until_step", "gold.max_regression"):
        assert f"`{key}`" in table
