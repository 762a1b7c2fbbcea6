"""The LLaMA-2-style decoder: RMSNorm, RoPE, document-isolated causal attention, SwiGLU, pre-norm blocks, tied
embeddings.

`ModelConfig.arch = "gpt2"` builds the GPT-2 architecture from the same blocks for the ablation
(`scripts/experiments/ablation_tiny.py`): learned absolute positions (`pos_embeddings`), LayerNorm and a GELU MLP
(`feed_forward.w1`/`w2`, hidden 4 * n_embd), everything else (attention, pre-norm, init, tying) shared.

A pure `nn.Module`, bottom-up. Parameter names follow the Meta/torchtitan LLaMA code (`wo`, `w2`, `attention_norm`,
`ffn_norm`), with two fused projections: `attention.wqkv` is q, k and v stacked row-wise (one GEMM instead of three)
and `feed_forward.w13` is w1 (gate) and w3 (up) stacked row-wise (one GEMM instead of two). The export to Hugging Face
`LlamaForCausalLM` (`scripts/export_hf.py`) splits them back by rows; `split_fused` / `fuse_unfused` below are that
one mapping, used by the export and by `model.io` to load checkpoints written before the fusion. RoPE uses Hugging
Face's "rotate half" layout (not the interleaved complex one) for the same reason: exported weights need no
permutation.

Attention reads only earlier tokens of the query's own document, the boundaries taken from the EOT ids of `idx`
(`model.attention`, "document"; "causal" reads the whole packed row): `model/attention.py` builds the mask once per
forward and picks the kernel.

Every residual add is fused into the norm that reads its sum (`add_and_norm`, the kernel `rms_norm_residual`): a
block takes and returns `(delta, residual)` instead of one tensor, and computes exactly what `x = x + sublayer(norm(x))`
computes.

With targets, the loss is `model.loss.chunked_linear_cross_entropy`: the (B, T, vocab) logits are never
materialized (their fp32 copy alone is 2.5 GB at micro-batch 12 x 1024), and `forward` returns `None` for them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import AttentionMask, attend, build_attention_mask
from model.config import EOT_ID, ModelConfig
from model.kernels import rms_norm, rms_norm_residual, swiglu
from model.kv_cache import KVCache
from model.loss import chunked_linear_cross_entropy, chunked_token_losses

# Fused parameter -> the unfused parameters it stacks, in row order (each n_embd or ffn_hidden rows).
FUSED_PARAMETERS = {"attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
                    "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3")}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, fused: bool):
        super().__init__()
        self.eps = eps
        self.impl = "auto" if fused else "torch"
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, impl=self.impl)

    def add_and_norm(self, delta: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + delta), residual + delta) in one fused kernel on the Triton path."""
        return rms_norm_residual(delta, residual, self.weight, self.eps, impl=self.impl)

    def reset_parameters(self):
        nn.init.ones_(self.weight)


def add_and_norm(norm: nn.Module, delta: torch.Tensor | None,
                 residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add of a pre-norm sublayer and the next norm: `(norm(h), h)` with `h = residual + delta`
    (`delta` None: nothing to add yet, h is the embedding). RMSNorm does both in one fused kernel
    (`model.kernels.rms_norm_residual`: h is written once and never read back for the norm); LayerNorm (gpt2) adds
    in eager. Both give exactly what `x = x + sublayer(...)` followed by `norm(x)` gives: the sum is rounded to the
    activation dtype once, and IEEE addition is commutative."""
    if delta is None:
        return norm(residual), residual
    if isinstance(norm, RMSNorm):
        return norm.add_and_norm(delta, residual)
    h = residual + delta
    return norm(h), h


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, (T, head_dim / 2) each, cached per (length, device, dtype).

    The angles t * inv_freq and their cos/sin are always computed in fp32 (angles up to 1024 lose most of their
    precision in bf16) and then cast once to the activation dtype, as Hugging Face Llama does
    (transformers models/llama/modeling_llama.py, LlamaRotaryEmbedding.forward: `cos.to(dtype=x.dtype)`). Deliberately
    not registered as buffers: DeepSpeed's bf16 mode casts every floating buffer to bf16 before the angles are taken.
    Only half the width is stored: in the HF layout both halves of a head share one frequency.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, seq_len: int, device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, torch.device(device), dtype)
        if key not in self._cache:
            inv_freq = 1.0 / (
                self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim)
            )
            angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)  # (T, hd/2)
            self._cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._cache[key]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in x's dtype. x: (..., T, n_head, head_dim); cos/sin: (T, head_dim / 2).

    Equal to HF's `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)`, written on the two halves so nothing is
    concatenated but the result: no fp32 copy of q and k, no negated copy, no full-width tables.
    """
    cos = cos[:, None, :]  # (T, 1, head_dim / 2), broadcast over batch and heads
    sin = sin[:, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        d = config.n_embd
        self.wqkv = nn.Linear(d, 3 * d, bias=config.bias)  # rows: wq, wk, wv (see FUSED_PARAMETERS)
        self.wo = nn.Linear(d, d, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                mask: AttentionMask, kv: tuple[KVCache, int, int] | None = None) -> torch.Tensor:
        """`kv`: (cache, this layer's index, the first new position) when decoding with a KV cache: the new keys and
        values are stored, and the queries read every cached one."""
        B, T, C = x.shape
        qkv = self.wqkv(x).view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, n_head, head_dim)
        if cos is None:  # gpt2 has no RoPE: its positions were added to the input embedding
            q, k, v = qkv.unbind(2)
        else:  # q and k rotated in one call: (B, T, 2, n_head, head_dim)
            q, k = apply_rotary(qkv[:, :, :2].transpose(1, 2), cos, sin).transpose(1, 2).unbind(2)
            v = qkv[:, :, 2]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, head_dim)
        if kv is not None:
            cache, layer, start = kv
            k, v = cache.update(layer, start, k, v)  # (B, n_head, start + T, head_dim)
        y = attend(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, n_embd)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x), with w1 and w3 as one (2 * hidden, n_embd) GEMM `w13`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.ffn_hidden
        self.w13 = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # rows: w1 (gate), w3 (up)
        self.w2 = nn.Linear(hidden, config.n_embd, bias=config.bias)  # down
        self.impl = "auto" if config.fused_kernels else "torch"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)  # row-strided views; the fused SwiGLU kernel takes them as they are
        return self.dropout(self.w2(swiglu(gate, up, impl=self.impl)))


