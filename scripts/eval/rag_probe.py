"""Retrieval and induction probes on a checkpoint: a GOLD checkpoint directory or its Hugging Face export.

Usage:
    python scripts/eval/rag_probe.py checkpoints/unified_v1_llama/gold
    python scripts/eval/rag_probe.py exports/unified_v1_llama                      # the HF export: same numbers
    python scripts/eval/rag_probe.py CHECKPOINT --per-bucket 32 --json out/probe.json --show 3 --device cuda

CHECKPOINT is either a directory written by `model.io.save_model_checkpoint` (model.safetensors +
model_config.json, e.g. `checkpoints/<model_name>/gold`) or a Hugging Face directory with a `config.json` of
model_type "llama" (written by `scripts/export_hf.py`). Both run the same probe code (`launcher/probes/`); the
HF model is only a different source of logits. Prints, per position bucket of the context window, the exact match
of the greedy answer and the answer's mean log-likelihood with and without the passage holding it; then the
summaries (mean accuracy, worst/best bucket, position invariance), the share of unanswerable prompts answered
"not in the context", and the induction score. See docs/PROBES.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from data.atomic import atomic_write_text
from data.tokenizer import get_tokenizer
from launcher.checkpointing import load_model_or_export
from launcher.probes import NUM_BUCKETS, PROBE_SEED, build_probes, finalize, probe_sums
from launcher.run_log import json_safe


def probe_checkpoint(path: str | Path, device: str = "cpu", per_bucket: int = 16, unanswerable: int = 4,
                     induction: int = 32, seed: int = PROBE_SEED, batch_size: int = 8
                     ) -> tuple[dict[str, float], list[dict], str]:
    model, block_size, kind = load_model_or_export(path, device)
    probes = build_probes(get_tokenizer(), block_size, seed=seed, induction_count=induction, per_bucket=per_bucket,
                          unanswerable_per_bucket=unanswerable)
    details: list[dict] = []
    sums = probe_sums(model, probes, 0, 1, torch.device(device), batch_size, details=details)
    return finalize(probes, sums), details, f"{kind}; block_size {block_size}; {probes.describe()}"


def format_report(metrics: dict[str, float], edges: list[int] | None = None) -> str:
    def f(v: float, spec: str = ".3f") -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    m = {k.removeprefix("probe/"): v for k, v in metrics.items()}
    lines = ["bucket | exact match | LL with passage | LL without | gain", "--- | --- | --- | --- | ---"]
    for b in range(NUM_BUCKETS):
        w, wo = m[f"retrieval_ll_with_b{b}"], m[f"retrieval_ll_without_b{b}"]
        lines.append(f"{b} | {f(m[f'retrieval_em_b{b}'], '.2f')} | {f(w)} | {f(wo)} | {f(w - wo)}")
    lines += [
        f"mean exact match {f(m['retrieval_em'])}; worst bucket {f(m['retrieval_em_worst_bucket'], '.2f')}, best "
        f"{f(m['retrieval_em_best_bucket'], '.2f')}, position invariance (worst/best) "
        f"{f(m['retrieval_position_invariance'], '.2f')}",
        f"answer log-likelihood with passage {f(m['retrieval_ll_with'])}, without {f(m['retrieval_ll_without'])}, "
        f"gain {f(m['retrieval_ll_gain'])}",
        f"unanswerable answered 'not in the context': {f(m['unanswerable_not_in_context'], '.2f')}",
        f"induction score {f(m['induction_score'])} (loss first copy {f(m['induction_loss_first'])}, second "
        f"{f(m['induction_loss_second'])})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="GOLD checkpoint directory or Hugging Face llama export directory")
    parser.add_argument("--per-bucket", type=int, default=16, help="answerable prompts per position bucket")
    parser.add_argument("--unanswerable", type=int, default=4, help="unanswerable prompts per position bucket")
    parser.add_argument("--induction", type=int, default=32, help="repeated random-token sequences")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help="probe generator seed (not the training seed)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    parser.add_argument("--json", help="also write the metrics and per-prompt details to this JSON file")
    parser.add_argument("--show", type=int, default=0, help="print this many example prompts' answers")
    args = parser.parse_args(argv)
    if min(args.per_bucket, args.induction) <= 0 or args.unanswerable < 0:
        raise SystemExit("rag_probe: --per-bucket and --induction must be positive, --unanswerable >= 0")
    try:
        metrics, details, what = probe_checkpoint(args.checkpoint, args.device, args.per_bucket, args.unanswerable,
                                                  args.induction, args.seed, args.batch_size)
    except ValueError as e:
        raise SystemExit(f"rag_probe: {e}") from None
    print(f"{args.checkpoint}: {what}")
    print(format_report(metrics))
    for d in details[: args.show]:
        print(f"  [{d['id']} bucket {d['bucket']}] gold {d['answer']!r} greedy {d['greedy']!r} "
              f"{'OK' if d['correct'] else 'wrong'}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Strict JSON has no NaN: an undefined metric (e.g. invariance when every bucket scores 0) is null.
        record = {"checkpoint": str(args.checkpoint), "metrics": metrics, "details": details}
        atomic_write_text(out, json.dumps(json_safe(record), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
