"""The trainer end to end on CPU: real `deepspeed --num_gpus 2` launches (gloo), real token memmaps, bf16 ZeRO-2.

Runs of the tiny config (configs/tiny/test_cpu.json: 2 layers, width 64, block 64, 20 steps, the curriculum switch
at step 10, eval every 5, checkpoints every 5). Each is started the first time a test needs it and shared by the
module's tests (the `runs` fixture, class `Runs`), so a run that fails fails only the tests that read it:

- A: 2 ranks x micro 2 x accum 2, uninterrupted (the reference);
- B: 1 rank x micro 2 x accum 4 (plain `python`), same global batch;
- C: 2 ranks started through the Docker entrypoint (docker/entrypoint.py), which gets a SIGTERM after a few steps
  as a pod stop would send it (it forwards the signal to the launcher's whole process group); then `--resume auto`,
  whose rank 1 is killed with SIGKILL a few steps after its next checkpoint; then `--resume auto` to the end;
- D: 1 rank resumed from A's step-15 checkpoint (another world size: DeepSpeed universal checkpoint);
- E: NaN losses injected at known steps (skipped, counted, then a stop; GOLD never overwritten);
- F: 5 steps forced to bf16 (the bf16 path on CPUs where the default is fp32);
- G: 2 ranks under mpirun with a data read error injected on rank 1 (every rank must stop);
- R: dropout 0.1, then a resume from an older checkpoint of the same run (newer work set aside, exact replay).

    .venv/bin/pytest tests/test_train_distributed.py -q
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.process_group import run, started, tree_pids

pytestmark = pytest.mark.multirank  # every test here reads the runs of the module's fixture

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
TRAIN = "launcher/train.py"
TIMEOUT = 240
# bf16 training: two world sizes sum gradients in a different order, and bf16 weights round differently from
# there on. Losses near 10.8 nats stay within this over 20 steps; a wrong sample order or a missing micro-batch
# moves them by far more (checked by the deliberately broken runs described in docs/TRAINING.md).
BF16_LOSS_ATOL = 0.03
# fp32 (the default on a CPU without native bf16, launcher/engine.py resolve_precision): only the summation order
# differs between world sizes, so the runs agree to rounding noise.
FP32_LOSS_ATOL = 1e-4


def _precision(console: str) -> str:
    """The precision a run trained in, from the line it prints at start ("precision: fp32, ...")."""
    for line in console.splitlines():
        if line.startswith("precision: "):
            return line.removeprefix("precision: ")[:4]
    raise AssertionError("the run printed no 'precision:' line")


def _pattern(rng: np.random.Generator, n_tokens: int, period: int) -> np.ndarray:
    """A repeating random sequence: learnable (the loss falls) yet every sample differs in its phase."""
    base = rng.integers(0, 50256, size=period)
    return np.tile(base, n_tokens // period + 1)[:n_tokens]


def _make_data(root: Path) -> None:
    from data.token_dataset import write_token_dir

    rng = np.random.default_rng(0)
    p1, p2 = _pattern(rng, 48_000, 37), _pattern(rng, 48_000, 53)
    pack = {"pack_block_sizes": [64]}  # configs/tiny/test_cpu.json's block size
    write_token_dir(root / "phase1", [p1[:40_000]], **pack)
    write_token_dir(root / "phase2", [p2[:40_000]], **pack)
    write_token_dir(root / "phase2" / "val", [p2[40_000:]], **pack)
    write_token_dir(root / "general_eval", [_pattern(rng, 8_000, 41)], **pack)
    write_token_dir(root / "code_eval", [p1[40_000:]], **pack)


def _config(root: Path, **overrides) -> Path:
    cfg = json.loads((REPO / "configs/tiny/test_cpu.json").read_text())
    cfg["curriculum"]["phases"][0]["dataset_dir"] = str(root / "data/phase1")
    cfg["curriculum"]["phases"][1]["dataset_dir"] = str(root / "data/phase2")
    cfg["eval"]["sets"] = {"general": str(root / "data/general_eval"), "code": str(root / "data/code_eval")}
    cfg["checkpoint"]["dir"] = str(root / "checkpoints")
    cfg["logging"]["log_dir"] = str(root / "logs")
    cfg["logging"]["tensorboard_dir"] = str(root / "runs")
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = root / f"cfg_{len(list(root.glob('cfg_*.json')))}.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # two ranks on two cores: no intra-op thread contention
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _command(world: int, config: Path, name: str, *extra: str, entrypoint: bool = False) -> list[str]:
    if world == 1:
        cmd = [PYTHON, TRAIN]
    else:
        # A port of our own: other test modules may run a launcher at the same time.
        cmd = [DEEPSPEED, "--num_gpus", str(world), "--master_port", str(29500 + os.getpid() % 1000), TRAIN]
    if entrypoint:  # what the Docker image runs as PID 1
        cmd = [PYTHON, str(REPO / "docker" / "entrypoint.py"), *cmd]
    return cmd + ["--config_file", str(config), "--model_name", name, "--log_sample_ids", *extra]


def _launch(world: int, config: Path, name: str, *extra: str) -> str:
    """Run to the end (the launcher and its ranks are killed together on a timeout); the console output."""
    cmd = _command(world, config, name, *extra)
    result = run(cmd, timeout=TIMEOUT, cwd=REPO, env=_env(), stderr=subprocess.STDOUT)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-6000:]}"
    return result.stdout


def _records(root: Path, name: str, kind: str) -> list[dict]:
    path = root / "logs" / f"{name}_{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps(root: Path, name: str) -> dict[int, dict]:
    records = [r for r in _records(root, name, "train") if "loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"run {name}: duplicate step records in the train log: {steps}"
    return {r["step"]: r for r in records}


def _rank_pids(name: str, config: Path) -> list[int]:
    """PIDs of the training ranks of run `name` with `config` (what a container entrypoint signals; see DESIGN).

    The config path is a unique temp path, so runs of other test sessions on the same machine never match."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--local_rank=0" in argv or b"--local_rank=1" in argv:
            if name.encode() in argv and str(config).encode() in argv and any(a.endswith(TRAIN.encode()) for a in argv):
                pids.append(int(entry.name))
    return pids