class GeluFeedForward(nn.Module):
    """GPT-2's MLP: w2(gelu(w1 x)), hidden 4 * n_embd, tanh-approximated GELU as in GPT-2 ("gelu_new")."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.n_embd, config.ffn_hidden, bias=config.bias)  # GPT-2's c_fc
        self.w2 = nn.Linear(config.ffn_hidden, config.n_embd, bias=config.bias)  # GPT-2's c_proj
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.gelu(self.w1(x), approximate="tanh")))


def make_norm(config: ModelConfig) -> nn.Module:
    if config.arch == "gpt2":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    return RMSNorm(config.n_embd, config.norm_eps, config.fused_kernels)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = make_norm(config)
        self.attention = Attention(config)
        self.ffn_norm = make_norm(config)
        self.feed_forward = GeluFeedForward(config) if config.arch == "gpt2" else FeedForward(config)

    def forward(self, delta: torch.Tensor | None, residual: torch.Tensor, cos: torch.Tensor | None,
                sin: torch.Tensor | None, mask: AttentionMask,
                kv: tuple[KVCache, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pre-norm block, `x = x + attention(norm(x)); x = x + feed_forward(norm(x))`, written in the
        (delta, residual) form of FlashAttention's `Block` (Dao-AILab/flash-attention, flash_attn/modules/block.py,
        `prenorm=True`): the block takes the previous sublayer's output `delta` not yet added to the residual stream
        and returns its own, so every residual add is fused into the norm that reads its sum (`add_and_norm`). The
        stream after this block is `residual + delta` of the returned pair; `delta` is None before the first block.
        """
        normed, residual = add_and_norm(self.attention_norm, delta, residual)
        delta = self.attention(normed, cos, sin, mask, kv)
        normed, residual = add_and_norm(self.ffn_norm, delta, residual)
        return self.feed_forward(normed), residual


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        if config.arch == "gpt2":
            self.pos_embeddings = nn.Embedding(config.block_size, config.n_embd)  # GPT-2's wpe
        self.dropout = nn.Dropout(config.dropout)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.arch == "llama" else None
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.output = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.output.weight = self.tok_embeddings.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """LLaMA/GPT-2 style: N(0, init_std) everywhere, residual output projections (wo, w2) scaled by
        1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth; norm gains 1, biases 0."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith("attention.wo") or name.endswith("feed_forward.w2")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                module.reset_parameters()

    def num_params(self) -> int:
        """Parameters counted once each (the tied embedding/lm_head is one tensor)."""
        return sum(p.numel() for p in self.parameters())

    def attention_mask(self, idx: torch.Tensor, dtype: torch.dtype) -> AttentionMask:
        """What every layer attends with for the rows `idx` (model/attention.py): the document boundaries are read
        from the EOT ids, so training, eval, probes and generation all see the same attention."""
        c = self.config
        return build_attention_mask(idx, c.attention, c.attention_backend, c.dropout, dtype, EOT_ID)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, logits_index: torch.Tensor | None = None,
        cache: KVCache | None = None, per_token: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids. Without targets, returns (logits (B, T, vocab_size), None). With targets (B, T),
        returns (None, the mean cross-entropy over targets != -1), computed in fp32 by the chunked linear +
        cross-entropy without materializing the logits. With `logits_index` (B, K) positions (no targets), only the
        logits at those positions are computed, (B, K, vocab_size): generation and probes need a few positions, and
        the vocabulary projection of every position dominates the cost of a small model. With `cache`
        (model/kv_cache.py), `idx` continues the cached ids: positions start at `cache.length`, the queries read the
        cached keys too, and the new keys and values are stored (`model.generate` drives it). `per_token` (with
        targets, no grad): the loss of every position (B, T) fp32 instead of the mean, 0 where the target is -1
        (evaluation's bits per byte)."""
        B, T = idx.shape
        start = 0 if cache is None else cache.begin(idx)
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds model.block_size {self.config.block_size}")
        if self.rotary is None:  # gpt2: learned absolute positions added to the token embedding
            cos = sin = None
            pos = torch.arange(start, start + T, device=idx.device)
            if cache is not None:  # left padding: each row's positions count from its first real token
                pos = (pos[None, :] - cache.pad[:, None]).clamp(min=0)  # (B, T)
            x = self.tok_embeddings(idx) + self.pos_embeddings(pos)
            x = self.dropout(x)  # (B, T, n_embd)
        else:
            x = self.dropout(self.tok_embeddings(idx))  # (B, T, n_embd)
            # RoPE scores depend on distance only, so left padding needs no per-row positions.
            cos, sin = (t[start:] for t in self.rotary(start + T, idx.device, x.dtype))  # (T, head_dim / 2) each
        if cache is None:
            mask = self.attention_mask(idx, x.dtype)  # once per forward, shared by every layer
        else:
            c = self.config
            mask = build_attention_mask(idx, c.attention, c.attention_backend, c.dropout, x.dtype, EOT_ID,
                                        cache_ids=cache.ids[:, :start], key_valid=cache.valid[:, :start + T])
        delta = None  # each block's last sublayer output, added to the stream by the next norm (see TransformerBlock)
        for i, layer in enumerate(self.layers):
            delta, x = layer(delta, x, cos, sin, mask, None if cache is None else (cache, i, start))
        if cache is not None:
            cache.end(T)
        if targets is not None:
            if logits_index is not None:
                raise ValueError("pass either targets (training loss) or logits_index (a few positions' logits)")
            h, _ = add_and_norm(self.norm, delta, x)
            if per_token:
                return None, chunked_token_losses(h.flatten(0, 1), self.output.weight, targets.reshape(-1)).view(B, T)
            return None, chunked_linear_cross_entropy(h.flatten(0, 1), self.output.weight, targets.reshape(-1))
        if logits_index is not None:
            x = x if delta is None else x + delta  # a few positions: add, then gather, then norm only those
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.size(-1)))  # (B, K, n_embd)
            return self.output(self.norm(x)), None  # (B, K, vocab_size)
        h, _ = add_and_norm(self.norm, delta, x)
        return self.output(h), None  # (B, T, vocab_size)


