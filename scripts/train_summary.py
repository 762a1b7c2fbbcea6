"""Summarise a run's eval log: the first and last eval (loss and bits per byte per set, grounded QA), every GOLD
save and every refused new best, and the run
health (the five success criteria, `launcher/health.py`) at the last eval with the evals where it changed.

    python scripts/train_summary.py logs/train/demo_cpu_eval.jsonl
    python scripts/train_summary.py logs/train/demo_cpu_eval.jsonl --config_file configs/tiny/demo_cpu.json

Works on a finished run or a log copied off a pod mid-run. The health thresholds are the `health` section of
--config_file (the run's training config) when given, else the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launcher import health
from launcher.config import HealthConfig, TrainConfig


def _losses(record: dict) -> str:
    """Each set's loss, with its bits per byte in brackets where the log has them (runs before they existed not)."""
    bpb = record.get("bits_per_byte") or {}

    def one(name: str, value: float | None) -> str:
        text = f"{name} {value:.4f}" if value is not None else f"{name} nan"
        return text + (f" ({bpb[name]:.3f} bpb)" if bpb.get(name) is not None else "")

    return " ".join(one(k, v) for k, v in record["losses"].items())


def health_report(records: list[dict], cfg: HealthConfig) -> list[str]:
    """The health table at the last eval, the status changes eval by eval, and what to look at."""
    history = health.timeline(records, cfg)
    final = history[-1]
    width = max(len(n) for n in final)
    lines = [f"run health at step {records[-1]['step']}:"]
    lines += [f"  {name:<{width}}  {v.status:<7}  {v.detail}" for name, v in final.items()]
    changes = []
    for before, after, record in zip(history, history[1:], records[1:], strict=False):
        for name, v in after.items():
            old = before[name].status
            # "not yet" -> ok is the evidence arriving, not news.
            if v.status != old and not (old == health.NOT_YET and v.status == health.OK):
                changes.append(f"  step {record['step']}: {name} {old} -> {v.status}")
    if changes:
        lines += ["health changes:", *changes]
    look = [f"  {name}: {v.look_at}" for name, v in final.items() if v.status in (health.WATCH, health.FAILING)]
    if look:
        lines += ["what to look at:", *look]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_log", type=Path, help="the <model_name>_eval.jsonl written by launcher/train.py")
    p.add_argument("--config_file", type=Path,
                   help="the run's training config: its `health` section sets the thresholds (default: defaults)")
    args = p.parse_args(argv)
    if not args.eval_log.is_file():
        raise SystemExit(f"error: {args.eval_log} does not exist (run launcher/train.py first)")
    records = [json.loads(line) for line in args.eval_log.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"error: {args.eval_log} holds no eval records")
    try:
        cfg = TrainConfig.from_json(args.config_file).health if args.config_file else HealthConfig()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
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
    timed = [r for r in records if r.get("eval_seconds") is not None]
    if timed:
        share = timed[-1].get("eval_share")
        print(f"evaluation: {sum(r['eval_seconds'] for r in timed) / len(timed):.1f} s per eval on average over "
              f"{len(timed)} evals (last {timed[-1]['eval_seconds']:.1f} s)"
              + (f"; {share:.1%} of the run's wall time so far" if share is not None else ""))
    print("\n".join(health_report(records, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