def _run_a(runs) -> dict:
    return {"A": _launch(2, runs.cfg, "A")}


def _run_b(runs) -> dict:
    return {"B": _launch(1, runs.cfg, "B")}


def _run_c(runs) -> dict:
    root, cfg, out = runs.root, runs.cfg, {}
    # C: a pod stop. SIGTERM goes to the container entrypoint only (RunPod and `docker stop` signal PID 1); it must
    # reach both ranks through the launcher's process group, and they must save together and exit cleanly.
    command = _command(2, cfg, "C", entrypoint=True)
    with started(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        log = root / "logs" / "C_train.jsonl"
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        pids = _rank_pids("C", cfg)
        assert len(pids) == 2, f"expected 2 rank processes of run C, found {pids}; log: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGTERM)
        stopped, _ = proc.communicate(timeout=TIMEOUT)
    out["C_stop"] = stopped
    out["C_stop_rc"] = proc.returncode
    out["C_stop_records"] = _records(root, "C", "train")
    # C, continued: the resumed run crashes (kill -9 of rank 1, no save) a few steps after its next checkpoint; the
    # launcher must stop the other rank within a bounded time and leave no process behind; then `--resume auto`
    # from the last complete checkpoint finishes the run (logs cut back and set aside, TensorBoard purged).
    stop_step = max(r["step"] for r in out["C_stop_records"] if "loss" in r)
    next_ckpt = (stop_step // 5 + 1) * 5
    crash_after = min(next_ckpt + 2, 19)
    command = _command(2, cfg, "C", "--resume", "auto")
    with started(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        out["C_crash_plan"] = (next_ckpt, crash_after)
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and not any(r.get("step", 0) >= crash_after and "loss" in r
                                                 for r in _records(root, "C", "train")[-3:]):
            time.sleep(0.05)
        victim = [pid for pid in _rank_pids("C", cfg) if b"--local_rank=1" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(victim) == 1, victim
        os.kill(victim[0], signal.SIGKILL)
        t0 = time.time()
        crashed, _ = proc.communicate(timeout=TIMEOUT)
        out["C_crash"] = (proc.returncode, time.time() - t0)
        out["C_stop_resume"] = crashed
        time.sleep(1.0)
        out["C_crash_leftovers"] = tree_pids(proc.tree_token)
    out["C_crash_checkpoints"] = sorted(p.name for p in (root / "checkpoints" / "C").glob("step_*")
                                        if (p / "COMPLETE").is_file())
    out["C_resume"] = _launch(2, cfg, "C", "--resume", "auto")
    return out


def _run_d(runs) -> dict:
    runs.need("A")
    # D: A's step-15 checkpoint (after the switch) continued on one process, into its own directories.
    return {"D": _launch(1, runs.cfg, "D", "--resume", str(runs.root / "checkpoints" / "A" / "step_15"))}


def _run_f(runs) -> dict:
    # F: the bf16 path, forced, at the smallest useful length (bf16 is emulated and ~8x slower on CPUs without native
    # bf16, where A-D run in fp32): 5 steps of phase 1 only, so its samples are A's first 5 steps, and the lrs of
    # the 4 updates before step 5's loss are A's too (the same warmup; max_iters only shapes the later decay).
    f_cfg = json.loads(runs.cfg.read_text())
    f_cfg["curriculum"]["phases"] = f_cfg["curriculum"]["phases"][:1]
    f_cfg["curriculum"]["phases"][0]["until_step"] = None
    f_cfg["optim"]["max_iters"] = 5
    f_cfg["eval"]["val_dir"] = str(runs.root / "data/phase2/val")
    f_path = runs.root / "cfg_bf16.json"
    f_path.write_text(json.dumps(f_cfg, indent=2))
    return {"F": _launch(2, f_path, "F", "--precision", "bf16")}


def _atol(runs) -> dict:
    return {"atol": BF16_LOSS_ATOL if _precision(runs["A"]) == "bf16" else FP32_LOSS_ATOL}


def _run_r(runs) -> dict:
    # R: dropout 0.1 (the base config's), one rank, 12 steps; then the usual move after a loss spike, a resume from an
    # older checkpoint (step 5) of the same run: the newer checkpoints and logs must be set aside, not lost, and the
    # replayed steps must be bit-identical (the RNG streams of dropout restored).
    root = runs.root
    r_path = _config(root, model__dropout=0.1, optim__max_iters=12, checkpoint__keep_last=3)
    out = {"R": _launch(1, r_path, "R")}
    out["R_first"] = {"train": _records(root, "R", "train"), "eval": _records(root, "R", "eval")}
    out["R_back"] = _launch(1, r_path, "R", "--resume", str(root / "checkpoints" / "R" / "step_5"))
    return out


RUNS = {"A": _run_a, "B": _run_b, "C": _run_c, "D": _run_d, "F": _run_f, "atol": _atol, "R": _run_r}


class Runs:
    """The module's training runs, each started the first time a test needs it and kept for the others: a run that
    fails fails the tests that read it (with its error), not every test of the module.

    `runs["C_resume"]` starts run C if needed; `runs.need("A", "B")` before reading their files."""

    def __init__(self, root: Path, cfg: Path):
        self.root, self.cfg = root, cfg
        self._values: dict = {"root": root, "cfg": cfg}
        self._errors: dict[str, BaseException] = {}

    def need(self, *names: str) -> None:
        for name in names:
            if name in self._errors:
                raise RuntimeError(f"run {name} failed earlier in this module (see that test)") from self._errors[name]
            if name not in self._values:
                try:
                    self._values.update(RUNS[name](self))
                except BaseException as error:
                    self._errors[name] = error
                    raise
                self._values.setdefault(name, True)

    def __getitem__(self, key: str):
        if key not in self._values:
            self.need(next(name for name in RUNS if key == name or key.startswith(f"{name}_")))
        return self._values[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    _make_data(root / "data")
    return Runs(root, _config(root))


def test_same_sample_ids_and_losses_at_world_size_1_and_2(runs):
    runs.need('A', 'B')
    a, b = _steps(runs["root"], "A"), _steps(runs["root"], "B")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert a[step]["sample_ids"] == b[step]["sample_ids"], f"step {step}: different samples"
        assert len(set(a[step]["sample_ids"])) == 8
        assert abs(a[step]["step_loss"] - b[step]["step_loss"]) < runs["atol"], step
    # The loss of this learnable data falls over the first phase (the runs actually train).
    assert a[10]["step_loss"] < a[1]["step_loss"] - 1.0


def test_forced_bf16_trains_in_bf16_and_tracks_the_reference_run(runs):
    runs.need('A', 'F')
    root, console = runs["root"], runs["F"]
    assert _precision(console) == "bf16" and "(--precision bf16;" in console
    assert ("gradient accumulation: 2 micro-steps, accumulated in bf16 (params bf16, ZeRO stage 2), reduced across "
            "ranks in fp32") in console
    a, f = _steps(root, "A"), _steps(root, "F")
    assert sorted(f) == [1, 2, 3, 4, 5]
    for step in f:
        assert f[step]["sample_ids"] == a[step]["sample_ids"]
        # A is fp32 where bf16 is not native: the bf16 run tracks it within bf16's rounding, and it trains.
        assert abs(f[step]["step_loss"] - a[step]["step_loss"]) < BF16_LOSS_ATOL, (step, f[step], a[step])
    assert f[5]["step_loss"] < f[1]["step_loss"] - 0.1
    meta = json.loads((root / "checkpoints" / "F" / "step_5" / "trainer_meta.json").read_text())
    assert meta["precision"] == "bf16"
    gold = json.loads((root / "checkpoints" / "F" / "gold" / "metadata.json").read_text())
    assert gold["weights_dtype"] == "torch.bfloat16"


def test_curriculum_switches_at_the_configured_step(runs):
    runs.need('A')
    a = _steps(runs["root"], "A")
    assert [a[s]["phase"] for s in range(1, 21)] == ["circuit"] * 10 + ["balanced"] * 10
    switches = [r for r in _records(runs["root"], "A", "train") if r.get("event") == "phase_switch"]
    assert [(r["step"], r["from_phase"], r["phase"]) for r in switches] == [(10, "circuit", "balanced")]
    assert "phase switch at step 10: circuit -> balanced" in runs["A"]
    # The ids after the switch are phase 2's sampler at offsets 0.. (not a continuation of phase 1's stream).
    from data.sampler import StepSampler
    from data.token_dataset import TokenDataset

    ds = TokenDataset(runs["root"] / "data/phase2")
    sampler = StepSampler(ds.num_samples(64), 8, seed=1234, fingerprint=ds.fingerprint)
    for step in range(11, 21):
        assert a[step]["sample_ids"] == sampler.sample_ids(step - 11).tolist()


def test_sigterm_saves_and_resume_matches_uninterrupted_run(runs):
    runs.need('A', 'C')
    root = runs["root"]
    assert runs["C_stop_rc"] == 0, runs["C_stop"][-4000:]
    assert "stop requested by a signal" in runs["C_stop"]
    stop_step = max(r["step"] for r in runs["C_stop_records"] if "loss" in r)
    assert 3 <= stop_step < 20, f"the SIGTERM should land mid-run, stopped at {stop_step}"
    ckpt = root / "checkpoints" / "C" / f"step_{stop_step}"
    # The signal's checkpoint was complete (the resume took it; keep_last pruned it later).
    assert f"checkpoint step {stop_step} saved to {ckpt}" in runs["C_stop"]
    assert f"resumed from {ckpt} at step {stop_step}" in runs["C_stop_resume"]
    a, c = _steps(root, "A"), _steps(root, "C")
    assert sorted(c) == list(range(1, 21)), "resume must continue the logs without gaps or duplicates"
    for step in range(1, 21):
        assert c[step]["sample_ids"] == a[step]["sample_ids"], step
        # Same world size, same restored state: bit-identical on CPU.
        assert c[step]["step_loss"] == a[step]["step_loss"], (step, stop_step)
    assert [r["step"] for r in _records(root, "C", "eval")] == [0, 5, 10, 15, 20]


def test_resume_from_an_older_checkpoint_sets_the_newer_work_aside_and_replays_exactly(runs):
    runs.need('R')
    root, console = runs["root"], runs["R_back"]
    ckpt = root / "checkpoints" / "R"
    aside = [p for p in ckpt.iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1, sorted(p.name for p in ckpt.iterdir())
    # The first run's step_10 and step_12, and its GOLD if chosen after step 5: moved, complete.
    gold_step = max(r["step"] for r in runs["R_first"]["eval"] if r["gold"]["save"])
    newer = (["gold"] if gold_step > 5 else []) + ["step_10", "step_12"]
    assert sorted(p.name for p in aside[0].iterdir()) == newer
    assert all((aside[0] / name / "COMPLETE").is_file() for name in ("step_10", "step_12"))
    assert f"resuming from step 5: moved the newer {newer}" in console
    # The live branch: step_5 and its own step_10 and step_12 (keep_last 3), none pruned by the old ones.
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_10", "step_12", "step_5"]
    meta = json.loads((ckpt / "step_12" / "trainer_meta.json").read_text())
    assert meta["parent"] == str(ckpt / "step_5")
    # Logs: every step once in the live log (no mixing of branches); the abandoned records kept beside it.
    train = [r for r in _records(root, "R", "train") if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    abandoned = root / "logs" / f"R_train.jsonl.{aside[0].name}"
    assert [json.loads(line)["step"] for line in abandoned.read_text().splitlines()
            if "loss" in json.loads(line)] == list(range(6, 13))
    # Dropout 0.1: the replay is bit-identical only if every RNG stream was restored.
    first = {r["step"]: r for r in runs["R_first"]["train"] if "loss" in r}
    for r in train:
        assert r["step_loss"] == first[r["step"]]["step_loss"], r["step"]
        assert r["sample_ids"] == first[r["step"]]["sample_ids"]
    assert [r["step"] for r in _records(root, "R", "eval")] == [0, 5, 10, 12]


def test_a_killed_rank_stops_the_run_and_auto_resume_finishes_it(runs):
    runs.need('C')
    root = runs["root"]
    returncode, seconds = runs["C_crash"]
    next_ckpt, crash_after = runs["C_crash_plan"]
    assert returncode != 0, "a run with a killed rank must not report success"
    assert seconds < 60, f"the other rank took {seconds:.0f} s to stop after rank 1 was killed"
    assert runs["C_crash_leftovers"] == [], "processes of the crashed run outlived it"
    # The last complete checkpoint survived the crash intact, and the resume took it.
    assert runs["C_crash_checkpoints"][-1] == f"step_{next_ckpt}" or next_ckpt == 20, runs["C_crash_checkpoints"]
    ckpt = root / "checkpoints" / "C" / f"step_{next_ckpt}"
    assert f"resumed from {ckpt} at step {next_ckpt}" in runs["C_resume"]
    # What the crashed run logged after that checkpoint went aside, out of the live log (whose steps are checked
    # once each against run A in test_sigterm_saves_and_resume_matches_uninterrupted_run).
    aside = list((root / "logs").glob("C_train.jsonl.abandoned-*"))
    lost = sorted(json.loads(line)["step"] for f in aside for line in f.read_text().splitlines()
                  if "loss" in json.loads(line))
    assert lost and lost[0] == next_ckpt + 1 and lost[-1] >= crash_after, lost


def test_resume_on_another_world_size_after_the_switch(runs):
    runs.need('A', 'D')
    root = runs["root"]
    assert "resumed from" in runs["D"] and "at step 15 (phase balanced, step 5 of the phase)" in runs["D"]
    a, d = _steps(root, "A"), _steps(root, "D")
    assert sorted(d) == list(range(16, 21))
    for step in d:
        assert d[step]["phase"] == "balanced"
        assert d[step]["sample_ids"] == a[step]["sample_ids"]
        assert abs(d[step]["step_loss"] - a[step]["step_loss"]) < runs["atol"]
        assert d[step]["lr"] == pytest.approx(a[step]["lr"], rel=1e-9)


def test_eval_numbers_equal_at_world_size_1_and_2(runs):
    runs.need('A', 'B')
    ea = {r["step"]: r for r in _records(runs["root"], "A", "eval")}
    eb = {r["step"]: r for r in _records(runs["root"], "B", "eval")}
    assert sorted(ea) == sorted(eb) == [0, 5, 10, 15, 20]
    # Step 0: identical weights, so the sharded sums must agree to float precision.
    for name, loss in ea[0]["losses"].items():
        assert eb[0]["losses"][name] == pytest.approx(loss, rel=1e-5), name
    assert ea[0]["train_loss"] == pytest.approx(eb[0]["train_loss"], rel=1e-5)
    assert set(ea[0]["losses"]) == {"val", "general", "code"}
    for step in (5, 10, 15, 20):
        for name, loss in ea[step]["losses"].items():
            assert abs(eb[step]["losses"][name] - loss) < runs["atol"], (step, name)


def test_gold_decisions_recorded_and_gold_checkpoint_exportable(runs):
    runs.need('A')
    root = runs["root"]
    evals = _records(root, "A", "eval")
    for r in evals:
        g = r["gold"]
        assert set(g["guards"]) == {"overfit", "trend", "regression"}
        assert isinstance(g["reason"], str) and g["reason"]
        assert (r["gold_saved"] is not None) == g["save"]
    saved = [r for r in evals if r["gold"]["save"]]
    assert saved, "at least one GOLD save"
    last = saved[-1]
    assert evals[-1]["gold"]["best_step"] == last["step"]
    # Baselines are taken at the first eval at or after gold.baseline_after_step (5).
    assert next(r for r in evals if r["gold"]["baselines_set_here"])["step"] == 5

    from model.io import load_model_checkpoint

    model, model_config, metadata = load_model_checkpoint(root / "checkpoints" / "A" / "gold")
    assert metadata["step"] == last["step"]
    assert metadata["losses"]["val"] == pytest.approx(last["losses"]["val"])
    assert model_config.n_layer == 2 and model_config.n_embd == 64
    export = root / "hf_export"
    result = run([PYTHON, "scripts/export_hf.py", str(root / "checkpoints" / "A" / "gold"), str(export)],
                 cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (export / "config.json").is_file()


def test_checkpoints_keep_last_and_markers(runs):
    runs.need('A')
    ckpt_root = runs["root"] / "checkpoints" / "A"
    steps = sorted(p.name for p in ckpt_root.glob("step_*"))
    assert steps == ["step_15", "step_20"]  # keep_last 2 of 5, 10, 15, 20
    for name in steps:
        meta = json.loads((ckpt_root / name / "trainer_meta.json").read_text())
        assert meta["world_size"] == 2 and meta["step"] == int(name.split("_")[1])
        assert (ckpt_root / name / "COMPLETE").is_file()
        assert sorted(p.name for p in (ckpt_root / name).glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]


def test_tensorboard_scalars_and_console(runs):
    runs.need('A')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["root"] / "runs" / "A"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/mfu", "train/data_wait_share", "eval/val", "eval/code",
            "eval/general", "eval/train", "gold/best_val_loss"} <= tags
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    a = _steps(runs["root"], "A")
    assert sorted(loss) == list(range(1, 21))
    for step, value in loss.items():
        assert value == pytest.approx(a[step]["loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/val")] == [0, 5, 10, 15, 20]
    console = runs["A"]
    precision = _precision(console)
    from launcher.engine import cpu_has_native_bf16

    # The stock bf16 ds_config trains in fp32 exactly where this CPU has no native bf16, and says so once.
    assert precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert console.count("precision: ") == 1
    assert f"gradient accumulation: 2 micro-steps, accumulated in {precision}" in console
    assert "step 20/20 | loss" in console and "MFU" in console and "ETA" in console
    # Only rank 0 prints the progress lines.
    assert console.count("step 20/20 | loss") == 1
    # No third-party chatter from the trainer's ranks (the deepspeed runner's own INFO lines are the user's choice:
    # `make demo` passes --quiet).
    for noise in ("FutureWarning", "Attempting to get learning rate", "built successfully"):
        assert noise not in console, noise


def test_throughput_intervals_exclude_evals_and_saves(runs):
    runs.need('A')
    # Run A logs every step and evaluates (with probes) and checkpoints every 5: the step after each of those must
    # not show a dip, since its interval clock stops during the eval and the save.
    a = _steps(runs["root"], "A")
    after = [a[s]["tokens_per_s"] for s in (6, 11, 16)]
    others = sorted(a[s]["tokens_per_s"] for s in range(2, 21) if s not in (6, 11, 16))
    median = others[len(others) // 2]
    assert min(after) > 0.5 * median, (after, median)


def test_resumed_tensorboard_has_no_duplicate_steps(runs):
    runs.need('C')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["root"] / "runs" / "C"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert sorted(steps) == list(range(1, 21))


def test_nan_loss_skips_counts_stops_and_keeps_gold(runs, tmp_path):
    root = runs["root"]
    # NaN losses injected on every rank (launcher/faults.py NONFINITE_STEPS) at steps 6 and 7 (two in a row:
    # skipped, the run goes on and evaluates at step 10 with intact weights), then 12, 13 and 14 (three in a row:
    # the run stops).
    cfg = _config(root, optim__max_nonfinite_steps=3)
    env = {**_env(), "RAGLLM_FAULT_NONFINITE_STEPS": "6,7,12,13,14"}
    proc = run([PYTHON, TRAIN, "--config_file", str(cfg), "--model_name", "E"], cwd=REPO, env=env, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "step 6: non-finite loss or gradients, update skipped (1 in a row, 1 in total)" in out
    assert "step 7: non-finite loss or gradients, update skipped (2 in a row, 2 in total)" in out
    assert "stopping: 3 consecutive steps with non-finite loss/gradients (optim.max_nonfinite_steps = 3) at step 14" \
        in out
    steps = _steps(root, "E")
    assert sorted(steps) == list(range(1, 15))
    assert [s for s, r in steps.items() if r["loss"] is None] == [7, 8, 13, 14]  # log steps count updates done
    # The skipped updates left the weights intact: training and the step-10 eval are finite and the loss still falls.
    assert math.isfinite(steps[10]["loss"]) and steps[10]["nonfinite_total"] == 2
    assert steps[10]["loss"] < steps[1]["loss"] - 1.0
    evals = {r["step"]: r for r in _records(root, "E", "eval")}
    assert sorted(evals) == [0, 5, 10] and all(math.isfinite(r["losses"]["val"]) for r in evals.values())
    # GOLD only ever holds an eval's finite weights: the last one saved, before the stop.
    saved = [r for r in evals.values() if r["gold"]["save"]]
    gold = json.loads((root / "checkpoints" / "E" / "gold" / "metadata.json").read_text())
    assert saved and gold["step"] == saved[-1]["step"] and gold["losses"]["val"] == saved[-1]["losses"]["val"]


def test_a_data_read_error_on_one_rank_stops_every_rank_under_mpirun(runs):
    # Under mpirun no launcher kills the other ranks: before launcher/distributed.py abort_job, rank 1's error left
    # rank 0 waiting in a collective and rank 1 in MPI_Finalize, and the job never ended.
    mpirun = str(Path(sys.executable).with_name("mpirun"))
    env = {**_env(), "RAGLLM_FAULT_DATA_ERROR": "1:3"}
    t0 = time.time()
    result = run([mpirun, "-np", "2", PYTHON, TRAIN, "--config_file", str(runs["cfg"]), "--model_name", "G"],
                 cwd=REPO, env=env, timeout=120, stderr=subprocess.STDOUT)
    assert result.returncode != 0
    assert time.time() - t0 < 90
    assert "rank 1 of 2: " in result.stdout
    assert "reading the data of step 3 failed: injected read error" in result.stdout
    assert not (runs["root"] / "checkpoints" / "G" / "step_5").exists()  # it stopped before its first checkpoint


@pytest.mark.multirank
def test_saves_by_the_clock_happen_on_every_rank_at_the_same_step(runs):
    """checkpoint.interval_minutes with no step interval: rank 0's clock decides, the flag rides in the step's
    all-reduce, and both ranks write their part of each save (a disagreement would hang the collective save)."""
    root = runs["root"]
    cfg = _config(root, checkpoint__interval=None, checkpoint__interval_minutes=0.001, checkpoint__keep_last=100)
    out = _launch(2, cfg, "T")
    assert "checkpoints: every 0.001 minutes of wall time, at the last step and on SIGTERM" in out
    saves = [r for r in _records(root, "T", "train") if r.get("event") == "checkpoint"]
    steps = [r["step"] for r in saves]
    assert len(steps) >= 3 and steps[-1] == 20 and steps == sorted(set(steps)), steps  # by the clock, then the end
    for step in steps:
        folder = root / "checkpoints" / "T" / f"step_{step}"
        assert (folder / "COMPLETE").is_file()
        assert {p.name for p in folder.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}, step
    assert all(r["bytes"] > 0 and r["seconds"] > 0 and 0 < r["save_share"] < 1 for r in saves)
    assert re.search(r"checkpoint step \d+ saved to \S+ in [0-9.]+s \([0-9.]+ GB\); saving has taken [0-9.]+% of", out)
    # Every eval says what it cost: its seconds and the share of wall time spent in evals so far.
    evals = _records(root, "T", "eval")
    assert evals and all(r["eval_seconds"] > 0 and 0 < r["eval_share"] < 1 for r in evals)


@pytest.mark.multirank
def test_a_data_read_error_on_one_rank_is_one_line_and_no_traceback_under_deepspeed(runs):
    """The deepspeed launcher, rank 1's read fails at step 3: rank 1 prints one line naming the step, the file and the
    way on; rank 0, whose collective then breaks, prints one line too; no rank prints a traceback."""
    env = {**_env(), "RAGLLM_FAULT_DATA_ERROR": "1:3"}
    proc = run(_command(2, runs["cfg"], "G2"), cwd=REPO, env=env, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.startswith(("rank 0 of 2:", "rank 1 of 2:"))]
    assert len(lines) == 2, out[-3000:]
    rank1 = next(ln for ln in lines if ln.startswith("rank 1 of 2:"))
    assert "error: reading the data of step 3 failed: injected read error" in rank1
    assert str(runs["root"] / "data" / "phase1") in rank1 and "--resume auto" in rank1
    assert next(ln for ln in lines if ln.startswith("rank 0 of 2:")).startswith("rank 0 of 2: stopped: a collective")
    assert "Traceback" not in out, out[-3000:]


def test_a_corrupt_token_in_a_shard_stops_the_run_with_the_file_sample_and_fix(runs, tmp_path):
    """A token id past the vocabulary in a shard whose size is right (data.verify: size lets it open): the read of
    the first step that touches it stops the run with one line, no traceback."""
    import shutil

    bad = tmp_path / "phase1"
    shutil.copytree(runs["root"] / "data" / "phase1", bad)
    shard = bad / "shard_00000.bin"
    tokens = np.fromfile(shard, dtype=np.uint16)
    tokens[::50] = 60000  # in every sample
    tokens.tofile(shard)
    cfg = _config(runs["root"])
    values = json.loads(cfg.read_text())
    values["curriculum"]["phases"][0]["dataset_dir"] = str(bad)
    cfg.write_text(json.dumps(values))
    proc = run([PYTHON, TRAIN, "--config_file", str(cfg), "--model_name", "H", "--resume", "none"], cwd=REPO,
               env=_env(), timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    lines = [ln for ln in out.splitlines() if "token id 60000" in ln]
    assert len(lines) == 1, out[-3000:]
    line = lines[0]
    # The step-0 eval reads it first (its train sample, for the overfit guard): the same one-line stop.
    assert line.startswith(f"error: {shard}: token id 60000 >= 50257 in sample "), line
    assert "in sample" in line and "rebuild the directory" in line and "--resume auto" in line
    assert "Traceback" not in out, out[-3000:]


# -- a full checkpoint volume: a clear stop, nothing lost, a warning before it happens -------------------------------


def _test_model_params() -> int:
    from model.config import ModelConfig
    from model.transformer import Transformer

    model_cfg = json.loads((REPO / "configs/tiny/test_cpu.json").read_text())["model"]
    return Transformer(ModelConfig(**model_cfg)).num_params()


@pytest.fixture
def small_volume(tmp_path):
    """A real tmpfs of 1.5 times the test model's largest checkpoint estimate (fp32: 16 bytes a parameter): the first
    save fits, a second beside it does not. Skipped where this process may not mount."""
    mount = tmp_path / "volume"
    mount.mkdir()
    size = int(1.5 * 16 * _test_model_params())
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:200]}); the fault-injection tests still run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_volume_stops_before_the_save_with_the_newest_checkpoint_intact(runs, small_volume):
    root = runs["root"]
    cfg = _config(root, checkpoint__dir=str(small_volume / "checkpoints"), checkpoint__interval=5,
                  checkpoint__keep_last=1, gold__enabled=False)
    proc = run([PYTHON, TRAIN, "--config_file", str(cfg), "--model_name", "V"], cwd=REPO, env=_env(), timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "warning: the checkpoint volume of " in out and "2 checkpoints of ~" in out  # said at start
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error: not saving checkpoint step 10")]
    folder = small_volume / "checkpoints" / "V"
    assert f"the newest complete checkpoint, {folder / 'step_5'} (step 5), is intact" in line
    assert "checkpoint.keep_last (now 1" in line and "checkpoint.dir" in line and "Nothing was written" in line
    assert "Traceback" not in out
    assert (folder / "step_5" / "COMPLETE").is_file() and not (folder / "step_10").exists()
    # The estimate used before the first save is within 10% of the real size (14 or 16 bytes a parameter).
    (saved,) = [r for r in _records(root, "V", "train") if r.get("event") == "checkpoint"]
    precision_bytes = 14 if "precision: bf16" in out else 16
    assert abs(saved["bytes"] / (precision_bytes * _test_model_params()) - 1) < 0.1, saved["bytes"]


def test_a_real_enospc_in_the_middle_of_a_save_is_a_clear_stop(runs, small_volume):
    """The same small volume with the space check off (as if it filled between the check and the writes): DeepSpeed's
    writer meets the file system's real ENOSPC (or torch's zip writer error) at step 10, and the save is caught."""
    root = runs["root"]
    cfg = _config(root, checkpoint__dir=str(small_volume / "checkpoints"), checkpoint__interval=5,
                  checkpoint__keep_last=1, gold__enabled=False)
    env = {**_env(), "RAGLLM_FAULT_NO_SPACE_CHECK": "1"}
    proc = run([PYTHON, TRAIN, "--config_file", str(cfg), "--model_name", "U"], cwd=REPO, env=env, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error: saving checkpoint step 10")]
    assert "failed on rank(s) [0]" in line and "the partial folder was removed" in line, line
    folder = small_volume / "checkpoints" / "U"
    assert (folder / "step_5" / "COMPLETE").is_file() and not (folder / "step_10").exists()


@pytest.mark.multirank
def test_a_save_that_fails_on_one_rank_stops_every_rank_and_the_rerun_resumes(runs):
    """ENOSPC from rank 1's checkpoint writer in the middle of DeepSpeed's save at step 10 (fault injection at the
    writer, launcher/checkpointing.py FAULT_SAVE_ERROR): both ranks stop with one line each, the partial step_10 is
    removed, step_5 stays; the same command then resumes from step 5 and finishes."""
    root = runs["root"]
    cfg = _config(root, checkpoint__interval=5, gold__enabled=False)
    env = {**_env(), "RAGLLM_FAULT_SAVE_ERROR": "1:10:enospc"}
    proc = run(_command(2, cfg, "W"), cwd=REPO, env=env, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    rank0 = [ln for ln in out.splitlines() if ln.startswith("rank 0 of 2: ")]
    rank1 = [ln for ln in out.splitlines() if ln.startswith("rank 1 of 2: ")]
    assert len(rank0) == 1 and len(rank1) == 1, out[-3000:]
    assert "saving checkpoint step 10" in rank0[0] and "failed on rank(s) [1]: OSError: [Errno 28]" in rank0[0]
    assert "the partial folder was removed" in rank0[0] and "(step 5), is intact" in rank0[0]
    folder = root / "checkpoints" / "W"
    assert not (folder / "step_10").exists() and (folder / "step_5" / "COMPLETE").is_file()
    assert (folder / "latest").read_text().strip() == "step_5"
    again = _launch(2, cfg, "W")
    assert f"resumed from {folder / 'step_5'} at step 5" in again
    assert (folder / "step_20" / "COMPLETE").is_file()


def test_the_zip_writers_error_on_a_single_process_is_a_clear_stop(runs):
    root = runs["root"]
    cfg = _config(root, checkpoint__interval=5, gold__enabled=False)
    env = {**_env(), "RAGLLM_FAULT_SAVE_ERROR": "0:5:zip"}
    proc = run([PYTHON, TRAIN, "--config_file", str(cfg), "--model_name", "Z"], cwd=REPO, env=env, timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("error: saving checkpoint step 5")]
    assert "unexpected pos" in line and "no complete checkpoint of this run exists yet" in line
    assert not (root / "checkpoints" / "Z" / "step_5").exists()


# -- bad input: a clear message and a non-zero exit before the engine starts -----------------------------------------


def _main_error(monkeypatch, argv: list[str], world: int = 1) -> str:
    from launcher import train

    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    import torch.distributed

    assert not torch.distributed.is_initialized(), "input errors must stop before the process group starts"
    return str(info.value)


def test_bad_input_missing_dataset_and_eval_set(runs, monkeypatch):
    root, cfg = runs["root"], runs["cfg"]
    msg = _main_error(monkeypatch, ["--config_file", str(cfg), "--model_name", "X",
                                    "--dataset_dir", str(root / "nope")])
    assert "curriculum phase 'circuit'" in msg and str(root / "nope") in msg and "build_unified_dataset" in msg
    bad = _config(root, eval__sets={"code": str(root / "data/code_missing")})
    msg = _main_error(monkeypatch, ["--config_file", str(bad), "--model_name", "X"])
    assert "eval.sets.code" in msg and "code_missing" in msg


def test_bad_input_dataset_shorter_than_one_sample(runs, monkeypatch):
    from data.token_dataset import write_token_dir

    root = runs["root"]
    write_token_dir(root / "data" / "short", [np.arange(50)])
    msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "X",
                                    "--dataset_dir", str(root / "data" / "short")])
    assert "fewer than one sample" in msg and "short" in msg


def test_bad_input_ds_config_contradicting_training_config(runs, monkeypatch, tmp_path):
    base = json.loads((REPO / "ds_configs/zero2_bf16.json").read_text())
    for key, value, expect in [("train_batch_size", 64, "train_batch_size"), ("gradient_clipping", 0.5,
                                                                                 "gradient_clipping"),
                               ("optimizer", {"type": "Adam", "params": {"lr": 1e-3}}, "optimizer"),
                               ("zero_optimisation", {"stage": 2}, "unknown key(s) ['zero_optimisation']")]:
        ds = tmp_path / f"ds_{key}.json"
        ds.write_text(json.dumps({**base, key: value}))
        msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "X",
                                        "--deepspeed_config", str(ds)])
        assert expect in msg and str(ds) in msg, msg
    # The same value as the training config is accepted (the check is a contradiction check, not a ban).
    from launcher.config import TrainConfig
    from launcher.engine import build_ds_config

    ds = tmp_path / "ds_same.json"
    ds.write_text(json.dumps({**base, "train_batch_size": 8, "gradient_clipping": 1.0}))
    merged = build_ds_config(TrainConfig.from_json(runs["cfg"]), ds, world_size=2, on_cuda=False)
    assert merged["gradient_accumulation_steps"] == 2


def test_bad_input_resume_in_another_precision(runs, monkeypatch):
    runs.need('A')
    root = runs["root"]
    trained = json.loads((root / "checkpoints" / "A" / "step_20" / "trainer_meta.json").read_text())["precision"]
    other = "bf16" if trained == "fp32" else "fp32"
    msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "X", "--precision", other,
                                    "--resume", str(root / "checkpoints" / "A" / "step_20")])
    assert f"was trained in {trained}, but this run would train in {other}" in msg
    assert f"--precision {trained}" in msg


def test_bad_input_batch_not_divisible(runs, monkeypatch):
    msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "X"], world=3)
    assert "not divisible" in msg and "[1, 2, 4]" in msg


def test_bad_input_resume_from_another_config(runs, monkeypatch):
    runs.need('A')
    root = runs["root"]
    other = _config(root, optim__learning_rate=1e-3)
    msg = _main_error(monkeypatch, ["--config_file", str(other), "--model_name", "X", "--resume",
                                    str(root / "checkpoints" / "A" / "step_20")])
    assert "from another run" in msg and "the training settings" in msg and "--resume_ignore config" in msg
    assert "datasets differ" not in msg and "eval sets" not in msg  # only what differs is named


def test_resume_of_a_run_from_before_document_attention_names_the_setting(runs, monkeypatch, tmp_path):
    runs.need('A')
    import shutil

    root = runs["root"]
    old = tmp_path / "step_20"
    shutil.copytree(root / "checkpoints" / "A" / "step_20", old)
    meta = json.loads((old / "trainer_meta.json").read_text())
    assert meta.pop("attention") == "document"  # as written before the field existed
    meta["config_fingerprint"] = "0123456789abcdef"
    (old / "trainer_meta.json").write_text(json.dumps(meta))
    msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "X", "--resume", str(old)])
    assert '"attention": "causal"' in msg and "before model.attention existed" in msg
    meta["attention"] = "document"  # a document run with other settings: no such hint
    (old / "trainer_meta.json").write_text(json.dumps(meta))
    msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "X", "--resume", str(old)])
    assert "from another run" in msg and "model.attention" not in msg


