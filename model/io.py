"""Model checkpoints as plain files: `model.safetensors` + `model_config.json` + `metadata.json`.

This is the format of GOLD checkpoints and the input of `scripts/export_hf.py`. (Resumable training checkpoints are
DeepSpeed's own, written by the launcher.) A directory is written under a temporary name and renamed into place,
so a reader never sees a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.transformer import Transformer, fuse_unfused

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
METADATA_FILE = "metadata.json"
TIED_KEY = "output.weight"


def _portable_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; the tied lm_head is stored once (as the embedding).
    out = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if config.tie_weights:
        out.pop(TIED_KEY, None)
    return out


def save_model_checkpoint(
    directory: str | os.PathLike,
    model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor],
    model_config: ModelConfig,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write weights, model config and metadata to `directory` atomically (replacing an existing one)."""
    directory = Path(directory)
    state_dict = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
    )
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    save_file(_portable_state_dict(state_dict, model_config), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps(model_config.to_dict(), indent=2) + "\n")
    (tmp / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=2, default=str) + "\n")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def load_model_checkpoint(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Transformer, ModelConfig, dict[str, Any]]:
    """Load a directory written by `save_model_checkpoint` into a fresh `Transformer` (eval mode)."""
    directory = Path(directory)
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (directory / name).is_file()]
    if missing:
        raise ValueError(
            f"{directory} is not a model checkpoint: missing {missing}. Pass a GOLD checkpoint directory "
            "(checkpoints/<model_name>/gold) or one written by model.io.save_model_checkpoint."
        )
    values = json.loads((directory / CONFIG_FILE).read_text())
    # Written before document-isolated attention existed: such a model was trained with the causal mask over the
    # whole row, and computes what it learned only under that mask.
    values.setdefault("attention", "causal")
    config = ModelConfig.from_dict(values)
    metadata_path = directory / METADATA_FILE
    metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    state_dict = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    with torch.device(device):
        model = Transformer(config)
    expected = set(_portable_state_dict(model.state_dict(), config))
    # Checkpoints written before q/k/v and w1/w3 were fused hold them separately: converted here, at load, so every
    # GOLD checkpoint and export keeps working (the fused tensor is the row-wise stack, the same function).
    state_dict, _ = fuse_unfused(state_dict, expected)
    found = set(state_dict)
    if expected != found:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: missing {sorted(expected - found)[:5]}, "
            f"unexpected {sorted(found - expected)[:5]}"
        )
    model.load_state_dict(state_dict, strict=not config.tie_weights)
    model.eval()
    return model, config, metadata
