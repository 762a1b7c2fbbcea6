"""Eval seconds per sample: the old eval path against launcher/evaluation.py's, same model, same samples, one run.

Usage:
    python scripts/bench/eval_path.py                        # 750M width and vocabulary, 2 layers, block 256, CPU
    python scripts/bench/eval_path.py --layers 4 --micro 4 --reps 5
    python scripts/bench/eval_path.py --device cuda --dtype bfloat16 --layers 32 --block 1024 --micro 12

before: the loop evaluation ran until now: training's micro-batch (--micro), each micro-batch read on the main
        thread from pageable memory, then the mean loss of the chunked cross-entropy;
after:  `launcher.evaluation.evaluate`: eval's own micro-batch (--eval-micro, default 2 x --micro, the config's
        default), read ahead on the prefetch thread into pinned memory (on CUDA), per-token losses (bits per byte
        come from the same forward).
Both read the same fixed samples of a real memmapped token directory (synthetic documents, packed like the build's)
and give the same loss (checked here). Medians of --reps runs, the two interleaved; read the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.loader import read_micro_batch
from data.token_dataset import TokenDataset, write_token_dir
from launcher.evaluation import evaluate, fixed_sets
from model.config import ModelConfig
from model.transformer import Transformer

BASE = Path(__file__).resolve().parents[2] / "configs/base/750M_unified_v1.json"


@torch.no_grad()
def before(model, sets, micro: int, device) -> float:
    total, count = 0.0, 0
    for s in sets:
        for start in range(0, len(s.ids), micro):
            x, y = read_micro_batch(s.dataset, s.ids[start:start + micro], s.block_size,
                                    document_targets=s.document_targets)
            real = int((y != -1).sum())
            _, loss = model(x.to(device), y.to(device))
            total += float(loss) * real
            count += real
    return total / count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--micro", type=int, default=4, help="training micro-batch (the old eval micro-batch)")
    p.add_argument("--eval-micro", type=int, default=None, help="eval micro-batch (default 2 x --micro)")
    p.add_argument("--samples", type=int, default=32, help="fixed samples per set (2 sets)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)
    eval_micro = args.eval_micro or 2 * args.micro
    device = torch.device(args.device)
    base = json.loads(BASE.read_text())["model"]
    config = ModelConfig(**{**base, "n_layer": args.layers, "block_size": args.block, "dropout": 0.0,
                            "fused_kernels": args.device == "cuda"})
    torch.manual_seed(0)
    model = Transformer(config).to(device=device, dtype=getattr(torch, args.dtype)).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        named = {}
        for name in ("val", "retrieval"):
            docs = [np.append(rng.integers(0, 50256, size=int(n)), 50256)
                    for n in rng.lognormal(np.log(args.block / 3), 0.8, size=args.samples * 6).astype(int) + 2]
            named[name] = TokenDataset(write_token_dir(Path(tmp) / name, docs, pack_block_sizes=[args.block]))
        sets = fixed_sets(named, args.block, args.samples, 1337, 0, 1, document_targets=True)
        n = sum(len(s.ids) for s in sets)
        pin = device.type == "cuda"
        runs = {"before": lambda: before(model, sets, args.micro, device),
                "after": lambda: evaluate(model, sets, eval_micro, device, pin_memory=pin).losses}
        values = {k: fn() for k, fn in runs.items()}  # warm-up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.reps):
            for k, fn in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t0)
    mean_after = sum(values["after"][s.name] * 1 for s in sets) / len(sets)
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"CPU, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
                  "threads")
    print(f"eval_path: {where}; 750M width, {args.layers} layers, block {args.block}, {args.dtype}; {n} samples; "
          f"median of {args.reps}")
    print("| path | micro-batch | reads | s per sample | after / before |")
    print("| --- | --- | --- | --- | --- |")
    b, a = statistics.median(times["before"]) / n, statistics.median(times["after"]) / n
    print(f"| before | {args.micro} | main thread, pageable | {b:.4f} | 1.00 |")
    print(f"| after | {eval_micro} | prefetch thread{', pinned' if pin else ''} | {a:.4f} | {a / b:.2f} |")
    print(f"loss before {values['before']:.6f} (both sets pooled), after per set "
          f"{', '.join(f'{k} {v:.6f}' for k, v in values['after'].items())} (mean {mean_after:.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
