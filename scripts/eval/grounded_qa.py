"""Grounded QA on a checkpoint or an export: SQuAD v2 EM/F1 and unanswerable handling on the held-out QA items.

Usage:
    python scripts/eval/grounded_qa.py checkpoints/unified_v1_llama/gold data/retrieval_eval_tokenized
    python scripts/eval/grounded_qa.py exports/unified_v1_llama data/retrieval_eval_tokenized --count 500
    python scripts/eval/grounded_qa.py checkpoints/unified_v1_llama/step_20000 data/demo/retrieval_eval_tokenized \
        --json out/qa.jsonl --show 5 --device cuda

CHECKPOINT is a GOLD checkpoint, a complete step_<N> folder, or a Hugging Face export (scripts/export_hf.py).
ITEMS is an eval set directory holding the `qa_items.jsonl` the build wrote (data/qa_items.py), or that file. The
items are those the training never saw (held back before tokenization). `--count N` scores the same fixed subset
the trainer scores at each eval when N equals `eval.qa_items` and `--seed` its `eval.eval_seed` (both defaults);
`--count 0` scores every item. Prints EM and F1 over all items (SQuAD v2's headline numbers), over the answerable
ones, the share of unanswerable questions answered "The answer is not in the context.", and the share answered with
something else; docs/AFTER_TRAINING.md (section 4) says how to read them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from data.atomic import atomic_write_text
from data.qa_items import QA_ITEMS_FILE, fixed_subset, read_qa_items
from launcher.checkpointing import load_model_or_export
from launcher.config import EvalConfig
from launcher.grounded_qa import score_items


def format_report(metrics: dict[str, float]) -> str:
    def pct(key: str) -> str:
        v = metrics[key]
        return "-" if v != v else f"{100 * v:.1f}"

    rows = [("EM (all items)", pct("exact")), ("F1 (all items)", pct("f1")),
            ("EM answerable", pct("answerable_exact")), ("F1 answerable", pct("answerable_f1")),
            ("answerable answered 'not in the context'", pct("answerable_abstained")),
            ("unanswerable answered 'not in the context'", pct("no_answer_not_in_context")),
            ("unanswerable answered with something else", pct("no_answer_answered_otherwise"))]
    width = max(len(name) for name, _ in rows)
    lines = [f"{int(metrics['items'])} items ({int(metrics['answerable'])} answerable, "
             f"{int(metrics['unanswerable'])} unanswerable; {int(metrics['too_long'])} too long for the block, "
             "not scored)"]
    lines += [f"  {name:<{width}}  {value:>5} %" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="GOLD checkpoint, step_<N> folder or Hugging Face export")
    p.add_argument("items", type=Path, help=f"eval set directory with {QA_ITEMS_FILE}, or the file itself")
    p.add_argument("--count", type=int, default=defaults.qa_items,
                   help=f"items to score, a fixed subset (default {defaults.qa_items}, the trainer's eval.qa_items; "
                        "0: all)")
    p.add_argument("--seed", type=int, default=defaults.eval_seed, help="seed of the subset (eval.eval_seed)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="write one JSON line per item (question, answers, prediction, scores)")
    p.add_argument("--show", type=int, default=0, help="print this many items with their predictions")
    args = p.parse_args(argv)
    if args.count < 0:
        p.error(f"--count must be >= 0 (0: every item), got {args.count}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    directory = args.items.parent if args.items.name == QA_ITEMS_FILE else args.items
    try:
        if args.items.is_file() and args.items.name != QA_ITEMS_FILE:
            raise ValueError(f"{args.items} is a file but not {QA_ITEMS_FILE}: pass the eval set directory the "
                             f"build wrote (e.g. data/retrieval_eval_tokenized) or its {QA_ITEMS_FILE}")
        items = read_qa_items(directory)
        if items is None:
            raise ValueError(f"{directory} holds no {QA_ITEMS_FILE}: pass the retrieval eval set directory of a "
                             "build (e.g. data/retrieval_eval_tokenized), or rebuild it with "
                             "scripts/unified_build/build_unified_dataset.py")
        if not items:
            raise ValueError(f"{directory / QA_ITEMS_FILE} holds no items: rebuild the eval set with "
                             "scripts/unified_build/build_unified_dataset.py")
        if not args.checkpoint.is_dir():
            raise ValueError(f"{args.checkpoint} is not a directory (a GOLD checkpoint, step_<N> folder or export)")
        chosen = items if args.count == 0 else fixed_subset(items, args.count, args.seed)
        model, _, _ = load_model_or_export(args.checkpoint, args.device)
    except (ValueError, OSError) as e:  # OSError: transformers' message for an export it cannot load
        raise SystemExit(f"grounded_qa: {e}") from None
    details: list[dict] = []
    metrics = score_items(model, chosen, args.device, batch_size=args.batch_size, details=details)
    print(f"grounded QA of {args.checkpoint} on {directory / QA_ITEMS_FILE}")
    print(format_report(metrics))
    for d in details[: args.show]:
        print(f"--- {d['id']}: {d['question']}\n    gold {d['answers'] or '(unanswerable)'}\n    said "
              f"{d['prediction']!r} (EM {d['exact']:.0f}, F1 {d['f1']:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, "".join(json.dumps(d) + "\n" for d in details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
