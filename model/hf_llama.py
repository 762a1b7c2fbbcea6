"""The Hugging Face `LlamaForCausalLM` view of our model: parameter names, config and generation config.

A state-dict adapter beside the model it adapts (torchtitan's `state_dict_adapter.py`): the two fused projections
split into rows (`attention.wqkv` -> q/k/v, `feed_forward.w13` -> gate/up, `model.transformer.split_fused`) and a
rename table (our names follow Meta's LLaMA code; RoPE already uses Hugging Face's rotate-half layout), so no weight
is permuted or recomputed. `launcher/export.py` writes these with the tokenizer into an export directory.
"""

from __future__ import annotations

import re

import torch

from model.config import EOT_ID, ModelConfig
from model.transformer import split_fused

# our name (regex) -> Hugging Face name
RENAMES = [
    (r"tok_embeddings\.weight", "model.embed_tokens.weight"),
    (r"layers\.(\d+)\.attention\.wq\.(weight|bias)", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"layers\.(\d+)\.attention\.wk\.(weight|bias)", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"layers\.(\d+)\.attention\.wv\.(weight|bias)", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"layers\.(\d+)\.attention\.wo\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"layers\.(\d+)\.feed_forward\.w1\.(weight|bias)", r"model.layers.\1.mlp.gate_proj.\2"),
    (r"layers\.(\d+)\.feed_forward\.w3\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
    (r"layers\.(\d+)\.feed_forward\.w2\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
    (r"layers\.(\d+)\.attention_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"layers\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
]


def hf_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    raise ValueError(f"no Hugging Face name for parameter '{name}'; add it to RENAMES in model/hf_llama.py")


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict:
    # LlamaConfig's attention_bias/mlp_bias cover q/k/v/o and gate/up/down; our one bias flag maps onto both.
    bias = config.bias
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        # transformers >= 5 reads rope_parameters; older releases read rope_theta. Both are written.
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        "attention_bias": bias,
        "mlp_bias": bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def hf_state_dict(model: torch.nn.Module, config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face names, in `dtype` (a tied lm_head is left out: HF re-ties it)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if config.tie_weights and name == "output.weight":
            continue  # tied: Hugging Face re-ties lm_head to embed_tokens from tie_word_embeddings
        for part, piece in split_fused(name, tensor).items():
            state[hf_name(part)] = piece.to(dtype).contiguous()
    return state


def hf_generation_config(config: ModelConfig) -> dict:
    # The embedding's padding ids (50257..vocab_size-1) stand for no text: HF generate never picks them, as ours
    # (model/generate.py) never does.
    return {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID,
            "suppress_tokens": list(range(EOT_ID + 1, config.vocab_size))}
