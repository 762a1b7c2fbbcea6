"""Evaluation costs what it must (issue 25): an eval reads the device once for all its sets, not twice per
micro-batch, and gives the same numbers as before."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.token_dataset import write_token_dir
from launcher.evaluation import evaluate, fixed_sets
from model.config import ModelConfig
from model.transformer import Transformer

READS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__)


class CountingTensor(torch.Tensor):
    """A loss tensor that counts the host reads made of it and of everything computed from it."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in READS:
            cls.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class CountingModel(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        logits, loss = self.model(x, y)
        return logits, loss.as_subclass(CountingTensor)


def _sets(tmp_path, block_size: int = 16):
    rng = np.random.default_rng(0)
    named = {}
    for name in ("val", "code", "train"):
        docs = [np.append(rng.integers(0, 50256, size=int(n)), 50256) for n in rng.integers(5, 40, size=60)]
        from data.token_dataset import TokenDataset

        named[name] = TokenDataset(write_token_dir(tmp_path / name, docs, pack_block_sizes=[block_size]))
    return fixed_sets(named, block_size, count=12, seed=1337, rank=0, world_size=1)


def _reference(model, sets, micro: int) -> dict[str, float]:
    """The per-micro-batch arithmetic the trainer used before: float(mean) x real tokens, summed on the host."""
    from data.loader import read_micro_batch

    out = {}
    with torch.no_grad():
        for s in sets:
            total, count = 0.0, 0
            for start in range(0, len(s.ids), micro):
                x, y = read_micro_batch(s.dataset, s.ids[start : start + micro], s.block_size)
                real = int((y != -1).sum())
                if real:
                    total += float(model(x, y)[1]) * real
                    count += real
            out[s.name] = total / count
    return out


def test_an_eval_reads_the_device_once_for_all_sets_and_gives_the_same_losses(tmp_path):
    sets = _sets(tmp_path)
    model = Transformer(ModelConfig(n_embd=32, n_head=2, n_layer=1, block_size=16, dropout=0.0,
                                    fused_kernels=False)).eval()
    CountingTensor.reads = 0
    losses = evaluate(CountingModel(model), sets, micro_batch_size=4, device=torch.device("cpu"))
    # 3 sets x 3 micro-batches: before, 2 reads per micro-batch (the loss and the token count) = 18.
    assert CountingTensor.reads == 1, CountingTensor.reads
    expected = _reference(model, sets, 4)
    assert set(losses) == set(expected)
    for name, value in losses.items():
        assert math.isclose(value, expected[name], rel_tol=1e-6), (name, value, expected[name])


def test_step_flags_reach_the_device_with_their_values():
    from launcher.trainer import _to_device

    out = _to_device([3.0, 1.0, 0.0], torch.device("cpu"))
    assert out.dtype == torch.float32 and out.tolist() == [3.0, 1.0, 0.0]


@pytest.mark.gpu
def test_step_flags_are_copied_from_pinned_memory_without_blocking():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from launcher.trainer import _to_device

    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # queue work, so that a blocking copy would have to wait for it
        busy = busy @ busy / 64
    out = _to_device([3.0, 1.0, 0.0], torch.device("cuda"))
    assert out.device.type == "cuda" and out.tolist() == [3.0, 1.0, 0.0]
