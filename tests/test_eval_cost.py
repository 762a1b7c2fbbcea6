"""Evaluation costs what it must: an eval reads the device once for all its sets, not twice per
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

    def forward(self, x, y, **kwargs):
        logits, loss = self.model(x, y, **kwargs)
        return logits, loss.as_subclass(CountingTensor)

    @property
    def config(self):
        return self.model.config


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
    losses = evaluate(CountingModel(model), sets, micro_batch_size=4, device=torch.device("cpu")).losses
    # 3 sets x 3 micro-batches: before, 2 reads per micro-batch (the loss and the token count) = 18.
    assert CountingTensor.reads == 1, CountingTensor.reads
    expected = _reference(model, sets, 4)
    assert set(losses) == set(expected)
    for name, value in losses.items():
        assert math.isclose(value, expected[name], rel_tol=1e-6), (name, value, expected[name])


def test_step_flags_reach_the_device_with_their_values():
    from launcher.trainer import host_values_to_device

    out = host_values_to_device([3.0, 1.0, 0.0], torch.device("cpu"))
    assert out.dtype == torch.float32 and out.tolist() == [3.0, 1.0, 0.0]


@pytest.mark.gpu
def test_step_flags_are_copied_from_pinned_memory_without_blocking():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from launcher.trainer import host_values_to_device

    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # queue work, so that a blocking copy would have to wait for it
        busy = busy @ busy / 64
    out = host_values_to_device([3.0, 1.0, 0.0], torch.device("cuda"))
    assert out.device.type == "cuda" and out.tolist() == [3.0, 1.0, 0.0]


def _brute_force(model, sets) -> tuple[dict[str, float], dict[str, float]]:
    """Loss and bits per byte from full logits, one sample at a time, bytes from the tokenizer's own decode."""
    from data.loader import read_micro_batch
    from data.tokenizer import EOT, get_tokenizer

    enc = get_tokenizer()
    losses, bpb = {}, {}
    with torch.no_grad():
        for s in sets:
            nats = text_nats = 0.0
            tokens = n_bytes = 0
            for i in s.all_ids:
                x, y = read_micro_batch(s.dataset, [i], s.block_size, document_targets=s.document_targets)
                logits, _ = model(x)
                for t, target in enumerate(y[0].tolist()):
                    if target == -1:
                        continue
                    loss = float(torch.nn.functional.cross_entropy(logits[0, t].double(), torch.tensor(target)))
                    nats += loss
                    tokens += 1
                    if target != EOT:
                        text_nats += loss
                        n_bytes += len(enc.decode_single_token_bytes(target))
            losses[s.name], bpb[s.name] = nats / tokens, text_nats / (math.log(2) * n_bytes)
    return losses, bpb


def test_loss_and_bits_per_byte_do_not_depend_on_the_eval_micro_batch_or_the_world_size(tmp_path):
    from launcher.evaluation import eval_sums

    sets = _sets(tmp_path)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_embd=32, n_head=2, n_layer=1, block_size=16, dropout=0.0,
                                    fused_kernels=False)).eval()
    losses, bpb = _brute_force(model, sets)
    for micro in (1, 5, 12):
        result = evaluate(model, sets, micro_batch_size=micro, device=torch.device("cpu"))
        for name in losses:
            assert math.isclose(result.losses[name], losses[name], rel_tol=1e-5), (micro, name)
            assert math.isclose(result.bits_per_byte[name], bpb[name], rel_tol=1e-5), (micro, name)
            assert not math.isclose(bpb[name], losses[name] / math.log(2), rel_tol=0.5)  # bytes, not tokens
    # Two ranks: each sums its own share; the all-reduce adds them (here by hand).
    named = {s.name: s.dataset for s in sets}
    shares = [fixed_sets(named, 16, count=12, seed=1337, rank=r, world_size=2) for r in (0, 1)]
    parts = [eval_sums(model, share, 5, torch.device("cpu")) for share in shares]
    for i, name in enumerate(named):
        nats = sum(float(p[i].nats) for p in parts)
        tokens = sum(p[i].tokens for p in parts)
        assert math.isclose(nats / tokens, losses[name], rel_tol=1e-5)
        text = sum(float(p[i].nats_with_bytes) for p in parts)
        assert math.isclose(text / (math.log(2) * sum(p[i].bytes for p in parts)), bpb[name], rel_tol=1e-5)


def test_eval_reads_on_the_prefetch_thread_with_the_pin_flag(tmp_path, monkeypatch):
    import threading

    from launcher import evaluation

    seen = []
    real = evaluation.read_micro_batch

    def spy(dataset, ids, block_size, pin_memory=False, **kwargs):
        seen.append((threading.current_thread().name, pin_memory))
        return real(dataset, ids, block_size, False, **kwargs)  # pinning needs an accelerator; the flag is checked

    monkeypatch.setattr(evaluation, "read_micro_batch", spy)
    sets = _sets(tmp_path)
    model = Transformer(ModelConfig(n_embd=32, n_head=2, n_layer=1, block_size=16, dropout=0.0,
                                    fused_kernels=False)).eval()
    evaluate(model, sets, micro_batch_size=8, device=torch.device("cpu"), pin_memory=True)
    assert len(seen) == 3 * 2 and all(entry == ("prefetch", True) for entry in seen), seen
