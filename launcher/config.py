"""Training configuration: one dataclass per concern, loaded from a JSON file, unknown keys rejected.

A training config JSON has the sections `model`, `optim`, `batch`, `data`, `curriculum`, `eval`, `gold`,
`checkpoint`, `logging`, `health` (optional, like every section with defaults) and the key `deepspeed_config`.
Hyperparameters live here and only here: the DeepSpeed JSON (`ds_configs/*.json`) carries engine settings, and the
launcher fills DeepSpeed's batch, clipping, optimizer and scheduler fields from this config (see docs/DESIGN.md,
"One source of truth per value").

Every field is documented once, in its docstring below; the README's config reference is checked against these.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import ModelConfig, dataclass_from_dict

# The names the trainer gives the val split and the overfit guard's train sample in losses, eval records, GOLD
# baselines and health; `eval.sets` may use neither.
VAL_SET = "val"
TRAIN_SET = "train"


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, cosine decay, one schedule across all phases)."""

    learning_rate: float = 1.5e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 1.5e-5
    """Learning rate at the end of the cosine decay (`max_iters`); the base config uses 10% of peak."""
    warmup_iters: int = 3750
    """Optimizer steps of linear warmup from 0 to `learning_rate`."""
    max_iters: int = 75000
    """Total optimizer steps of the run (tokens = max_iters x global_batch_size x block_size)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on 2-D weights (embedding included); none on norm gains or biases."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping threshold (0 disables)."""
    max_nonfinite_steps: int = 10
    """Stop the run after this many consecutive steps with a NaN/inf loss or gradient (each one's update is skipped)."""

    def __post_init__(self):
        if self.max_iters <= 0:
            raise ValueError(f"optim.max_iters must be positive, got {self.max_iters}")
        if not 0 <= self.warmup_iters < self.max_iters:
            raise ValueError(
                f"optim.warmup_iters ({self.warmup_iters}) must be >= 0 and below optim.max_iters ({self.max_iters})"
            )
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(f"optim.min_lr ({self.min_lr}) must be between 0 and learning_rate ({self.learning_rate})")
        if self.learning_rate <= 0:
            raise ValueError(f"optim.learning_rate must be positive, got {self.learning_rate}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"optim.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.grad_clip and optim.weight_decay must be >= 0")


@dataclass
class BatchConfig:
    """Batch sizes. The global batch is the invariant; gradient accumulation is derived from the world size."""

    micro_batch_size: int = 12
    """Sequences per GPU per forward/backward pass."""
    global_batch_size: int = 96
    """Sequences per optimizer step over all GPUs (base config: 12 x 8 = 96 = 98,304 tokens)."""

    def __post_init__(self):
        if self.micro_batch_size <= 0 or self.global_batch_size <= 0:
            raise ValueError("batch.micro_batch_size and batch.global_batch_size must be positive")
        if self.global_batch_size % self.micro_batch_size != 0:
            raise ValueError(
                f"batch.global_batch_size ({self.global_batch_size}) must be a multiple of batch.micro_batch_size "
                f"({self.micro_batch_size})"
            )

    def valid_world_sizes(self) -> list[int]:
        per_micro = self.global_batch_size // self.micro_batch_size
        return [n for n in range(1, per_micro + 1) if per_micro % n == 0]

    def grad_accum_steps(self, world_size: int) -> int:
        """global / (micro x world); a ValueError naming the GPU counts that work when it is not whole."""
        if self.global_batch_size % (self.micro_batch_size * world_size) != 0:
            raise ValueError(
                f"batch.global_batch_size ({self.global_batch_size}) is not divisible by micro_batch_size "
                f"({self.micro_batch_size}) x world size ({world_size}). With this config run on "
                f"{self.valid_world_sizes()} GPUs, or change batch.micro_batch_size."
            )
        return self.global_batch_size // (self.micro_batch_size * world_size)


@dataclass
class PhaseConfig:
    """One curriculum phase: a token directory trained on until an optimizer step boundary."""

    name: str
    """Phase name used in logs ("circuit", "balanced")."""
    dataset_dir: str
    """Token directory of this phase's training mix (its val split is `<dataset_dir>/val`)."""
    until_step: int | None = None
    """The phase covers steps [previous phase's until_step, until_step); null for the last phase."""


@dataclass
class CurriculumConfig:
    """The phases in order. The phase at step s is a pure function of s, so every rank switches together."""

    phases: list[PhaseConfig] = field(default_factory=list)
    """Phases in training order; all but the last need `until_step`, strictly increasing."""

    def __post_init__(self):
        self.phases = [p if isinstance(p, PhaseConfig) else dataclass_from_dict(PhaseConfig, p, "curriculum.phases")
                       for p in self.phases]
        if not self.phases:
            raise ValueError("curriculum.phases must list at least one phase")
        previous = 0
        for i, phase in enumerate(self.phases):
            last = i == len(self.phases) - 1
            if last and phase.until_step is not None:
                raise ValueError(f"curriculum phase '{phase.name}' is the last phase: set its until_step to null")
            if not last:
                if phase.until_step is None or phase.until_step <= previous:
                    raise ValueError(
                        f"curriculum phase '{phase.name}' needs an until_step greater than {previous} "
                        "(phase boundaries must be strictly increasing optimizer steps)"
                    )
                previous = phase.until_step
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"curriculum phase names must be unique, got {names}")


