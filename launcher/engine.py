"""All DeepSpeed wiring: the engine JSON filled from the training config, AdamW parameter groups, the LR schedule,
`deepspeed.initialize`, and what the run says about its gradient accumulation.

The training config owns every hyperparameter (docs/DESIGN.md, "One source of truth per value"). A ds_config in
`ds_configs/` holds engine settings only; `build_ds_config` fills DeepSpeed's batch, clipping, optimizer and
scheduler fields and refuses a ds_config that sets one of them to a different value.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from launcher.config import TrainConfig

# Fields the launcher derives from the training config. A ds_config may repeat them only with the same value.
TRAINER_OWNED = (
    "train_micro_batch_size_per_gpu",
    "train_batch_size",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
)
# Engine settings a ds_config may hold. DeepSpeed itself ignores unknown top-level keys, so a typo
# ("zero_optimisation") would silently run without ZeRO; we reject anything not listed here instead.
ENGINE_KEYS = {
    "zero_optimization", "bf16", "bfloat16", "fp16", "data_types", "communication_data_type",
    "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "steps_per_print",
    "wall_clock_breakdown", "memory_breakdown", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "activation_checkpointing", "flops_profiler", "comms_logger", "checkpoint", "aio", "dump_state",
    "seq_parallel_communication_data_type", "timers", "torch_autocast", "amp",
}
# DeepSpeed's `compile` section configures `engine.compile()` / DeepCompile (deepspeed 0.19.8 compile/config.py
# CompileConfig; runtime/engine.py `compile`), which compiles the whole module and acts only when the caller invokes
# engine.compile(). This trainer never does: it compiles each block itself (`model.compile`, `compile_blocks`), so a
# ds_config `compile` section would be silently ignored; it is refused instead.
DS_COMPILE_REFUSAL = ("DeepSpeed config {path}: the `compile` section is not used by this trainer (it configures "
                      "DeepSpeed's engine.compile()/DeepCompile, which the trainer does not call); delete it and set "
                      "\"compile\": true in the training config's model section to torch.compile each block")
ZERO1_FP32_ACCUM = "ds_configs/zero1_bf16_fp32accum.json"
ZERO2_FP32_ACCUM = "ds_configs/zero2_bf16_fp32accum.json"
ZERO2_FP32 = "ds_configs/zero2_fp32.json"
PRECISIONS = ("auto", "bf16", "fp32")


def load_ds_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"DeepSpeed config {path} does not exist; pass --deepspeed_config ds_configs/zero2_bf16.json "
                         "or fix `deepspeed_config` in the training config")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"DeepSpeed config {path} must be a JSON object")
    return values


def trainer_owned_values(cfg: TrainConfig, world_size: int, on_cuda: bool) -> dict[str, Any]:
    """The DeepSpeed fields derived from the training config at this world size."""
    accum = cfg.batch.grad_accum_steps(world_size)  # ValueError naming the GPU counts that work
    o = cfg.optim
    adam_params: dict[str, Any] = {
        "lr": o.learning_rate, "betas": [o.beta1, o.beta2], "eps": o.adam_eps, "weight_decay": o.weight_decay,
        # torch.optim.AdamW instead of DeepSpeed's FusedAdam: FusedAdam is a JIT-compiled CUDA op (needs nvcc on
        # the pod and does not exist on the CPU accelerator); torch's fused CUDA AdamW is as fast and always there.
        "torch_adam": True,
    }
    if on_cuda:
        adam_params["fused"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.batch.micro_batch_size,
        "train_batch_size": cfg.batch.global_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": o.grad_clip,
        "optimizer": {"type": "AdamW", "params": adam_params},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": o.max_iters,
                # DeepSpeed requires a positive warmup; 1 step at ratio 0 is the closest to "no warmup".
                "warmup_num_steps": max(1, o.warmup_iters),
                "warmup_type": "linear",
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": o.min_lr / o.learning_rate,
                # Built "already started" (deepspeed 0.19.8 runtime/lr_schedules.py, WarmupCosineLR.__init__ and
                # get_lr): at the default -1 DeepSpeed's constructor asks itself for an lr and logs
                # "Attempting to get learning rate from scheduler before it has started". set_lr_for_step sets
                # the real position before every step (and before nothing else reads the lr).
                "last_batch_iteration": 0,
            },
        },
    }


def build_ds_config(cfg: TrainConfig, ds_path: str | Path, world_size: int, on_cuda: bool) -> dict[str, Any]:
    """The ds_config at `ds_path` plus the trainer-owned fields; ValueError on unknown or contradicting keys."""
    user = load_ds_json(ds_path)
    if "compile" in user:
        raise ValueError(DS_COMPILE_REFUSAL.format(path=ds_path))
    unknown = sorted(set(user) - ENGINE_KEYS - set(TRAINER_OWNED))
    if unknown:
        raise ValueError(f"DeepSpeed config {ds_path}: unknown key(s) {unknown}; engine settings allowed here are "
                         f"{sorted(ENGINE_KEYS)} (if a new DeepSpeed key is meant, add it to ENGINE_KEYS in "
                         "launcher/engine.py)")
    ours = trainer_owned_values(cfg, world_size, on_cuda)
    for key in TRAINER_OWNED:
        if key not in user:
            continue
        theirs, mine = user[key], ours[key]
        if key in ("optimizer", "scheduler"):
            same = theirs == mine
        else:
            same = isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and float(theirs) == float(mine)
        if not same:
            raise ValueError(
                f"DeepSpeed config {ds_path} sets {key} = {json.dumps(theirs)}, but the training config gives "
                f"{json.dumps(mine)} (batch/optim sections, world size {world_size}). Hyperparameters live in the "
                f"training config only: delete {key!r} from {ds_path}."
            )
    zero = user.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"DeepSpeed config {ds_path}: zero_optimization must be an object")
    if zero.get("stage", 0) == 3:
        raise ValueError(f"DeepSpeed config {ds_path}: ZeRO stage 3 is not supported by this trainer (GOLD saves and "
                         "eval read full weights on every rank); use stage 1 or 2")
    if user.get("fp16", {}).get("enabled"):
        raise ValueError(f"DeepSpeed config {ds_path}: fp16 is not supported (training is bf16); use bf16")
    merged = copy.deepcopy(user)
    merged.update(ours)
    merged.setdefault("steps_per_print", 10**9)  # our own logger reports progress; DeepSpeed's would duplicate it
    return merged


def accumulation_summary(ds_config: dict[str, Any]) -> dict[str, Any]:
    """Micro-steps per optimizer step and the dtype gradients are accumulated in (docs/DESIGN.md, "Gradient accumulation
    precision").

    bf16 parameters accumulate in bf16 unless `data_types.grad_accum_dtype` is fp32, which DeepSpeed 0.19.8 honours at
    ZeRO stage 1 (its BF16_Optimizer: runtime/engine.py `_do_optimizer_sanity_check` returns BFLOAT16 there) and at
    stage 2: runtime/zero/stage_1_and_2.py `_use_compact_grad_partition_buffer` is true whenever the accumulation
    dtype is fp32 and differs from the parameters', and `_add_full_reduction_to_compact_grad_partition` adds each
    micro-step's reduced gradient into this rank's fp32 partition. Verified on a 2-rank CPU engine
    (scripts/bench/zero2_accum_dtype.py, docs/TRAINING.md): the buffer is float32, the same tensor across
    micro-steps, and after micro-step 2 holds values bf16 cannot represent. Each micro-step's own gradient is still
    computed in bf16 (and summed across ranks in `reduce_dtype`); only the sum over micro-steps is fp32.
    """
    bf16 = _bf16_enabled(ds_config)
    stage = zero_stage(ds_config)
    requested = ds_config.get("data_types", {}).get("grad_accum_dtype")
    param_dtype = "bf16" if bf16 else "fp32"
    if not bf16:
        dtype = "fp32"
    elif requested in ("fp32", "float32") and stage in (1, 2):
        dtype = "fp32"
    else:
        dtype = "bf16"
    note = ""
    if requested in ("fp32", "float32") and dtype != "fp32":
        note = (f"data_types.grad_accum_dtype=fp32 is not used at ZeRO stage {stage} (DeepSpeed honours it at stages "
                "1 and 2)")
    elif bf16 and dtype == "fp32" and stage == 2:
        note = "ZeRO-2 fp32 partition buffer: each micro-step's gradient is bf16, their sum fp32"
    return {"steps": int(ds_config["gradient_accumulation_steps"]), "dtype": dtype, "param_dtype": param_dtype,
            "zero_stage": stage, "note": note, "reduce_dtype": reduce_dtype(ds_config)}


def reduce_dtype(ds_config: dict[str, Any]) -> str:
    """The dtype gradients are summed across ranks in: `communication_data_type`, else the parameters' dtype.

    DeepSpeed 0.19.8, runtime/engine.py `communication_data_type` (the config's value, else bf16 for bf16 training);
    runtime/zero/stage_1_and_2.py `allreduce_bucket` casts each gradient bucket to it before the collective and
    copies the sum back. Verified on 2 CPU ranks (tests/test_precision.py records the collectives' dtypes). The
    shipped bf16 configs set fp32, as Megatron (bf16 requires fp32 gradient reduction) and torchtitan (FSDP
    `reduce_dtype` fp32) do: a bf16 sum rounds at every hop of the reduction, fp32 sends twice the bytes
    (docs/TRAINING.md, "Gradient reduction precision")."""
    value = ds_config.get("communication_data_type")
    if value is None:
        return "bf16" if _bf16_enabled(ds_config) else "fp32"
    return {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16",
            "float16": "fp16"}.get(str(value).lower(), str(value))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware, as torch itself decides it (its CPU capability checks).

    x86: AVX512-BF16 or AMX (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later); the same
    `torch.cpu._is_avx512_bf16_supported()` check torch's own inductor uses (torch/_inductor/cpu_vec_isa.py).
    Without them torch emulates bf16 through fp32 conversions: a bf16 matmul of the demo's output layer took
    675 ms against 80 ms in fp32 on an AVX2 machine (docs/TRAINING.md, "Precision on the CPU"). ARM: torch's SVE
    capability (Graviton 3/4, Grace), whose cores have BF16.
    """
    cpu = torch.cpu
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if getattr(cpu, check, lambda: False)():
            return True
    return torch.backends.cpu.get_cpu_capability().startswith("SVE")


def _bf16_enabled(ds_config: dict[str, Any]) -> bool:
    return bool(ds_config.get("bf16", ds_config.get("bfloat16", {})).get("enabled"))


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def precision_of(ds_config: dict[str, Any]) -> str:
    """"bf16" or "fp32": what the engine built from this ds_config trains in (fp16 is refused earlier)."""
    return "bf16" if _bf16_enabled(ds_config) else "fp32"


def _with_bf16(ds_config: dict[str, Any], enabled: bool) -> dict[str, Any]:
    out = copy.deepcopy(ds_config)
    section = out.pop("bfloat16", None) or out.get("bf16") or {}  # "bfloat16" is DeepSpeed's older alias
    out["bf16"] = {**section, "enabled": enabled}
    return out


def resolve_precision(ds_config: dict[str, Any], ds_path: str | Path, requested: str,
                      device_type: str) -> tuple[dict[str, Any], str]:
    """The ds_config with bf16 on or off for this machine, and the one line the run prints about it.

    `requested` is `--precision`: "bf16" / "fp32" force that precision; "auto" keeps what the ds_config says, except
    that a bf16 ds_config on a CPU without native bf16 runs in fp32 (bf16 emulation is ~8x slower there, and the CPU
    path exists for the demo and tests). Only `bf16.enabled` changes: ZeRO stage, buckets, the launcher, sampler,
    eval and GOLD are the same, and the stock ds_config then equals ds_configs/zero2_fp32.json (a test checks that).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {list(PRECISIONS)}, got {requested!r}")
    configured = precision_of(ds_config)
    if requested != "auto":
        note = f"precision: {requested} (--precision {requested}; {ds_path} says {configured})"
        return _with_bf16(ds_config, requested == "bf16"), note
    if configured == "bf16" and device_type == "cpu" and not cpu_has_native_bf16():
        capability = torch.backends.cpu.get_cpu_capability()
        note = (f"precision: fp32, not the bf16 of {ds_path}: this CPU has no native bf16 (torch CPU capability "
                f"{capability}, no AVX512-BF16/AMX), where bf16 runs ~8x slower; everything else is unchanged "
                f"(as {ZERO2_FP32}). --precision bf16 forces bf16.")
        return _with_bf16(ds_config, False), note
    return ds_config, f"precision: {configured} ({ds_path})"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on every 2-D weight (the tied embedding/lm_head included), none on norm gains/biases."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields the tied weight once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> int:
    """`torch.compile` every transformer block of `model` in place; returns how many were compiled.

    Per block, as torchtitan's `apply_compile` does (pytorch/torchtitan, the llama parallelize.py: each
    TransformerBlock separately; identical blocks reuse one compiled graph, so compile time does not grow with depth).
    `nn.Module.compile()` compiles the module's forward in place, unlike `torch.compile(module)`, which wraps it in an
    OptimizedModule and prefixes every parameter name with `_orig_mod.`: DeepSpeed checkpoints, GOLD checkpoints and
    the export keep their names. Not `fullgraph=True`, though the fused kernels are custom ops that trace without a
    break (tests/test_kernels_interpreter.py compiles them with `fullgraph=True`): a graph break costs speed, not
    correctness, and a run should not die at step 0 over one that a torch upgrade brings.
    """
    blocks = list(getattr(model, "layers", []))
    for block in blocks:
        block.compile(backend=backend, dynamic=False)
    return len(blocks)


def build_engine(model: torch.nn.Module, cfg: TrainConfig, ds_config: dict[str, Any]):
    """deepspeed.initialize with DeepSpeed's own AdamW and WarmupCosineLR; returns the engine. With
    `model.compile`, the blocks are compiled first (`compile_blocks`)."""
    import deepspeed

    if cfg.model.compile:
        compile_blocks(model)

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, cfg.optim.weight_decay), config=ds_config
    )
    return engine


def set_lr_for_step(engine, step: int) -> float:
    """Make the learning rate of optimizer step `step` a function of `step` alone.

    DeepSpeed's scheduler counts its own calls (and is stepped after each optimizer step, so out of the box the first
    two steps both run at lr 0, and a skipped NaN step would shift the schedule). Setting its position explicitly
    before every step keeps lr(step) identical across resumes, skips and world sizes.
    """
    engine.lr_scheduler.step(last_batch_iteration=step)
    return float(engine.get_lr()[0])
