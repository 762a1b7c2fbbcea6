"""What the KV cache saves: model/generate.py with the cache against re-running the full forward every new token,
side by side in one process, on this machine.

Usage:
    python scripts/bench/generate.py                     # CPU or GPU, whatever this machine has; a Markdown table
    python scripts/bench/generate.py --reps 5 --new-tokens 64
    python scripts/bench/generate.py --config configs/base/750M_unified_v1.json --batch 8    # GPU: the 750M model

Shapes: the demo model (configs/tiny/demo_cpu.json), a 512-wide 8-layer model at block 1024, and with --config
that config's model; each at batch 1 and --batch prompts of --prompt-share of the block, greedy, --new-tokens new
tokens (no stop id, so both variants generate exactly as many). Each cell is the median of --reps runs after one
warm-up, the two variants interleaved run by run; read the ratio. Both variants produce the same tokens (checked
here on every shape, and token for token in tests/test_generate.py).
"""

from __future__ import annotations

import argparse
import sys

import torch

from model.config import EOT_ID, ModelConfig
from model.generate import generate
from model.transformer import Transformer
from scripts.bench.attention import interleaved

MID = dict(n_embd=512, n_head=8, n_layer=8, block_size=1024, dropout=0.0, fused_kernels=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8, help="prompts per batch of the second row of each shape")
    p.add_argument("--prompt-share", type=float, default=0.5, help="prompt length as a share of the block")
    p.add_argument("--config", help="also this training config's model (bf16 on CUDA)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = {"demo (configs/tiny/demo_cpu.json)": ModelConfig.from_json("configs/tiny/demo_cpu.json").to_dict(),
              "512 x 8 layers, block 1024": MID}
    if args.config:
        shapes[args.config] = ModelConfig.from_json(args.config).to_dict()
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"CPU, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
                  "threads")
    print(f"{where}; torch {torch.__version__}; greedy, {args.new_tokens} new tokens, prompts of "
          f"{args.prompt_share:.0%} of the block; median of {args.reps}")
    print("| model | batch | prompt tokens | full forward s | KV cache s | new tokens/s with cache | speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, values in shapes.items():
        config = ModelConfig(**{**values, "dropout": 0.0})
        torch.manual_seed(0)
        model = Transformer(config).to(device).eval()
        if device.type == "cuda" and args.config and name == args.config:
            model = model.to(torch.bfloat16)
        prompt_len = max(1, int(config.block_size * args.prompt_share))
        new = min(args.new_tokens, config.block_size - prompt_len)
        for batch in (1, args.batch):
            gen = torch.Generator().manual_seed(batch)
            prompts = torch.randint(0, EOT_ID, (batch, prompt_len), generator=gen).tolist()
            results = {}

            def run(use_cache: bool, prompts=prompts, new=new, model=model, results=results):
                return lambda: results.__setitem__(use_cache, generate(model, prompts, new, stop_ids=(),
                                                                       use_cache=use_cache))

            times = interleaved({"full": run(False), "cache": run(True)}, args.reps, device)
            same = [g.tokens for g in results[True]] == [g.tokens for g in results[False]]
            print(f"| {name} | {batch} | {prompt_len} | {times['full']:.3f} | {times['cache']:.3f} | "
                  f"{batch * new / times['cache']:,.0f} | {times['full'] / times['cache']:.1f}x"
                  f"{'' if same else ' (TOKENS DIFFER)'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