@dataclass
class DataConfig:
    """Sample order and loading."""

    seed: int = 1234
    """Seed of the per-epoch sample permutations (with the dataset fingerprint and epoch number)."""
    prefetch_batches: int = 4
    """Micro-batches a background thread prepares ahead of the GPU."""
    verify: str = "size"
    """Token directory check on open: "size" (manifest and file sizes, cheap) or "full" (also sha256 and token ids)."""

    def __post_init__(self):
        if self.verify not in ("size", "full"):
            raise ValueError(f"data.verify must be 'size' or 'full', got {self.verify!r}")
        if self.prefetch_batches < 0:
            raise ValueError("data.prefetch_batches must be >= 0")


@dataclass
class EvalConfig:
    """Evaluation: fixed samples per set, sharded across ranks, every `eval_interval` steps."""

    eval_interval: int = 350
    """Optimizer steps between evaluations."""
    eval_iters: int = 200
    """Training micro-batches per eval set: every eval uses the same eval_iters x batch.micro_batch_size samples."""
    eval_seed: int = 1337
    """Seed choosing the fixed eval samples (the same at any world size)."""
    val_dir: str | None = None
    """Val split of the training mix; null means `<last phase dataset_dir>/val` (the distribution GOLD targets)."""
    sets: dict[str, str] = field(default_factory=dict)
    """Held-out eval sets by name (general, domain, code, retrieval) -> token directory."""
    micro_batch_size: int | None = None
    """Rows per eval forward; null: 2 x batch.micro_batch_size (no gradients or saved activations, so twice the rows
    fit where training fits). Changes neither the samples nor, beyond float rounding, the numbers."""
    qa_items: int = 64
    """Grounded QA items (the `qa_set`'s qa_items.jsonl, written by the build) answered and scored at each eval:
    SQuAD v2 EM/F1 and unanswerable handling (docs/AFTER_TRAINING.md, section 4); 0: off."""
    qa_set: str = "retrieval"
    """The eval set whose directory holds the QA items."""

    def __post_init__(self):
        if self.eval_interval <= 0 or self.eval_iters <= 0:
            raise ValueError("eval.eval_interval and eval.eval_iters must be positive")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ValueError(f"eval.micro_batch_size must be positive or null (2 x batch.micro_batch_size), got "
                             f"{self.micro_batch_size}")
        if self.qa_items < 0:
            raise ValueError(f"eval.qa_items must be >= 0 (0: no grounded QA at evals), got {self.qa_items}")


