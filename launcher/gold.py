"""GOLD: decide, at each eval, whether the model becomes the GOLD (best trusted) checkpoint, and write it.

`GoldTracker` is the decision, pure logic (no ranks, no files): the three guards and the best so far.
`Gold` is the trainer's component around it: rank 0 decides, every rank receives the decision and the tracker
state (so each rank's checkpoint records the same GOLD state), and `GoldWriter` writes the weights on a thread
while training goes on. `state_dict()` goes into the DeepSpeed checkpoint's client_state for resume.

A new best val loss becomes GOLD only if all three guards pass (thresholds from `GoldConfig`):

1. overfit: val_loss / train_loss <= max_val_train_ratio (5.0);
2. trend: the val loss did not rise in max_consecutive_rises (2) or more consecutive evals just before this one;
3. regression: no eval set's loss is more than max_regression (20%) above its baseline, i.e.
   loss <= baseline x (1 + max_regression); a set's baseline is its loss at the first eval at or after
   `baseline_step` (TrainConfig.gold_baseline_step: gold.baseline_after_step, default the end of warmup).

Decisions the guards alone leave open, made here:

- "New best" means below the best val loss among GOLD saves so far: the GOLD checkpoint is the best *trusted* one,
  so an eval refused by a guard does not raise the bar, and the next eval that beats the last GOLD and passes is
  saved. A tie is not new. The first eval with a finite val loss at or after the baseline step is new best by
  definition.
- GOLD saves start at the baseline step: before it the regression guard has nothing to compare with, and the
  model is barely trained (at step 0 every loss is ln(50304)), so a GOLD there would be an untrusted model written
  (1.4 GB at 750M, rank 0 while the others wait) only to be replaced. Those evals are decided and logged ("not
  saved: before the baseline step"), and do not set the bar.
- The regression guard covers the val loss too (as set "val") alongside the named eval sets: every eval set the
  trainer measures. Pass the val loss as `val_loss`, never inside `set_losses`.
- Before baselines exist (evals before `baseline_step`) the regression guard passes with reason
  "no baseline yet (set at the first eval at or after step N)". At the baseline eval the guard compares each set
  with itself and passes.
- A set's baseline is its first *finite* loss at or after `baseline_step`; a set that first appears later (an eval
  set added on resume) gets its baseline at its first appearance. A set missing from an eval is not checked.
- A non-finite (NaN/inf) val or train loss is never saved: the overfit guard fails with the reason. A non-finite
  val loss is kept in the history (as null) but skipped by the trend guard: it tells nothing about the direction
  of the loss, so neither counts as a rise nor breaks a run of rises (3.0, 3.1, nan, 3.2 is two rises). A
  non-finite loss of any eval set fails the regression guard (a broken eval set is not trusted).
- The trend guard's history is every eval, saved or not. It looks only at the evals *before* this one: the
  current eval is a new best, so it is a dip, not a rise. A rise is strictly greater than the previous finite loss.
- Guards are evaluated and reported at every eval, also when the val loss is not a new best, so each record says
  which guards would pass.
- With gold.enabled false the tracker still decides and tracks the best as if enabled (so the log shows what would
  have been GOLD) but `save` is always false.
- Steps must strictly increase between updates: a repeated eval of the same step (e.g. after a resume from a
  checkpoint whose GOLD state already holds that eval) would count twice in the trend, so it is a ValueError.

    from launcher.gold import GoldTracker
    gold = GoldTracker(cfg.gold, baseline_step=cfg.gold_baseline_step)
    decision = gold.update(step, val_loss=2.91, train_loss=2.80, set_losses={"general": 3.1, "code": 1.9})
    record["gold"] = decision.to_dict()       # eval JSONL
    if decision.save: ...                     # rank 0 decided; broadcast, then write the GOLD checkpoint
    client_state["gold"] = gold.state_dict()  # resume: gold.load_state_dict(client_state["gold"])
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from launcher import distributed as dist
from launcher.config import VAL_SET, GoldConfig

STATE_VERSION = 1


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _json_float(x: float | None) -> float | None:
    # Strict JSON has no NaN/inf: records and the resume state store them as null (the reason says which it was).
    return float(x) if _finite(x) else None


@dataclass
class GoldDecision:
    """The outcome of one eval, complete enough to be the `gold` field of the eval JSONL record."""

    step: int
    """Optimizer step of the eval."""
    val_loss: float | None
    """Val loss of this eval (null when not finite)."""
    train_loss: float | None
    """Train loss it was compared with (null when not finite)."""
    is_new_best: bool
    """The val loss is finite and below the best GOLD val loss so far (or no GOLD exists yet)."""
    save: bool
    """Write this model as the GOLD checkpoint (new best, all guards passed, gold.enabled)."""
    reason: str
    """One line: why it was saved, or why not."""
    guards: dict[str, dict[str, Any]]
    """Per guard ("overfit", "trend", "regression"): passed, value, limit, reason (regression adds per_set)."""
    previous_best_val_loss: float | None
    """Best GOLD val loss before this eval (null when none)."""
    previous_best_step: int | None
    """Step of that GOLD save."""
    best_val_loss: float | None
    """Best GOLD val loss after this eval (equal to val_loss when saved)."""
    best_step: int | None
    """Step of the GOLD checkpoint after this eval."""
    baseline_step: int
    """Baselines are set at the first eval at or after this step."""
    baselines: dict[str, float]
    """Each eval set's baseline loss (empty before the baseline eval)."""
    baselines_set_here: list[str] = field(default_factory=list)
    """Sets whose baseline was taken at this eval."""
    enabled: bool = True
    """gold.enabled: when false, `save` is always false."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GoldTracker:
    """Keeps the eval history, baselines and best GOLD val loss; decides each eval. Rank 0 only."""

    def __init__(self, cfg: GoldConfig, baseline_step: int):
        if not cfg.max_val_train_ratio > 0:
            raise ValueError(f"gold.max_val_train_ratio must be positive, got {cfg.max_val_train_ratio}")
        if isinstance(cfg.max_consecutive_rises, bool) or not isinstance(cfg.max_consecutive_rises, int) \
                or cfg.max_consecutive_rises < 1:
            raise ValueError(f"gold.max_consecutive_rises must be an integer >= 1, got {cfg.max_consecutive_rises!r}")
        if not cfg.max_regression >= 0:
            raise ValueError(f"gold.max_regression must be >= 0 (a fraction, 0.20 = 20%), got {cfg.max_regression}")
        if isinstance(baseline_step, bool) or not isinstance(baseline_step, int) or baseline_step < 0:
            raise ValueError(f"baseline_step must be an integer >= 0, got {baseline_step!r}")
        self.cfg = cfg
        self.baseline_step = baseline_step
        self.history: list[tuple[int, float | None]] = []  # (step, val loss or None when not finite), every eval
        self.baselines: dict[str, float] = {}
        self.best_val_loss: float | None = None
        self.best_step: int | None = None

    # -- guards ---------------------------------------------------------------------------------------------------

    def _overfit(self, val_loss: float, train_loss: float) -> dict[str, Any]:
        limit = self.cfg.max_val_train_ratio
        if not _finite(val_loss) or not _finite(train_loss) or train_loss <= 0:
            return {"passed": False, "value": None, "limit": limit,
                    "reason": f"val loss {val_loss} / train loss {train_loss} is not a finite positive ratio"}
        ratio = val_loss / train_loss
        passed = ratio <= limit
        return {"passed": passed, "value": ratio, "limit": limit,
                "reason": f"val/train ratio {ratio:.4g} {'<=' if passed else '>'} {limit:g}"}

    def _trend(self) -> dict[str, Any]:
        limit = self.cfg.max_consecutive_rises
        losses = [v for _, v in self.history if v is not None]
        rises = 0
        for i in range(len(losses) - 1, 0, -1):
            if losses[i] > losses[i - 1]:
                rises += 1
            else:
                break
        passed = rises < limit
        reason = (f"val loss rose in the {rises} eval(s) just before this one"
                  + ("" if passed else f" (>= {limit}: a dip after a rising run may be noise)"))
        return {"passed": passed, "value": rises, "limit": limit, "reason": reason}

    def _regression(self, losses: dict[str, float]) -> dict[str, Any]:
        limit = self.cfg.max_regression
        per_set: dict[str, float | None] = {}
        if not self.baselines:
            return {"passed": True, "value": None, "limit": limit, "per_set": per_set,
                    "reason": f"no baseline yet (set at the first eval at or after step {self.baseline_step})"}
        failures = []
        for name, loss in losses.items():
            base = self.baselines.get(name)
            if base is None:
                continue
            if not _finite(loss):
                per_set[name] = None
                failures.append(f"{name} loss is {loss}")
                continue
            per_set[name] = loss / base - 1 if base > 0 else (0.0 if loss <= base else math.inf)
            # Multiply rather than divide: exact at the threshold and safe for a zero baseline.
            if loss > base * (1 + limit):
                failures.append(f"{name} {loss:.4g} is {per_set[name]:+.1%} vs baseline {base:.4g}")
        finite = [r for r in per_set.values() if r is not None]
        worst = max(finite) if finite else None
        if failures:
            reason = f"regressed more than {limit:.0%}: " + "; ".join(failures)
        else:
            worst_name = max((n for n, r in per_set.items() if r is not None), key=lambda n: per_set[n], default=None)
            reason = (f"every set within {limit:.0%} of its baseline" if worst_name is None else
                      f"every set within {limit:.0%} of its baseline (worst {worst_name} {worst:+.1%})")
        return {"passed": not failures, "value": _json_float(worst), "limit": limit, "per_set": per_set,
                "reason": reason}

    # -- decision -------------------------------------------------------------------------------------------------

    def update(self, step: int, val_loss: float, train_loss: float, set_losses: dict[str, float]) -> GoldDecision:
        """Record the eval at `step` and decide whether it becomes GOLD."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if self.history and step <= self.history[-1][0]:
            raise ValueError(
                f"GOLD update for step {step} after step {self.history[-1][0]}: evals must come in increasing step "
                "order (was the GOLD state restored from a checkpoint that already holds this eval?)"
            )
        if VAL_SET in set_losses:
            raise ValueError(f"set_losses must not contain '{VAL_SET}': pass the val loss as val_loss")
        val_loss, train_loss = float(val_loss), float(train_loss)
        losses = {VAL_SET: val_loss, **{name: float(v) for name, v in set_losses.items()}}

        baselines_set_here = []
        if step >= self.baseline_step:
            for name, loss in losses.items():
                if name not in self.baselines and _finite(loss):
                    self.baselines[name] = loss
                    baselines_set_here.append(name)

        guards = {"overfit": self._overfit(val_loss, train_loss), "trend": self._trend(),
                  "regression": self._regression(losses)}
        previous_best, previous_step = self.best_val_loss, self.best_step
        is_new_best = _finite(val_loss) and (previous_best is None or val_loss < previous_best)
        all_passed = all(g["passed"] for g in guards.values())

        before_baseline = step < self.baseline_step
        if before_baseline:
            is_new_best = False
        if not _finite(val_loss) or not _finite(train_loss):
            reason = f"not saved: non-finite loss (val {val_loss}, train {train_loss})"
        elif before_baseline:
            reason = (f"not saved: before the baseline step {self.baseline_step} (GOLD saves start there, once the "
                      "regression guard has baselines)")
        elif not is_new_best:
            reason = f"not saved: val loss {val_loss:.4f} is not below the GOLD best {previous_best:.4f} " \
                     f"(step {previous_step})"
        elif not all_passed:
            failed = [f"{name}: {g['reason']}" for name, g in guards.items() if not g["passed"]]
            reason = "not saved: new best refused by " + "; ".join(failed)
        else:
            before = "no earlier GOLD" if previous_best is None else f"was {previous_best:.4f} at step {previous_step}"
            reason = f"new GOLD: val loss {val_loss:.4f} ({before}), all guards passed"
            if not self.cfg.enabled:
                reason = f"would be GOLD but gold.enabled is false: val loss {val_loss:.4f} ({before})"
            self.best_val_loss, self.best_step = val_loss, step

        self.history.append((step, _json_float(val_loss)))
        return GoldDecision(
            step=step,
            val_loss=_json_float(val_loss),
            train_loss=_json_float(train_loss),
            is_new_best=is_new_best,
            save=bool(is_new_best and all_passed and self.cfg.enabled),
            reason=reason,
            guards=guards,
            previous_best_val_loss=previous_best,
            previous_best_step=previous_step,
            best_val_loss=self.best_val_loss,
            best_step=self.best_step,
            baseline_step=self.baseline_step,
            baselines=dict(self.baselines),
            baselines_set_here=baselines_set_here,
            enabled=self.cfg.enabled,
        )

    # -- resume ---------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (strict JSON: no NaN) for the checkpoint's client_state."""
        return {
            "version": STATE_VERSION,
            "history": [[s, v] for s, v in self.history],
            "baselines": dict(self.baselines),
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "baseline_step": self.baseline_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output. Baselines already taken are kept even if baseline_step changed since."""
        expected = {"version", "history", "baselines", "best_val_loss", "best_step", "baseline_step"}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"GOLD state must have keys {sorted(expected)}, got {got}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"GOLD state version {state['version']} is not supported (this code reads "
                             f"{STATE_VERSION})")
        history = [(int(s), None if v is None else float(v)) for s, v in state["history"]]
        if any(b[0] <= a[0] for a, b in zip(history, history[1:], strict=False)):
            raise ValueError("GOLD state history steps are not strictly increasing; the checkpoint is corrupt")
        self.history = history
        self.baselines = {str(k): float(v) for k, v in state["baselines"].items()}
        self.best_val_loss = None if state["best_val_loss"] is None else float(state["best_val_loss"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])


def save_gold(gold_dir: Path, model: torch.nn.Module | dict[str, torch.Tensor], model_config,
              metadata: dict[str, Any]) -> Path:
    """Rank 0: write the GOLD checkpoint. model/io.py writes `gold.tmp`, moves the old one away, renames the new one
    in and deletes the old, so a crash leaves either the previous GOLD or the new one, never a mix."""
    from model.io import save_model_checkpoint

    # The weights that were evaluated: the engine's bf16 (or fp32) module parameters, the tied embedding once.
    return save_model_checkpoint(gold_dir, model, model_config, metadata)


class GoldWriter:
    """Rank 0's GOLD saves in the background. The weights are copied to host memory at once (the next optimizer step
    changes them), then written by `save_gold` (temp dir, rename) on a thread while training goes on: at 750M that
    is 1.4 GB that every rank used to wait for at a barrier. One write at a time; `wait()` joins the running one and
    re-raises its error. The trainer waits before each resumable checkpoint (which records the GOLD state, so the
    GOLD it names is on disk first) and at the end of the run.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._path: Path | None = None

    def submit(self, gold_dir: Path, model: torch.nn.Module, model_config, metadata: dict[str, Any]) -> Path:
        self.wait()
        state, seen = {}, {}
        for name, tensor in model.state_dict().items():
            # Tied weights share storage: copy once, keep the sharing (model/io.py stores the embedding once).
            key = (tensor.data_ptr(), tensor.shape)
            state[name] = seen[key] if key in seen else seen.setdefault(key, tensor.detach().to("cpu", copy=True))

        def write() -> None:
            try:
                save_gold(gold_dir, state, model_config, metadata)
            except BaseException as e:  # re-raised by wait() on the training thread
                self._error = e

        self._path = Path(gold_dir)
        self._thread = threading.Thread(target=write, name="gold-writer")
        self._thread.start()
        return self._path

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing the GOLD checkpoint {self._path} failed: {error}") from error