def split_fused(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """`layers.3.attention.wqkv.weight` -> {`layers.3.attention.wq.weight`: rows 0..d-1, ...}; other names as they
    are. The inverse of `fuse_unfused`, used by the Hugging Face export."""
    for fused, parts in FUSED_PARAMETERS.items():
        marker = f".{fused}."
        if marker in name:
            pieces = tensor.chunk(len(parts), dim=0)
            return {name.replace(marker, f".{part}."): piece for part, piece in zip(parts, pieces, strict=True)}
    return {name: tensor}


def fuse_unfused(state_dict: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], int]:
    """A state dict with separate wq/wk/wv and w1/w3 (checkpoints written before the fusion) in today's layout, for
    a model whose state-dict names are `expected`, and how many fused tensors were built. Tensors are concatenated
    row-wise in `FUSED_PARAMETERS` order, so the model computes exactly what it computed with the separate ones.
    Only fused names in `expected` are built (the gpt2 ablation's `feed_forward.w1` is a plain GELU input)."""
    out = dict(state_dict)
    built = 0
    for target in sorted(expected - set(state_dict)):
        for fused, parts in FUSED_PARAMETERS.items():
            marker = f".{fused}."
            if marker not in target:
                continue
            names = [target.replace(marker, f".{part}.") for part in parts]
            if not all(n in state_dict for n in names):
                continue  # left for the caller's missing-key error, which names it
            out[target] = torch.cat([state_dict[n] for n in names], dim=0)
            for n in names:
                del out[n]
            built += 1
    return out, built