@dataclass
class GoldConfig:
    """The three guards a new best val loss must pass to become the GOLD checkpoint."""

    enabled: bool = True
    """Save GOLD checkpoints at all."""
    max_val_train_ratio: float = 5.0
    """Overfit guard: refuse when val_loss / train_loss exceeds this."""
    max_consecutive_rises: int = 2
    """Trend guard: refuse when the val loss rose in this many (or more) consecutive evals just before this one."""
    max_regression: float = 0.20
    """Regression guard: refuse when any eval set's loss is more than this fraction above its baseline."""
    baseline_after_step: int | None = None
    """Baselines are each set's loss at the first eval at or after this step; null means optim.warmup_iters."""


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints for resuming (GOLD checkpoints are separate, under `<dir>/<model_name>/gold`)."""

    dir: str = "checkpoints"
    """Root folder; a run writes to `<dir>/<model_name>/`."""
    interval: int | None = 1000
    """Optimizer steps between periodic checkpoints; null: by the clock only (`interval_minutes`). The last step and a
    SIGTERM also save."""
    interval_minutes: float | None = None
    """Minutes of wall time between periodic checkpoints, counted from the end of the last save (or the run's start):
    bounds the work a preempted pod loses. Rank 0's clock decides and the decision rides in the step's existing
    all-reduce, so every rank saves at the same step. With `interval` too, whichever comes first; null: steps only."""
    keep_last: int = 3
    """Periodic checkpoints kept; older ones are deleted once a newer one is complete."""

    def __post_init__(self):
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"checkpoint.interval must be a positive number of steps or null, got {self.interval}")
        if self.interval_minutes is not None and not self.interval_minutes > 0:
            raise ValueError("checkpoint.interval_minutes must be a positive number of minutes or null, got "
                             f"{self.interval_minutes}")
        if self.interval is None and self.interval_minutes is None:
            raise ValueError("checkpoint.interval and checkpoint.interval_minutes are both null: the run would save "
                             "only at its end; set one (the 750M config uses interval_minutes: 30)")
        if self.keep_last <= 0:
            raise ValueError("checkpoint.keep_last must be positive")


@dataclass
class LoggingConfig:
    """Console, JSONL and TensorBoard output (rank 0 only)."""

    log_interval: int = 10
    """Optimizer steps between train log records."""
    log_dir: str = "logs/train"
    """JSONL logs: `<log_dir>/<model_name>_train.jsonl` and `<model_name>_eval.jsonl`."""
    tensorboard_dir: str = "runs"
    """TensorBoard event files under `<tensorboard_dir>/<model_name>/`."""
    peak_flops_per_device: float = 989e12
    """Peak FLOP/s of one device for MFU (default: H100 SXM dense bf16)."""

    def __post_init__(self):
        if self.log_interval <= 0 or self.peak_flops_per_device <= 0:
            raise ValueError("logging.log_interval and logging.peak_flops_per_device must be positive")


@dataclass
class HealthConfig:
    """Run-health thresholds: five success criteria judged at every eval (`launcher/health.py`).

    Monitoring only: a verdict never stops the run, and this section is left out of the config fingerprint, so
    changing a threshold does not block a resume. Defaults assume the base config's run (an eval every 350 steps
    of 75,000).
    """

    window_evals: int = 8
    """Evals K the trend checks look back over (retrieval plateau, code drift, grounding gain); 8 evals are
    2,800 steps at the base config's eval_interval: long enough that one noisy eval cannot decide, short enough to warn
    within a few hours."""
    retrieval_set: str = "retrieval"
    """The eval set (a name in eval.sets) whose loss must keep falling (criterion 1)."""
    retrieval_watch_improvement: float = 0.015
    """Watch when the retrieval loss fell less than this fraction over the last window_evals evals; a loss still
    learning falls about 1.5% or more per 2,800 steps through most of a 75k-step cosine schedule."""
    retrieval_fail_improvement: float = 0.005
    """Failing (plateau) when it fell less than this fraction over the window: below 0.5% the loss is flat (the
    eval samples are fixed, so this is the weights not moving, not sampling noise)."""
    code_set: str = "code"
    """The eval set whose loss must track the val loss (criterion 2)."""
    code_max_gap: float = 0.5
    """Failing when |code - val| / val exceeds this; code is more predictable than prose, so its loss sits below
    val by a mix-dependent margin (0.3-0.4 is ordinary), and only a gap no mix explains should fail."""
    code_watch_drift: float = 0.05
    """Watch when (code - val) / val rose by more than this over the window (0.05 = 5 points of val): code losing
    ground on val, before the gap itself is alarming. Signed on purpose: a code loss climbing from below val towards
    it shrinks |code - val| yet is the forgetting this criterion is for; code improving faster than val is fine."""
    code_fail_drift: float = 0.15
    """Failing when (code - val) / val rose by more than this over the window: code diverging from val."""
    stability_sets: list[str] = field(default_factory=lambda: ["general", "domain"])
    """Eval sets that must stay near their GOLD baselines (criterion 3; the limit is gold.max_regression)."""
    stability_watch_share: float = 0.5
    """Watch when a stability set has used this share of the GOLD regression allowance (0.5 with max_regression
    0.20: 10% above baseline), so forgetting shows before GOLD starts refusing saves."""
    gold_watch_evals: int = 5
    """Watch when the GOLD checkpoint is this many evals old (or none passed the guards since the baseline step);
    while the val loss falls a new GOLD comes every eval or two."""
    gold_fail_evals: int = 15
    """Failing when the GOLD checkpoint is this many evals old (5,250 steps at the base config's interval): the val loss
    stopped improving or every new best is refused."""
    grounding_min_ll_gain: float = 0.0
    """Failing when the retrieval probe's log-likelihood gain from the passage is at or below this (nats/token):
    the passage does not make the answer more likely, so the model ignores its context (criterion 5)."""
    grounding_min_bucket_ratio: float = 0.5
    """Watch when the worst position bucket's exact match is below this share of the best bucket's: answers are
    found at some positions of the context only."""
    grounding_max_answered_otherwise: float = 0.5
    """Watch when more than this share of the grounded-QA unanswerable questions got an answer other than "not in
    the context" (the model invents answers)."""

    def __post_init__(self):
        if isinstance(self.window_evals, bool) or not isinstance(self.window_evals, int) or self.window_evals < 1:
            raise ValueError(f"health.window_evals must be an integer >= 1, got {self.window_evals!r}")
        if not 0 <= self.retrieval_fail_improvement <= self.retrieval_watch_improvement:
            raise ValueError(
                f"health.retrieval_fail_improvement ({self.retrieval_fail_improvement}) must be >= 0 and at most "
                f"health.retrieval_watch_improvement ({self.retrieval_watch_improvement})")
        if not isinstance(self.stability_sets, list) or not all(isinstance(n, str) for n in self.stability_sets):
            raise ValueError(f"health.stability_sets must be a list of eval set names, got {self.stability_sets!r}")
        if not self.code_max_gap > 0:
            raise ValueError(f"health.code_max_gap must be positive (a fraction of val), got {self.code_max_gap}")
        if not 0 <= self.code_watch_drift <= self.code_fail_drift:
            raise ValueError(f"health.code_watch_drift ({self.code_watch_drift}) must be >= 0 and at most "
                             f"health.code_fail_drift ({self.code_fail_drift})")
        if not 0 < self.stability_watch_share <= 1:
            raise ValueError(f"health.stability_watch_share must be in (0, 1], got {self.stability_watch_share}")
        if not 1 <= self.gold_watch_evals <= self.gold_fail_evals:
            raise ValueError(f"health.gold_watch_evals ({self.gold_watch_evals}) must be >= 1 and at most "
                             f"health.gold_fail_evals ({self.gold_fail_evals})")
        if not 0 <= self.grounding_min_bucket_ratio <= 1:
            raise ValueError(
                f"health.grounding_min_bucket_ratio must be in [0, 1], got {self.grounding_min_bucket_ratio}")


SECTIONS = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "batch": BatchConfig,
    "data": DataConfig,
    "curriculum": CurriculumConfig,
    "eval": EvalConfig,
    "gold": GoldConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "health": HealthConfig,
}


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig
    optim: OptimConfig
    batch: BatchConfig
    curriculum: CurriculumConfig
    eval: EvalConfig
    data: DataConfig = field(default_factory=DataConfig)
    gold: GoldConfig = field(default_factory=GoldConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    deepspeed_config: str = "ds_configs/zero2_bf16.json"
    """DeepSpeed engine JSON (ZeRO stage, bf16, buckets); `--deepspeed_config` on the command line overrides it."""

    def __post_init__(self):
        if self.gold.baseline_after_step is not None and self.gold.baseline_after_step < 0:
            raise ValueError("gold.baseline_after_step must be >= 0 or null")
        last_boundary = self.curriculum.phases[-2].until_step if len(self.curriculum.phases) > 1 else 0
        if last_boundary >= self.optim.max_iters:
            raise ValueError(
                f"the last curriculum boundary (step {last_boundary}) is not below optim.max_iters "
                f"({self.optim.max_iters}); the last phase would never train"
            )

    @property
    def eval_micro_batch_size(self) -> int:
        return self.eval.micro_batch_size or 2 * self.batch.micro_batch_size

    @property
    def gold_baseline_step(self) -> int:
        return self.optim.warmup_iters if self.gold.baseline_after_step is None else self.gold.baseline_after_step

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        if not isinstance(values, dict):
            raise ValueError("a training config must be a JSON object")
        known = set(SECTIONS) | {"deepspeed_config"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown top-level config key(s) {unknown}; known keys are {sorted(known)}")
        missing = [name for name in ("model", "optim", "batch", "curriculum", "eval") if name not in values]
        if missing:
            raise ValueError(f"training config is missing section(s) {missing}")
        kwargs: dict[str, Any] = {
            name: dataclass_from_dict(section_cls, values[name], name)
            for name, section_cls in SECTIONS.items()
            if name in values
        }
        if "deepspeed_config" in values:
            kwargs["deepspeed_config"] = values["deepspeed_config"]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist; see configs/ for examples")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from e
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that change what is trained (resume refuses a checkpoint with another one).

        Left out, so that they may change on a resume: where files go and how often they are written or logged
        (`checkpoint`, `logging`), the run-health thresholds, how the same numbers are computed or fed
        (`model.fused_kernels`, `model.compile`, `model.attention_backend`, the kernel self-check's own advice;
        `data.prefetch_batches`, `data.verify`, `eval.micro_batch_size`, the grounded QA's `eval.qa_items` and
        `eval.qa_set`), the NaN patience (`optim.max_nonfinite_steps`), the ds_config's
        path (its ZeRO stage and precision are recorded and checked on their own), and dataset paths (a pod mounts
        the same data elsewhere; the data's identity is checked by the datasets' own fingerprints, eval sets
        included)."""
        values = self.to_dict()
        for volatile in ("checkpoint", "logging", "health", "deepspeed_config"):
            values.pop(volatile)
        values["model"].pop("fused_kernels")
        values["model"].pop("compile")
        values["model"].pop("attention_backend")
        if values["model"]["attention"] == "causal":  # the only attention before the field existed: old hashes hold
            values["model"].pop("attention")
        values["data"].pop("prefetch_batches")
        values["data"].pop("verify")
        values["optim"].pop("max_nonfinite_steps")
        for phase in values["curriculum"]["phases"]:
            phase.pop("dataset_dir")
        values["eval"]["val_dir"] = None
        for measured_only in ("micro_batch_size", "qa_items", "qa_set"):  # how evals read and score, not training
            values["eval"].pop(measured_only)
        values["eval"]["sets"] = sorted(values["eval"]["sets"])
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