class Gold:
    """GOLD's decision and its writer together, as the trainer uses them at every eval: `decide` on every rank (rank 0
    decides, the others receive the decision and the tracker state), then `save` (rank 0 writes in the background).
    `wait()` before a resumable checkpoint, which records the GOLD state, so the GOLD it names is on disk first."""

    def __init__(self, cfg: GoldConfig, baseline_step: int, gold_dir: Path, rank: int):
        self.tracker = GoldTracker(cfg, baseline_step=baseline_step)
        self.dir = Path(gold_dir)
        self.rank = rank
        self.writer = GoldWriter()

    @property
    def best_step(self) -> int | None:
        return self.tracker.best_step

    def decide(self, step: int, val_loss: float, train_loss: float, set_losses: dict[str, float]) -> dict[str, Any]:
        """The decision record (GoldDecision.to_dict()), the same on every rank. Collective."""
        decision = self.tracker.update(step, val_loss, train_loss, set_losses).to_dict() if self.rank == 0 else None
        decision = dist.broadcast_object(decision)
        if self.rank != 0:
            self.tracker.load_state_dict(dist.broadcast_object(None))
        else:
            dist.broadcast_object(self.tracker.state_dict())
        return decision

    def save(self, model: torch.nn.Module, model_config, metadata: dict[str, Any]) -> str | None:
        """Rank 0 starts writing the GOLD checkpoint and returns its path; other ranks write nothing (None)."""
        if self.rank != 0:
            return None
        return str(self.writer.submit(self.dir, model, model_config, metadata))

    def wait(self) -> None:
        self.writer.wait()

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
