"""The run's plan: every input checked, and everything decided, before the process group and engine exist.

`plan_run(args)` reads the training config with the command-line overrides, fills and checks the DeepSpeed config,
opens every token directory (manifest checks on open), finds the checkpoint to resume from and compares it with this
run (config, data and eval fingerprints, precision, world size), and picks the grounded-QA subset. A mistake is a
ValueError naming the file, field or value and the fix, raised before anything expensive starts. `launcher/trainer.py`
runs the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from data.paths import resolve
from data.qa_items import QA_ITEMS_FILE, fixed_subset, read_qa_items
from data.token_dataset import TokenDataset
from launcher import distributed as dist
from launcher.checkpointing import complete_checkpoints, read_meta
from launcher.config import TRAIN_SET, VAL_SET, TrainConfig
from launcher.engine import build_ds_config, precision_of, resolve_precision, zero_stage
from launcher.probes import probes_for_block_size

BUILD_COMMAND = "python scripts/unified_build/build_unified_dataset.py"


def open_token_dir(path: str, what: str, verify: str, block_size: int) -> TokenDataset:
    """TokenDataset with a message naming the config field and the command that builds it."""
    path = resolve(path)  # relative to $RAGLLM_WORKSPACE when set (Docker: /workspace), else the current directory
    if not path.is_dir():
        raise ValueError(f"{what}: token directory {path} does not exist. Build the data first: {BUILD_COMMAND} "
                         "(for the CPU demo: make demo), or fix the path in the config / --dataset_dir.")
    try:
        ds = TokenDataset(path, verify=verify)
        ds.num_samples(block_size)  # ValueError when shorter than one sample
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from e
    return ds


def _trained_causal(meta: dict[str, Any]) -> bool:
    """A checkpoint written before `model.attention` existed (no "attention" in its trainer_meta.json), or with it
    "causal", read the whole packed row."""
    return meta.get("attention", "causal") == "causal"


# What a resume compares with the checkpoint: `--resume_ignore` kind -> (trainer_meta key, what it covers).
RESUME_CHECKS = {
    "config": ("config_fingerprint", "the training settings (model shape, optimizer, schedule, batch, data seed, "
                                     "curriculum, eval and GOLD settings)"),
    "data": ("data_fingerprints", "the curriculum phases' datasets"),
    "eval": ("eval_fingerprints", "the val and eval sets (their losses are the GOLD baselines)"),
}


def resume_identity(cfg: TrainConfig, phases: list[TokenDataset], val: TokenDataset,
                    eval_sets: dict[str, TokenDataset]) -> dict[str, Any]:
    """What makes a checkpoint this run's: recorded at every save, compared at every resume."""
    return {"config_fingerprint": cfg.fingerprint(), "data_fingerprints": [ds.fingerprint for ds in phases],
            "eval_fingerprints": {VAL_SET: val.fingerprint, **{n: ds.fingerprint for n, ds in eval_sets.items()}}}


@dataclasses.dataclass
class RunPlan:
    """Everything decided and checked before the process group and engine exist."""

    cfg: TrainConfig
    ds_config: dict[str, Any]
    ds_config_path: str
    precision_note: str
    world_size: int
    phases: list[TokenDataset]
    val: TokenDataset
    eval_sets: dict[str, TokenDataset]
    ckpt_root: Path
    resume_path: Path | None
    resume_meta: dict[str, Any] | None
    resume_universal: bool = False
    qa_items: list[dict] | None = None
    """The fixed grounded-QA subset every eval answers (eval.qa_items of the qa_set's qa_items.jsonl); None: off."""
    qa_note: str = ""
    probes: Any = None
    """The probe set every eval runs (launcher/probes/items.py ProbeSet; None below its minimum block size), built
    here so a problem with it stops the run before the engine exists."""


