"""The training run: `Trainer.train()` is the loop; `launcher/run_plan.py` checks every input before it starts.

Each optimizer step is the same sequence of events: data (the step's micro-batches, a pure function of the step),
forward/backward, the step's one collective (loss, NaN and stop flags), log, eval, save. Every component owns its
cadence and its resume state: the curriculum (`data/curriculum.py`), the throughput meter (`launcher/throughput.py`),
GOLD (`launcher/gold.py`), run health (`launcher/health.py`), the logs (`launcher/run_log.py`), checkpoints
(`launcher/checkpointing.py`) and the probes and grounded QA at each eval.

`launcher/train.py` is the entry point; this module is importable so tests and benchmarks build the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import signal
import time
from typing import Any

import torch

from data.curriculum import Curriculum
from data.loader import PrefetchLoader, StepBatch, read_micro_batch
from data.paths import resolve
from data.sampler import StepSampler
from launcher import distributed as dist
from launcher import faults, health
from launcher.checkpointing import (
    CheckpointManager,
    CheckpointSpaceError,
    checkpoint_bytes_estimate,
    complete_checkpoints,
    folder_bytes,
    volume_free_bytes,
)
from launcher.config import TRAIN_SET, VAL_SET, TrainConfig
from launcher.engine import (
    ZERO2_FP32_ACCUM,
    accumulation_summary,
    build_engine,
    precision_of,
    set_lr_for_step,
    zero_stage,
)
from launcher.evaluation import evaluate, fixed_sets
from launcher.gold import Gold
from launcher.grounded_qa import score_items
from launcher.health import HealthMonitor
from launcher.probes import probe_summary, run_probes
from launcher.run_log import RunLog
from launcher.run_plan import RunPlan, resume_identity
from launcher.throughput import ThroughputMeter, flops_per_token, format_seconds

TRAIN_SAMPLE_DIVISOR = 4  # the overfit guard's train sample: eval_iters / 4 micro-batches (Trainer._train_eval_set)


def host_values_to_device(values: list[float], device: torch.device) -> torch.Tensor:
    """Host scalars as a float32 tensor on `device` without stalling the host: `torch.tensor(values, device="cuda")`
    copies from pageable memory, which waits until the GPU has finished everything queued before it. From pinned
    memory the copy is queued like a kernel (the caching host allocator keeps the buffer alive until it is done)."""
    host = torch.tensor(values, dtype=torch.float32)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _fingerprint_int(fingerprint: str) -> int:
    # Fits a float64 exactly (48 bits), so the agreement all-reduce compares it without rounding.
    return int(hashlib.sha256(fingerprint.encode()).hexdigest()[:12], 16)


@dataclasses.dataclass
class StepOutcome:
    """What every rank learns from the step's one collective."""

    loss: float
    """The global mean loss of the step; NaN when any rank's was not finite."""
    nonfinite: bool
    stop: bool
    """A rank heard SIGTERM/SIGINT: all ranks save at this step and exit."""
    save_by_clock: bool
    """checkpoint.interval_minutes has passed on rank 0's clock."""


def check_kernels_on_device(cfg: TrainConfig, device: torch.device) -> None:
    """Fused Triton kernels vs the reference at the model's widths on this device, before any training: a kernel
    that builds but computes wrong gradients must stop the run now, not spoil it quietly (model/kernels/selfcheck)."""
    from model.kernels import triton_available
    from model.kernels.selfcheck import check_fused_kernels

    if not triton_available():
        dist.print0("fused_kernels: Triton is not importable here; the model uses the PyTorch reference")
        return
    # At the micro-batch's shape too: the JIT specializes on the row count, so this runs the variant training runs.
    problems = check_fused_kernels(device, cfg.model.n_embd, cfg.model.ffn_hidden, cfg.model.norm_eps,
                                   rows=cfg.batch.micro_batch_size * cfg.model.block_size)
    if problems:
        raise RuntimeError(
            f"the fused Triton kernels disagree with the PyTorch reference on {torch.cuda.get_device_name(device)}: "
            + "; ".join(problems)
            + ". Set model.fused_kernels to false in the config to train with the reference, and report this."
        )
    dist.print0(f"fused kernels checked against the reference on {device}: RMSNorm and SwiGLU forward/backward ok")


