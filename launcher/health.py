"""Run health: five success criteria judged from the eval records.

Pure logic: no DeepSpeed, no files, no printing. `judge(records, cfg)` takes the eval records exactly as the trainer
writes them to `<model_name>_eval.jsonl` (oldest first; NaN written as null; keys absent where an eval set or the
probes are not configured) and a `HealthConfig`, and returns one `Verdict` per criterion. The trainer calls it after
every eval (one console line, a `health` object in the record, `health/*` TensorBoard scalars, a warning when a
criterion turns failing); `scripts/train_summary.py` and `scripts/plot_run.py` call it on a finished or copied log.

Statuses: "ok"; "watch" (borderline, look when convenient); "failing" (look now; the run is never stopped by it);
"not yet" (the evidence does not exist yet). K is `health.window_evals`; the baseline step is the GOLD baseline step
the records carry (`gold.baseline_step`, default the end of warmup): before it every loss still falls from
ln(vocab) at its own speed, so the criteria that compare sets or need a trained model wait for it.

1. retrieval: the retrieval set's loss keeps falling. Improvement = (loss K finite evals ago - loss now) / loss K
   finite evals ago. failing below `retrieval_fail_improvement` (plateau), watch below `retrieval_watch_improvement`.
   Not yet with fewer than K + 1 finite evals.
2. code: at each eval from the baseline step on, d = (code - val) / val; gap = |d|; drift = d now - d K evals ago
   (or at the first eval from the baseline step, if fewer): how much code lost ground on val. failing when
   gap > `code_max_gap` or drift > `code_fail_drift`; watch when drift > `code_watch_drift`.
3. stability: each of `stability_sets` against its GOLD baseline (`gold.baselines`), with the GOLD regression
   limit (`gold.max_regression`, read from the record's regression guard). failing when loss > baseline x
   (1 + limit), as the GOLD guard decides; watch when loss > baseline x (1 + limit x `stability_watch_share`).
   Not yet before the baselines exist.
4. gold: the GOLD checkpoint (`gold.best_step`) is one chosen at or after the baseline step (before it the
   regression guard passes vacuously), and recent. Age = evals since it (or, with none, evals since the baseline
   step). failing at age >= `gold_fail_evals`; watch at age >= `gold_watch_evals`, when the latest eval's new best
   was refused by a guard, or when gold.enabled is false. Not yet before the baseline step.
5. grounding: the retrieval probe (`probe.retrieval_ll_gain`, `probe.retrieval_em_b*`), from the baseline step
   on. failing when the log-likelihood gain from the passage <= `grounding_min_ll_gain` (the model ignores its
   context); watch when the gain fell over the last K probe evals, when no answer is extracted exactly (mean EM 0),
   or when the worst position bucket's EM < `grounding_min_bucket_ratio` x the best bucket's. With grounded QA in
   the records (`qa`, SQuAD v2 EM/F1 on held-out items), also watch when its F1 fell over the last K evals or when
   more than `grounding_max_answered_otherwise` of the unanswerable questions were answered with something else.

A loss written as null (non-finite) in the latest eval of a set that has one fails its criterion: a broken eval is
not a healthy one. A set or probe missing from the records gives "not yet" with the reason.

    from launcher.health import judge, health_line
    verdicts = judge(records, cfg.health)          # {"retrieval": Verdict, "code": ..., ...}
    record["health"] = {name: v.to_dict() for name, v in verdicts.items()}
    print0(health_line(step, verdicts))
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from launcher.config import VAL_SET, HealthConfig

OK, WATCH, FAILING, NOT_YET = "ok", "watch", "failing", "not yet"
# TensorBoard `health/<criterion>`: higher is worse; "not yet" is not logged (no point on the curve).
LEVEL = {OK: 0, WATCH: 1, FAILING: 2}
CRITERIA = ("retrieval", "code", "stability", "gold", "grounding")

# What to look at when a criterion is not ok; {retrieval}, {code} and {stability} are the configured set names.
LOOK_AT = {
    "retrieval": "eval/{retrieval} against eval/val and train/lr: a {retrieval} loss flat while val still falls means "
                 "the grounded-QA share of the current phase's mix is not being learned",
    "code": "eval/{code} against eval/val: the code share of the current phase's mix, and whether the gap opened at "
            "the phase switch",
    "stability": "{stability} since the GOLD baseline: a rise after the phase switch is forgetting (the new mix "
                 "under-weights that data); the GOLD regression guard will refuse saves past the limit",
    "gold": "the GOLD reasons in the eval log (python scripts/train_summary.py LOG): which guard refuses, or whether "
            "the val loss stopped falling",
    "grounding": "probe/retrieval_ll_gain and probe/retrieval_em_b* (docs/PROBES.md): whether the answer's "
                 "likelihood depends on the passage, and at which positions answers are found; qa/f1 and "
                 "qa/no_answer_answered_otherwise (docs/AFTER_TRAINING.md, section 4): held-out questions answered",
}


def look_at(criterion: str, cfg: HealthConfig) -> str:
    """LOOK_AT of `criterion`, naming the eval sets `cfg` judges."""
    return LOOK_AT[criterion].format(retrieval=cfg.retrieval_set, code=cfg.code_set,
                                     stability=" and ".join(f"eval/{n}" for n in cfg.stability_sets) or "no sets")


@dataclass
class Verdict:
    """One criterion's judgement: the `health.<criterion>` object of the eval record."""

    status: str
    """"ok", "watch", "failing" or "not yet"."""
    detail: str
    """One line: the numbers and the rule that decided."""
    look_at: str
    """What to look at when it is not ok."""
    numbers: dict[str, Any] = field(default_factory=dict)
    """The numbers behind the verdict (finite floats, ints, or null)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _num(x: Any) -> float | None:
    """A finite float, else None (null in the JSONL, NaN in memory, a missing key)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _losses(record: dict) -> dict:
    losses = record.get("losses")
    return losses if isinstance(losses, dict) else {}


