"""Export a model checkpoint (e.g. GOLD) to a Hugging Face directory that standard tools load as it is.

`export(checkpoint, out_dir, dtype)` writes `model.safetensors`, `config.json` and `generation_config.json`
(`model/hf_llama.py`), the fast tokenizer (`data.tokenizer.save_hf_tokenizer`, built offline from the shipped ranks
file) and `export_metadata.json`, into a temp directory renamed into place when complete. The command line is
`scripts/export_hf.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from data.atomic import replace_dir
from data.tokenizer import save_hf_tokenizer, tokenizer_info
from model.hf_llama import hf_config, hf_generation_config, hf_state_dict
from model.io import load_model_checkpoint


def export(checkpoint: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    model, config, metadata = load_model_checkpoint(checkpoint)
    if config.arch != "llama":
        raise ValueError(
            f"{checkpoint} holds a model.arch={config.arch!r} model (the GPT-2 ablation); only arch 'llama' exports "
            "to LlamaForCausalLM. Evaluate it from the checkpoint directory itself (e.g. scripts/eval/rag_probe.py)."
        )
    state = hf_state_dict(model, config, dtype)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(hf_generation_config(config), indent=2) + "\n")
    tokenizer_files = save_hf_tokenizer(tmp, model_max_length=config.block_size)
    (tmp / "export_metadata.json").write_text(
        json.dumps({"source_checkpoint": str(checkpoint), "source_metadata": metadata, "attention": config.attention,
                    "tokenizer": {**tokenizer_info(), "files": tokenizer_files}},
                   indent=2, default=str) + "\n"
    )
    replace_dir(tmp, out_dir)  # the old export is removed only once the new one is in place
    return out_dir
