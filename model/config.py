"""Model configuration: the architecture of the LLaMA-2-style decoder, loaded from the `model` section of a
training config JSON.

Every field is documented once, here; `README.md`'s config reference is checked against these docstrings by a
test so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# tiktoken's GPT-2 encoding has 50257 ids (EOT = 50256). The model's vocabulary may be larger (padded to a
# multiple of 64 for tensor-core friendly shapes) but never smaller, or some token ids would index past the
# embedding table.
GPT2_TOKENIZER_VOCAB = 50257
# GPT-2's <|endoftext|>, the last of its ids: every document ends with it, so document-isolated attention finds the
# boundaries of a packed row from the ids alone (model/attention.py). data/tokenizer.py's EOT, read from tiktoken, is
# the same id (tests/test_attention.py).
EOT_ID = GPT2_TOKENIZER_VOCAB - 1
# The architectures `Transformer` builds: the LLaMA-2-style model and the GPT-2 model it replaces (an ablation).
ARCHS = ("llama", "gpt2")
# What a query may read (model/attention.py): its own document, or the whole packed row.
ATTENTION_KINDS = ("document", "causal")
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")


def dataclass_from_dict(cls, values: dict[str, Any], where: str):
    """Build dataclass `cls` from `values`, rejecting unknown keys and reporting missing required ones.

    `where` names the config section in error messages ("model", "optim", ...).
    """
    if not isinstance(values, dict):
        raise ValueError(f"config section '{where}' must be a JSON object, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in config section '{where}'; known keys are {sorted(known)}. "
            "Remove or rename them."
        )
    missing = [
        name
        for name, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in values
    ]
    if missing:
        raise ValueError(f"config section '{where}' is missing required field(s) {missing}; add them.")
    return cls(**values)


@dataclass
class ModelConfig:
    """Architecture of the decoder. Defaults are the base config's 750M model (698,860,800 parameters)."""

    n_embd: int = 1280
    """Width of the residual stream (hidden size)."""
    n_head: int = 20
    """Attention heads; head_dim = n_embd / n_head (64 in the base config, the usual choice for RoPE)."""
    n_layer: int = 32
    """Transformer blocks."""
    block_size: int = 1024
    """Context length in tokens; also the longest sequence RoPE tables are built for."""
    vocab_size: int = 50304
    """Embedding rows: GPT-2's 50257 ids padded up to a multiple of 64. Must be >= 50257."""
    dropout: float = 0.1
    """Dropout on attention probabilities, residual branches and embeddings during training."""
    bias: bool = False
    """Biases in linear layers. LLaMA uses none; Hugging Face export requires False."""
    tie_weights: bool = True
    """Share the token embedding with the output projection (lm_head)."""
    ffn_multiple_of: int = 64
    """SwiGLU hidden size = 2/3 * 4 * n_embd rounded up to a multiple of this (1280 -> 3456)."""
    rope_theta: float = 10000.0
    """RoPE base frequency (LLaMA-2 uses 10000)."""
    norm_eps: float = 1e-5
    """Epsilon inside RMSNorm's square root (LLaMA-2 uses 1e-5)."""
    fused_kernels: bool = True
    """Use the fused Triton RMSNorm/SwiGLU kernels where they can run (CUDA); the PyTorch reference elsewhere."""
    compile: bool = False
    """`torch.compile` each transformer block (in place, so parameter names and checkpoints are unchanged) before
    DeepSpeed wraps the model. Off by default: compiling takes minutes at start, and the first GPU session measures
    whether it pays (scripts/bench/gpu_report.py). DeepSpeed's own ds_config `compile` section is refused."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init; residual output projections get init_std/sqrt(2*n_layer)."""
    attention: str = "document"
    """"document": a token attends only to earlier tokens of its own document, the boundaries read from the EOT ids
    of the input (model/attention.py; docs/TRAINING.md, "Document-isolated attention"). "causal": every earlier token
    of the packed row, across documents (the model before document isolation; for ablations and for checkpoints
    trained that way)."""
    attention_backend: str = "auto"
    """The attention kernel for "document": "auto" (SDPA with a mask on the CPU and wherever dropout > 0,
    FlexAttention on CUDA at dropout 0), "sdpa" or "flex" to force one. Computes the same numbers either way, so it
    is not part of the run's fingerprint. "causal" always runs SDPA's causal flash path."""
    arch: str = "llama"
    """"llama" (RoPE, SwiGLU, RMSNorm) or "gpt2", the GPT-2 architecture kept as an ablation: learned absolute
    positions, GELU MLP of 4 * n_embd, LayerNorm (with biases when `bias`); no fused kernels."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {list(ARCHS)}, got {self.arch!r}")
        for name in ("n_embd", "n_head", "n_layer", "block_size", "vocab_size", "ffn_multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"for example n_head = {self.n_embd // 64} gives head_dim 64"
            )
        if self.arch == "llama" and self.head_dim % 2 != 0:
            raise ValueError(f"head_dim = n_embd / n_head = {self.head_dim} must be even for RoPE; change n_head")
        if self.vocab_size < GPT2_TOKENIZER_VOCAB:
            raise ValueError(
                f"model.vocab_size ({self.vocab_size}) is smaller than the GPT-2 tokenizer's {GPT2_TOKENIZER_VOCAB} "
                "ids; use 50304 (50257 padded to a multiple of 64)"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"model.attention must be one of {list(ATTENTION_KINDS)}, got {self.attention!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention_backend must be one of {list(ATTENTION_BACKENDS)}, got "
                             f"{self.attention_backend!r}")
        if self.attention_backend == "flex" and self.dropout > 0:
            raise ValueError(f"model.attention_backend 'flex': FlexAttention takes no dropout, and model.dropout is "
                             f"{self.dropout}; set model.dropout to 0, or model.attention_backend to 'sdpa' or 'auto'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"model.compile must be true or false, got {self.compile!r}")
        if self.norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ValueError("model.norm_eps, model.rope_theta and model.init_std must be positive")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """MLP hidden size. SwiGLU: LLaMA's 2/3 * 4 * d keeps the parameter count of a 4d GELU MLP with 3 matrices;
        gpt2: 4 * d."""
        if self.arch == "gpt2":
            return 4 * self.n_embd
        hidden = int(2 * 4 * self.n_embd / 3)
        return self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)

    def expected_num_params(self) -> int:
        """Closed-form parameter count (tied embeddings counted once)."""
        d, f = self.n_embd, self.ffn_hidden
        if self.arch == "gpt2":
            # attention 4 d^2, MLP 2 d f, two LayerNorms; biases on the six linears and the norms when `bias`.
            per_layer = 4 * d * d + 2 * d * f + 2 * d
            if self.bias:
                per_layer += 4 * d + f + d + 2 * d
            final_norm = 2 * d if self.bias else d
            embed = self.vocab_size * d + self.block_size * d  # tokens + learned positions
            head = 0 if self.tie_weights else self.vocab_size * d
            return self.n_layer * per_layer + final_norm + embed + head
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        embed = self.vocab_size * d
        head = 0 if self.tie_weights else self.vocab_size * d
        biases = 0
        if self.bias:
            biases = self.n_layer * (4 * d + 2 * f + d)
        return self.n_layer * per_layer + d + embed + head + biases

    # Serialisation ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return dataclass_from_dict(cls, values, "model")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """Load from a JSON file holding either a bare model config or a training config with a `model` section."""
        with open(path) as f:
            values = json.load(f)
        if "model" in values and isinstance(values["model"], dict):
            values = values["model"]
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["ModelConfig", "ARCHS", "ATTENTION_BACKENDS", "ATTENTION_KINDS", "EOT_ID", "GPT2_TOKENIZER_VOCAB",
           "dataclass_from_dict"]
