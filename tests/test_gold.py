"""GOLD guards on hand-made loss histories: each guard refuses just past its threshold and accepts at/below it."""

import json
import math

import pytest

from launcher.config import GoldConfig
from launcher.gold import GoldDecision, GoldTracker

SETS = {"general": 3.0, "code": 2.0}


def tracker(baseline_step=0, **cfg):
    return GoldTracker(GoldConfig(**cfg), baseline_step=baseline_step)


def feed(gold, vals, start_step=100, train=None, sets=SETS):
    """One eval per val loss, 100 steps apart; train loss = val (ratio 1) unless given. Returns the decisions."""
    return [gold.update(start_step + 100 * i, v, v if train is None else train, dict(sets)) for i, v in enumerate(vals)]


def test_clean_improvement_is_saved():
    gold = tracker()
    first, second = feed(gold, [3.0, 2.8])
    assert first.save and first.is_new_best and "no earlier GOLD" in first.reason
    assert second.save and second.is_new_best
    assert second.reason.startswith("new GOLD: val loss 2.8000 (was 3.0000 at step 100)")
    assert all(g["passed"] for g in second.guards.values())
    assert (second.previous_best_val_loss, second.best_val_loss, second.best_step) == (3.0, 2.8, 200)


def test_not_below_the_gold_best_is_not_saved():
    gold = tracker()
    d = feed(gold, [3.0, 3.0, 3.1])
    assert [x.save for x in d] == [True, False, False]
    assert not d[1].is_new_best and "not below the GOLD best 3.0000 (step 100)" in d[1].reason


@pytest.mark.parametrize("ratio, saved", [(5.0, True), (5.01, False)])
def test_overfit_guard(ratio, saved):
    gold = tracker()
    d = gold.update(100, 2.0 * ratio, 2.0, dict(SETS))
    assert d.is_new_best
    assert d.save is saved and d.guards["overfit"]["passed"] is saved
    assert d.guards["overfit"]["value"] == pytest.approx(ratio) and d.guards["overfit"]["limit"] == 5.0
    assert d.guards["trend"]["passed"] and d.guards["regression"]["passed"]
    if not saved:
        assert "overfit" in d.reason and "5.01 > 5" in d.reason


@pytest.mark.parametrize(
    "vals, saved",
    [
        ([3.0, 3.1, 3.2, 2.9], False),  # two rises, then a dip: refused
        ([3.0, 3.1, 2.9], True),  # one rise, then a dip: accepted
        ([3.0, 3.1, 3.05, 3.2, 2.9], True),  # the run of rises just before is one long
        ([3.0, 3.1, 3.2, 3.3, 2.9], False),  # three rises: still refused
    ],
)
def test_trend_guard(vals, saved):
    d = feed(tracker(), vals)[-1]
    assert d.is_new_best
    assert d.save is saved and d.guards["trend"]["passed"] is saved
    assert d.guards["overfit"]["passed"] and d.guards["regression"]["passed"]
    if not saved:
        assert "trend" in d.reason


def test_refused_eval_does_not_raise_the_bar_and_history_includes_every_eval():
    gold = tracker()
    d = feed(gold, [3.0, 3.1, 3.2, 2.9, 2.95])
    # 2.9 was refused (trend), so 2.95 is still a new best against GOLD 3.0; the history before it is
    # 3.0, 3.1, 3.2, 2.9: the last move is a fall, so the trend passes.
    assert not d[3].save and d[3].best_val_loss == 3.0
    assert d[4].is_new_best and d[4].save and d[4].previous_best_val_loss == 3.0


@pytest.mark.parametrize("regression, saved", [(0.19, True), (0.20, True), (0.21, False)])
def test_regression_guard(regression, saved):
    gold = tracker(baseline_step=200)
    before, at_baseline = feed(gold, [3.5, 3.2])  # steps 100 (before baselines) and 200 (the baseline eval)
    assert before.guards["regression"]["passed"]
    assert before.guards["regression"]["reason"] == "no baseline yet (set at the first eval at or after step 200)"
    assert at_baseline.baselines == {"val": 3.2, **SETS}
    assert sorted(at_baseline.baselines_set_here) == ["code", "general", "val"]
    d = gold.update(300, 3.0, 3.0, {"general": 3.0, "code": 2.0 * (1 + regression)})
    assert d.is_new_best
    assert d.save is saved and d.guards["regression"]["passed"] is saved
    assert d.guards["regression"]["per_set"]["code"] == pytest.approx(regression)
    assert d.guards["regression"]["value"] == pytest.approx(regression)
    if not saved:
        assert "code" in d.reason and "+21.0%" in d.reason


