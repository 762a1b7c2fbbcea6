"""Periodic DeepSpeed checkpoints (for resuming) and the GOLD checkpoint (the best model, for export).

Layout under `<checkpoint.dir>/<model_name>/`:

    step_<N>/                 DeepSpeed's engine save (tag step_<N>) of the state after N optimizer steps
        trainer_meta.json     step, config and dataset fingerprints, world size (read before the engine starts)
        rng_rank<r>.pt        each rank's RNG states (DeepSpeed's client_state is saved by rank 0 only)
        COMPLETE              written by rank 0 after every rank finished writing: only these count
    latest                    DeepSpeed's own pointer (not trusted: we pick the newest step_<N> with COMPLETE)
    gold/                     model.safetensors + model_config.json + metadata.json (model/io.py), replaced atomically

Resume never reads a checkpoint without COMPLETE, and `keep_last` pruning deletes only complete, older ones.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launcher import distributed as dist

MARKER = "COMPLETE"
META = "trainer_meta.json"
_TAG = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under root, oldest first."""
    out = []
    if root.is_dir():
        for child in root.iterdir():
            m = _TAG.match(child.name)
            if m and child.is_dir() and (child / MARKER).is_file():
                out.append((int(m.group(1)), child))
    return sorted(out)


def read_meta(path: Path) -> dict[str, Any]:
    """The trainer metadata of a checkpoint directory; ValueError when it is not a complete checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"resume checkpoint {path} does not exist")
    if not (path / MARKER).is_file():
        raise ValueError(f"resume checkpoint {path} has no {MARKER} marker: it was not finished (interrupted save?); "
                         "pick an older step_<N> or use --resume auto")
    try:
        return json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"resume checkpoint {path}: cannot read {META} ({e})") from e


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int):
        self.root = Path(root)
        self.keep_last = keep_last

    def save(self, engine, step: int, client_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Collective: every rank calls this at the same step."""
        path = self.root / tag_for(step)
        if dist.rank() == 0 and path.exists():
            # A leftover from an interrupted save of this same step: never mix its files with the new ones.
            shutil.rmtree(path)
        dist.barrier()
        engine.save_checkpoint(str(self.root), tag=tag_for(step), client_state=client_state)
        torch.save(rng_state(), path / f"rng_rank{dist.rank()}.pt")
        dist.barrier()  # every rank's files are on disk before the marker says so
        if dist.rank() == 0:
            _write_atomic(path / META, json.dumps({**meta, "step": step}, indent=2) + "\n")
            _write_atomic(path / MARKER, f"{step}\n")
            self.prune()
        dist.barrier()
        return path

    def prune(self) -> None:
        done = complete_checkpoints(self.root)
        for _, old in done[: max(0, len(done) - self.keep_last)]:
            # Remove the marker first: a crash half-way through leaves an incomplete (ignored) dir, never a
            # "complete" one with missing files.
            (old / MARKER).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)

    def load(self, engine, path: Path, universal: bool = False) -> dict[str, Any]:
        """Collective: load engine, optimizer and scheduler state from `path`; returns the client_state.

        `universal`: the checkpoint was written at another world size. ZeRO's optimizer partitions are per rank, so
        DeepSpeed loads it only as a Universal Checkpoint: rank 0 converts it once (`ds_to_universal`, into
        `<path>/universal/<tag>`) and the engine was built with `checkpoint.load_universal` (see plan_run).
        """
        path = Path(path)
        load_dir = path.parent
        if universal:
            load_dir = path / "universal"
            if dist.rank() == 0 and not (load_dir / path.name).is_dir():
                convert_to_universal(path, load_dir / path.name)
            dist.barrier()
        load_path, client_state = engine.load_checkpoint(str(load_dir), tag=path.name)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        rng_file = path / f"rng_rank{dist.rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state


def convert_to_universal(src: Path, dst: Path) -> None:
    """DeepSpeed's own converter, into a temp folder renamed into place when complete."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"converting {src} to a universal checkpoint failed ({' '.join(cmd)}):\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    tmp.rename(dst)


def save_gold(gold_dir: Path, model: torch.nn.Module, model_config, metadata: dict[str, Any]) -> Path:
    """Rank 0: write the GOLD checkpoint. model/io.py writes `gold.tmp`, moves the old one away, renames the new one
    in and deletes the old, so a crash leaves either the previous GOLD or the new one, never a mix."""
    from model.io import save_model_checkpoint

    # The weights that were evaluated: the engine's bf16 (or fp32) module parameters, the tied embedding once.
    return save_model_checkpoint(gold_dir, model, model_config, metadata)
