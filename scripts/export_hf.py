"""Export a model checkpoint (e.g. the GOLD checkpoint) to a Hugging Face `LlamaForCausalLM` directory.

Usage:
    python scripts/export_hf.py checkpoints/unified_v1_llama/gold exports/unified_v1_llama
    python scripts/export_hf.py CHECKPOINT OUT_DIR --dtype bfloat16

Then, with `transformers` installed (all offline: the export holds the tokenizer too):
    from transformers import AutoTokenizer, LlamaForCausalLM, pipeline
    out = "exports/unified_v1_llama"
    model = LlamaForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)  # GPT-2 BPE, the ids tiktoken gives (data.tokenizer)
    generate = pipeline("text-generation", model=out)
    generate("The capital of France is", do_sample=False, max_new_tokens=8)

CHECKPOINT is a directory with `model.safetensors` + `model_config.json` (written by `model.io`). The export is a
row split of the two fused projections (`attention.wqkv` -> q/k/v, `feed_forward.w13` -> gate/up, by
`model.transformer.split_fused`) and a rename table (our parameter names follow Meta's LLaMA code; RoPE already uses
Hugging Face's rotate-half layout), so no weight is permuted or recomputed. The GPT-2 tokenizer is written as a fast
tokenizer (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`) by `data.tokenizer.save_hf_tokenizer`
from the shipped ranks file: `<|endoftext|>` (50256) is bos, eos and unk, `model_max_length` is the block size, and
there is no pad token (batched generation needs one: set `tokenizer.pad_token = tokenizer.eos_token`, left padding).
The model's vocabulary is padded to 50304: ids 50257.. have no token and are never a training target, but
`generate` ranges over all 50304 logits, so an undertrained model can pick one (it decodes to nothing).

Attention: a model trained with `model.attention` "document" reads only its own document. One document per row
(the usual prompt) needs nothing more: Hugging Face's causal mask is then the same mask. A packed row of several
documents needs `position_ids` that restart after every EOT (`model.attention.document_positions`) and
`use_cache=False`: transformers then masks each document off the others (it looks for packed sequences only when no
attention mask and no KV cache is given, masking_utils.py `_preprocess_mask_arguments`), and RoPE makes the
restarted positions compute the same logits
(tests/test_model.py checks both; docs/TRAINING.md, "Document-isolated attention"). `export_metadata.json` records
which attention the model was trained with.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from data.tokenizer import save_hf_tokenizer, tokenizer_info
from model.config import ModelConfig
from model.io import load_model_checkpoint
from model.transformer import split_fused

EOT_TOKEN_ID = 50256  # GPT-2's <|endoftext|>: documents are separated by it, so it is both BOS and EOS

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
    raise ValueError(f"no Hugging Face name for parameter '{name}'; add it to RENAMES in scripts/export_hf.py")


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
        "bos_token_id": EOT_TOKEN_ID,
        "eos_token_id": EOT_TOKEN_ID,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def export(checkpoint: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    model, config, metadata = load_model_checkpoint(checkpoint)
    if config.arch != "llama":
        raise ValueError(
            f"{checkpoint} holds a model.arch={config.arch!r} model (the GPT-2 ablation); only arch 'llama' exports "
            "to LlamaForCausalLM. Evaluate it from the checkpoint directory itself (e.g. scripts/eval/rag_probe.py)."
        )
    state = {}
    for name, tensor in model.state_dict().items():
        if config.tie_weights and name == "output.weight":
            continue  # tied: Hugging Face re-ties lm_head to embed_tokens from tie_word_embeddings
        for part, piece in split_fused(name, tensor).items():
            state[hf_name(part)] = piece.to(dtype).contiguous()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
    # The embedding's padding ids (50257..vocab_size-1) stand for no text: HF generate never picks them, as ours
    # (model/generate.py) never does.
    generation = {"bos_token_id": EOT_TOKEN_ID, "eos_token_id": EOT_TOKEN_ID,
                  "suppress_tokens": list(range(EOT_TOKEN_ID + 1, config.vocab_size))}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer_files = save_hf_tokenizer(tmp, model_max_length=config.block_size)
    (tmp / "export_metadata.json").write_text(
        json.dumps({"source_checkpoint": str(checkpoint), "source_metadata": metadata, "attention": config.attention,
                    "tokenizer": {**tokenizer_info(), "files": tokenizer_files}},
                   indent=2, default=str) + "\n"
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model checkpoint directory (model.safetensors + model_config.json)")
    parser.add_argument("out_dir", help="output directory for the Hugging Face model (replaced if it exists)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="dtype of the exported weights"
    )
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out_dir, getattr(torch, args.dtype))
    except ValueError as e:
        raise SystemExit(f"export_hf: {e}") from None
    print(f"exported {args.checkpoint} -> {out} (load with LlamaForCausalLM.from_pretrained('{out}'), "
          f"AutoTokenizer.from_pretrained('{out}'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
