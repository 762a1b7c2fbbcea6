"""Train the model: DeepSpeed ZeRO-2 bf16, curriculum, sharded eval, GOLD checkpoints, resume, TensorBoard.

Usage (from the repository root):

    # 8 GPUs, the base config's run (gradient accumulation 1 at 8 GPUs; 8 on one GPU)
    deepspeed --num_gpus 8 launcher/train.py --config_file configs/base/750M_unified_v1.json \\
        --model_name unified_v1_llama --dataset_dir data/unified_phase1_circuit

    # the same through MPI, or as one plain process
    mpirun -np 8 python launcher/train.py --config_file configs/base/750M_unified_v1.json --model_name unified_v1_llama
    python launcher/train.py --config_file configs/tiny/demo_cpu.json --model_name demo --max_iters 20 --device cpu

    # on the CPU, on purpose (the demo and the tests); without it a machine where CUDA is unusable stops at once
    deepspeed --num_gpus 2 launcher/train.py --config_file configs/tiny/demo_cpu.json --model_name demo --device cpu

    # continue after a stop (SIGTERM/SIGINT save a checkpoint and exit 0); --resume auto is the default
    deepspeed --num_gpus 8 launcher/train.py ... --resume auto
    # bf16 on a CPU without native bf16 (where the default trains in fp32: emulated bf16 is ~8x slower)
    deepspeed --num_gpus 2 launcher/train.py --config_file configs/tiny/demo_cpu.json --model_name demo --precision bf16
    # fp32 gradient accumulation (ZeRO stage 2, fp32 partition buffer) instead of the config's ds_config
    deepspeed --num_gpus 2 launcher/train.py ... --deepspeed_config ds_configs/zero2_bf16_fp32accum.json

    tensorboard --logdir runs/

Outputs: logs/train/<model_name>_{train,eval}.jsonl, runs/<model_name>/, checkpoints/<model_name>/step_<N>/ and
checkpoints/<model_name>/gold/ (see docs/TRAINING.md).
"""

from __future__ import annotations

import argparse
import sys

from data.loader import DataReadError
from launcher import device_check
from launcher import distributed as dist
from launcher.run_plan import dump_plan, plan_run
from launcher.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import deepspeed

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config_file", required=True, help="training config JSON (configs/base/750M_unified_v1.json)")
    p.add_argument("--model_name", required=True,
                   help="run name: checkpoints/<name>/, logs/train/<name>_*.jsonl, runs/<name>/")
    p.add_argument("--dataset_dir", default=None,
                   help="token directory of the first curriculum phase (overrides curriculum.phases[0].dataset_dir)")
    p.add_argument("--resume", default="auto",
                   help="auto: continue from the newest complete checkpoint of this run if any (default); "
                        "none: start fresh (refused when checkpoints exist); or a path to a step_<N> directory")
    p.add_argument("--resume_ignore", action="append", choices=["config", "data", "eval"], default=[],
                   help="resume although the checkpoint differs in this (repeatable): config (training settings), "
                        "data (the phases' datasets), eval (the val/eval sets: GOLD baselines move)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: what the ds_config says (bf16), except fp32 on a CPU without native bf16, where bf16 "
                        "is ~8x slower (default); bf16 / fp32: force it")
    p.add_argument("--device", choices=device_check.DEVICES, default=None,
                   help="cuda (default): stop at once, before reading anything, when CUDA is unusable; cpu: train on "
                        "the CPU on purpose (DeepSpeed's CPU accelerator; also chosen by DS_ACCELERATOR=cpu)")
    p.add_argument("--max_iters", type=int, default=None,
                   help="override optim.max_iters (the LR schedule's length too); for tests and the demo")
    p.add_argument("--log_sample_ids", action="store_true",
                   help="record the global batch's sample ids in each train log record (tests; use log_interval 1)")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher; do not pass by hand")
    deepspeed.add_config_arguments(p)  # --deepspeed, --deepspeed_config (overrides the config's deepspeed_config)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # First, before DeepSpeed is imported (importing it picks the accelerator) and before any input is read: a GPU
    # launch where CUDA is unusable stops here instead of training on the CPU (launcher/device_check.py).
    device = device_check.require_device(argv)
    args = parse_args(argv)
    device_check.confirm_accelerator(device)
    try:
        plan = plan_run(args)  # every input check, before the process group and the engine
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    dist.print0(f"run plan: {dump_plan(plan)}")
    trainer = None
    try:
        trainer = Trainer(args, plan)
        trainer.train()
    except BaseException as caught:
        error = caught
        if isinstance(error, DataReadError):
            # A corrupt shard or a failing volume: one line naming the file, sample and fix, not a traceback.
            error = SystemExit(f"error: {caught}. The run stops here: fix or rebuild what this names, then run the "
                               "same command again (--resume auto continues from the newest complete checkpoint).")
        if dist.world_size() > 1 and not (isinstance(error, SystemExit) and not error.code):
            if trainer is not None:
                trainer.close()  # flush this rank's logs first
            dist.abort_job(error)  # one rank alone cannot exit cleanly: it would hang the others (and itself)
        if error is caught:
            raise
        raise error from None
    finally:
        if trainer is not None:
            trainer.close()
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
