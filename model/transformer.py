"""The LLaMA-2-style decoder: RMSNorm, RoPE, causal attention, SwiGLU, pre-norm blocks, tied embeddings.

`ModelConfig.arch = "gpt2"` builds the spec's old architecture from the same blocks for the ablation
(`scripts/experiments/ablation_tiny.py`): learned absolute positions (`pos_embeddings`), LayerNorm and a GELU MLP
(`feed_forward.w1`/`w2`, hidden 4 * n_embd), everything else (attention, pre-norm, init, tying) shared.

A pure `nn.Module`, bottom-up. Parameter names follow the Meta/torchtitan LLaMA code (`wq wk wv wo`, `w1 w2 w3`,
`attention_norm`, `ffn_norm`), so the export to Hugging Face `LlamaForCausalLM` is a rename table
(`scripts/export_hf.py`). RoPE uses Hugging Face's "rotate half" layout (not the interleaved complex one) for the
same reason: exported weights need no permutation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.kernels import rms_norm, swiglu


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, fused: bool):
        super().__init__()
        self.eps = eps
        self.impl = "auto" if fused else "torch"
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, impl=self.impl)

    def reset_parameters(self):
        nn.init.ones_(self.weight)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, computed in fp32 and cached per (length, device).

    Deliberately not registered as buffers: DeepSpeed's bf16 mode casts every floating buffer of the module to
    bf16, and angles t * inv_freq for t up to 1024 lose most of their precision in bf16.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, device)
        if key not in self._cache:
            inv_freq = 1.0 / (
                self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim)
            )
            angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)  # (T, head_dim), HF layout: both halves share a frequency
            self._cache[key] = (angles.cos(), angles.sin())
        return self._cache[key]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, n_head, head_dim); cos/sin: (T, head_dim) fp32. Rotated in fp32, returned in x's dtype."""
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        d = config.n_embd
        self.wq = nn.Linear(d, d, bias=config.bias)
        self.wk = nn.Linear(d, d, bias=config.bias)
        self.wv = nn.Linear(d, d, bias=config.bias)
        self.wo = nn.Linear(d, d, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim)  # (B, T, n_head, head_dim)
        k = self.wk(x).view(B, T, self.n_head, self.head_dim)
        v = self.wv(x).view(B, T, self.n_head, self.head_dim)
        if cos is not None:  # gpt2 has no RoPE: its positions were added to the input embedding
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, n_head, T, head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, n_embd)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.ffn_hidden
        self.w1 = nn.Linear(config.n_embd, hidden, bias=config.bias)  # gate
        self.w3 = nn.Linear(config.n_embd, hidden, bias=config.bias)  # up
        self.w2 = nn.Linear(hidden, config.n_embd, bias=config.bias)  # down
        self.impl = "auto" if config.fused_kernels else "torch"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(swiglu(self.w1(x), self.w3(x), impl=self.impl)))


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


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

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, logits_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids. Returns logits (B, T, vocab_size) and, with targets (B, T), the mean
        cross-entropy over targets != -1 (computed in fp32). With `logits_index` (B, K) positions, only the logits
        at those positions are computed, (B, K, vocab_size): generation and probes need a few positions, and the
        vocabulary projection of every position dominates the cost of a small model."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size {self.config.block_size}")
        if self.rotary is None:  # gpt2: learned absolute positions added to the token embedding
            cos = sin = None
            x = self.tok_embeddings(idx) + self.pos_embeddings(torch.arange(T, device=idx.device))
            x = self.dropout(x)  # (B, T, n_embd)
        else:
            cos, sin = self.rotary(T, idx.device)
            x = self.dropout(self.tok_embeddings(idx))  # (B, T, n_embd)
        for layer in self.layers:
            x = layer(x, cos, sin)
        if logits_index is not None:
            x = x.gather(1, logits_index[..., None].expand(-1, -1, x.size(-1)))  # (B, K, n_embd)
        logits = self.output(self.norm(x))  # (B, T or K, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
