"""Benchmark: forward+backward of our Transformer vs Hugging Face `LlamaForCausalLM`, same config, same weights,
same inputs, same process, interleaved so machine noise hits both alike. Prints median times and the ratio ours/HF.

Usage:
    python scripts/bench/model_step.py                                   # CPU, tiny config, fp32
    python scripts/bench/model_step.py --config configs/tiny/demo_cpu.json --batch 8 --seq 128 --repeats 20
    python scripts/bench/model_step.py --device cuda --dtype bfloat16 --config configs/base/750M_unified_v1.json \
        --batch 12 --seq 1024                                            # on a GPU

Needs `transformers` (a test dependency). Dropout is set to 0 in both models (HF Llama has only attention dropout),
and our fused kernels follow the config's `fused_kernels` (the reference runs on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from launcher.export import export
from model.config import ModelConfig
from model.io import save_model_checkpoint
from model.transformer import Transformer


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny/demo_cpu.json", help="training or model config JSON")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: min(block_size, 128))")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per model (after 3 warm-up steps)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)

    try:
        from transformers import LlamaForCausalLM
    except ImportError:
        raise SystemExit("model_step: needs transformers (pip install -r requirements-dev.txt)") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = ModelConfig(**{**ModelConfig.from_json(args.config).to_dict(), "dropout": 0.0})
    args.seq = args.seq or min(config.block_size, 128)
    if args.seq > config.block_size:
        raise SystemExit(f"model_step: --seq {args.seq} exceeds block_size {config.block_size}")

    torch.manual_seed(0)
    ours = Transformer(config)
    with tempfile.TemporaryDirectory() as tmp:
        save_model_checkpoint(Path(tmp) / "ckpt", ours, config)
        export(Path(tmp) / "ckpt", Path(tmp) / "hf")
        hf = LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32, attn_implementation="sdpa")
    ours, hf = ours.to(device=device, dtype=dtype).train(), hf.to(device=device, dtype=dtype).train()
    tokens = torch.randint(0, 50257, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(1))
    idx, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)

    def step_ours():
        _, loss = ours(idx, targets)
        loss.backward()
        ours.zero_grad(set_to_none=True)

    def step_hf():
        logits = hf(input_ids=idx).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        hf.zero_grad(set_to_none=True)

    for _ in range(3):
        step_ours()
        step_hf()
    times_ours, times_hf = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        times_ours.append(time_step(step_ours, device))
        times_hf.append(time_step(step_hf, device))
    med_ours, med_hf = statistics.median(times_ours), statistics.median(times_hf)
    tokens_per_step = args.batch * args.seq
    print(f"model_step: {args.config} n_layer={config.n_layer} n_embd={config.n_embd} batch={args.batch} "
          f"seq={args.seq} device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"repeats={args.repeats}")
    print("| model | median fwd+bwd (ms) | tokens/s |")
    print("| --- | --- | --- |")
    print(f"| ours (model.transformer) | {med_ours * 1e3:.1f} | {tokens_per_step / med_ours:,.0f} |")
    print(f"| HF LlamaForCausalLM | {med_hf * 1e3:.1f} | {tokens_per_step / med_hf:,.0f} |")
    print(f"ratio ours/HF (time): {med_ours / med_hf:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