def _gold(record: dict) -> dict:
    gold = record.get("gold")
    return gold if isinstance(gold, dict) else {}


def _baseline_step(records: list[dict]) -> int:
    for r in reversed(records):
        step = _gold(r).get("baseline_step")
        if isinstance(step, int):
            return step
    return 0  # records without GOLD decisions: judge from the first eval


def _verdict(criterion: str, status: str, detail: str, **numbers: Any) -> Verdict:
    return Verdict(status, detail, "", numbers)  # judge() fills look_at from the config


def _nonfinite_latest(records: list[dict], name: str) -> bool:
    """The latest eval measured `name` (the key is there) but its loss is null/NaN."""
    losses = _losses(records[-1])
    return name in losses and _num(losses[name]) is None


def judge_retrieval(records: list[dict], cfg: HealthConfig) -> Verdict:
    name, k = cfg.retrieval_set, cfg.window_evals
    if not any(name in _losses(r) for r in records):
        return _verdict("retrieval", NOT_YET, f"no '{name}' eval set in the log (eval.sets)")
    if _nonfinite_latest(records, name):
        return _verdict("retrieval", FAILING, f"{name} loss is not finite at step {records[-1].get('step')}")
    series = [(r.get("step"), v) for r in records if (v := _num(_losses(r).get(name))) is not None]
    if len(series) < k + 1:
        return _verdict("retrieval", NOT_YET, f"{len(series)} of the {k + 1} evals the plateau check needs "
                        f"(health.window_evals + 1)", evals=len(series))
    (step0, loss0), (step1, loss1) = series[-k - 1], series[-1]
    improvement = (loss0 - loss1) / loss0 if loss0 > 0 else 0.0
    numbers = {"loss": loss1, "loss_window_start": loss0, "window_start_step": step0, "improvement": improvement,
               "watch_below": cfg.retrieval_watch_improvement, "fail_below": cfg.retrieval_fail_improvement}
    moved = f"{name} {loss0:.4f} -> {loss1:.4f} over the last {k} evals (steps {step0}-{step1}): " \
            f"{'fell' if improvement >= 0 else 'rose'} {abs(improvement):.2%}"
    if improvement < cfg.retrieval_fail_improvement:
        return _verdict("retrieval", FAILING, f"plateau: {moved} (< {cfg.retrieval_fail_improvement:.2%})", **numbers)
    if improvement < cfg.retrieval_watch_improvement:
        return _verdict("retrieval", WATCH, f"slowing: {moved} (< {cfg.retrieval_watch_improvement:.2%})", **numbers)
    return _verdict("retrieval", OK, moved, **numbers)


