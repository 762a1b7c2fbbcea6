"""Which dtype DeepSpeed accumulates micro-batch gradients in, checked on a real engine (not read off the source).

Builds the tiny test model under DeepSpeed with bf16 parameters, `data_types.grad_accum_dtype: fp32` and the given
ZeRO stage, runs one optimizer step of --accum micro-steps, and after each backward prints, per parameter group,
the buffer this rank's gradient partition is accumulated in (its dtype, whether it is the same tensor as after the
previous micro-step) and the share of its elements that bf16 cannot represent. A bf16 accumulator can only hold
bf16 values, so that share stays 0; an fp32 accumulator holds sums of bf16 gradients, which after the second
micro-step are mostly not bf16 values.

    deepspeed --num_gpus 2 scripts/bench/zero2_accum_dtype.py                # ZeRO-2, 2 ranks (CPU: gloo)
    deepspeed --num_gpus 2 scripts/bench/zero2_accum_dtype.py --stage 1
    deepspeed --num_gpus 2 scripts/bench/zero2_accum_dtype.py --no_fp32_accum   # zero2_bf16.json: finds none

The source it checks (deepspeed 0.19.8, runtime/zero/stage_1_and_2.py): `_use_compact_grad_partition_buffer` is
true whenever grad_accum_dtype is fp32 and differs from the parameter dtype, at stage 1 and 2; `_build_compact_grad_
partition_buffer` allocates this rank's partition in that dtype, and `_add_full_reduction_to_compact_grad_partition`
adds each micro-step's reduced (bf16) gradient into it. Exit status 0 whatever the answer; the table is the result.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from launcher.distributed import init_distributed, shutdown
from model.config import ModelConfig
from model.transformer import Transformer


def partition_buffers(optimizer) -> dict[str, torch.Tensor]:
    """This rank's accumulated gradient partition, as the ZeRO optimizer holds it between micro-steps.

    deepspeed 0.19.8 stage_1_and_2.py: with the compact buffer (`_use_compact_grad_partition_buffer`),
    `averaged_gradients[i]` is a `GradPartitionBufferGroup` whose `flat_partition` is group i's accumulator. Without
    it, ZeRO-2 with contiguous gradients keeps the reduced partition in `grads_in_partition`, allocated in the
    parameter dtype (`copy_grads_in_partition`).
    """
    out = {}
    averaged = optimizer.averaged_gradients if isinstance(optimizer.averaged_gradients, dict) else {}
    for i in range(len(optimizer.bit16_groups)):
        flat = getattr(averaged.get(i), "flat_partition", None)
        if flat is not None:
            out[f"group {i}: averaged_gradients[{i}].flat_partition"] = flat
    if not out and getattr(optimizer, "grads_in_partition", None) is not None:
        out["all groups: grads_in_partition"] = optimizer.grads_in_partition
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", type=int, default=2, choices=[1, 2], help="ZeRO stage")
    p.add_argument("--accum", type=int, default=4, help="micro-steps in the optimizer step")
    p.add_argument("--no_fp32_accum", action="store_true", help="leave data_types.grad_accum_dtype unset (bf16)")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = p.parse_args(argv)

    import deepspeed

    init_distributed()  # gloo on CPU, as the trainer does
    torch.manual_seed(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = ModelConfig(n_embd=64, n_head=2, n_layer=2, block_size=32, dropout=0.0, fused_kernels=False)
    model = Transformer(config)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": args.accum,
        "train_batch_size": 2 * args.accum * world,
        "zero_optimization": {"stage": args.stage, "contiguous_gradients": True, "overlap_comm": True,
                              "reduce_scatter": True},
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "steps_per_print": 10**9,
    }
    if not args.no_fp32_accum:
        ds_config["data_types"] = {"grad_accum_dtype": "fp32"}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    rank = engine.global_rank
    gen = torch.Generator().manual_seed(100 + rank)
    rows = []
    previous: dict[str, torch.Tensor] = {}
    for micro in range(1, args.accum + 1):
        tokens = torch.randint(0, 50257, (2, config.block_size + 1), generator=gen).to(engine.device)
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        for i, buf in partition_buffers(engine.optimizer).items():
            f = buf.float()
            not_bf16 = (f != f.bfloat16().float()).float().mean().item()
            same = i in previous and previous[i].data_ptr() == buf.data_ptr() and previous[i].dtype == buf.dtype
            rows.append((micro, i, str(buf.dtype).removeprefix("torch."), buf.numel(), same, not_bf16))
            previous[i] = buf
        engine.step()
    if rank == 0:
        import deepspeed as ds

        accum = "unset (bf16)" if args.no_fp32_accum else "fp32"
        print(f"deepspeed {ds.__version__}, torch {torch.__version__}, ZeRO stage {args.stage}, {world} ranks, "
              f"bf16 params, grad_accum_dtype {accum}, optimizer {type(engine.optimizer).__name__}")
        print("| micro-step | accumulator | accumulator dtype | elements (this rank) | same buffer as before | "
              "share not representable in bf16 |")
        print("| --- | --- | --- | --- | --- | --- |")
        if not rows:
            print("(no accumulator found between micro-steps: without the compact buffer this DeepSpeed keeps none "
                  "that this script can locate; the source allocates grads_in_partition in the parameter dtype)")
        for micro, i, dtype, n, same, share in rows:
            print(f"| {micro} | {i} | {dtype} | {n:,} | {'yes' if same else '-'} | {share:.3f} |")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