def test_resume_checks_eval_sets_and_allows_harmless_changes(runs, monkeypatch, tmp_path):
    runs.need('A')
    from data.token_dataset import write_token_dir

    root = runs["root"]
    step_20 = str(root / "checkpoints" / "A" / "step_20")
    # A rebuilt eval set would silently move the GOLD baselines: refused, naming the flag that accepts it.
    write_token_dir(tmp_path / "code_rebuilt", [np.arange(9_000) % 50_000], pack_block_sizes=[64])
    other_eval = _config(root, eval__sets={"general": str(root / "data/general_eval"),
                                           "code": str(tmp_path / "code_rebuilt")})
    msg = _main_error(monkeypatch, ["--config_file", str(other_eval), "--model_name", "X", "--resume", step_20],
                      world=2)
    assert "the val and eval sets" in msg and "--resume_ignore eval" in msg and "training settings" not in msg

    from launcher.run_plan import plan_run
    from launcher.train import parse_args

    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = plan_run(parse_args(["--config_file", str(other_eval), "--model_name", "X", "--resume", step_20,
                                "--resume_ignore", "eval"]))
    assert plan.resume_path == Path(step_20) and not plan.resume_universal
    # What the kernel self-check advises (fused_kernels false) and loader settings resume without a flag.
    harmless = _config(root, model__fused_kernels=True, data__prefetch_batches=1, data__verify="full",
                       optim__max_nonfinite_steps=50)
    assert plan_run(parse_args(["--config_file", str(harmless), "--model_name", "X", "--resume", step_20]))
    # Another ZeRO stage at the same world size loads through the universal checkpoint (other optimizer layout).
    plan = plan_run(parse_args(["--config_file", str(runs["cfg"]), "--model_name", "X", "--resume", step_20,
                                "--deepspeed_config", "ds_configs/zero1_bf16_fp32accum.json"]))
    assert plan.resume_universal and plan.ds_config["checkpoint"]["load_universal"]
    msg = _main_error(monkeypatch, ["--config_file", str(runs["cfg"]), "--model_name", "A", "--resume", "none"])
    assert "already holds checkpoints" in msg


