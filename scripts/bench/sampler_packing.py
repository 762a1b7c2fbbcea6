"""Sampler throughput and grounding, fixed windows (before packing) vs the packing index (after), side by side.

    python scripts/bench/sampler_packing.py              # demo mix at 256 + synthetic TriviaQA-length at 1024
    python scripts/bench/sampler_packing.py --dir data/unified_6B --block-size 1024 --steps 200

"Before" is the reader as it was up to token format 1: sample i = stream tokens [i*B, i*B + B + 1), one
`TokenDataset.tokens` call per sample. "After" is `data.loader.read_micro_batch` on the packing index (several
segments per sample, padding masked). Both read the micro-batches of the same kind of `StepSampler` stream (seed,
global batch, micro-batch of the config), alternating A/B/A/B `--repeats` times; the median of each is reported,
and the ratio after / before, which is what to compare on a shared machine. Tokens/s counts block_size tokens per
sample (what the trainer consumes); the padding share says how many of them are padding after packing.

It also prints, per directory, the share of documents whole in one sample under each layout (retrieval documents of
a built mix; the TriviaQA-length documents of the synthetic stream) and the padding share. The synthetic stream
(`synthetic_dir`) has TriviaQA-length QA documents (~730 tokens at the TriviaQA formatter's 3,000-character cut)
among SQuAD-length and log-normal documents, at block 1024: the case packing is for (about a third whole in fixed
windows).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data import packing
from data.loader import read_micro_batch
from data.sampler import StepSampler
from data.token_dataset import TokenDataset, grounding_report, write_token_dir
from data.tokenizer import EOT


def read_fixed_windows(ds: TokenDataset, ids: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-packing loader: fixed windows of the stream, stacked into inputs and targets."""
    tokens = torch.from_numpy(np.stack([ds.tokens(int(i) * block_size, int(i) * block_size + block_size + 1)
                                        for i in ids]))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def tokens_per_s(read, ds: TokenDataset, num_samples: int, block_size: int, steps: int, global_batch: int,
                 micro: int) -> float:
    sampler = StepSampler(num_samples, global_batch, seed=1234, fingerprint=ds.fingerprint)
    t0 = time.perf_counter()
    for step in range(steps):
        for ids in sampler.micro_batches(step, 0, global_batch // micro, micro):
            read(ds, ids, block_size)
    return steps * global_batch // (global_batch // micro) * block_size / (time.perf_counter() - t0)


def synthetic_dir(root: Path, block_size: int, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A stream shaped like phase 1 at the document level: ~30% of tokens TriviaQA-length QA documents (~730
    tokens) with a few SQuAD-length ones (~190, 22% of QA tokens), the rest documents of
    log-normal length (median ~665 tokens, a long tail: web text, code files, papers). Returns (dir, starts and
    lengths of the TriviaQA-length documents)."""
    rng = np.random.default_rng(seed)
    docs, qa_starts, qa_lens, pos = [], [], [], 0
    for _ in range(6000):
        u = rng.random()
        if u < 0.29:
            n, trivia = int(np.clip(rng.normal(730, 120), 300, 1000)), True
        elif u < 0.58:
            n, trivia = int(np.clip(rng.normal(190, 40), 60, 400)), False
        else:
            n, trivia = int(rng.lognormal(6.5, 1.2)) + 2, False
        doc = np.append(rng.integers(0, EOT, size=n - 1), EOT)
        if trivia:
            qa_starts.append(pos)
            qa_lens.append(doc.size)
        docs.append(doc)
        pos += doc.size
    d = write_token_dir(root / "synthetic", docs, pack_block_sizes=[block_size])
    return d, np.array(qa_starts), np.array(qa_lens)


def bench(ds: TokenDataset, block_size: int, args) -> dict:
    n_before = (ds.num_tokens - 1) // block_size
    n_after = ds.num_samples(block_size)
    runs = {"before": [], "after": []}
    for _ in range(args.repeats):
        runs["before"].append(tokens_per_s(read_fixed_windows, ds, n_before, block_size, args.steps,
                                           args.global_batch, args.micro_batch))
        runs["after"].append(tokens_per_s(read_micro_batch, ds, n_after, block_size, args.steps,
                                          args.global_batch, args.micro_batch))
    before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
    return {"before_tok_s": before, "after_tok_s": after, "ratio": after / before,
            "samples_before": n_before, "samples_after": n_after}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--dir", default="data/demo/unified_6B",
                    help="built token directory to read (default: the demo's phase 2 mix; build it with make demo)")
    ap.add_argument("--block-size", type=int, default=256,
                    help="block size of --dir (it must have a packing index for it; default 256, the demo's)")
    ap.add_argument("--synthetic-block-size", type=int, default=1024,
                    help="block size of the synthetic TriviaQA-length stream (default 1024, the base config; 0: skip)")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps read per timing (default 100)")
    ap.add_argument("--global-batch", type=int, default=96, help="samples per step (default 96, the base config's)")
    ap.add_argument("--micro-batch", type=int, default=12, help="samples per micro-batch (default 12, the base config)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating before/after timings; medians reported")
    args = ap.parse_args(argv)
    if args.global_batch % args.micro_batch:
        ap.error(f"--global-batch {args.global_batch} must be a multiple of --micro-batch {args.micro_batch}")
    print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
          "absolute numbers depend on the machine's load: compare the ratios")
    rows = []
    if args.dir:
        directory = Path(args.dir)
        try:
            ds = TokenDataset(directory)
            rep = grounding_report(directory, args.block_size)
        except ValueError as e:
            raise SystemExit(f"sampler_packing: {e}") from None
        r = bench(ds, args.block_size, args)
        g = rep["categories"].get("retrieval") or rep["categories"].get("all")
        rows.append((f"{directory} (retrieval documents)", args.block_size, r, g, rep["padding_share"]))
    if args.synthetic_block_size:
        with tempfile.TemporaryDirectory() as tmp:
            d, qa_s, qa_n = synthetic_dir(Path(tmp), args.synthetic_block_size)
            ds = TokenDataset(d)
            offsets, segments = ds._packing_index(args.synthetic_block_size)
            g = {"documents": int(qa_s.size),
                 "whole_fixed_windows": packing.whole_share_fixed_windows(qa_s, qa_n, args.synthetic_block_size),
                 "whole_packed": float(np.mean(packing.whole_in_packing(qa_s, qa_n, np.asarray(offsets),
                                                                        np.asarray(segments))))}
            r = bench(ds, args.synthetic_block_size, args)
            pad = ds.packing["block_sizes"][str(args.synthetic_block_size)]["padding_share"]
            rows.append(("synthetic phase-1-like stream (TriviaQA-length documents)", args.synthetic_block_size,
                         r, g, pad))
    print("\n| data | block | tokens/s before (fixed windows) | after (packed) | after / before | documents | "
          "whole before | whole after | padding after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, block, r, g, pad in rows:
        print(f"| {name} | {block} | {r['before_tok_s'] / 1e6:.2f}M | {r['after_tok_s'] / 1e6:.2f}M | "
              f"{r['ratio']:.2f} | {g['documents']:,} | {100 * g['whole_fixed_windows']:.1f}% | "
              f"{100 * g['whole_packed']:.1f}% | {100 * pad:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
