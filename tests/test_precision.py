"""Precision choice (`--precision`, launcher/engine.py): fp32 on a CPU without native bf16 unless bf16 is asked for,
the ds_config otherwise; only `bf16.enabled` ever changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launcher import engine
from launcher.engine import cpu_has_native_bf16, precision_of, resolve_precision

REPO = Path(__file__).resolve().parents[1]
BF16 = "ds_configs/zero2_bf16.json"


def _load(path: str) -> dict:
    return json.loads((REPO / path).read_text())


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)


def test_auto_on_a_cpu_without_native_bf16_is_the_shipped_fp32_config(no_native_bf16):
    config, note = resolve_precision(_load(BF16), BF16, "auto", "cpu")
    # Everything but bf16 (ZeRO stage, buckets, overlap) stays as in zero2_bf16.json: the run is zero2_fp32.json.
    assert config == _load("ds_configs/zero2_fp32.json")
    assert precision_of(config) == "fp32"
    assert note.startswith("precision: fp32") and torch.backends.cpu.get_cpu_capability() in note
    assert "--precision bf16" in note and BF16 in note


def test_auto_keeps_bf16_where_it_is_native_or_on_a_gpu(native_bf16, monkeypatch):
    config, note = resolve_precision(_load(BF16), BF16, "auto", "cpu")
    assert config == _load(BF16) and note == f"precision: bf16 ({BF16})"
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)  # a GPU pod's host CPU does not matter
    config, _ = resolve_precision(_load(BF16), BF16, "auto", "cuda")
    assert config == _load(BF16)


def test_auto_leaves_an_fp32_config_alone(no_native_bf16):
    fp32 = _load("ds_configs/zero2_fp32.json")
    config, note = resolve_precision(fp32, "x.json", "auto", "cpu")
    assert config == fp32 and note == "precision: fp32 (x.json)"


def test_explicit_precision_wins_on_any_machine(no_native_bf16):
    config, note = resolve_precision(_load(BF16), BF16, "bf16", "cpu")
    assert precision_of(config) == "bf16" and "--precision bf16" in note
    config, _ = resolve_precision(_load(BF16), BF16, "fp32", "cuda")
    assert precision_of(config) == "fp32"
    assert config["zero_optimization"] == _load(BF16)["zero_optimization"]
    # DeepSpeed's older "bfloat16" spelling is replaced, not left beside "bf16" with the opposite value.
    old = {"zero_optimization": {"stage": 2}, "bfloat16": {"enabled": True}}
    config, _ = resolve_precision(old, "old.json", "fp32", "cpu")
    assert config == {"zero_optimization": {"stage": 2}, "bf16": {"enabled": False}}
    with pytest.raises(ValueError, match="--precision must be one of"):
        resolve_precision(_load(BF16), BF16, "fp16", "cpu")


def test_the_fallback_changes_the_accumulation_dtype_the_run_reports(no_native_bf16):
    from launcher.config import TrainConfig
    from launcher.engine import accumulation_summary, build_ds_config

    cfg = TrainConfig.from_json(REPO / "configs/tiny/test_cpu.json")
    merged = build_ds_config(cfg, REPO / BF16, world_size=1, on_cuda=False)
    assert accumulation_summary(merged)["dtype"] == "bf16"
    config, _ = resolve_precision(merged, BF16, "auto", "cpu")
    assert accumulation_summary(config)["dtype"] == "fp32" and accumulation_summary(config)["param_dtype"] == "fp32"


@pytest.mark.parametrize(("avx512_bf16", "amx", "capability", "native"), [
    (False, False, "AVX2", False),     # the machine: bf16 emulated, ~8x slower
    (False, False, "AVX512", False),   # Skylake/Cascade Lake: AVX-512 without its BF16 extension
    (True, False, "AVX512", True),     # Cooper Lake, Zen 4
    (False, True, "AVX512", True),     # Sapphire Rapids (AMX)
    (False, False, "SVE256", True),    # Graviton 3
    (False, False, "DEFAULT", False),  # an older ARM or x86 CPU
])
def test_native_bf16_follows_torchs_cpu_checks(monkeypatch, avx512_bf16, amx, capability, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert cpu_has_native_bf16() is native


def test_fp32_accumulation_is_reported_at_zero_stage_2_as_at_stage_1():
    # Verified on a 2-rank engine (scripts/bench/zero2_accum_dtype.py): ZeRO-2 accumulates into an fp32 partition.
    from launcher.config import TrainConfig
    from launcher.engine import ZERO2_FP32_ACCUM, accumulation_summary, build_ds_config

    cfg = TrainConfig.from_json(REPO / "configs/tiny/test_cpu.json")
    # The shipped ZeRO-2 fp32-accumulation config is the default one plus data_types, nothing else.
    assert _load(ZERO2_FP32_ACCUM) == {**_load(BF16), "data_types": {"grad_accum_dtype": "fp32"}}
    for path, dtype in ((BF16, "bf16"), (ZERO2_FP32_ACCUM, "fp32"), ("ds_configs/zero1_bf16_fp32accum.json", "fp32")):
        summary = accumulation_summary(build_ds_config(cfg, REPO / path, world_size=1, on_cuda=False))
        assert summary["dtype"] == dtype and summary["param_dtype"] == "bf16", path
        assert "not used" not in summary["note"], path


def test_the_shipped_bf16_configs_reduce_gradients_in_fp32_and_say_so():
    from launcher.config import TrainConfig
    from launcher.engine import ZERO1_FP32_ACCUM, ZERO2_FP32_ACCUM, accumulation_summary, build_ds_config

    cfg = TrainConfig.from_json(REPO / "configs/tiny/test_cpu.json")
    for path in (BF16, ZERO2_FP32_ACCUM, ZERO1_FP32_ACCUM):
        merged = build_ds_config(cfg, REPO / path, world_size=2, on_cuda=False)
        assert accumulation_summary(merged)["reduce_dtype"] == "fp32", path
    without = {k: v for k, v in _load(BF16).items() if k != "communication_data_type"}
    assert accumulation_summary({**without, "gradient_accumulation_steps": 1})["reduce_dtype"] == "bf16"


@pytest.mark.multirank
def test_deepspeed_reduces_gradients_in_the_dtype_the_config_names(tmp_path):
    """On 2 CPU ranks, bf16 engines: every gradient-sized collective of an optimizer step is fp32 under the shipped
    configs, and bf16 under the default config without `communication_data_type` (the control)."""
    import sys

    from tests.process_group import run

    without = tmp_path / "without_communication_data_type.json"
    without.write_text(json.dumps({k: v for k, v in _load(BF16).items() if k != "communication_data_type"}))
    configs = [BF16, "ds_configs/zero2_bf16_fp32accum.json", "ds_configs/zero1_bf16_fp32accum.json", str(without)]
    deepspeed = str(Path(sys.executable).with_name("deepspeed"))
    result = run([deepspeed, "--num_gpus", "2", "tests/ds_reduce_dtype.py", "--out", str(tmp_path / "out"),
                  *configs], timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / "out" / f"rank{rank}.json").read_text())
        for path in configs:
            # Gradient buckets hold thousands of elements; the one-element reductions are DeepSpeed's overflow checks.
            dtypes = {dtype for op, dtype, numel in seen[path] if numel > 1000}
            assert dtypes == ({"bfloat16"} if path == str(without) else {"float32"}), (rank, path, seen[path])
