"""The dtype DeepSpeed reduces gradients across ranks in, recorded on real engines (run by tests/test_precision.py).

    deepspeed --num_gpus 2 tests/ds_reduce_dtype.py --out DIR CONFIG.json [CONFIG.json ...]

For each ds_config (its ZeRO, bf16 and communication settings, with bf16 forced on so the CPU runs what a GPU
runs), builds the tiny model's engine, runs one optimizer step of two micro-steps, and records every reduction
(`torch.distributed.all_reduce`, `reduce`, `reduce_scatter_tensor`, `reduce_scatter`) the step makes: its dtype and
size. Writes DIR/rank<R>.json: {config path: [[op, dtype, numel], ...]}. The wrappers sit below deepspeed.comm,
which calls these torch.distributed functions at call time (deepspeed/comm/torch.py, TorchBackend).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed

from launcher.distributed import init_distributed, shutdown
from model.config import ModelConfig
from model.transformer import Transformer

REDUCTIONS = ("all_reduce", "reduce", "reduce_scatter_tensor", "reduce_scatter")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    p.add_argument("configs", nargs="+")
    args = p.parse_args()
    import deepspeed

    init_distributed()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    log: list[list] = []
    for name in REDUCTIONS:
        real = getattr(torch.distributed, name)

        def wrapped(*a, _real=real, _name=name, **k):
            tensor = k.get("tensor", k.get("input", a[1] if _name.startswith("reduce_scatter") and len(a) > 1 else
                                           (a[0] if a else None)))
            if isinstance(tensor, list):
                tensor = tensor[0]
            log.append([_name, str(tensor.dtype).removeprefix("torch."), int(tensor.numel())])
            return _real(*a, **k)

        setattr(torch.distributed, name, wrapped)
    out = {}
    for path in args.configs:
        user = json.loads(Path(path).read_text())
        ds_config = {**{k: v for k, v in user.items() if k in ("zero_optimization", "communication_data_type",
                                                               "data_types")},
                     "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
                     "train_batch_size": 4 * world, "steps_per_print": 10**9,
                     "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
        torch.manual_seed(0)
        config = ModelConfig(n_embd=64, n_head=2, n_layer=2, block_size=32, dropout=0.0, fused_kernels=False)
        model = Transformer(config)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        gen = torch.Generator().manual_seed(100 + engine.global_rank)
        log.clear()
        for _ in range(2):
            tokens = torch.randint(0, 50257, (2, config.block_size + 1), generator=gen).to(engine.device)
            _, loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
        out[path] = list(log)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(out))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
