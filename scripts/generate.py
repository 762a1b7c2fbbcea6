"""Talk to a trained model: continue prompts, or answer a question from a passage in the training's RAG template.

Usage:
    python scripts/generate.py checkpoints/unified_v1_llama/gold --prompt "def fibonacci(n):" --max-new-tokens 64
    python scripts/generate.py checkpoints/unified_v1_llama/step_20000 --prompt "The capital of" --prompt "SELECT"
    python scripts/generate.py CHECKPOINT --context passage.txt --question "Who founded the company?"
    python scripts/generate.py CHECKPOINT --context passage.txt --question "Q1?" --question "Q2?" --show-prompt
    python scripts/generate.py CHECKPOINT --prompt "Once" --temperature 0.8 --top-p 0.95 --seed 0 --samples 3
    python scripts/generate.py CHECKPOINT --prompt-file prompts.txt --json out.jsonl   # one prompt per line

CHECKPOINT is a GOLD checkpoint (`checkpoints/<model_name>/gold`) or a complete DeepSpeed `step_<N>` folder of the
same run (its fp32 master weights, gathered by DeepSpeed's zero_to_fp32). For the Hugging Face export, use
transformers' own `pipeline("text-generation", model=EXPORT_DIR)` (docs/AFTER_TRAINING.md).

RAG mode (`--context FILE --question ...`) renders `data.formats.render_retrieval(context, question)`, the exact
layout the retrieval documents had in training ("Context:\\n...\\n\\nQuestion: ...\\nAnswer:"), and prints the answer
up to the end of its line; a question whose answer is not in the passage should get "The answer is not in the
context." All prompts (and samples) run as one batch through the KV-cache generator (model/generate.py). Greedy
by default; `--temperature` > 0 samples, with `--top-k` / `--top-p` and `--seed` for a reproducible draw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from data.formats import render_retrieval
from data.tokenizer import EOT, get_tokenizer
from launcher.checkpointing import load_trained_model
from launcher.grounded_qa import line_stop_ids
from model.generate import generate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="GOLD checkpoint directory or a complete step_<N> folder")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to continue (repeatable: one batch)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line (added to --prompt)")
    p.add_argument("--context", help="RAG mode: a text file with the passage to answer from")
    p.add_argument("--question", action="append", default=[], help="RAG mode: a question about --context "
                                                                    "(repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most new tokens per prompt (default 128; RAG 48)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest ids only (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of ids holding this much "
                                                            "probability (1.0: all)")
    p.add_argument("--samples", type=int, default=1, help="completions per prompt (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler (same seed, same samples)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if any")
    p.add_argument("--show-prompt", action="store_true", help="print each rendered prompt before its completion")
    p.add_argument("--json", help="also write one JSON line per completion (prompt, completion, tokens, finish)")
    args = p.parse_args(argv)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            p.error(f"--prompt-file {path} does not exist")
        args.prompt += [line for line in path.read_text().splitlines() if line.strip()]
    if bool(args.context) != bool(args.question):
        p.error("RAG mode needs both --context FILE and at least one --question")
    if args.context and not Path(args.context).is_file():
        p.error(f"--context {args.context} does not exist (pass a text file holding the passage)")
    if not args.prompt and not args.question:
        p.error("nothing to generate: pass --prompt TEXT, --prompt-file FILE or --context FILE --question TEXT")
    if args.samples > 1 and args.temperature <= 0:
        p.error("--samples > 1 needs --temperature > 0 (greedy gives the same completion every time)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tokenizer = get_tokenizer()
    prompts = list(args.prompt)
    rag = [False] * len(prompts)
    if args.context:
        context = Path(args.context).read_text()
        prompts += [render_retrieval(context, q) for q in args.question]
        rag += [True] * len(args.question)
    try:
        model, config, _ = load_trained_model(args.checkpoint, device=args.device)
    except ValueError as e:
        raise SystemExit(f"generate: {e}") from None
    model = model.float().eval()
    ids = [tokenizer.encode(p, allowed_special="all") for p in prompts]
    too_long = [(i, len(x)) for i, x in enumerate(ids) if len(x) >= config.block_size]
    if too_long:
        i, n = too_long[0]
        raise SystemExit(f"generate: prompt {i + 1} is {n} tokens, and the model reads at most {config.block_size} "
                         f"(model.block_size) including its answer; shorten it{' (the --context)' if rag[i] else ''}")
    batch = [x for x in ids for _ in range(args.samples)]
    max_new = args.max_new_tokens if args.max_new_tokens != 128 or not any(rag) else 48
    stops = line_stop_ids(tokenizer) if all(rag) else (EOT,)
    out = generate(model, batch, max_new, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed, stop_ids=stops)
    records = []
    for n, g in enumerate(out):
        i = n // args.samples
        text = tokenizer.decode(g.tokens)
        if rag[i]:
            text = text.split("\n")[0].strip()
        if args.show_prompt:
            print(f"--- prompt {i + 1}\n{prompts[i]}")
        print(f"--- completion {i + 1}{f'.{n % args.samples + 1}' if args.samples > 1 else ''} ({g.finish}, "
              f"{len(g.tokens)} tokens)\n{text}")
        records.append({"prompt": prompts[i], "completion": text, "tokens": g.tokens, "finish": g.finish})
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
