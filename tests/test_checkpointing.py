"""launcher/checkpointing.py without DeepSpeed: the background GOLD writer, and the lineage moves of a resume on a
hand-made checkpoint folder (the end-to-end versions run in tests/test_train_distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.checkpointing import MARKER, CheckpointManager
from launcher.gold import GoldWriter
from model.config import ModelConfig
from model.io import load_model_checkpoint
from model.transformer import Transformer

TINY = ModelConfig(n_embd=32, n_head=2, n_layer=1, block_size=16, dropout=0.0, ffn_multiple_of=32)


def test_gold_writer_saves_the_weights_of_the_moment_it_was_called(tmp_path):
    torch.manual_seed(0)
    model = Transformer(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    writer = GoldWriter()
    path = writer.submit(tmp_path / "gold", model, TINY, {"step": 7})
    with torch.no_grad():  # the next optimizer step, while the write may still run
        for p in model.parameters():
            p.add_(1.0)
    writer.wait()
    loaded, _, meta = load_model_checkpoint(path)
    assert meta == {"step": 7}
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    # Tied weights are copied once and stay tied in the file (what the export and the loader expect).
    assert loaded.output.weight.data_ptr() == loaded.tok_embeddings.weight.data_ptr()


def test_gold_writer_reports_a_failed_write(tmp_path):
    (tmp_path / "not_a_folder").write_text("x")
    writer = GoldWriter()
    writer.submit(tmp_path / "not_a_folder" / "gold", Transformer(TINY), TINY, {})
    with pytest.raises(RuntimeError, match="writing the GOLD checkpoint .*gold failed"):
        writer.wait()
    writer.wait()  # reported once; the writer is usable again


def _fake_checkpoint(root, step: int, complete: bool = True) -> None:
    path = root / f"step_{step}"
    path.mkdir(parents=True)
    (path / "weights.pt").write_text(str(step))
    if complete:
        (path / MARKER).write_text(f"{step}\n")


def test_resume_from_an_older_step_moves_newer_work_aside_and_drops_unfinished_saves(tmp_path):
    root = tmp_path / "run"
    for step in (1000, 2000, 3000):
        _fake_checkpoint(root, step)
    _fake_checkpoint(root, 4000, complete=False)  # a save killed half-way, after the newest complete one
    _fake_checkpoint(root, 1500, complete=False)  # an old unfinished save
    (root / "gold").mkdir()
    (root / "gold" / "metadata.json").write_text(json.dumps({"step": 2500}))
    manager = CheckpointManager(root, keep_last=3)
    assert manager.remove_incomplete() == ["step_1500"]
    moved = manager.set_aside_after(1000, root / "gold", "T")
    assert moved == ["gold", "step_2000", "step_3000"]
    assert sorted(p.name for p in (root / "abandoned-T").iterdir()) == moved
    assert sorted(p.name for p in root.iterdir()) == ["abandoned-T", "step_1000"]  # step_4000 held nothing to keep
    # A GOLD from before the resumed step belongs to the live branch and stays.
    (root / "gold").mkdir()
    (root / "gold" / "metadata.json").write_text(json.dumps({"step": 1000}))
    assert manager.set_aside_after(1000, root / "gold", "U") == []
