"""The key/value cache of incremental decoding: every layer's keys and values of the tokens already read, so a new
token costs one position's forward instead of the whole sequence's (nanochat `engine.py` `KVCache`, litgpt
`KVCache`, Hugging Face `DynamicCache` keep the same tensors).

    cache = KVCache(model.config, batch_size=4, max_length=512, device=device, dtype=torch.float32)
    logits, _ = model(prompt_ids, cache=cache)   # prefill: (B, T) ids, cache.length becomes T
    logits, _ = model(next_ids, cache=cache)     # decode: (B, 1) ids, one position more

The cache also keeps the ids (the document boundaries of the keys come from their EOT ids, model/attention.py) and
which keys are real: a batch of prompts of different lengths is left-padded, and `valid` is False on the pads.
`model.generate` drives it.
"""

from __future__ import annotations

import torch

from model.config import ModelConfig


class KVCache:
    """Preallocated (n_layer, B, n_head, max_length, head_dim) keys and values; positions [0, length) are filled."""

    def __init__(self, config: ModelConfig, batch_size: int, max_length: int, device: torch.device | str,
                 dtype: torch.dtype):
        if max_length > config.block_size:
            raise ValueError(f"KVCache: max_length {max_length} exceeds model.block_size {config.block_size}, the "
                             "longest sequence the model was trained on")
        shape = (config.n_layer, batch_size, config.n_head, max_length, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.ids = torch.zeros((batch_size, max_length), dtype=torch.long, device=device)
        self.valid = torch.ones((batch_size, max_length), dtype=torch.bool, device=device)
        """False on left padding: no real query reads those keys."""
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)
        """Left-padding length per row (absolute positions of the gpt2 ablation start after it)."""
        self.length = 0
        self.max_length = max_length

    def begin(self, idx: torch.Tensor) -> int:
        """Record the ids of the next forward; returns the position its first token takes."""
        start, t = self.length, idx.shape[1]
        if start + t > self.max_length:
            raise ValueError(f"KVCache: {start} cached + {t} new positions exceed its max_length {self.max_length}")
        self.ids[:, start:start + t] = idx
        return start

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s new keys/values (B, H, T, D) at [start, start + T); return all of [0, start + T)."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def end(self, t: int) -> None:
        self.length += t
