"""Periodic DeepSpeed checkpoints (for resuming) and the GOLD checkpoint (the best model, for export).

Layout under `<checkpoint.dir>/<model_name>/`:

    step_<N>/                 DeepSpeed's engine save (tag step_<N>) of the state after N optimizer steps
        trainer_meta.json     step, config and dataset fingerprints, world size (read before the engine starts)
        rng_rank<r>.pt        each rank's RNG states (DeepSpeed's client_state is saved by rank 0 only)
        COMPLETE              written by rank 0 after every rank finished writing: only these count
    latest                    DeepSpeed's own pointer (not trusted: we pick the newest step_<N> with COMPLETE)
    gold/                     model.safetensors + model_config.json + metadata.json (model/io.py), replaced atomically
                              (written by launcher/gold.py)

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

from data.atomic import atomic_write_text, fsync_path
from launcher import distributed as dist

MARKER = "COMPLETE"
META = "trainer_meta.json"
_TAG = re.compile(r"^step_(\d+)$")
# Fault injection for the tests: "RANK:STEP:KIND" makes that rank's checkpoint writer fail at that step's save with the
# error a full volume gives (KIND enospc: OSError ENOSPC; zip: torch's zip writer RuntimeError).
FAULT_SAVE_ERROR = "RAGLLM_FAULT_SAVE_ERROR"
# Fault injection for the tests: skip the space check, as if the volume filled up between the check and the writes
# (another process, a wrong estimate), so that the real writer meets the real ENOSPC.
FAULT_NO_SPACE_CHECK = "RAGLLM_FAULT_NO_SPACE_CHECK"
# Headroom over the expected size before a save starts: file-system metadata, and a save a little larger than the last.
SPACE_MARGIN = 1.05


class CheckpointSpaceError(SystemExit):
    """A save that would not fit, or did not: every rank stops (exit 1) with this message, no traceback."""

    def __init__(self, message: str):
        super().__init__(message)


def checkpoint_bytes_estimate(num_params: int, precision: str) -> int:
    """Bytes of one resumable ZeRO-2 checkpoint before any was written: the module's weights in the engine's dtype
    (2 or 4 bytes) plus the fp32 optimizer state (master weights and Adam's two moments, 12 bytes), every parameter
    once across the ranks. Measured at 750M: 9.78 GB for 698.9M parameters in bf16, 14.0 bytes each
    (docs/PERFORMANCE.md, "Checkpoint cost")."""
    return num_params * ((2 if precision == "bf16" else 4) + 12)


def volume_free_bytes(path: Path) -> int:
    """Free bytes of the file system that holds `path` (or its nearest existing parent: the folder may not exist)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _inject_save_fault(engine, step: int) -> None:
    """Make this rank's DeepSpeed checkpoint writer fail at its first file of this step (RAGLLM_FAULT_SAVE_ERROR)."""
    spec = os.environ.get(FAULT_SAVE_ERROR, "")
    if not spec or spec.split(":")[:2] != [str(dist.rank()), str(step)]:
        return
    kind = spec.split(":")[2]
    writer = engine.checkpoint_engine

    def failing_save(*args, **kwargs):
        writer.save = original  # one failure
        if kind == "zip":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3904 vs 3796 "
                               f"(injected by {FAULT_SAVE_ERROR})")
        raise OSError(28, f"No space left on device (injected by {FAULT_SAVE_ERROR})")

    original = writer.save
    writer.save = failing_save


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


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` (and the folders) to disk: the COMPLETE marker must never reach the disk before
    the files it vouches for (a power loss after a rename can otherwise leave a marker beside empty files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


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
    def __init__(self, root: str | Path, keep_last: int, expected_bytes: int = 0):
        self.root = Path(root)
        self.keep_last = keep_last
        # What the next save needs: an estimate until the first save, then the size of the last complete one (rank 0).
        self.expected_bytes = expected_bytes

    def _newest_note(self) -> str:
        done = complete_checkpoints(self.root)
        if not done:
            return "no complete checkpoint of this run exists yet"
        return (f"the newest complete checkpoint, {done[-1][1]} (step {done[-1][0]}), is intact; the same command "
                "continues from it (--resume auto)")

    def _fix(self) -> str:
        return (f"free space on that volume (older runs' checkpoints or exports), lower checkpoint.keep_last (now "
                f"{self.keep_last}; each save is ~{_gb(self.expected_bytes)}), or point checkpoint.dir at a larger "
                "volume; then run the same command again")

    def _check_space(self, step: int) -> None:
        """Collective, before any file of the save is written: rank 0 compares the volume's free space with what the
        save needs; short of it, every rank stops together (CheckpointSpaceError), with nothing written."""
        message = None
        if dist.rank() == 0 and self.expected_bytes and not os.environ.get(FAULT_NO_SPACE_CHECK):
            free, need = volume_free_bytes(self.root), int(self.expected_bytes * SPACE_MARGIN)
            if free < need:
                message = (f"error: not saving checkpoint step {step}: the volume of {self.root} has {_gb(free)} free "
                           f"and the save needs ~{_gb(need)}. Nothing was written; {self._newest_note()}. To go on, "
                           f"{self._fix()}.")
        message = dist.broadcast_object(message)
        if message is not None:
            raise CheckpointSpaceError(message if dist.rank() == 0 else
                                       f"stopped: checkpoint step {step} would not fit on the volume (rank 0 says "
                                       "what to do)")

    def _agree_on_failure(self, step: int, path: Path, error: BaseException | None) -> None:
        """Collective: every rank learns whether any rank's part of the save failed; if one did, rank 0 removes the
        partial folder and every rank stops (CheckpointSpaceError), so nothing waits for a rank that gave up."""
        failed = dist.all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
        bad = {r: e for r, e in enumerate(failed) if e is not None}
        if not bad:
            return
        if dist.rank() == 0:
            shutil.rmtree(path, ignore_errors=True)  # a partial save holds nothing to keep, and frees its space
            done = complete_checkpoints(self.root)
            if done:  # DeepSpeed's `latest` may already name the removed tag: point it back (its own tools read it)
                try:
                    atomic_write_text(self.root / "latest", done[-1][1].name, durable=True)
                except OSError:
                    pass  # resume picks the newest COMPLETE folder whatever `latest` says
            first = next(iter(bad.values())).splitlines()[0][:300]
            raise CheckpointSpaceError(
                f"error: saving checkpoint step {step} to {path} failed on rank(s) {sorted(bad)}: {first}. The volume "
                f"of {self.root} now has {_gb(volume_free_bytes(self.root))} free; the partial folder was removed and "
                f"{self._newest_note()}. If the volume is full or failing, {self._fix()}.")
        raise CheckpointSpaceError(f"stopped: checkpoint step {step} failed on rank(s) {sorted(bad)} (rank 0 says what "
                                   "to do)")

    def save(self, engine, step: int, client_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Collective: every rank calls this at the same step.

        A full volume is a clear stop, never a traceback or a half-written checkpoint that looks usable: the space is
        checked first (`_check_space`), and a write that fails anyway (ENOSPC, torch's zip writer error, a network
        volume's I/O error) is caught on the rank it happens on and agreed on by all (`_agree_on_failure`). A failure
        inside DeepSpeed's save comes before its closing barrier (deepspeed 0.19.8 runtime/engine.py
        `save_checkpoint`: barrier, tag validation, the writes, barrier), so the failing rank stands in for that
        barrier before the ranks compare notes."""
        path = self.root / tag_for(step)
        self._check_space(step)
        if dist.rank() == 0 and path.exists():
            # A leftover from an interrupted save of this same step: never mix its files with the new ones.
            shutil.rmtree(path)
        dist.barrier()
        error, in_engine = None, True
        try:
            _inject_save_fault(engine, step)
            engine.save_checkpoint(str(self.root), tag=tag_for(step), client_state=client_state)
            in_engine = False
            torch.save(rng_state(), path / f"rng_rank{dist.rank()}.pt")
        except (OSError, RuntimeError) as e:
            error = e
            if in_engine:
                dist.barrier()  # the closing barrier of DeepSpeed's save, which the other ranks are waiting in
        self._agree_on_failure(step, path, error)  # every rank has written its files before the marker says so
        error = None
        if dist.rank() == 0:
            try:
                fsync_tree(path)
                atomic_write_text(path / META, json.dumps({**meta, "step": step}, indent=2) + "\n", durable=True)
                atomic_write_text(path / MARKER, f"{step}\n", durable=True)
            except OSError as e:
                error = e
        self._agree_on_failure(step, path, error)
        if dist.rank() == 0:
            self.expected_bytes = folder_bytes(path)
            self.prune()
        dist.barrier()
        return path

    def set_aside_after(self, step: int, gold_dir: Path, stamp: str) -> list[str]:
        """Rank 0, at a resume from step `step`: move every step_<N> with N > step (the newer work of the branch being
        left, or a crash's half-written save) and a GOLD saved after `step` into `<root>/abandoned-<stamp>/`, never
        deleting them. Pruning and `--resume auto` then see only the live branch. Returns what moved."""
        moved = []
        aside = self.root / f"abandoned-{stamp}"
        children = list(self.root.iterdir()) if self.root.is_dir() else []
        candidates = [c for c in children if _TAG.match(c.name) and int(_TAG.match(c.name).group(1)) > step]
        gold_meta = gold_dir / "metadata.json"
        if gold_meta.is_file():
            try:
                gold_step = int(json.loads(gold_meta.read_text())["step"])
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                gold_step = None
            if gold_step is None or gold_step > step:
                candidates.append(gold_dir)
        for path in sorted(candidates):
            if path != gold_dir and not (path / MARKER).is_file():
                shutil.rmtree(path, ignore_errors=True)  # a save killed half-way holds nothing to keep
                continue
            aside.mkdir(parents=True, exist_ok=True)
            path.rename(aside / path.name)
            moved.append(path.name)
        return moved

    def remove_incomplete(self) -> list[str]:
        """Rank 0, at start: delete step_<N> folders without the marker (a save killed half-way; up to ~10 GB each
        at 750M). Only folders at or below the newest complete step are removed here: set_aside_after handles the
        newer ones."""
        done = complete_checkpoints(self.root)
        newest = done[-1][0] if done else -1
        removed = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                m = _TAG.match(child.name)
                if m and child.is_dir() and not (child / MARKER).is_file() and int(m.group(1)) <= newest:
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child.name)
        return removed

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
        try:
            load_path, client_state = engine.load_checkpoint(str(load_dir), tag=path.name)
        except RuntimeError as e:
            if "attention.wqkv" in str(e) or "feed_forward.w13" in str(e):
                # Written before q/k/v and w1/w3 were fused. The model weights could be fused (model.io
                # does it for GOLD checkpoints), but ZeRO's flat optimizer partitions follow the old parameter
                # shapes and order, so the optimizer state cannot be carried over.
                raise RuntimeError(
                    f"{path} was written by the model before q/k/v and w1/w3 were fused into attention.wqkv and "
                    "feed_forward.w13; its optimizer state cannot be resumed. Start a new run (--resume none), or "
                    "finish this one with the code that wrote it. Its GOLD checkpoint still loads and exports "
                    "(model.io converts the weights).") from e
            raise
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


def load_step_model(path: str | Path, device: str | torch.device = "cpu"):
    """(Transformer, ModelConfig, trainer meta) from a complete `step_<N>` folder: the fp32 master weights that
    DeepSpeed's own consolidator gathers from every rank's ZeRO partition (deepspeed/utils/zero_to_fp32.py,
    `get_fp32_state_dict_from_zero_checkpoint`), and the model config the run saved in its client state."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from model.config import ModelConfig
    from model.transformer import Transformer

    path = Path(path)
    meta = read_meta(path)
    states = path / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise ValueError(f"{path} has no {states.name}: not a DeepSpeed engine save")
    client = torch.load(states, map_location="cpu", weights_only=False)
    model_values = dict(client.get("train_config", {}).get("model") or {})
    if not model_values:
        raise ValueError(f"{states} holds no train_config.model (written by an older trainer): export its GOLD "
                         "checkpoint instead")
    model_values.setdefault("attention", meta.get("attention", "causal"))
    config = ModelConfig.from_dict(model_values)
    state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    with torch.device(device):
        model = Transformer(config)
    missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (config.tie_weights and k == "output.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: the saved weights do not match its model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval(), config, meta


def load_trained_model(path: str | Path, device: str | torch.device = "cpu"):
    """(Transformer, ModelConfig, metadata) from a GOLD checkpoint (`model_config.json`, model/io.py) or a
    complete `step_<N>` folder; a ValueError naming both kinds otherwise."""
    path = Path(path)
    if (path / "model_config.json").is_file():
        from model.io import load_model_checkpoint

        return load_model_checkpoint(path, device=device)
    if _TAG.match(path.name) and (path / META).is_file():
        return load_step_model(path, device)
    raise ValueError(f"{path} is neither a GOLD checkpoint (model_config.json, e.g. checkpoints/<model_name>/gold) "
                     "nor a complete step_<N> folder (trainer_meta.json + COMPLETE, e.g. "
                     "checkpoints/<model_name>/step_1000)")


def load_model_or_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, int, str]:
    """(model in fp32 eval mode, its block size, what it is) from anything the evaluation CLIs take: a GOLD
    checkpoint, a complete `step_<N>` folder, or a Hugging Face LlamaForCausalLM export (scripts/export_hf.py)."""
    path = Path(path)
    if (path / "config.json").is_file() and not (path / "model_config.json").is_file():
        hf_config = json.loads((path / "config.json").read_text())
        if hf_config.get("model_type") != "llama":
            raise ValueError(f"{path}/config.json has model_type {hf_config.get('model_type')!r}; only Hugging Face "
                             "'llama' exports (scripts/export_hf.py) are supported")
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        return model, int(hf_config["max_position_embeddings"]), "Hugging Face LlamaForCausalLM"
    try:
        model, config, _ = load_trained_model(path, device=device)
    except ValueError as e:
        if (path / "model_config.json").is_file() or (path / META).is_file():
            raise  # a checkpoint that fails to load: its own message says why
        raise ValueError(f"{path} is neither a model checkpoint nor a Hugging Face export (config.json, written by "
                         f"scripts/export_hf.py): {e}") from None
    return model.float().eval(), config.block_size, f"checkpoint (arch {config.arch})"
