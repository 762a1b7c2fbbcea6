"""Which samples each optimizer step reads: a pure function of (step, dataset, seed), never of rank or history.

A dataset of `num_samples` samples (each `block_size + 1` tokens) is read as an endless stream of positions.
Position p lies in epoch e = p // num_samples and names sample `perm_e[p % num_samples]`, where `perm_e` is a
permutation seeded by (seed, dataset fingerprint, e). Optimizer step k of a phase consumes positions
[k*G, (k+1)*G) (G = global batch). Those G ids are split into micro-steps of `micro x world` ids, and rank r takes
the contiguous slice [r*micro, (r+1)*micro) of each micro-step. Hence (see DESIGN, "Data order is a pure function
of the optimizer step"):

- resuming at step k needs only k: the stream after a resume is the same ids as an uninterrupted run;
- 1, 2 or 8 GPUs with the same global batch train on the same ids per optimizer step;
- nothing is seeded by rank and nothing depends on Python's per-process `hash()` randomisation.

The permutation is numpy's `Generator(PCG64(s)).permutation`, with s derived from sha256 of the seed, the
fingerprint and the epoch. numpy is pinned in requirements.txt; a test pins the first ids of a known permutation,
so a numpy release that changed the shuffle algorithm (and so the data order of a resumed run) fails loudly.

Evaluation uses a fixed sample set per eval set, `eval_sample_ids`, chosen with the eval seed only, and split over
ranks with `shard_for_rank`: the same samples at any world size, every eval, every resume.

    from data.sampler import StepSampler, eval_sample_ids, shard_for_rank
    sampler = StepSampler(num_samples=ds.num_samples(1024), global_batch_size=96, seed=1234,
                          fingerprint=ds.fingerprint)
    for ids in sampler.micro_batches(step_in_phase, rank, world_size, micro_batch_size=12):
        batch = np.stack([ds.sample(int(i), 1024) for i in ids])      # one micro-step of this rank
    my_eval_ids = shard_for_rank(eval_sample_ids(ds.num_samples(1024), count=200 * 12, seed=1337), rank, world)
"""

from __future__ import annotations

import hashlib

import numpy as np


def _check_int(name: str, value, minimum: int) -> int:
    # numpy integers are fine (ids and steps often come out of arrays); bools are a mistake, not a count.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def epoch_seed(seed: int, fingerprint: str, epoch: int) -> int:
    """A stable 128-bit seed for epoch `epoch`'s permutation (sha256, identical in every process and platform)."""
    blob = f"ragllm-sampler-v1|{int(seed)}|{fingerprint}|{int(epoch)}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:16], "little")


def epoch_permutation(num_samples: int, seed: int, fingerprint: str, epoch: int) -> np.ndarray:
    """The order of the `num_samples` sample ids in epoch `epoch` (int64)."""
    rng = np.random.Generator(np.random.PCG64(epoch_seed(seed, fingerprint, epoch)))
    return rng.permutation(num_samples).astype(np.int64, copy=False)


class StepSampler:
    """Sample ids consumed by each optimizer step of one phase, a pure function of the step."""

    def __init__(self, num_samples: int, global_batch_size: int, seed: int, fingerprint: str):
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string (the dataset's fingerprint), got {fingerprint!r}")
        self.fingerprint = fingerprint
        # Permutations of the epochs the last call touched. A step spans at most two epochs when G <= num_samples,
        # so sequential training computes each permutation once (~0.1 s and 8 bytes/sample at 7M samples).
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = epoch_permutation(self.num_samples, self.seed, self.fingerprint, epoch)
        return perm

    def sample_ids(self, step_in_phase: int) -> np.ndarray:
        """(G,) int64: the sample ids at stream positions [k*G, (k+1)*G), k = step_in_phase."""
        k = _check_int("step_in_phase", step_in_phase, 0)
        start = k * self.global_batch_size
        stop = start + self.global_batch_size
        n = self.num_samples
        out = np.empty(self.global_batch_size, dtype=np.int64)
        used: dict[int, np.ndarray] = {}
        # Walk epoch by epoch; more than two only when the global batch is larger than the dataset (tiny tests).
        pos = start
        while pos < stop:
            epoch, offset = divmod(pos, n)
            take = min(n - offset, stop - pos)
            perm = used[epoch] = self._permutation(epoch)
            out[pos - start : pos - start + take] = perm[offset : offset + take]
            pos += take
        self._perms = used
        return out

    def epoch_at(self, step_in_phase: int) -> int:
        """The epoch of the first sample step `step_in_phase` reads (for logs)."""
        return _check_int("step_in_phase", step_in_phase, 0) * self.global_batch_size // self.num_samples

    def micro_batches(self, step_in_phase: int, rank: int, world_size: int, micro_batch_size: int) -> list[np.ndarray]:
        """This rank's micro-batches of step `step_in_phase`, in order: accum arrays of `micro_batch_size` ids.

        The step's G ids form accum = G / (micro x world) micro-steps of micro x world ids; rank r takes
        [r*micro, (r+1)*micro) of each, so concatenating the ranks' slices of micro-step j (rank-major) gives
        ids[j*micro*world : (j+1)*micro*world], whatever the world size.
        """
        world_size = _check_int("world_size", world_size, 1)
        micro = _check_int("micro_batch_size", micro_batch_size, 1)
        rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank {rank} is out of range for world size {world_size} (ranks are 0..{world_size - 1})")
        per_micro_step = micro * world_size
        if self.global_batch_size % per_micro_step != 0:
            valid = [w for w in range(1, self.global_batch_size + 1) if self.global_batch_size % (micro * w) == 0]
            fix = f"run on {valid} GPUs" if valid else "choose a micro_batch_size that divides global_batch_size"
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) is not divisible by micro_batch_size ({micro}) x "
                f"world size ({world_size}) = {per_micro_step}; with these batch sizes {fix}, "
                "or change batch.micro_batch_size."
            )
        ids = self.sample_ids(step_in_phase).reshape(-1, world_size, micro)  # (accum, world, micro)
        return [ids[j, rank].copy() for j in range(ids.shape[0])]


def eval_sample_ids(num_samples: int, count: int, seed: int) -> np.ndarray:
    """The fixed eval samples of one eval set: `count` distinct ids, sorted (all ids when the set is that small).

    Chosen with `seed` alone, so every world size, every eval and every resume evaluates the same samples. Sorted
    so that reading them from the memmap walks the files forward.
    """
    num_samples = _check_int("num_samples", num_samples, 1)
    count = _check_int("count", count, 1)
    seed = _check_int("seed", seed, 0)
    if num_samples <= count:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(num_samples, size=count, replace=False)).astype(np.int64, copy=False)


def shard_for_rank(ids: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s contiguous chunk of `ids`; chunk sizes differ by at most one and every id goes to one rank.

    Ranks may get different counts (and some none, when there are fewer ids than ranks): sum loss and token count
    over ranks with an all-reduce, never average per-rank means.
    """
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank {rank} is out of range for world size {world_size} (ranks are 0..{world_size - 1})")
    return np.array_split(np.asarray(ids), world_size)[rank]
