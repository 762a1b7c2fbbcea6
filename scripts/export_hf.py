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

CHECKPOINT is a directory with `model.safetensors` + `model_config.json` (written by `model.io`). The library code is
`launcher/export.py` (the directory) and `model/hf_llama.py` (names and config: a row split of the two fused
projections and a rename table, so no weight is permuted or recomputed). The GPT-2 tokenizer is written as a fast
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
import sys

import torch

from launcher.export import export


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
