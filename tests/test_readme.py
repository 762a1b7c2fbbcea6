"""The README stays true: its runnable blocks run as written, and the config reference it links to (docs/CONFIG.md)
matches the config dataclasses."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from scripts import config_reference
from tests.process_group import run


def test_config_reference_matches_the_dataclasses():
    text = config_reference.CONFIG_DOC.read_text()
    assert config_reference.table_in(text) == config_reference.reference_table(), (
        "docs/CONFIG.md's config reference is stale: run `python scripts/config_reference.py --write`"
    )


def test_readme_links_the_config_reference():
    assert "docs/CONFIG.md" in config_reference.README.read_text()


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


def _short_demo_config(path: Path) -> Path:
    """The demo's config cut to 20 steps (switch at 10, evals at 0, 10, 20): the README's commands are what is under
    test here, not the demo's length, which `make demo` itself reports."""
    cfg = json.loads((config_reference.README.parent / "configs/tiny/demo_cpu.json").read_text())
    cfg["optim"].update(max_iters=20, warmup_iters=5)
    cfg["curriculum"]["phases"][0]["until_step"] = 10
    cfg["eval"]["eval_interval"] = 10
    cfg["gold"]["baseline_after_step"] = 10
    cfg["checkpoint"]["interval"] = 10
    cfg["logging"]["log_interval"] = 5
    path.write_text(json.dumps(cfg, indent=2))
    return path


@pytest.mark.multirank
def test_readme_runnable_blocks_run_as_written(tmp_path):
    """What a new user types, on CPU: `make demo` (data build + 2-rank DeepSpeed training, here on a 20-step
    config), then every command the README shows on its outputs (summary, plot, Hugging Face export, probes on
    both, lineage, smoke test). Each block's whole process tree is killed if it runs past its timeout."""
    root = config_reference.README.parent
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RAGLLM_WORKSPACE")}
    env["DEMO_CONFIG"] = str(_short_demo_config(tmp_path / "demo_short.json"))
    for block in runnable_blocks(config_reference.README.read_text()):
        result = run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env, timeout=600,
                     stderr=subprocess.STDOUT)
        output = result.stdout[-5000:]
        assert result.returncode == 0, f"README block failed:\n{block}\n--- output ---\n{output}"
        if block.strip().startswith("make demo"):
            demo_console = result.stdout
    # A quiet console: every line is the project's own, none of DeepSpeed's or torch's chatter.
    for noise in ("FutureWarning", "DeprecationWarning", "Attempting to get learning rate", "[WARNING]", "[INFO]",
                  "built successfully"):
        assert noise not in demo_console, f"`make demo` printed {noise!r}:\n{demo_console[-5000:]}"
    assert "demo wall time: training " in demo_console and "torch CPU capability" in demo_console
    assert (root / "out" / "hf_demo_cpu" / "model.safetensors").is_file()
    assert (root / "checkpoints" / "demo_cpu" / "gold" / "model.safetensors").is_file()
    evals = [json.loads(line) for line in (root / "logs/train/demo_cpu_eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals] == [0, 10, 20]
    for r in evals:  # grounded QA on the retrieval set's held-out items (launcher/run_plan.py plan_grounded_qa)
        qa = r["qa"]
        assert qa["items"] + qa["too_long"] == 64 and qa["answerable"] + qa["unanswerable"] == qa["items"]
        assert qa["unanswerable"] >= 1 and 0.0 <= qa["exact"] <= qa["f1"] <= 1.0
    assert "grounded QA: 64 of" in demo_console
