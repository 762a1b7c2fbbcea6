"""The README stays true: its config reference matches the config dataclasses."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

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


def runnable_blocks(text: str) -> list[str]:
    """Shell blocks the README marks with `<!-- runnable -->` on the line before the fence, in order."""
    return re.findall(r"<!-- runnable -->\n```bash\n(.*?)```", text, flags=re.S)


def test_readme_marks_the_demo_and_its_follow_ups_runnable():
    blocks = runnable_blocks(config_reference.README.read_text())
    assert len(blocks) >= 2 and blocks[0].strip().startswith("make demo")


@pytest.mark.multirank
def test_readme_runnable_blocks_run_as_written():
    """What a new user types, on CPU: `make demo` (data build + 2-rank DeepSpeed training), then every command
    the README shows on its outputs (summary, plot, Hugging Face export, probes on both, lineage, smoke test)."""
    root = config_reference.README.parent
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RAGLLM_WORKSPACE")}
    for block in runnable_blocks(config_reference.README.read_text()):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env, capture_output=True,
                                text=True, timeout=900)
        output = (result.stdout + result.stderr)[-5000:]
        assert result.returncode == 0, f"README block failed:\n{block}\n--- output ---\n{output}"
    assert (root / "out" / "hf_demo_cpu" / "model.safetensors").is_file()
    assert (root / "checkpoints" / "demo_cpu" / "gold" / "model.safetensors").is_file()
