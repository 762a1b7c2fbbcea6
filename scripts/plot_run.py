"""Plot a training run from its JSONL logs into one PNG: losses per eval set, the phase switch, GOLD saves, the
induction score and retrieval accuracy over steps, and the run health (which criterion failed at which eval).

Usage:
    python scripts/plot_run.py logs/train                          # every run in the folder -> <run>.png next to it
    python scripts/plot_run.py logs/train --model_name demo        # one run
    python scripts/plot_run.py logs/train --model_name demo --out out/demo.png
    python scripts/plot_run.py logs/train --model_name demo --config_file configs/tiny/demo_cpu.json  # its thresholds

LOGDIR is the trainer's `logging.log_dir` holding `<model_name>_eval.jsonl` (and `<model_name>_train.jsonl`, whose
train loss and `phase_switch` events are drawn when present). Panels: (1) train loss and every eval set's loss,
phase switches as vertical lines, GOLD saves as stars on the val curve; (2) induction score; (3) retrieval exact
match (mean, worst and best position bucket) and the share of unanswerable prompts answered "not in the context";
(last) the run health as it was at each eval (`launcher/health.py`): one row per criterion, ok / watch / failing,
the failing evals as red crosses, which are also drawn along the top of the loss panel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a pod or in CI
import matplotlib.pyplot as plt

from data.atomic import atomic_write
from launcher import health
from launcher.config import HealthConfig, TrainConfig

HEALTH_STYLE = {health.OK: ("o", "tab:green"), health.WATCH: ("o", "tab:orange"), health.FAILING: ("X", "red")}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"plot_run: skipping unreadable line {lineno} of {path}", file=sys.stderr)
    return records


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def failing_steps(evals: list[dict], cfg: HealthConfig) -> dict[str, list[int]]:
    """Per criterion, the steps of the evals at which it was failing (as the trainer judged it live)."""
    marks: dict[str, list[int]] = {}
    for record, verdicts in zip(evals, health.timeline(evals, cfg), strict=True):
        for name, v in verdicts.items():
            if v.status == health.FAILING:
                marks.setdefault(name, []).append(record["step"])
    return marks


def draw_run(log_dir: str | Path, model_name: str, cfg: HealthConfig | None = None) -> plt.Figure:
    """The figure of one run (the caller saves or closes it)."""
    cfg = cfg or HealthConfig()
    log_dir = Path(log_dir)
    evals = read_jsonl(log_dir / f"{model_name}_eval.jsonl")
    if not evals:
        runs = sorted(p.name.removesuffix("_eval.jsonl") for p in log_dir.glob("*_eval.jsonl"))
        raise ValueError(f"{log_dir / (model_name + '_eval.jsonl')} has no eval records; is --model_name right? "
                         f"Runs in {log_dir}: {runs}")
    train = read_jsonl(log_dir / f"{model_name}_train.jsonl")
    steps = [r["step"] for r in evals]
    has_probe = any("probe" in r for r in evals)
    rows = 4 if has_probe else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.3 * rows + 1), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3] * (rows - 1) + [1.6]})
    ax = axes[0][0]
    losses = [r for r in train if "loss" in r and "event" not in r]
    if losses:
        ax.plot([r["step"] for r in losses], [_num(r["loss"]) for r in losses], color="lightgray", lw=1,
                label="train (log interval)")
    for name in evals[-1].get("losses", {}):
        ax.plot(steps, [_num(r["losses"].get(name)) for r in evals], marker=".", label=name)
    gold = [r for r in evals if r.get("gold_saved")]
    if gold:
        ax.scatter([r["step"] for r in gold], [_num(r["losses"].get("val")) for r in gold], marker="*", s=160,
                   color="gold", edgecolor="black", zorder=5, label="GOLD saved")
    switches = [r for r in train if r.get("event") == "phase_switch"]
    for i, ax_row in enumerate(axes):
        for r in switches:
            ax_row[0].axvline(r["step"], color="red", ls="--", lw=1, label=f"phase -> {r['phase']}" if i == 0 else None)
    timeline = health.timeline(evals, cfg)
    failing = sorted({r["step"] for r, verdicts in zip(evals, timeline, strict=True)
                      if any(v.status == health.FAILING for v in verdicts.values())})
    if failing:  # along the top edge of the loss panel: where to look on the loss curves
        ax.plot(failing, [1.0] * len(failing), "X", color="red", transform=ax.get_xaxis_transform(), clip_on=False,
                label="a health criterion failing")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{model_name}: losses")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    if has_probe:
        probe = [r.get("probe", {}) for r in evals]
        ax = axes[1][0]
        ax.plot(steps, [_num(p.get("induction_score")) for p in probe], marker="o", color="purple")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_ylabel("loss 1st copy - 2nd copy")
        ax.set_title("induction score (repeated random tokens)")
        ax.grid(alpha=0.3)
        ax = axes[2][0]
        ax.plot(steps, [_num(p.get("retrieval_em")) for p in probe], marker="o", label="exact match (mean)")
        ax.fill_between(steps, [_num(p.get("retrieval_em_worst_bucket")) for p in probe],
                        [_num(p.get("retrieval_em_best_bucket")) for p in probe], alpha=0.2,
                        label="worst..best position bucket")
        ax.plot(steps, [_num(p.get("unanswerable_not_in_context")) for p in probe], marker="x", ls=":",
                label="unanswerable -> 'not in the context'")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("share")
        ax.set_title("retrieval probe")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[-1][0]
    for status, (marker, color) in HEALTH_STYLE.items():
        points = [(r["step"], row) for r, verdicts in zip(evals, timeline, strict=True)
                  for row, name in enumerate(health.CRITERIA) if verdicts[name].status == status]
        if points:
            ax.scatter([s for s, _ in points], [y for _, y in points], marker=marker, color=color, s=40, label=status)
    ax.set_yticks(range(len(health.CRITERIA)), health.CRITERIA)
    ax.set_ylim(len(health.CRITERIA) - 0.5, -0.5)
    ax.set_title("run health at each eval (not yet: no mark)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def plot_run(log_dir: str | Path, model_name: str, out: str | Path, cfg: HealthConfig | None = None) -> Path:
    fig = draw_run(log_dir, model_name, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")  # the suffix tells savefig the format
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", help="the run's log folder (logging.log_dir, e.g. logs/train)")
    parser.add_argument("--model_name", help="the run to plot (default: every *_eval.jsonl in log_dir)")
    parser.add_argument("--out", help="output PNG (default: <log_dir>/<model_name>.png); only with --model_name")
    parser.add_argument("--config_file", help="the run's training config: its `health` section sets the health "
                        "thresholds (default: the defaults)")
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_json(args.config_file).health if args.config_file else HealthConfig()
    except ValueError as e:
        raise SystemExit(f"plot_run: {e}") from None
    log_dir = Path(args.log_dir)
    if not log_dir.is_dir():
        raise SystemExit(f"plot_run: {log_dir} is not a folder; pass the run's logging.log_dir (e.g. logs/train)")
    names = [args.model_name] if args.model_name else sorted(
        p.name.removesuffix("_eval.jsonl") for p in log_dir.glob("*_eval.jsonl"))
    if not names:
        raise SystemExit(f"plot_run: no *_eval.jsonl in {log_dir}; has the run reached its first eval?")
    if args.out and len(names) != 1:
        raise SystemExit("plot_run: --out needs --model_name (one run per PNG)")
    for name in names:
        try:
            out = plot_run(log_dir, name, args.out or log_dir / f"{name}.png", cfg)
        except ValueError as e:
            raise SystemExit(f"plot_run: {e}") from None
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
