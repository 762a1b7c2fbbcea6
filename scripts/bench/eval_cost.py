"""What an eval costs, as a ratio to a training micro-step at the same shapes, and the share of wall time that the
base config's evaluation settings then take on 8 GPUs.

    python scripts/bench/eval_cost.py                       # 750M width and vocabulary, 2 layers, 4 x 256, CPU fp32
    python scripts/bench/eval_cost.py --layers 4 --batch 2 --seq 512 --repeats 7
    python scripts/bench/eval_cost.py --device cuda --dtype bfloat16 --layers 32 --batch 12 --seq 1024

Measured, interleaved in one process (medians of --repeats):
- train: one training micro-step of `Transformer` (train mode, dropout as configured, forward with the loss and
  backward; no optimizer step and no gradient all-reduce, which only make the real step longer);
- eval: one eval micro-batch as `launcher/evaluation.py` runs it (eval mode, no_grad, the same chunked loss).

Then the prediction for the base config's run (configs/base/750M_unified_v1.json: eval_interval 350, eval_iters 200,
micro-batch 12, 8 GPUs, so 1 micro-step per rank per optimizer step): each eval reads eval_iters x micro = 2,400
samples of each of 6 sets (val, the four held-out sets, the train sample of the overfit guard), 14,400 in all, 1,800
per rank = 150 eval micro-batches per rank, against 350 training micro-steps per rank between evals:

    share = 150 r / (350 + 150 r),   r = eval micro-batch / training micro-step

(probes, the optimizer step and communication left out; the optimizer step makes the training side longer, so the
share is an upper bound for the loss evals).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from model.config import ModelConfig
from model.transformer import Transformer

BASE = Path(__file__).resolve().parents[2] / "configs/base/750M_unified_v1.json"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(layers: int, batch: int, seq: int, device: str, dtype: torch.dtype, repeats: int) -> dict:
    base = json.loads(BASE.read_text())["model"]
    cfg = ModelConfig(**{**base, "n_layer": layers, "block_size": seq, "fused_kernels": device == "cuda"})
    torch.manual_seed(0)
    model = Transformer(cfg).to(device=device, dtype=dtype)
    x = torch.randint(0, 50257, (batch, seq), device=device)
    y = torch.randint(0, 50257, (batch, seq), device=device)

    def train_step():
        model.train()
        _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_batch():
        model.eval()
        model(x, y)

    times = {"train": [], "eval": []}
    for fn in (train_step, eval_batch):  # warm-up
        fn()
    for _ in range(repeats):  # interleaved: a busy neighbour slows both alike
        for name, fn in (("train", train_step), ("eval", eval_batch)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    train, evaluation = statistics.median(times["train"]), statistics.median(times["eval"])
    return {"train_s": train, "eval_s": evaluation, "ratio": evaluation / train}


def predicted_share(ratio: float, sets: float = 6, eval_iters: int = 200, micro: int = 12, world: int = 8,
                    interval: int = 350) -> float:
    """Share of wall time in loss evals: eval micro-batches per rank per eval vs training micro-steps between evals
    (1 per rank per step when the global batch is micro x world)."""
    eval_micro_per_rank = sets * eval_iters * micro / world / micro
    return eval_micro_per_rank * ratio / (interval + eval_micro_per_rank * ratio)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="transformer layers (750M width, heads, vocabulary)")
    p.add_argument("--batch", type=int, default=4, help="micro-batch sequences")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to measure")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each (medians)")
    args = p.parse_args(argv)
    r = measure(args.layers, args.batch, args.seq, args.device, getattr(torch, args.dtype), args.repeats)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"eval_cost: 750M width, {args.layers} layers, {args.batch} x {args.seq}, {args.dtype}, {args.device}"
          f" (torch CPU capability {capability}, {torch.get_num_threads()} threads)")
    print("| training micro-step (fwd+bwd) | eval micro-batch (fwd, no_grad) | eval / train |")
    print("| --- | --- | --- |")
    print(f"| {r['train_s'] * 1e3:.1f} ms | {r['eval_s'] * 1e3:.1f} ms | {r['ratio']:.3f} |")
    six, smaller = predicted_share(r["ratio"]), predicted_share(r["ratio"], sets=5.25)
    print(f"predicted share of wall time in loss evals at the base config's settings on 8 GPUs: {six:.1%} "
          f"(150 eval micro-batches per rank x {r['ratio']:.3f} vs 350 training micro-steps per eval interval); "
          f"{smaller:.1%} with the overfit guard's train sample at a quarter of eval_iters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