def judge_code(records: list[dict], cfg: HealthConfig) -> Verdict:
    name, k = cfg.code_set, cfg.window_evals
    base_step = _baseline_step(records)
    if not any(name in _losses(r) for r in records):
        return _verdict("code", NOT_YET, f"no '{name}' eval set in the log (eval.sets)")
    if records[-1].get("step", -1) >= base_step:
        for broken in (name, VAL_SET):
            if _nonfinite_latest(records, broken):
                return _verdict("code", FAILING, f"{broken} loss is not finite at step {records[-1].get('step')}")
    diffs = []  # (step, (code - val) / val, code, val)
    for r in records:
        code, val = _num(_losses(r).get(name)), _num(_losses(r).get(VAL_SET))
        if r.get("step", -1) >= base_step and code is not None and val is not None and val > 0:
            diffs.append((r.get("step"), (code - val) / val, code, val))
    if not diffs:
        return _verdict("code", NOT_YET, f"judged from the GOLD baseline step {base_step} on (before it both losses "
                        "fall from ln(vocab) at their own speed)")
    step, d, code, val = diffs[-1]
    start = diffs[-k - 1:][0]
    drift = d - start[1] if start[0] != step else None
    numbers = {"code": code, "val": val, "gap": abs(d), "drift": drift, "drift_since_step": start[0],
               "max_gap": cfg.code_max_gap, "watch_drift": cfg.code_watch_drift, "fail_drift": cfg.code_fail_drift}
    since = "" if drift is None else f", (code - val) / val {drift:+.1%} since step {start[0]}"
    detail = f"|{name} {code:.4f} - val {val:.4f}| / val = {abs(d):.1%}{since}"
    if abs(d) > cfg.code_max_gap:
        return _verdict("code", FAILING, f"{detail} (gap > {cfg.code_max_gap:.0%})", **numbers)
    if drift is not None and drift > cfg.code_fail_drift:
        return _verdict("code", FAILING, f"diverging: {detail} (> {cfg.code_fail_drift:.0%})", **numbers)
    if drift is not None and drift > cfg.code_watch_drift:
        return _verdict("code", WATCH, f"drifting from val: {detail} (> {cfg.code_watch_drift:.0%})", **numbers)
    return _verdict("code", OK, detail, **numbers)


def judge_stability(records: list[dict], cfg: HealthConfig) -> Verdict:
    present = [n for n in cfg.stability_sets if any(n in _losses(r) for r in records)]
    if not present:
        return _verdict("stability", NOT_YET, f"no {'/'.join(cfg.stability_sets)} eval set in the log (eval.sets)")
    gold = _gold(records[-1])
    baselines = gold.get("baselines") if isinstance(gold.get("baselines"), dict) else {}
    limit = _num(((gold.get("guards") or {}).get("regression") or {}).get("limit"))
    if limit is None or not any(_num(baselines.get(n)) is not None for n in present):
        return _verdict("stability", NOT_YET, f"no baseline yet (GOLD sets it at the first eval at or after step "
                        f"{_baseline_step(records)})")
    watch_at = limit * cfg.stability_watch_share
    per_set: dict[str, float | None] = {}
    status, parts = OK, []
    for n in present:
        base = _num(baselines.get(n))
        holding = [r for r in records if n in _losses(r)]
        if base is None or base <= 0 or not holding:
            continue  # no baseline for this set (it appeared after the baseline eval and has not been finite)
        loss = _num(_losses(holding[-1]).get(n))
        if loss is None:
            per_set[n] = None
            status = FAILING
            parts.append(f"{n} loss is not finite at step {holding[-1].get('step')}")
            continue
        per_set[n] = loss / base - 1
        parts.append(f"{n} {loss:.4f} {per_set[n]:+.1%} vs baseline {base:.4f}")
        # Multiply as the GOLD guard does: a loss exactly at the limit passes there and here.
        if loss > base * (1 + limit):
            status = FAILING
        elif loss > base * (1 + watch_at) and status == OK:
            status = WATCH
    finite = [v for v in per_set.values() if v is not None]
    numbers = {"rise": per_set, "worst_rise": max(finite) if finite else None, "limit": limit, "watch_at": watch_at}
    rule = {OK: f"within {watch_at:.0%}", WATCH: f"past {watch_at:.0%} of the {limit:.0%} limit",
            FAILING: f"past the GOLD regression limit {limit:.0%}"}[status]
    return _verdict("stability", status, f"{'; '.join(parts)} ({rule})", **numbers)


