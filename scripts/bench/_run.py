"""Shared helpers of the training benchmarks: a temporary copy of a config with benchmark overrides, one launch of
launcher/train.py (plain python for 1 process, the deepspeed launcher for more), and its train/eval logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench_config(base: Path, out_dir: Path, steps: int, overrides: dict) -> Path:
    """`base` with max_iters = steps, the curriculum switch in the middle, outputs under out_dir."""
    cfg = json.loads(Path(base).read_text())
    cfg["optim"]["max_iters"] = steps
    cfg["optim"]["warmup_iters"] = min(cfg["optim"]["warmup_iters"], max(0, steps // 10))
    phases = cfg["curriculum"]["phases"]
    for i, phase in enumerate(phases[:-1]):
        phase["until_step"] = max(1, steps * (i + 1) // len(phases))
    cfg["checkpoint"]["dir"] = str(out_dir / "checkpoints")
    cfg["checkpoint"]["interval"] = 10**9
    cfg["logging"]["log_dir"] = str(out_dir / "logs")
    cfg["logging"]["tensorboard_dir"] = str(out_dir / "runs")
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    path = out_dir / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def launch(config: Path, name: str, num_gpus: int, extra: list[str], cwd: Path = REPO) -> str:
    train = "launcher/train.py"
    if num_gpus == 1:
        cmd = [sys.executable, train]
    else:
        cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(num_gpus), train]
    cmd += ["--config_file", str(config), "--model_name", name, "--resume", "none", *extra]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if num_gpus > 1 else env.get("OMP_NUM_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        env.pop("OMP_NUM_THREADS")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def records(out_dir: Path, name: str, kind: str) -> list[dict]:
    path = out_dir / "logs" / f"{name}_{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