def plan_run(args: argparse.Namespace) -> RunPlan:
    """All input checks (ValueError with the fix) before anything expensive starts."""
    cfg = TrainConfig.from_json(args.config_file)
    values = cfg.to_dict()
    if args.dataset_dir is not None:
        values["curriculum"]["phases"][0]["dataset_dir"] = args.dataset_dir
    if args.max_iters is not None:
        values["optim"]["max_iters"] = args.max_iters
    if args.dataset_dir is not None or args.max_iters is not None:
        try:
            cfg = TrainConfig.from_dict(values)  # re-runs the cross-field checks with the overrides
        except ValueError as e:
            raise ValueError(f"{args.config_file} with command-line overrides: {e}") from e

    world = dist.launch_world_size()
    ds_path = args.deepspeed_config or cfg.deepspeed_config
    ds_config = build_ds_config(cfg, ds_path, world, on_cuda=torch.cuda.is_available())
    from deepspeed.accelerator import get_accelerator

    ds_config, precision_note = resolve_precision(ds_config, ds_path, args.precision, get_accelerator().device_name())
    if ds_config.get("bf16", {}).get("check_grad_overflow") is False:
        raise ValueError(f"DeepSpeed config {ds_path}: bf16.check_grad_overflow must not be false (the trainer relies "
                         "on it to skip the update of a step with NaN/inf gradients)")

    block = cfg.model.block_size
    phases = [open_token_dir(p.dataset_dir, f"curriculum phase '{p.name}'", cfg.data.verify, block)
              for p in cfg.curriculum.phases]
    val_dir = cfg.eval.val_dir or str(Path(cfg.curriculum.phases[-1].dataset_dir) / "val")
    val = open_token_dir(val_dir, "eval.val_dir" if cfg.eval.val_dir else "val split (<last phase dataset_dir>/val)",
                         cfg.data.verify, block)
    eval_sets = {name: open_token_dir(path, f"eval.sets.{name}", cfg.data.verify, block)
                 for name, path in cfg.eval.sets.items()}
    for name in (VAL_SET, TRAIN_SET):
        if name in eval_sets:
            raise ValueError(f"eval.sets must not be named '{name}' (reserved for the val split / train loss)")

    ckpt_root = resolve(cfg.checkpoint.dir) / args.model_name
    resume_path = None
    if args.resume == "auto":
        done = complete_checkpoints(ckpt_root)
        resume_path = done[-1][1] if done else None
    elif args.resume == "none":
        if complete_checkpoints(ckpt_root):
            raise ValueError(f"{ckpt_root} already holds checkpoints of an earlier run named '{args.model_name}'. "
                             "Continue it with --resume auto, or move that directory away / pick another "
                             "--model_name to start over.")
    else:
        resume_path = resolve(args.resume)
    resume_meta = None
    resume_universal = False
    if resume_path is not None:
        resume_meta = read_meta(resume_path)
        ours = resume_identity(cfg, phases, val, eval_sets)
        problems = []
        for kind, (key, what) in RESUME_CHECKS.items():
            theirs = resume_meta.get(key)
            if theirs is None or theirs == ours[key]:  # None: written before this key was recorded
                continue
            if kind in (args.resume_ignore or []):
                dist.print0(f"resume: {what} differ from the checkpoint's, ignored as asked (--resume_ignore {kind})")
            else:
                problems.append(f"{what} differ ({theirs} != {ours[key]}; --resume_ignore {kind})")
                if kind == "config" and _trained_causal(resume_meta) and cfg.model.attention != "causal":
                    problems[-1] += (" - the checkpoint was trained before model.attention existed, with attention "
                                     "over the whole packed row: set \"attention\": \"causal\" in the config's model "
                                     "section to continue it")
        if problems:
            raise ValueError(f"resume checkpoint {resume_path} is from another run: " + "; ".join(problems) +
                             ". Use the config and data it was trained with, or pass the --resume_ignore flag of "
                             "each difference to continue anyway (the data order, schedule or GOLD baselines then "
                             "change).")
        precision = precision_of(ds_config)
        if resume_meta.get("precision", precision) != precision:
            # A bf16 engine saves bf16 weights and its optimizer state under other file names than an fp32 one:
            # DeepSpeed would fail deep inside the load.
            raise ValueError(f"resume checkpoint {resume_path} was trained in {resume_meta['precision']}, but this run "
                             f"would train in {precision} ({precision_note}). Pass --precision "
                             f"{resume_meta['precision']} to continue it.")
        stage = zero_stage(ds_config)
        if resume_meta.get("world_size") != world or resume_meta.get("zero_stage", stage) != stage:
            # ZeRO partitions the optimizer state per rank, and stages 1 and 2 lay it out differently: another world
            # size or stage loads through DeepSpeed's Universal Checkpoint, which must be requested when the engine
            # is built.
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
            resume_universal = True
    qa_items, qa_note = plan_grounded_qa(cfg, eval_sets)
    return RunPlan(cfg, ds_config, str(ds_path), precision_note, world, phases, val, eval_sets, ckpt_root, resume_path,
                   resume_meta, resume_universal, qa_items, qa_note,
                   probes=probes_for_block_size(cfg.model.block_size))  # induction + retrieval (docs/PROBES.md)


def plan_grounded_qa(cfg: TrainConfig, eval_sets: dict[str, TokenDataset]) -> tuple[list[dict] | None, str]:
    """The fixed QA subset of the evals (the same items at any world size) and a line saying what was chosen. A
    missing qa_set, or an eval set built before the build wrote QA items, turns the QA off, said at start."""
    n = cfg.eval.qa_items
    if n == 0:
        return None, "grounded QA: off (eval.qa_items 0)"
    if cfg.eval.qa_set not in eval_sets:  # a run without a retrieval set (tests, ablations) simply has no QA
        return None, (f"grounded QA: off, eval.qa_set {cfg.eval.qa_set!r} is not one of eval.sets "
                      f"{sorted(eval_sets)} (name the retrieval set there, or set eval.qa_items 0)")
    directory = eval_sets[cfg.eval.qa_set].directory
    items = read_qa_items(directory)
    if not items:
        return None, (f"grounded QA: off, {directory} holds no {QA_ITEMS_FILE} (built before the build wrote QA "
                      "items: rebuild the eval sets with scripts/unified_build/build_unified_dataset.py, or set "
                      "eval.qa_items 0 to silence this)")
    chosen = fixed_subset(items, n, cfg.eval.eval_seed)
    unanswerable = sum(not it["answerable"] for it in chosen)
    return chosen, (f"grounded QA: {len(chosen)} of {len(items)} items of {directory / QA_ITEMS_FILE} at each eval "
                    f"({unanswerable} unanswerable)")


def dump_plan(plan: RunPlan) -> str:
    """One JSON line describing the resolved run (printed at start for the record)."""
    return json.dumps({"config_fingerprint": plan.cfg.fingerprint(), "ds_config": plan.ds_config_path,
                       "precision": precision_of(plan.ds_config),
                       "world_size": plan.world_size, "phases": [str(p.directory) for p in plan.phases],
                       "val": str(plan.val.directory), "eval_sets": {k: str(v.directory)
                                                                     for k, v in plan.eval_sets.items()},
                       "resume": str(plan.resume_path) if plan.resume_path else None}, default=str)