def test_no_gold_before_the_baseline_step_and_no_bar_set_there():
    gold = tracker(baseline_step=200)
    early, at_baseline, later = feed(gold, [2.5, 3.2, 3.0])  # steps 100, 200, 300
    # Step 100 has the lowest loss of all, but it is before the baseline: not saved, not new best, no bar.
    assert not early.save and not early.is_new_best and early.best_val_loss is None
    assert early.reason == ("not saved: before the baseline step 200 (GOLD saves start there, once the regression "
                            "guard has baselines)")
    assert at_baseline.save and "no earlier GOLD" in at_baseline.reason
    assert later.save and later.previous_best_val_loss == 3.2 and later.best_step == 300


def test_baseline_is_the_first_eval_at_or_after_the_step_not_before():
    gold = tracker(baseline_step=250)
    d = feed(gold, [3.5, 3.4, 3.3])  # steps 100, 200, 300: baseline at 300
    assert d[1].baselines == {} and d[2].baselines["val"] == 3.3
    # A set first measured later gets its baseline then; a set missing from an eval is not checked.
    late = gold.update(400, 3.2, 3.2, {"general": 3.0, "retrieval": 4.0})
    assert late.baselines_set_here == ["retrieval"]
    assert late.guards["regression"]["passed"]
    assert "code" not in late.guards["regression"]["per_set"]


def test_non_finite_losses_are_never_saved_and_not_rises():
    gold = tracker()
    d = feed(gold, [3.0, float("nan")])
    assert not d[1].save and not d[1].is_new_best and "non-finite" in d[1].reason and d[1].val_loss is None
    nan_train = gold.update(300, 2.5, float("inf"), dict(SETS))
    assert nan_train.is_new_best and not nan_train.save and not nan_train.guards["overfit"]["passed"]
    assert gold.best_val_loss == 3.0
    # NaN is skipped by the trend: 3.0, 3.1, nan, 3.2 is two rises in a row.
    gold2 = tracker()
    assert not feed(gold2, [3.0, 3.1, float("nan"), 3.2, 2.9])[-1].save
    # ... and does not count as a rise itself: 3.0, 3.1, nan -> one rise.
    assert feed(tracker(), [3.0, 3.1, float("nan"), 2.9])[-1].save
    # A broken eval set fails the regression guard.
    gold3 = tracker()
    feed(gold3, [3.0])
    bad_set = gold3.update(200, 2.9, 2.9, {"general": float("nan"), "code": 2.0})
    assert not bad_set.save and not bad_set.guards["regression"]["passed"]


def test_decision_record_is_complete_and_strict_json():
    gold = tracker(baseline_step=100)
    d = feed(gold, [3.0, float("nan"), 2.9])
    fields = {
        "step", "val_loss", "train_loss", "is_new_best", "save", "reason", "guards", "previous_best_val_loss",
        "previous_best_step", "best_val_loss", "best_step", "baseline_step", "baselines", "baselines_set_here",
        "enabled",
    }
    for decision in d:
        record = decision.to_dict()
        assert set(record) == fields
        assert set(record["guards"]) == {"overfit", "trend", "regression"}
        for g in record["guards"].values():
            assert {"passed", "value", "limit", "reason"} <= set(g) and isinstance(g["reason"], str) and g["reason"]
        json.dumps(record, allow_nan=False)  # strict JSON: NaN/inf are stored as null
    assert isinstance(d[0], GoldDecision) and d[2].to_dict()["step"] == 300


def test_state_round_trip_gives_the_same_decisions_as_an_uninterrupted_run():
    vals = [3.0, 3.1, 3.2, 2.9, float("nan"), 2.8, 2.85, 2.7]
    uninterrupted = feed(tracker(baseline_step=250), vals)
    first = tracker(baseline_step=250)
    feed(first, vals[:4])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = tracker(baseline_step=250)
    resumed.load_state_dict(state)
    rest = feed(resumed, vals[4:], start_step=500)
    assert [x.to_dict() for x in rest] == [x.to_dict() for x in uninterrupted[4:]]
    with pytest.raises(ValueError, match="increasing step order"):
        resumed.update(800, 2.0, 2.0, dict(SETS))
    with pytest.raises(ValueError, match="GOLD state must have keys"):
        resumed.load_state_dict({"history": []})


def test_disabled_never_saves_but_reports():
    d = tracker(enabled=False).update(0, 3.0, 3.0, {})
    assert d.is_new_best and not d.save and "gold.enabled is false" in d.reason


def test_bad_inputs():
    with pytest.raises(ValueError, match="must not contain 'val'"):
        tracker().update(0, 3.0, 3.0, {"val": 3.0})
    with pytest.raises(ValueError, match="max_consecutive_rises must be an integer >= 1"):
        tracker(max_consecutive_rises=0)
    with pytest.raises(ValueError, match="baseline_step must be an integer >= 0"):
        GoldTracker(GoldConfig(), baseline_step=-1)
    assert math.isfinite(tracker().update(0, 3.0, 3.0, {}).guards["overfit"]["value"])
