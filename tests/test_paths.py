"""Relative paths resolve against $RAGLLM_WORKSPACE (the Docker volume) when set, else the current directory."""

from __future__ import annotations

from pathlib import Path

from data.paths import resolve


def test_relative_paths_follow_the_workspace(monkeypatch, tmp_path):
    monkeypatch.delenv("RAGLLM_WORKSPACE", raising=False)
    assert resolve("data/unified_6B") == Path("data/unified_6B")
    monkeypatch.setenv("RAGLLM_WORKSPACE", str(tmp_path))
    assert resolve("data/unified_6B") == tmp_path / "data/unified_6B"
    assert resolve("/abs/runs") == Path("/abs/runs")


def test_trainer_reports_a_missing_dataset_under_the_workspace(monkeypatch, tmp_path):
    from launcher.run_plan import open_token_dir

    monkeypatch.setenv("RAGLLM_WORKSPACE", str(tmp_path))
    try:
        open_token_dir("data/nowhere", "curriculum phase 'circuit'", "size", 64)
    except ValueError as e:
        assert str(tmp_path / "data/nowhere") in str(e) and "build_unified_dataset.py" in str(e)
    else:
        raise AssertionError("a missing token directory must be an error")


def test_config_fingerprint_ignores_where_the_data_is_mounted():
    from launcher.config import TrainConfig

    a = TrainConfig.from_json("configs/base/750M_unified_v1.json")
    b = TrainConfig.from_json("configs/base/750M_unified_v1.json")
    b.curriculum.phases[0].dataset_dir = "/workspace/data/unified_phase1_circuit"
    assert a.fingerprint() == b.fingerprint()
    b.curriculum.phases[0].until_step = 9000
    assert a.fingerprint() != b.fingerprint()
