"""Run health (launcher/health.py) on hand-made eval histories, and the scripts that show it after a run.

Each history is built as the trainer builds its eval records: losses per set, the train loss, the GOLD decision from
the real `GoldTracker`, and retrieval-probe numbers; 21 evals 100 steps apart, the GOLD baseline at step 300.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launcher.config import GoldConfig, HealthConfig
from launcher.gold import GoldTracker
from launcher.health import FAILING, NOT_YET, OK, WATCH, judge, newly_failing, scalars, timeline, warning
from launcher.run_log import RunLog, json_safe
from scripts import plot_run, train_summary

REPO = Path(__file__).resolve().parents[1]
INTERVAL, BASELINE, EVALS = 100, 300, 21
LN_VOCAB = math.log(50304)


def falling(i: int) -> float:
    """A loss still learning: ln(vocab) at step 0, about 9% lower every 8 evals at the end."""
    return 2.0 + (LN_VOCAB - 2.0) / (1 + i)


def healthy_losses(i: int) -> dict[str, float]:
    v = falling(i)
    return {"val": v, "general": 1.05 * v, "domain": 1.02 * v, "code": 0.75 * v, "retrieval": 1.1 * v}


def healthy_probe(i: int) -> dict[str, float]:
    em = min(1.0, 0.04 * i)
    probe = {"induction_score": 0.1 * i, "retrieval_em": em, "retrieval_ll_gain": 0.1 * i,
             "retrieval_em_worst_bucket": em, "retrieval_em_best_bucket": em}
    probe.update({f"retrieval_em_b{b}": em for b in range(8)})
    return probe


def history(losses=healthy_losses, probe=healthy_probe, train=lambda i, val: 0.98 * val, n=EVALS) -> list[dict]:
    gold = GoldTracker(GoldConfig(), baseline_step=BASELINE)
    records = []
    for i in range(n):
        step, set_losses = i * INTERVAL, dict(losses(i))
        val = set_losses.pop("val")
        train_loss = train(i, val)
        decision = gold.update(step, val, train_loss, set_losses).to_dict()
        record = {"step": step, "tokens": step * 4096, "phase": "circuit", "lr": 1e-3,
                  "losses": {"val": val, **set_losses}, "train_loss": train_loss, "gold": decision,
                  "gold_saved": "checkpoints/x/gold" if decision["save"] else None, "eval_seconds": 1.0}
        if probe is not None:
            record["probe"] = probe(i)
        records.append(record)
    return records


def statuses(records, cfg=None) -> dict[str, str]:
    return {name: v.status for name, v in judge(records, cfg or HealthConfig()).items()}


ALL_OK = {"retrieval": OK, "code": OK, "stability": OK, "gold": OK, "grounding": OK}


def test_a_healthy_run_is_ok_on_every_criterion():
    records = history()
    assert statuses(records) == ALL_OK
    assert scalars(judge(records, HealthConfig())) == {f"health/{n}": 0.0 for n in ALL_OK}


def test_before_the_evidence_exists_every_criterion_says_not_yet():
    early = history(n=3)  # steps 0, 100, 200: before the baseline step and fewer than window_evals + 1 evals
    assert statuses(early) == dict.fromkeys(ALL_OK, NOT_YET)
    assert scalars(judge(early, HealthConfig())) == {}  # "not yet" draws no point
    assert statuses([]) == dict.fromkeys(ALL_OK, NOT_YET)


def test_retrieval_plateau_fails_and_a_looser_threshold_accepts_it():
    def plateau(i):
        out = healthy_losses(i)
        out["retrieval"] = 1.1 * falling(min(i, 8))  # flat from step 800 on
        return out

    records = history(plateau)
    assert statuses(records) == {**ALL_OK, "retrieval": FAILING}
    v = judge(records, HealthConfig())["retrieval"]
    assert v.numbers["improvement"] == pytest.approx(0.0) and "plateau" in v.detail
    relaxed = HealthConfig(retrieval_watch_improvement=0.0, retrieval_fail_improvement=0.0)
    assert statuses(records, relaxed)["retrieval"] == OK

    def slowing(i):
        out = healthy_losses(i)
        out["retrieval"] = 1.1 * falling(min(i, 8)) * (1 - 0.00125 * max(0, i - 8))  # 1% per 8 evals
        return out

    records = history(slowing)
    assert judge(records, HealthConfig())["retrieval"].numbers["improvement"] == pytest.approx(0.01, abs=1e-3)
    assert statuses(records)["retrieval"] == WATCH
    assert statuses(records, HealthConfig(retrieval_watch_improvement=0.005))["retrieval"] == OK
    assert statuses(records, HealthConfig(retrieval_fail_improvement=0.02,
                                          retrieval_watch_improvement=0.03))["retrieval"] == FAILING


def test_code_diverging_from_val_fails_and_the_drift_thresholds_decide():
    def diverging(i):
        out = healthy_losses(i)
        if i > 10:  # code climbs 3% a step while val keeps falling: |code - val| first shrinks, then grows
            out["code"] = 0.75 * falling(10) * (1 + 0.03 * (i - 10))
        return out

    records = history(diverging)
    assert statuses(records) == {**ALL_OK, "code": FAILING}
    assert judge(records, HealthConfig())["code"].numbers["drift"] > 0.15
    assert statuses(records[:13])["code"] == WATCH  # two evals in: drift 8% of val (> 5%, < 15%)
    assert statuses(records, HealthConfig(code_fail_drift=1.0))["code"] == WATCH
    # The gap itself: the healthy run's code sits 25% below val.
    assert statuses(history(), HealthConfig(code_max_gap=0.2))["code"] == FAILING


def test_general_regression_fails_stability_and_gold_refuses():
    def forgetting(i):
        out = healthy_losses(i)
        if i >= 15:
            out["general"] = 1.05 * falling(3) * 1.25  # 25% above its baseline (step 300)
        return out

    records = history(forgetting)
    assert statuses(records) == {**ALL_OK, "stability": FAILING, "gold": WATCH}
    v = judge(records, HealthConfig())["stability"]
    assert v.numbers["rise"]["general"] == pytest.approx(0.25) and v.numbers["limit"] == 0.2
    assert "refused" in judge(records, HealthConfig())["gold"].detail
    # 12% above: past half the allowance (10%), inside the limit; with a share of 0.8 (16%) it is fine.
    def drifting(i):
        out = healthy_losses(i)
        out["general"] = 1.05 * falling(3) * 1.12 if i >= 15 else out["general"]
        return out

    assert statuses(history(drifting))["stability"] == WATCH
    assert statuses(history(drifting), HealthConfig(stability_watch_share=0.8))["stability"] == OK


def test_no_gold_since_the_baseline_fails():
    # val/train > 5 from the baseline on: the overfit guard refuses every new best, and GOLD saves start at the
    # baseline step (launcher/gold.py), so the run has no GOLD at all.
    records = history(train=lambda i, val: val / 6 if i >= 3 else val)
    assert records[-1]["gold"]["best_step"] is None
    assert statuses(records) == {**ALL_OK, "gold": FAILING}
    assert statuses(records[:8])["gold"] == WATCH  # 5 evals since the baseline without a GOLD
    assert statuses(records, HealthConfig(gold_watch_evals=20, gold_fail_evals=30))["gold"] == WATCH

    # A GOLD chosen before the baseline step (logs of runs from before GOLD saves waited for the baseline) passed a
    # vacuous regression guard: it does not count as one that passed all three, even while nothing is refused.
    flat = history(losses=lambda i: healthy_losses(min(i, 2)) | {"retrieval": 1.1 * falling(i)}, n=6)
    for r in flat:
        if r["step"] >= 200:
            r["gold"].update(best_step=200, best_val_loss=flat[2]["losses"]["val"], is_new_best=r["step"] == 200,
                             save=r["step"] == 200)
    assert flat[-1]["gold"]["best_step"] == 200 and not flat[-1]["gold"]["is_new_best"]
    verdict = judge(flat, HealthConfig())["gold"]
    assert verdict.status == WATCH and "since the baseline step 300" in verdict.detail


def test_a_model_that_ignores_the_context_fails_grounding():
    def ignoring(i):
        probe = healthy_probe(i)
        probe.update({"retrieval_ll_gain": -0.01, "retrieval_em": 0.0, "retrieval_em_worst_bucket": 0.0,
                      "retrieval_em_best_bucket": 0.0, **{f"retrieval_em_b{b}": 0.0 for b in range(8)}})
        return probe

    records = history(probe=ignoring)
    assert statuses(records) == {**ALL_OK, "grounding": FAILING}
    assert statuses(records, HealthConfig(grounding_min_ll_gain=-0.5))["grounding"] == WATCH  # EM still 0

    def uneven(i):  # uses the passage, but finds answers at early positions only
        probe = healthy_probe(i)
        probe.update({f"retrieval_em_b{b}": (0.8 if b < 4 else 0.2) for b in range(8)})
        return probe

    assert statuses(history(probe=uneven))["grounding"] == WATCH
    assert statuses(history(probe=uneven), HealthConfig(grounding_min_bucket_ratio=0.2))["grounding"] == OK


def test_missing_sets_probes_and_null_losses_never_crash():
    records = history(losses=lambda i: {"val": falling(i), "general": falling(i)}, probe=None)
    got = statuses(records)
    assert got["retrieval"] == got["code"] == got["grounding"] == NOT_YET
    assert got["stability"] == got["gold"] == OK
    # A NaN written as null: skipped in the middle of the history, failing when it is the latest eval.
    records = json.loads(json.dumps(json_safe(history())))
    records[10]["losses"]["retrieval"] = None
    assert statuses(records) == ALL_OK
    records[-1]["losses"]["retrieval"] = None
    records[-1]["losses"]["general"] = None
    got = statuses(records)
    assert got["retrieval"] == FAILING and got["stability"] == FAILING
    assert statuses([{"step": 0}]) == dict.fromkeys(ALL_OK, NOT_YET)


def test_the_jsonl_round_trip_gives_the_same_verdicts():
    records = history()
    records[5]["losses"]["code"] = math.nan  # in memory NaN (what the trainer judges), in the JSONL null
    records[-1]["losses"]["retrieval"] = math.nan
    read_back = json.loads(json.dumps(json_safe(records)))
    live = {n: v.to_dict() for n, v in judge(records, HealthConfig()).items()}
    assert live == {n: v.to_dict() for n, v in judge(read_back, HealthConfig()).items()}
    assert live["retrieval"]["status"] == FAILING and "not finite" in live["retrieval"]["detail"]
    json.dumps(live, allow_nan=False)  # the record's health object is strict JSON


def _write_log(tmp_path, records, name="run"):
    path = tmp_path / f"{name}_eval.jsonl"
    path.write_text("".join(json.dumps(json_safe(r)) + "\n" for r in records))
    return path


def test_train_summary_prints_the_health_table(tmp_path, capsys):
    def forgetting(i):
        out = healthy_losses(i)
        out["general"] = 1.05 * falling(3) * 1.25 if i >= 15 else out["general"]
        return out

    path = _write_log(tmp_path, history(forgetting))
    assert train_summary.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "run health at step 2000" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ") and
            line.split()[0] in ALL_OK}
    assert rows == {**ALL_OK, "stability": FAILING, "gold": WATCH}
    assert "step 1500: stability ok -> failing" in out
    # The thresholds come from the run's config when given.
    cfg = tmp_path / "cfg.json"
    values = json.loads((REPO / "configs/base/750M_unified_v1.json").read_text())
    values["health"]["code_max_gap"] = 0.2
    cfg.write_text(json.dumps(values))
    assert train_summary.main([str(path), "--config_file", str(cfg)]) == 0
    assert any(line.split()[:2] == ["code", FAILING] for line in capsys.readouterr().out.splitlines()
               if line.startswith("  "))


def test_plot_run_marks_the_evals_where_a_criterion_failed(tmp_path):
    def plateau(i):
        out = healthy_losses(i)
        out["retrieval"] = 1.1 * falling(min(i, 8))
        return out

    records = history(plateau)
    marks = plot_run.failing_steps(records, HealthConfig())
    first_fail = next(r["step"] for r in records if judge(records[: records.index(r) + 1],
                                                          HealthConfig())["retrieval"].status == FAILING)
    assert marks == {"retrieval": [r["step"] for r in records if r["step"] >= first_fail]}
    assert plot_run.failing_steps(history(), HealthConfig()) == {}
    _write_log(tmp_path, records)
    fig = plot_run.draw_run(tmp_path, "run", HealthConfig())
    health_ax = next(ax for ax in fig.axes if ax.get_title().startswith("run health"))
    failing = [c for c in health_ax.collections if c.get_label() == "failing"]
    assert len(failing) == 1 and sorted(failing[0].get_offsets()[:, 0]) == marks["retrieval"]
    out = plot_run.plot_run(tmp_path, "run", tmp_path / "run.png")
    assert out.stat().st_size > 0


def test_timeline_is_judge_on_each_prefix():
    records = history(n=6)
    assert [{n: v.status for n, v in t.items()} for t in timeline(records, HealthConfig())] == \
        [statuses(records[: i + 1]) for i in range(6)]


def test_a_criterion_is_warned_about_when_it_turns_failing_not_while_it_stays_failing():
    def plateau(i):
        out = healthy_losses(i)
        out["retrieval"] = 1.1 * falling(min(i, 8))
        return out

    records, warned, previous = history(plateau), [], {}
    for i in range(len(records)):
        verdicts = judge(records[: i + 1], HealthConfig())
        warned += [(records[i]["step"], name) for name in newly_failing(previous, verdicts)]
        previous = {name: v.status for name, v in verdicts.items()}
    assert len(warned) == 1 and warned[0][1] == "retrieval"
    text = warning(warned[0][0], "retrieval", judge(records, HealthConfig())["retrieval"])
    assert text.startswith(f"WARNING run health: retrieval is failing at step {warned[0][0]}") and "Look at" in text
    # Recovering and failing again is a new episode: warned again.
    fail = judge(records, HealthConfig())
    assert newly_failing({"retrieval": "ok"}, fail) == ["retrieval"]
    assert newly_failing({"retrieval": "failing"}, fail) == []


def test_after_a_resume_the_history_is_the_eval_log_up_to_the_resumed_step(tmp_path):
    records = history(n=8)
    _write_log(tmp_path, records, name="r")
    log = RunLog(str(tmp_path), str(tmp_path / "runs"), "r", is_writer=True, resume_step=500)
    try:
        assert [r["step"] for r in log.eval_records()] == [0, 100, 200, 300, 400, 500]
    finally:
        log.close()
    assert RunLog(str(tmp_path), str(tmp_path / "runs"), "r", is_writer=False, resume_step=500).eval_records() == []


def test_train_summary_prints_what_evaluation_cost(tmp_path, capsys):
    records = history()
    for i, r in enumerate(records):
        r["eval_seconds"], r["eval_share"] = 10.0 + i, 0.05 + 0.001 * i
    assert train_summary.main([str(_write_log(tmp_path, records))]) == 0
    n = len(records)
    mean = sum(10.0 + i for i in range(n)) / n
    assert (f"evaluation: {mean:.1f} s per eval on average over {n} evals (last {9.0 + n:.1f} s); "
            f"{0.05 + 0.001 * (n - 1):.1%} of the run's wall time so far") in capsys.readouterr().out


def test_grounding_watches_a_falling_qa_f1_and_invented_answers():
    from launcher.config import HealthConfig
    from launcher.health import WATCH, judge_grounding

    def record(step, f1, otherwise):
        return {"step": step, "gold": {"baseline_step": 0}, "losses": {},
                "probe": {"retrieval_ll_gain": 1.0, "retrieval_em": 0.5},
                "qa": {"f1": f1, "no_answer_answered_otherwise": otherwise}}

    cfg = HealthConfig()
    rising = [record(s, 0.1 * s, 0.1) for s in range(1, 4)]
    assert judge_grounding(rising, cfg).status != WATCH
    assert "QA F1 0.300" in judge_grounding(rising, cfg).detail
    falling = rising + [record(4, 0.05, 0.1)]
    assert judge_grounding(falling, cfg).status == WATCH and "QA F1 fell" in judge_grounding(falling, cfg).detail
    inventing = rising + [record(4, 0.4, 0.8)]
    verdict = judge_grounding(inventing, cfg)
    assert verdict.status == WATCH and "80% of unanswerable questions answered" in verdict.detail
