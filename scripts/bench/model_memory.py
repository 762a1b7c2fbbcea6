"""Peak memory of one forward+backward at the 750M model's shapes, with the chunked loss and with full logits.

A few layers of the 750M model (real width 1280, 20 heads, real vocabulary 50,304, tied embedding) on --batch x
--seq tokens; "full logits" is the loss the model computed before the chunked linear + cross-entropy
(the (rows, vocab) logits in the parameter dtype plus their fp32 copy for `F.cross_entropy`),
"chunked" is `Transformer.forward(idx, targets)`. Each variant runs in a fresh process:
- on CUDA the figure is `torch.cuda.max_memory_allocated()` during the step, minus the memory allocated before it;
- on CPU it is the growth of the process's peak resident set (`ru_maxrss`) over the step: allocator caching and
  fragmentation make it an upper bound of what the step's tensors need, so read the difference between variants.

    python scripts/bench/model_memory.py                          # CPU: 2 layers, 2 x 1024 tokens, fp32
    python scripts/bench/model_memory.py --layers 4 --batch 1 --seq 1024
    python scripts/bench/model_memory.py --device cuda --dtype bfloat16 --batch 12 --seq 1024 --layers 32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.transformer import Transformer

VARIANTS = ("full_logits", "chunked")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(variant: str, layers: int, batch: int, seq: int, device: str, dtype: str) -> dict:
    """One forward+backward of `variant` in this process; bytes of peak memory the step added."""
    torch.manual_seed(0)
    dev = torch.device(device)
    config = ModelConfig(n_layer=layers, dropout=0.0, fused_kernels=False)  # the 750M defaults otherwise
    model = Transformer(config).to(device=dev, dtype=getattr(torch, dtype)).train()
    tokens = torch.randint(0, 50257, (batch, seq + 1), device=dev)
    idx, targets = tokens[:, :-1], tokens[:, 1:]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _maxrss_bytes()
    start = time.perf_counter()
    if variant == "chunked":
        _, loss = model(idx, targets)
    else:
        logits, _ = model(idx)  # (B, T, vocab) in the parameter dtype, kept for backward; then its fp32 copy
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-1)
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _maxrss_bytes() - before
    return {"variant": variant, "peak_bytes": peak, "seconds": time.perf_counter() - start, "loss": loss.item()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2, help="transformer blocks of the 750M shape (it has 32)")
    p.add_argument("--batch", type=int, default=2, help="sequences per step (the base config's micro-batch is 12)")
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="(internal) measure one variant and print JSON")
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args.variant, args.layers, args.batch, args.seq, args.device, args.dtype)))
        return 0
    results = {}
    for variant in VARIANTS:  # a fresh process each: a peak is a high-water mark and cannot be reset on CPU
        cmd = [sys.executable, __file__, "--variant", variant, "--layers", str(args.layers), "--batch",
               str(args.batch), "--seq", str(args.seq), "--device", args.device, "--dtype", args.dtype]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"model_memory: {variant} failed:\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = args.batch * args.seq
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"CPU, torch capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"model_memory: 750M shapes (n_embd 1280, vocab 50,304), {args.layers} layers, {args.batch} x {args.seq} "
          f"tokens, {args.dtype}, {where}, torch {torch.__version__}")
    print("| loss | peak memory of fwd+bwd | seconds | loss value |")
    print("| --- | --- | --- | --- |")
    for variant, r in results.items():
        print(f"| {variant} | {r['peak_bytes'] / 2**20:,.0f} MiB | {r['seconds']:.1f} | {r['loss']:.4f} |")
    saved = results["full_logits"]["peak_bytes"] - results["chunked"]["peak_bytes"]
    print(f"saved by the chunked loss: {saved / 2**20:,.0f} MiB ({saved:,} bytes) at {rows:,} rows (full logits: "
          f"rows x 50,304 in the parameter dtype, kept for backward, plus their fp32 copy when that is bf16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
