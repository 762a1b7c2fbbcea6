"""Summarise a run's eval log: the first and last eval, every GOLD save and every refused new best.

    python scripts/train_summary.py logs/train/demo_cpu_eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _losses(record: dict) -> str:
    return " ".join(f"{k} {v:.4f}" if v is not None else f"{k} nan" for k, v in record["losses"].items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("eval_log", type=Path, help="the <model_name>_eval.jsonl written by launcher/train.py")
    args = p.parse_args(argv)
    if not args.eval_log.is_file():
        raise SystemExit(f"error: {args.eval_log} does not exist (run launcher/train.py first)")
    records = [json.loads(line) for line in args.eval_log.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"error: {args.eval_log} holds no eval records")
    first, last = records[0], records[-1]
    print(f"first eval (step {first['step']}): {_losses(first)}")
    print(f"last eval  (step {last['step']}): {_losses(last)}")
    if first["losses"].get("val") is not None and last["losses"].get("val") is not None:
        print(f"val loss {first['losses']['val']:.4f} -> {last['losses']['val']:.4f} "
              f"({last['losses']['val'] - first['losses']['val']:+.4f})")
    for r in records:
        g = r["gold"]
        if g["save"] or g["is_new_best"]:
            print(f"  step {r['step']:>6} [{r['phase']}]: {g['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