def judge_gold(records: list[dict], cfg: HealthConfig) -> Verdict:
    latest = records[-1]
    gold = _gold(latest)
    if not gold:
        return _verdict("gold", NOT_YET, "no GOLD decision in the latest eval record")
    base_step, step = _baseline_step(records), latest.get("step", -1)
    best_step, best_val = gold.get("best_step"), _num(gold.get("best_val_loss"))
    if step < base_step:
        so_far = "none" if best_step is None else f"step {best_step}"
        return _verdict("gold", NOT_YET, f"judged from the baseline step {base_step} on (the regression guard has no "
                        f"baselines before it); GOLD so far: {so_far}", best_step=best_step)
    guards = {n: bool(g.get("passed")) for n, g in (gold.get("guards") or {}).items() if isinstance(g, dict)}
    numbers = {"best_step": best_step, "best_val_loss": best_val, "latest_guards_passed": guards,
               "watch_evals": cfg.gold_watch_evals, "fail_evals": cfg.gold_fail_evals}
    if best_step is None or best_step < base_step:
        age = sum(1 for r in records if r.get("step", -1) >= base_step)
        what = f"no GOLD passed all three guards since the baseline step {base_step} ({age} evals)"
    else:
        age = sum(1 for r in records if r.get("step", -1) > best_step)
        what = f"GOLD at step {best_step} (val {best_val:.4f}), {age} evals ago" if best_val is not None else \
            f"GOLD at step {best_step}, {age} evals ago"
    numbers["evals_since"] = age
    refused = bool(gold.get("is_new_best")) and not gold.get("save") and gold.get("enabled", True)
    if refused:
        what += f"; latest new best refused ({gold.get('reason', '')})"
    if age >= cfg.gold_fail_evals:
        return _verdict("gold", FAILING, f"{what} (>= {cfg.gold_fail_evals} evals)", **numbers)
    if gold.get("enabled") is False:
        return _verdict("gold", WATCH, f"{what}; gold.enabled is false: no GOLD checkpoint is written", **numbers)
    if age >= cfg.gold_watch_evals or refused or best_step is None or best_step < base_step:
        return _verdict("gold", WATCH, what + (f" (>= {cfg.gold_watch_evals} evals)"
                                               if age >= cfg.gold_watch_evals else ""), **numbers)
    return _verdict("gold", OK, f"{what}, guards passed", **numbers)


_BUCKET = re.compile(r"^retrieval_em_b(\d+)$")


def judge_grounding(records: list[dict], cfg: HealthConfig) -> Verdict:
    k = cfg.window_evals
    probes = [(r.get("step"), r["probe"]) for r in records if isinstance(r.get("probe"), dict)]
    if not probes:
        return _verdict("grounding", NOT_YET, "no retrieval probe in the log (the trainer runs it at block_size >= 64)")
    base_step = _baseline_step(records)
    if records[-1].get("step", -1) < base_step:
        return _verdict("grounding", NOT_YET, f"judged from the baseline step {base_step} on (an untrained model "
                        "gains nothing from the passage)")
    gains = [(s, g) for s, p in probes if (g := _num(p.get("retrieval_ll_gain"))) is not None]
    if not gains:
        return _verdict("grounding", NOT_YET, "no finite retrieval_ll_gain in the probe records yet")
    step, gain = gains[-1]
    probe = dict(probes)[step]
    then_step, then = gains[max(0, len(gains) - k - 1)]
    buckets = sorted((int(m.group(1)), _num(v)) for key, v in probe.items() if (m := _BUCKET.match(key)))
    em_buckets = [v for _, v in buckets]
    finite = [v for v in em_buckets if v is not None]
    em = _num(probe.get("retrieval_em"))
    worst, best = (min(finite), max(finite)) if finite else (None, None)
    numbers = {"ll_gain": gain, "ll_gain_window_start": then, "window_start_step": then_step, "em": em,
               "em_buckets": em_buckets, "em_worst_bucket": worst, "em_best_bucket": best,
               "min_ll_gain": cfg.grounding_min_ll_gain, "min_bucket_ratio": cfg.grounding_min_bucket_ratio}
    ems = "" if not finite else "; EM " + ("-" if em is None else f"{em:.2f}") + " by bucket " + \
        " ".join("-" if v is None else f"{v:.2f}" for v in em_buckets)
    detail = f"passage LL gain {gain:+.3f} (step {then_step}: {then:+.3f}){ems}"
    if gain <= cfg.grounding_min_ll_gain:
        return _verdict("grounding", FAILING, f"ignores the context: {detail} (gain <= "
                        f"{cfg.grounding_min_ll_gain:g})", **numbers)
    watch = []
    if step != then_step and gain < then:
        watch.append("the gain fell")
    if em is not None and em == 0:
        watch.append("no answer extracted exactly")
    if best is not None and best > 0 and worst < cfg.grounding_min_bucket_ratio * best:
        watch.append(f"worst bucket < {cfg.grounding_min_bucket_ratio:.0%} of the best")
    qa_watch, qa_detail, qa_numbers = _qa_evidence(records, k, cfg)
    watch += qa_watch
    detail += qa_detail
    numbers.update(qa_numbers)
    if watch:
        return _verdict("grounding", WATCH, f"{', '.join(watch)}: {detail}", **numbers)
    return _verdict("grounding", OK, detail, **numbers)


