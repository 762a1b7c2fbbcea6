"""Training configs: the base config (750M) has the planned values; mistakes stop with a message naming the field."""

from __future__ import annotations

import json

import pytest

from launcher.config import HealthConfig, TrainConfig

BASE_CONFIG = "configs/base/750M_unified_v1.json"


def test_750m_config_has_the_spec_values():
    c = TrainConfig.from_json(BASE_CONFIG)
    m = c.model
    assert (m.n_embd, m.n_head, m.n_layer, m.block_size, m.vocab_size) == (1280, 20, 32, 1024, 50304)
    assert (m.dropout, m.bias, m.tie_weights) == (0.1, False, True)
    o = c.optim
    assert (o.learning_rate, o.min_lr, o.warmup_iters, o.max_iters) == (1.5e-4, 1.5e-5, 3750, 75000)
    assert (o.grad_clip, o.weight_decay, o.beta1, o.beta2) == (1.0, 0.1, 0.9, 0.95)
    # 12 x 8 = 96 sequences = 98,304 tokens per optimizer step; 8 micro-steps on one GPU, none on eight.
    assert (c.batch.micro_batch_size, c.batch.global_batch_size) == (12, 96)
    assert c.batch.global_batch_size * m.block_size == 98_304
    assert c.batch.grad_accum_steps(1) == 8 and c.batch.grad_accum_steps(8) == 1
    assert [(p.name, p.until_step) for p in c.curriculum.phases] == [("circuit", 9125), ("balanced", None)]
    assert [p.dataset_dir for p in c.curriculum.phases] == ["data/unified_phase1_circuit", "data/unified_6B"]
    assert (c.eval.eval_interval, c.eval.eval_iters, c.eval.eval_seed) == (350, 200, 1337)
    assert sorted(c.eval.sets) == ["code", "domain", "general", "retrieval"]
    g = c.gold
    assert (g.max_val_train_ratio, g.max_consecutive_rises, g.max_regression) == (5.0, 2, 0.2)
    assert c.gold_baseline_step == 3750  # baseline at the end of warmup
    # Saves by the clock, not by steps: a preempted pod loses at most 30 minutes.
    assert (c.checkpoint.interval, c.checkpoint.interval_minutes, c.checkpoint.keep_last) == (None, 30, 3)


def test_a_config_that_never_saves_before_its_end_is_refused(tmp_path):
    values = _base()
    values["checkpoint"].update(interval=None, interval_minutes=None)
    with pytest.raises(ValueError, match="both null: the run would save only at its end"):
        TrainConfig.from_json(_write(tmp_path, values))


def _write(tmp_path, values):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return path


def _base():
    with open(BASE_CONFIG) as f:
        return json.load(f)


@pytest.mark.parametrize("section",
                         ["model", "optim", "batch", "data", "eval", "gold", "checkpoint", "logging", "health"])
def test_unknown_key_in_any_section_is_named(tmp_path, section):
    values = _base()
    values[section]["learning_rat"] = 1
    with pytest.raises(ValueError, match=f"learning_rat.*'{section}'"):
        TrainConfig.from_json(_write(tmp_path, values))


def test_unknown_top_level_key_and_missing_section(tmp_path):
    values = _base()
    values["optimizer"] = {}
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig.from_json(_write(tmp_path, values))
    values = _base()
    del values["batch"]
    with pytest.raises(ValueError, match="batch"):
        TrainConfig.from_json(_write(tmp_path, values))


def test_global_batch_not_divisible_names_the_gpu_counts_that_work():
    c = TrainConfig.from_json(BASE_CONFIG)
    with pytest.raises(ValueError, match=r"\[1, 2, 4, 8\]"):
        c.batch.grad_accum_steps(3)


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("model", "n_head"), 7, "n_head"),
        (("model", "vocab_size"), 32000, "vocab_size"),
        (("optim", "warmup_iters"), 80000, "warmup_iters"),
        (("batch", "global_batch_size"), 100, "global_batch_size"),
        (("curriculum", "phases"), [{"name": "a", "dataset_dir": "x", "until_step": 5}], "last phase"),
        (("data", "verify"), "sometimes", "verify"),
        (("health", "retrieval_fail_improvement"), 0.5, "retrieval_fail_improvement"),
        (("health", "window_evals"), 0, "window_evals"),
        (("checkpoint", "interval_minutes"), 0, "checkpoint.interval_minutes must be a positive number of minutes"),
        (("checkpoint", "interval"), -5, "checkpoint.interval must be a positive number of steps"),
    ],
)
def test_bad_values_are_named(tmp_path, path, value, message):
    values = _base()
    values[path[0]][path[1]] = value
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_json(_write(tmp_path, values))


def test_fingerprint_changes_with_training_values_only():
    a = TrainConfig.from_json(BASE_CONFIG)
    b = TrainConfig.from_json(BASE_CONFIG)
    assert a.fingerprint() == b.fingerprint()
    b.logging.log_interval = 1
    assert a.fingerprint() == b.fingerprint()
    b.health.retrieval_fail_improvement = 0.001  # monitoring thresholds must not block a resume
    assert a.fingerprint() == b.fingerprint()
    # How the same numbers are computed or fed: the kernel self-check's advice (fused_kernels false) must resume.
    b.model.fused_kernels = not b.model.fused_kernels
    b.model.compile = not b.model.compile
    b.data.prefetch_batches, b.data.verify = 1, "full"
    b.optim.max_nonfinite_steps = 99
    b.deepspeed_config = "ds_configs/zero2_fp32.json"  # its stage and precision are checked on their own
    b.curriculum.phases[0].dataset_dir = "/mnt/elsewhere/phase1"
    assert a.fingerprint() == b.fingerprint()
    for change in (lambda c: setattr(c.optim, "learning_rate", 3e-4), lambda c: setattr(c.model, "n_layer", 31),
                   lambda c: setattr(c.batch, "global_batch_size", 48), lambda c: setattr(c.data, "seed", 1),
                   lambda c: setattr(c.curriculum.phases[0], "until_step", 9000),
                   lambda c: setattr(c.gold, "max_regression", 0.3), lambda c: setattr(c.eval, "eval_seed", 7)):
        c = TrainConfig.from_json(BASE_CONFIG)
        change(c)
        assert a.fingerprint() != c.fingerprint()


def test_config_without_a_health_section_gets_the_defaults(tmp_path):
    values = _base()
    del values["health"]
    c = TrainConfig.from_json(_write(tmp_path, values))
    assert c.health == HealthConfig()
    assert c.fingerprint() == TrainConfig.from_json(BASE_CONFIG).fingerprint()
