"""Run output, rank 0 only: console lines, the two JSONL logs and TensorBoard scalars (docs/DESIGN.md, "Logs").

- `<log_dir>/<model_name>_train.jsonl`: one record per log interval (loss, lr, grad norm, tokens/s, MFU, data-wait
  share) plus one `{"event": "phase_switch"}` record per curriculum switch;
- `<log_dir>/<model_name>_eval.jsonl`: one record per eval (time, step, tokens, phase, lr, losses, GOLD guards and
  decision, probes, run health);
- TensorBoard under `<tensorboard_dir>/<model_name>/`: `train/*`, `eval/*`, `gold/*`, `probe/*`, `health/*` scalars by
  optimizer step.

On resume, records past the resumed step (written by the interrupted run after its last checkpoint) are dropped
from both JSONL files and TensorBoard (`purge_step`), so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_text


def json_safe(value):
    # Strict JSON has no NaN/inf: write them as null (the record's other fields say what happened).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def truncate_jsonl(path: Path, after_step: int, aside: Path | None = None) -> int:
    """Drop records with step > after_step (atomically); returns how many were dropped. With `aside`, the dropped
    records are appended there first (the abandoned branch's log, kept for the reader, out of the live one)."""
    if not path.is_file():
        return 0
    kept, dropped, moved = [], 0, []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: drop it
            dropped += 1
            continue
        if record.get("step", -1) > after_step:
            dropped += 1
            moved.append(line)
        else:
            kept.append(line)
    if moved and aside is not None:
        with open(aside, "a") as f:
            f.write("".join(line + "\n" for line in moved))
            f.flush()
            os.fsync(f.fileno())
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


class RunLog:
    """JSONL + TensorBoard writer. Construct on every rank; only rank 0 writes anything."""

    def __init__(self, log_dir: str, tensorboard_dir: str, model_name: str, is_writer: bool, resume_step: int | None,
                 aside_suffix: str = ""):
        self.is_writer = is_writer
        self.train_path = Path(log_dir) / f"{model_name}_train.jsonl"
        self.eval_path = Path(log_dir) / f"{model_name}_eval.jsonl"
        self.tb_dir = Path(tensorboard_dir) / model_name
        self.tb = None
        if not is_writer:
            return
        self.train_path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            # A fresh run starts fresh logs (an earlier run with this name was refused or moved by the trainer).
            for path in (self.train_path, self.eval_path):
                path.unlink(missing_ok=True)
        else:
            # The records past the resumed step (an interrupted run's, or a branch resumed from an older checkpoint)
            # go to `<log>.abandoned-<time>`, so the live log reads as one run and nothing is lost.
            for path in (self.train_path, self.eval_path):
                truncate_jsonl(path, resume_step, path.with_name(path.name + aside_suffix) if aside_suffix else None)
        from torch.utils.tensorboard import SummaryWriter

        # Records at step N are written before the checkpoint of step N, so they stay; purge_step drops the events
        # at steps > resume_step that the interrupted run wrote after its checkpoint.
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge)

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        with open(path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()

    def train(self, record: dict[str, Any], scalars: dict[str, float]) -> None:
        if not self.is_writer:
            return
        self._append(self.train_path, record)
        for name, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.tb.add_scalar(name, value, record["step"])

    def eval(self, record: dict[str, Any], scalars: dict[str, float]) -> None:
        if not self.is_writer:
            return
        self._append(self.eval_path, record)
        for name, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.tb.add_scalar(name, value, record["step"])
        self.tb.flush()

    def eval_records(self) -> list[dict[str, Any]]:
        """The eval records written so far (after a resume: those up to the resumed step), oldest first."""
        if not self.is_writer or not self.eval_path.is_file():
            return []
        records = []
        for line in self.eval_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill (truncate_jsonl drops those on resume)
                continue
        return records

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