def eval_scalars(record: dict[str, Any], probe: dict[str, float]) -> dict[str, float]:
    """The TensorBoard scalars of an eval record (health's are added by the trainer on rank 0)."""
    scalars = {f"eval/{k}": v for k, v in record["losses"].items()}
    scalars.update({f"eval_bpb/{k}": v for k, v in record["bits_per_byte"].items()})  # bits per byte, beside each loss
    scalars.update(probe)  # TensorBoard: probe/induction_score, probe/retrieval_em_b0..7, ...
    qa = record.get("qa") or {}
    # qa/exact, qa/f1, qa/no_answer_not_in_context, ...
    scalars.update({f"qa/{k}": v for k, v in qa.items() if k not in ("items", "answerable", "unanswerable")})
    scalars["eval/train"] = record["train_loss"]
    scalars["eval/seconds"], scalars["eval/share_of_wall_time"] = record["eval_seconds"], record["eval_share"]
    if record["gold"]["best_val_loss"] is not None:
        scalars["gold/best_val_loss"] = record["gold"]["best_val_loss"]
    scalars["gold/saved"] = 1.0 if record["gold_saved"] else 0.0
    return scalars


class Trainer:
    def __init__(self, args: argparse.Namespace, plan: RunPlan):
        self.args = args
        self.plan = plan
        cfg = self.cfg = plan.cfg
        self.model_name = args.model_name
        self.stop_signal: str | None = None
        self.loader: PrefetchLoader | None = None

        dist.init_distributed()
        self.rank, self.world = dist.rank(), dist.world_size()
        if self.world != plan.world_size:
            raise ValueError(f"world size {self.world} differs from the launcher's announcement {plan.world_size}")
        from deepspeed.accelerator import get_accelerator

        self.device = torch.device(get_accelerator().current_device_name())
        self.pin_memory = self.device.type == "cuda"
        if cfg.model.fused_kernels and self.device.type == "cuda":
            check_kernels_on_device(cfg, self.device)

        from model.transformer import Transformer

        # Same init on every rank (DeepSpeed also broadcasts rank 0's weights); dropout streams differ per rank.
        torch.manual_seed(cfg.data.seed)
        model = Transformer(cfg.model)
        self.num_params = model.num_params()
        self.flops_per_token = flops_per_token(self.num_params, cfg.model.n_layer, cfg.model.n_embd,
                                               cfg.model.block_size)
        self.engine = build_engine(model, cfg, plan.ds_config)
        torch.manual_seed(cfg.data.seed + 1 + self.rank)

        self.curriculum = Curriculum(cfg.curriculum.phases)
        self.samplers = [StepSampler(ds.num_samples(cfg.model.block_size), cfg.batch.global_batch_size,
                                     cfg.data.seed, ds.fingerprint) for ds in plan.phases]
        count = cfg.eval.eval_iters * cfg.batch.micro_batch_size
        named = {VAL_SET: plan.val, **plan.eval_sets}
        # A document model trains no target after an EOT (data.loader.read_micro_batch); its evals score the same.
        self.document_targets = cfg.model.attention == "document"
        self.eval_sets = fixed_sets(named, cfg.model.block_size, count, cfg.eval.eval_seed, self.rank, self.world,
                                    self.document_targets)
        self.probes = plan.probes  # induction + retrieval probes (docs/PROBES.md), built by plan_run
        self._train_eval_cache: dict[int, Any] = {}
        self.gold = Gold(cfg.gold, cfg.gold_baseline_step, plan.ckpt_root / "gold", self.rank)
        precision = precision_of(plan.ds_config)
        self.ckpt = CheckpointManager(plan.ckpt_root, cfg.checkpoint.keep_last,
                                      expected_bytes=checkpoint_bytes_estimate(self.num_params, precision))
        if self.rank == 0:
            self.warn_if_the_volume_is_small(4 if precision == "fp32" else 2)
        self.accum = accumulation_summary(plan.ds_config)

        self.step = 0
        self.eval_owed = False
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.last_saved_step: int | None = None
        # checkpoint.interval_minutes counts wall time from here, then from the end of each save (rank 0's clock).
        self.save_clock = self.wall_clock0 = time.monotonic()
        self.save_seconds_total = 0.0
        self.eval_seconds_total = 0.0  # evaluation and probes, for the share of wall time each eval record carries
        # Lineage: a resume continues from its checkpoint's state, so everything this run's folder holds from after
        # that step (the newer work of a branch being left, a half-written save, a GOLD chosen after it) is moved
        # aside before anything is loaded or pruned; the logs' records past it go aside too (RunLog).
        stamp = self.run_started = time.strftime("%Y%m%d-%H%M%S")
        if self.rank == 0:
            removed = self.ckpt.remove_incomplete()
            if removed:
                dist.print0(f"removed unfinished checkpoint folders {removed} (saves that were killed half-way)")
            if plan.resume_path is not None:
                moved = self.ckpt.set_aside_after(int(plan.resume_meta["step"]), self.gold.dir, stamp)
                if moved:
                    dist.print0(f"resuming from step {plan.resume_meta['step']}: moved the newer {moved} of "
                                f"{plan.ckpt_root} to {plan.ckpt_root / f'abandoned-{stamp}'} (kept, not deleted); "
                                "their log records go to the logs' .abandoned-" + stamp + " files")
        dist.barrier()
        if plan.resume_path is not None:
            client = self.ckpt.load(self.engine, plan.resume_path, universal=plan.resume_universal)
            self.step = int(client["step"])
            self.gold.load_state_dict(client["gold"])
            self.nonfinite_total = int(client.get("nonfinite_total", 0))
            self.eval_owed = bool(client.get("eval_owed", False))
            self.last_saved_step = self.step
        self.log = RunLog(str(resolve(cfg.logging.log_dir)), str(resolve(cfg.logging.tensorboard_dir)),
                          self.model_name, self.rank == 0,
                          resume_step=self.step if plan.resume_path is not None else None,
                          aside_suffix=f".abandoned-{stamp}")
        # Run health is judged on rank 0 from every eval record of the run. RunLog has already cut the eval log back
        # to the resumed step, so reading it back gives the history an uninterrupted run would hold.
        self.health = HealthMonitor(cfg.health, self.log.eval_records()) if self.rank == 0 else None
        self.throughput: ThroughputMeter | None = None  # started with the loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        faults.install(self)  # test-only: a no-op unless a RAGLLM_FAULT_* variable is set (launcher/faults.py)

    # -- signals --------------------------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        # Only a flag: save_checkpoint is collective, so the ranks agree on the stop step first (see DESIGN,
        # "Stopping on a signal").
        self.stop_signal = signal.Signals(signum).name

    # -- data -----------------------------------------------------------------------------------------------------

    def make_batch(self, step: int) -> StepBatch:
        """This rank's micro-batches of optimizer step `step` (runs on the prefetch thread)."""
        phase, offset = self.curriculum.phase_at(step)
        ds = self.plan.phases[phase]
        batch = StepBatch(step=step, phase=phase, step_in_phase=offset)
        for ids in self.samplers[phase].micro_batches(offset, self.rank, self.world, self.cfg.batch.micro_batch_size):
            x, y = read_micro_batch(ds, ids, self.cfg.model.block_size, self.pin_memory,
                                    document_targets=self.document_targets)
            batch.micro_batches.append((x, y, ids))
        return batch

    def check_agreement(self, step: int) -> None:
        """All ranks must agree on (phase, offset, dataset fingerprint) at `step`; stop the run if not."""
        phase, offset = self.curriculum.phase_at(step)
        mine = [float(phase), float(offset), float(_fingerprint_int(self.plan.phases[phase].fingerprint))]
        low, high = dist.all_reduce(mine, "min"), dist.all_reduce(mine, "max")
        if low != high:
            raise SystemExit(f"rank {self.rank}: ranks disagree on the curriculum at step {step} (phase, offset, "
                             f"fingerprint) min {low} max {high}: the ranks see different configs or data; stopping")

    # -- eval and GOLD --------------------------------------------------------------------------------------------

    def _train_eval_set(self, phase: int):
        """The overfit guard's fixed train sample: a quarter of what each eval set reads (TRAIN_SAMPLE_DIVISOR). The
        guard asks whether val is within 5x of train; at 750M a quarter is still 600 sequences (614k tokens), whose
        mean loss is far more precise than that needs, and it saves about 1.5% of the run's wall time (docs/
        PERFORMANCE.md, "What evaluation costs"). The val and eval sets keep eval_iters x micro-batch samples."""
        if phase not in self._train_eval_cache:
            cfg = self.cfg
            iters = max(1, cfg.eval.eval_iters // TRAIN_SAMPLE_DIVISOR)
            self._train_eval_cache[phase] = fixed_sets(
                {TRAIN_SET: self.plan.phases[phase]}, cfg.model.block_size,
                iters * cfg.batch.micro_batch_size, cfg.eval.eval_seed, self.rank, self.world,
                self.document_targets)[0]
        return self._train_eval_cache[phase]

    def run_eval(self, lr: float) -> dict[str, Any]:
        """The eval of the current step, collective: every set's loss and bits per byte, the probes, grounded QA,
        the GOLD decision (and its save), then run health, the logs and the console lines (rank 0)."""
        cfg = self.cfg
        # The phase that trained the last step (the one the model is currently fitting).
        phase, _ = self.curriculum.phase_at(max(0, self.step - 1))
        t0 = time.perf_counter()
        result = evaluate(self.engine.module, [*self.eval_sets, self._train_eval_set(phase)],
                          cfg.eval_micro_batch_size, self.device, pin_memory=self.pin_memory)
        losses, bits_per_byte = result.losses, result.bits_per_byte
        train_loss = losses.pop(TRAIN_SET)
        bits_per_byte.pop(TRAIN_SET)
        probe = {} if self.probes is None else run_probes(self.engine.module, self.probes, self.rank, self.world,
                                                          self.device, all_reduce=dist.all_reduce)
        qa = None
        if self.plan.qa_items:  # SQuAD v2 EM/F1 on held-out items (launcher/grounded_qa.py)
            qa = score_items(self.engine.module, self.plan.qa_items, self.device, self.rank, self.world,
                             all_reduce=dist.all_reduce)
        decision = self.gold.decide(self.step, losses[VAL_SET], train_loss,
                                    {k: v for k, v in losses.items() if k != VAL_SET})
        gold_path = None
        if decision["save"]:
            gold_path = self.gold.save(self.engine.module, cfg.model, self._gold_metadata(losses, train_loss))
        tokens = self.step * cfg.batch.global_batch_size * cfg.model.block_size
        eval_seconds = time.perf_counter() - t0
        self.eval_seconds_total += eval_seconds
        eval_share = self.eval_seconds_total / max(1e-9, time.monotonic() - self.wall_clock0)
        record = {"step": self.step, "tokens": tokens, "phase": self.curriculum.names[phase], "lr": lr,
                  "losses": losses, "bits_per_byte": bits_per_byte, "train_loss": train_loss, "gold": decision,
                  "gold_saved": gold_path,
                  # Seconds of this eval (losses of every set, probes, the GOLD decision) and the share of the run's
                  # wall time spent in evals so far (this process's run, from its start or resume).
                  "eval_seconds": eval_seconds, "eval_share": eval_share}
        if probe:
            record["probe"] = {k.removeprefix("probe/"): v for k, v in probe.items()}
        if qa is not None:
            record["qa"] = qa
        scalars = eval_scalars(record, probe)
        health_lines = []
        if self.health is not None:
            verdicts, health_lines = self.health.observe(record)
            record["health"] = health.to_record(verdicts)
            scalars.update(health.scalars(verdicts))
        self.log.eval(record, scalars)
        pretty = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        dist.print0(f"eval step {self.step}: {pretty} train {train_loss:.4f} | GOLD: {decision['reason']}")
        if probe:
            dist.print0(f"  {probe_summary(probe)}")
        for line in health_lines:
            dist.print0(f"  {line}")
        return record

    def _gold_metadata(self, losses: dict[str, float], train_loss: float) -> dict[str, Any]:
        cfg = self.cfg
        return {"model_name": self.model_name, "step": self.step,
                "tokens": self.step * cfg.batch.global_batch_size * cfg.model.block_size,
                "phase": self.curriculum.names[self.curriculum.phase_at(max(0, self.step - 1))[0]],
                "losses": losses, "train_loss": train_loss, "config_fingerprint": cfg.fingerprint(),
                "data_fingerprints": [ds.fingerprint for ds in self.plan.phases], "train_config": cfg.to_dict(),
                "weights_dtype": str(next(self.engine.module.parameters()).dtype)}

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def warn_if_the_volume_is_small(self, weight_bytes: int) -> None:
        """Rank 0, at start: warn when the checkpoint volume cannot hold keep_last + 1 saves (the newest is written
        before the oldest is pruned) plus GOLD. What this run already holds there counts as room: it is replaced."""
        root, keep = self.plan.ckpt_root, self.cfg.checkpoint.keep_last
        each, gold = self.ckpt.expected_bytes, self.num_params * weight_bytes
        held = sum(folder_bytes(p) for _, p in complete_checkpoints(root))
        held += folder_bytes(self.gold.dir) if self.gold.dir.is_dir() else 0
        free = volume_free_bytes(root)
        need = (keep + 1) * each + 2 * gold  # GOLD is written beside the old one, then swapped
        if free + held < need:
            dist.print0(f"warning: the checkpoint volume of {root} has {free / 1e9:.2f} GB free (+{held / 1e9:.2f} GB "
                        f"this run's checkpoints hold), but the run needs up to {need / 1e9:.2f} GB there at a time: "
                        f"{keep + 1} checkpoints of ~{each / 1e9:.2f} GB (checkpoint.keep_last {keep}, plus the one "
                        f"being written) and GOLD (~{gold / 1e9:.2f} GB, twice while it is replaced). A save that does "
                        "not fit stops the run cleanly; to avoid that, free space, lower checkpoint.keep_last or "
                        "point checkpoint.dir at a larger volume.")

    def save_checkpoint(self, eval_due: bool = False) -> None:
        if self.last_saved_step == self.step:
            return
        t0 = time.perf_counter()
        try:
            self.gold.wait()  # the GOLD state this checkpoint records is on disk before it
        except RuntimeError as e:  # rank 0's GOLD write failed (a full volume, most likely): a clear stop
            raise CheckpointSpaceError(
                f"error: {e}. The volume of {self.gold.dir} has {volume_free_bytes(self.gold.dir) / 1e9:.2f} GB "
                "free; the previous GOLD stays in place (model/io.py swaps a complete new one in). Free space or "
                "point checkpoint.dir at a larger volume, then run the same command again (--resume auto).") from None
        client = {"step": self.step, "gold": self.gold.state_dict(), "nonfinite_total": self.nonfinite_total,
                  "eval_owed": eval_due,
                  "config_fingerprint": self.cfg.fingerprint(), "train_config": self.cfg.to_dict()}
        meta = {**resume_identity(self.cfg, self.plan.phases, self.plan.val, self.plan.eval_sets),
                "world_size": self.world, "model_name": self.model_name,
                "precision": precision_of(self.plan.ds_config), "zero_stage": zero_stage(self.plan.ds_config),
                "attention": self.cfg.model.attention,  # absent: written before model.attention, so causal
                # Lineage: which run wrote it and where that run started from (null: a fresh start).
                "run_started": self.run_started,
                "parent": str(self.plan.resume_path) if self.plan.resume_path is not None else None}
        path = self.ckpt.save(self.engine, self.step, client, meta)
        self.last_saved_step = self.step
        seconds = time.perf_counter() - t0
        self.save_seconds_total += seconds
        self.save_clock = time.monotonic()
        if self.rank == 0:
            size = self.ckpt.expected_bytes  # measured by the save: the size of this checkpoint
            share = self.save_seconds_total / max(1e-9, self.save_clock - self.wall_clock0)
            dist.print0(f"checkpoint step {self.step} saved to {path} in {seconds:.1f}s ({size / 1e9:.2f} GB); "
                        f"saving has taken {share:.1%} of this run's wall time")
            self.log.train({"step": self.step, "event": "checkpoint", "path": str(path), "seconds": seconds,
                            "bytes": size, "save_share": share},
                           {"checkpoint/save_seconds": seconds, "checkpoint/save_share": share})

    # -- the loop -------------------------------------------------------------------------------------------------

    def describe(self) -> None:
        cfg, acc = self.cfg, self.accum
        dist.print0(f"model {self.model_name}: {self.num_params:,} parameters, {self.flops_per_token / 1e9:.3f} "
                    f"GFLOP/token; world size {self.world} on {self.device.type}")
        dist.print0(f"batch: global {cfg.batch.global_batch_size} = micro {cfg.batch.micro_batch_size} x "
                    f"{self.world} ranks x {acc['steps']} accumulation steps "
                    f"({cfg.batch.global_batch_size * cfg.model.block_size:,} tokens/step)")
        dist.print0(self.plan.precision_note)
        dist.print0(self.plan.qa_note)
        hint = "" if acc["dtype"] == "fp32" or acc["steps"] == 1 else (
            f"; for fp32 accumulation use --deepspeed_config {ZERO2_FP32_ACCUM} (docs/TRAINING.md)")
        dist.print0(f"gradient accumulation: {acc['steps']} micro-steps, accumulated in {acc['dtype']} "
                    f"(params {acc['param_dtype']}, ZeRO stage {acc['zero_stage']}), reduced across ranks in "
                    f"{acc['reduce_dtype']}{hint}" + (f" [{acc['note']}]" if acc["note"] else ""))
        ck = cfg.checkpoint
        cadence = " and ".join(([f"every {ck.interval} steps"] if ck.interval else [])
                               + ([f"every {ck.interval_minutes:g} minutes of wall time"] if ck.interval_minutes
                                  else []))
        dist.print0(f"checkpoints: {cadence}{' (whichever comes first)' if ' and ' in cadence else ''}, at the last "
                    f"step and on SIGTERM; the last "
                    f"{ck.keep_last} kept in {self.plan.ckpt_root}")
        phases = ", ".join(f"{n} from step {self.curriculum.phase_start(i)} ({self.plan.phases[i].directory}, "
                           f"{self.plan.phases[i].num_tokens:,} tokens)" for i, n in enumerate(self.curriculum.names))
        dist.print0(f"curriculum: {phases}")
        if self.plan.resume_path is not None:
            phase, offset = self.curriculum.phase_at(min(self.step, cfg.optim.max_iters - 1))
            dist.print0(f"resumed from {self.plan.resume_path} at step {self.step} (phase "
                        f"{self.curriculum.names[phase]}, step {offset} of the phase)")

    def train(self) -> None:
        cfg = self.cfg
        max_iters = cfg.optim.max_iters
        self.describe()
        if self.step >= max_iters:
            if self.eval_owed:  # stopped by a signal on the last step, before its eval
                self.run_eval(set_lr_for_step(self.engine, self.step))
            dist.print0(f"nothing to do: the run is at step {self.step} of max_iters {max_iters}")
            return
        self.check_agreement(self.step)
        lr = set_lr_for_step(self.engine, self.step)
        if self.step == 0 or self.eval_owed:
            # Step 0: the starting point of every loss curve. eval_owed: a stop signal saved this step's checkpoint
            # instead of running its eval.
            self.run_eval(lr)
        self.loader = PrefetchLoader(self.make_batch, self.step, max_iters, cfg.data.prefetch_batches)
        self.throughput = ThroughputMeter(cfg.batch.global_batch_size * cfg.model.block_size, self.flops_per_token,
                                          cfg.logging.peak_flops_per_device * self.world, max_iters,
                                          cfg.logging.log_interval, start_step=self.step)
        for batch in self.loader:  # data: this rank's micro-batches of the step, read ahead on a thread
            step = batch.step
            if self.curriculum.is_switch_step(step):
                self.switch_phase(batch)
            lr = set_lr_for_step(self.engine, step)
            loss_sum = self.forward_backward(batch)
            outcome = self.reduce_step(loss_sum, len(batch.micro_batches))
            self.step = step + 1
            self.count_nonfinite(step, outcome)
            self.throughput.add(outcome.loss)
            if self.throughput.should_log(self.step):
                self.log_train(batch, lr, outcome.loss)
            with self.throughput.paused():
                if outcome.stop:
                    self.stop_and_save()
                    return
                if self.should_eval(self.step):
                    self.run_eval(lr)
                if self.should_save(self.step, outcome.save_by_clock):
                    self.save_checkpoint()
        dist.print0(f"training finished at step {self.step}; GOLD checkpoint: "
                    f"{self.gold.dir if self.gold.best_step is not None else 'none saved'}")

    # -- the events of a step -------------------------------------------------------------------------------------

    def switch_phase(self, batch: StepBatch) -> None:
        """The first step of a curriculum phase: every rank checks it agrees, then the switch is logged."""
        step = batch.step
        self.check_agreement(step)
        name, previous = self.curriculum.names[batch.phase], self.curriculum.names[batch.phase - 1]
        directory = self.plan.phases[batch.phase].directory
        dist.print0(f"phase switch at step {step}: {previous} -> {name} ({directory})")
        self.log.train({"step": step, "event": "phase_switch", "phase": name, "from_phase": previous,
                        "dataset_dir": str(directory)}, {"train/phase": float(batch.phase)})

    def micro_step_loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """The forward pass of one micro-batch of optimizer step `step` (launcher/faults.py wraps it in tests)."""
        _, loss = self.engine(x, y)
        return loss

    def forward_backward(self, batch: StepBatch) -> torch.Tensor:
        """Forward, backward and the engine's step for each micro-batch (DeepSpeed applies the update at the last);
        the summed loss, on the device."""
        # Micro-step losses are summed on the device: reading one (float(loss)) would stall the host until the GPU
        # finished that micro-step, instead of letting it queue the next one (docs/DESIGN.md, "The GPU never waits
        # on the host").
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for x, y, _ in batch.micro_batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = self.micro_step_loss(x, y, batch.step)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().float()
        return loss_sum

    def reduce_step(self, loss_sum: torch.Tensor, micro_steps: int) -> StepOutcome:
        """The step's one collective, built on the device: the global loss, the micro-step count, the NaN flag, the
        stop flag and the save-by-the-clock flag (MAX via sum > 0). Its one host read is the step's only one: every
        rank must know now whether to stop, to save, and whether the update was skipped."""
        local_bad = (~torch.isfinite(loss_sum)).to(torch.float32)
        host_values = host_values_to_device([float(micro_steps), 1.0 if self.stop_signal else 0.0,
                                             1.0 if self.clock_save_due() else 0.0], self.device)
        reduced = dist.all_reduce_tensor(
            torch.cat([torch.stack([torch.where(local_bad > 0, 0.0, loss_sum), local_bad]), host_values]))
        total, bad, n, stop, save_by_clock = reduced.tolist()
        return StepOutcome(loss=total / n if bad == 0 else math.nan, nonfinite=bool(bad), stop=bool(stop),
                           save_by_clock=bool(save_by_clock))

    def count_nonfinite(self, step: int, outcome: StepOutcome) -> None:
        """Skipped updates (NaN/inf loss or gradients): counted, and the run stops after too many in a row."""
        if not (outcome.nonfinite or not self.engine.was_step_applied()):
            self.nonfinite_in_row = 0
            return
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        dist.print0(f"step {step}: non-finite loss or gradients, update skipped "
                    f"({self.nonfinite_in_row} in a row, {self.nonfinite_total} in total)")
        limit = self.cfg.optim.max_nonfinite_steps
        if self.nonfinite_in_row >= limit:
            raise SystemExit(
                f"stopping: {self.nonfinite_in_row} consecutive steps with non-finite loss/gradients "
                f"(optim.max_nonfinite_steps = {limit}) at step {step}. Resume from "
                f"the last checkpoint with a lower learning rate, or inspect the data of these steps.")

    def log_train(self, batch: StepBatch, lr: float, step_loss: float) -> None:
        """The train JSONL record, TensorBoard scalars and the console line of the log interval ending now."""
        m = self.throughput.measure(self.step, self.loader.wait_seconds)
        record = {"step": self.step, "phase": self.curriculum.names[batch.phase], "loss": m["loss"],
                  "lr": lr, "grad_norm": _grad_norm(self.engine),
                  "tokens": self.step * self.cfg.batch.global_batch_size * self.cfg.model.block_size,
                  "tokens_per_s": m["tokens_per_s"], "mfu": m["mfu"], "data_wait_share": m["data_wait_share"],
                  "step_seconds": m["step_seconds"], "nonfinite_total": self.nonfinite_total}
        if self.device.type == "cuda":  # a host-side counter: reading it does not wait for the GPU
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.args.log_sample_ids:
            record["sample_ids"] = self._global_sample_ids(batch)
            record["step_loss"] = step_loss
        self.log.train(record, {"train/loss": m["loss"], "train/lr": lr, "train/grad_norm": record["grad_norm"],
                                "train/tokens_per_s": m["tokens_per_s"], "train/mfu": m["mfu"],
                                "train/data_wait_share": m["data_wait_share"]})
        dist.print0(f"step {self.step}/{self.cfg.optim.max_iters} | loss {m['loss']:.4f} | lr {lr:.3e} | "
                    f"{m['tokens_per_s']:,.0f} tok/s | MFU {m['mfu']:.1%} | data wait {m['data_wait_share']:.1%} | "
                    f"ETA {format_seconds(m['eta_seconds'])}")

    def should_eval(self, step: int) -> bool:
        return step % self.cfg.eval.eval_interval == 0 or step == self.cfg.optim.max_iters

    def clock_save_due(self) -> bool:
        """Rank 0's clock decides a time-based save (checkpoint.interval_minutes), so the ranks cannot disagree."""
        minutes = self.cfg.checkpoint.interval_minutes
        return self.rank == 0 and minutes is not None and time.monotonic() - self.save_clock >= 60.0 * minutes

    def should_save(self, step: int, save_by_clock: bool) -> bool:
        every = self.cfg.checkpoint.interval
        return (every is not None and step % every == 0) or save_by_clock or step == self.cfg.optim.max_iters

    def stop_and_save(self) -> None:
        """A stop signal: straight to the save. The launcher gives each rank 30 s after a stop signal, and an eval
        with probes (and maybe a GOLD save) would spend it; the eval owed at this step runs after the resume."""
        eval_due = self.should_eval(self.step)
        dist.print0(f"stop requested by a signal: saving at step {self.step} and exiting"
                    + (" (this step's eval runs after the resume)" if eval_due else ""))
        self.save_checkpoint(eval_due=eval_due)
        dist.print0(f"stopped cleanly at step {self.step}; continue with --resume auto")

    def _global_sample_ids(self, batch: StepBatch) -> list[int]:
        """The ids every rank consumed this step, in the global order (micro-step major, then rank)."""
        mine = [ids.tolist() for _, _, ids in batch.micro_batches]
        gathered = dist.all_gather_object(mine)
        out = []
        for j in range(len(mine)):
            for r in range(len(gathered)):
                out.extend(gathered[r][j])
        return out

    def close(self) -> None:
        gold = getattr(self, "gold", None)
        if gold is not None:
            gold.wait()
        if self.loader is not None:
            self.loader.close()
        log = getattr(self, "log", None)
        if log is not None:
            log.close()


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm)
