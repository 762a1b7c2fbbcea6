"""Shared helpers of the training benchmarks: a temporary copy of a config with benchmark overrides, synthetic token
directories for the inputs a bare machine lacks, one launch of launcher/train.py (plain python for 1 process, the
deepspeed launcher for more) with a timeout, and its train/eval logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """A benchmark's training launch failed or ran past its timeout (a RuntimeError, not SystemExit, so a report
    that runs several launches can record the failure and go on)."""


def bench_config(base: Path, out_dir: Path, steps: int, overrides: dict) -> Path:
    """`base` with max_iters = steps, the curriculum switch in the middle, outputs under out_dir."""
    cfg = json.loads(Path(base).read_text())
    cfg["optim"]["max_iters"] = steps
    cfg["optim"]["warmup_iters"] = min(cfg["optim"]["warmup_iters"], max(0, steps // 10))
    phases = cfg["curriculum"]["phases"]
    for i, phase in enumerate(phases[:-1]):
        phase["until_step"] = max(1, steps * (i + 1) // len(phases))
    cfg["checkpoint"]["dir"] = str(out_dir / "checkpoints")
    cfg["checkpoint"]["interval"] = 10**9  # no periodic saves inside the measured steps, by steps or by the clock
    cfg["checkpoint"]["interval_minutes"] = None
    cfg["logging"]["log_dir"] = str(out_dir / "logs")
    cfg["logging"]["tensorboard_dir"] = str(out_dir / "runs")
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    path = out_dir / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def data_dirs(cfg: dict) -> dict[str, str]:
    """Every token directory a training config reads: label -> path as written in the config."""
    phases = cfg["curriculum"]["phases"]
    dirs = {f"phase {p['name']}": p["dataset_dir"] for p in phases}
    dirs["val"] = cfg["eval"].get("val_dir") or str(Path(phases[-1]["dataset_dir"]) / "val")
    dirs.update({f"eval {name}": path for name, path in cfg["eval"]["sets"].items()})
    return dirs


def synthesize_missing_data(config: Path, root: Path, tokens_per_dir: int = 400_000, seed: int = 0) -> list[str]:
    """Point every token directory of `config` that does not exist at a synthetic one under `root` (random GPT-2 ids
    in EOT-ended documents of log-normal length, packed for the config's block size), rewriting the config in place.
    Throughput does not depend on what the tokens say, so a bare GPU pod can measure it before the dataset is built
    (the sampler wraps into a new epoch when a run reads past the end). Returns the labels it synthesised."""
    from data.paths import resolve
    from data.token_dataset import write_token_dir

    cfg = json.loads(config.read_text())
    block = cfg["model"]["block_size"]
    rng = np.random.default_rng(seed)
    made = []
    for label, path in data_dirs(cfg).items():
        if resolve(path).is_dir():
            continue
        docs, total = [], 0
        while total < tokens_per_dir:
            n = int(min(4 * block, rng.lognormal(6.0, 1.0))) + 2
            docs.append(np.append(rng.integers(0, 50256, size=n - 1), 50256))  # 50256: EOT
            total += n
        target = root / label.replace(" ", "_")
        write_token_dir(target, docs, pack_block_sizes=[block])
        made.append(label)
        if label.startswith("phase "):
            name = label.removeprefix("phase ")
            next(p for p in cfg["curriculum"]["phases"] if p["name"] == name)["dataset_dir"] = str(target)
        elif label == "val":
            cfg["eval"]["val_dir"] = str(target)
        else:
            cfg["eval"]["sets"][label.removeprefix("eval ")] = str(target)
    config.write_text(json.dumps(cfg, indent=2))
    return made


def launch(config: Path, name: str, num_gpus: int, extra: list[str], cwd: Path = REPO, device: str | None = None,
           timeout: float | None = None) -> str:
    """Run launcher/train.py on `config`; its stdout. `device` is train.py's --device ("cpu" for the CPU benchmarks;
    None leaves train.py's default, CUDA, or DS_ACCELERATOR). Past `timeout` seconds the whole process group (the
    deepspeed runner, its launcher and every rank) is killed. Raises LaunchError on a failure or a timeout."""
    train = "launcher/train.py"
    if num_gpus == 1:
        cmd = [sys.executable, train]
    else:
        cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(num_gpus), train]
    cmd += ["--config_file", str(config), "--model_name", name, "--resume", "none", *extra]
    if device is not None:
        cmd += ["--device", device]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if num_gpus > 1 else env.get("OMP_NUM_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        env.pop("OMP_NUM_THREADS")
    code, stdout, stderr = run_process_group(cmd, cwd, env, timeout)
    if code is None:
        raise LaunchError(f"{' '.join(cmd)} ran past its {timeout:.0f} s timeout and was killed:\n"
                          f"{stdout[-3000:]}\n{stderr[-3000:]}")
    if code != 0:
        raise LaunchError(f"{' '.join(cmd)} failed (exit {code}):\n{stdout[-4000:]}\n{stderr[-4000:]}")
    return stdout


def run_process_group(cmd: list[str], cwd: Path, env: dict | None,
                      timeout: float | None) -> tuple[int | None, str, str]:
    """Run `cmd` in a session of its own: (exit status, stdout, stderr), the status None when it ran past `timeout`.
    Then, or if the caller is interrupted, the whole process group is killed: a deepspeed launch's ranks too, not
    only the runner (which passes no signal on to `launch` and the ranks), and nobody is left waiting on a
    grandchild's end of the output pipe."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return None, stdout, stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def records(out_dir: Path, name: str, kind: str) -> list[dict]:
    path = out_dir / "logs" / f"{name}_{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