def _qa_evidence(records: list[dict], k: int, cfg: HealthConfig) -> tuple[list[str], str, dict[str, Any]]:
    """The grounded QA of the evals (`qa` records, launcher/grounded_qa.py): watch when its F1 fell over the last K
    QA evals, or when more than `grounding_max_answered_otherwise` of the unanswerable questions got an answer (the
    model makes one up instead of saying it is not in the context)."""
    qa = [(r.get("step"), r["qa"]) for r in records if isinstance(r.get("qa"), dict)]
    f1s = [(s, f) for s, q in qa if (f := _num(q.get("f1"))) is not None]
    if not f1s:
        return [], "", {}
    step, f1 = f1s[-1]
    then_step, then = f1s[max(0, len(f1s) - k - 1)]
    otherwise = _num(dict(qa)[step].get("no_answer_answered_otherwise"))
    watch = []
    if step != then_step and f1 < then:
        watch.append("the QA F1 fell")
    if otherwise is not None and otherwise > cfg.grounding_max_answered_otherwise:
        watch.append(f"{otherwise:.0%} of unanswerable questions answered")
    detail = f"; QA F1 {f1:.3f} (step {then_step}: {then:.3f})" + \
        ("" if otherwise is None else f", unanswerable answered {otherwise:.0%}")
    return watch, detail, {"qa_f1": f1, "qa_f1_window_start": then, "qa_answered_otherwise": otherwise}


JUDGES = {"retrieval": judge_retrieval, "code": judge_code, "stability": judge_stability, "gold": judge_gold,
          "grounding": judge_grounding}


def judge(records: list[dict], cfg: HealthConfig) -> dict[str, Verdict]:
    """Every criterion's verdict at the latest of `records` (eval records, oldest first)."""
    if not records:
        verdicts = {name: _verdict(name, NOT_YET, "no eval records yet") for name in CRITERIA}
    else:
        verdicts = {name: JUDGES[name](records, cfg) for name in CRITERIA}
    return {name: dataclasses.replace(v, look_at=look_at(name, cfg)) for name, v in verdicts.items()}


def timeline(records: list[dict], cfg: HealthConfig) -> list[dict[str, Verdict]]:
    """The verdicts as they were at each eval (what the trainer printed live), for a finished or copied log."""
    return [judge(records[: i + 1], cfg) for i in range(len(records))]


def to_record(verdicts: dict[str, Verdict]) -> dict[str, Any]:
    """The eval record's `health` object."""
    return {name: v.to_dict() for name, v in verdicts.items()}


def scalars(verdicts: dict[str, Verdict]) -> dict[str, float]:
    """TensorBoard `health/<criterion>`: 0 ok, 1 watch, 2 failing; criteria not judged yet are left out."""
    return {f"health/{name}": float(LEVEL[v.status]) for name, v in verdicts.items() if v.status in LEVEL}


def health_line(step: int, verdicts: dict[str, Verdict]) -> str:
    """One console line: every criterion's status."""
    return f"health step {step}: " + " | ".join(f"{name} {v.status}" for name, v in verdicts.items())


def newly_failing(previous: dict[str, str], verdicts: dict[str, Verdict]) -> list[str]:
    """Criteria failing now that were not failing at the previous eval (each is warned about once per episode)."""
    return [name for name, v in verdicts.items() if v.status == FAILING and previous.get(name) != FAILING]


def warning(step: int, name: str, verdict: Verdict) -> str:
    return f"WARNING run health: {name} is failing at step {step}: {verdict.detail}. Look at {verdict.look_at}."


class HealthMonitor:
    """The trainer's hook: judges the run after every eval and says what changed. Its state is the eval history and
    the last statuses; a resume rebuilds both from the eval log (cut back to the resumed step), which gives the
    history an uninterrupted run would hold. Rank 0 only."""

    def __init__(self, cfg: HealthConfig, history: list[dict[str, Any]]):
        self.cfg = cfg
        self.history = list(history)
        latest = (self.history[-1].get("health") or {}) if self.history else {}
        self.status = {name: v.get("status") for name, v in latest.items() if isinstance(v, dict)}

    def observe(self, record: dict[str, Any]) -> tuple[dict[str, Verdict], list[str]]:
        """Judge the run with `record` (the new eval record, without `health`) as its latest; the verdicts and the
        console lines: the health line, then a warning for each criterion that turned failing (once per episode;
        the run goes on either way)."""
        self.history.append(record)
        verdicts = judge(self.history, self.cfg)
        step = record.get("step")
        lines = [health_line(step, verdicts)]
        lines += [warning(step, name, verdicts[name]) for name in newly_failing(self.status, verdicts)]
        self.status = {name: v.status for name, v in verdicts.items()}
        return verdicts, lines