def test_cli_exits_nonzero_with_message(runs):
    proc = run([PYTHON, TRAIN, "--config_file", str(runs["cfg"]), "--model_name", "X", "--dataset_dir",
                "/nonexistent/tokens"], cwd=REPO, env=_env(), timeout=120)
    assert proc.returncode != 0
    assert "/nonexistent/tokens" in proc.stderr and "does not exist" in proc.stderr


def test_cleanup_partial_checkpoint_is_ignored(runs, tmp_path):
    runs.need('A')
    from launcher.checkpointing import complete_checkpoints

    src = runs["root"] / "checkpoints" / "A"
    dst = tmp_path / "A"
    shutil.copytree(src, dst)
    (dst / "step_20" / "COMPLETE").unlink()  # as if the save of step 20 had been killed
    assert [s for s, _ in complete_checkpoints(dst)] == [15]


def test_a_step_checkpoint_loads_for_generation_with_the_weights_the_ranks_held(runs, capsys):
    """`load_trained_model` on a 2-rank ZeRO-2 step_<N>: DeepSpeed's consolidator gathers the fp32 masters of both
    partitions; rounded to the module's dtype they are the module weights the engine saved, and the generator CLI
    runs on the folder."""
    runs.need('A')
    import torch

    from launcher.checkpointing import load_trained_model
    from scripts import generate as generate_cli

    step = runs["root"] / "checkpoints" / "A" / "step_15"
    model, config, meta = load_trained_model(step)
    assert meta["step"] == 15 and config.n_layer >= 1
    saved = torch.load(step / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    ours = model.state_dict()
    assert set(saved) <= set(ours)
    for name, tensor in saved.items():
        assert torch.equal(ours[name].to(tensor.dtype), tensor), name
    assert generate_cli.main([str(step), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    assert "--- completion 1 (length, 4 tokens)" in capsys.readouterr().out
