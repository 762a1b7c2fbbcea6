"""Cost of the near-duplicate work per token: the build's decontaminate step (MinHash signatures of every training
document, LSH look-up against the held-out documents) and report_mix's eval-contamination scan (13-gram hashes of
every training token, binary search among the eval 13-grams), on real token streams (stdlib code + docstrings).

    python scripts/bench/minhash_throughput.py                 # ~4M tokens, 1 process
    python scripts/bench/minhash_throughput.py --mb 40 --repeats 3

Prints tokens/s per stage, measured side by side in one run, with the per-document reference loop (the MinHash as
it was before it was vectorised: a Python loop with one (shingles x 64) array per document) for the ratio. Per
core; the build spreads signatures over --workers processes. The CPU capability is printed: compare figures from
the same machine, and on a shared machine prefer the ratios.
"""

import argparse
import os
import time

import numpy as np
import torch

from data.quality import NearDuplicateIndex, minhash_signatures, ngram_hashes
from data.tokenizer import get_tokenizer
from scripts.bench.tokenize_throughput import corpus


def per_document_reference(docs: list[np.ndarray], num_perm: int = 64, shingle: int = 5) -> np.ndarray:
    """The same signatures one document per call (the Python loop per document that the vectorised version
    replaced), for the ratio."""
    out = np.empty((len(docs), num_perm), dtype=np.uint64)
    for n, d in enumerate(docs):
        out[n] = minhash_signatures([d], shingle=shingle, num_perm=num_perm)[0]
    return out


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mb", type=float, default=16, help="megabytes of text to tokenize for the stream (default 16)")
    ap.add_argument("--held-out", type=float, default=0.02,
                    help="share of the documents indexed as held-out, as the build's eval + val (default 0.02)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per stage; the best is kept (default 2)")
    args = ap.parse_args(argv)
    if args.mb <= 0 or not 0 < args.held_out < 1 or args.repeats < 1:
        ap.error("--mb must be > 0, --held-out in (0, 1), --repeats >= 1")
    enc = get_tokenizer()
    docs = [np.array(x, dtype=np.int64) for x in enc.encode_ordinary_batch(corpus(args.mb))]
    step = max(2, int(1 / args.held_out))
    held = docs[::step]  # held out, as eval + val: not in the training stream (a real build's look-ups mostly miss)
    docs = [d for i, d in enumerate(docs) if i % step]
    tokens = sum(d.size for d in docs)
    stream = np.concatenate([np.append(d, 50256) for d in docs]).astype(np.uint16)
    print(f"{len(docs):,} training documents, {tokens:,} tokens; {len(held):,} held out; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {os.cpu_count()} cores (shared machine: compare ratios)")
    index = NearDuplicateIndex(held)
    sigs = minhash_signatures(docs)
    rows = [
        ("minhash signatures, vectorised (build)", best_of(lambda: minhash_signatures(docs), args.repeats)),
        ("minhash signatures, one document at a time", best_of(lambda: per_document_reference(docs), 1)),
        ("LSH look-up of every document (build)", best_of(lambda: index.matches_signatures(sigs), args.repeats)),
        ("13-gram hashes of the stream (report_mix)", best_of(lambda: ngram_hashes([stream], 13), args.repeats)),
    ]
    uniq = np.unique(np.concatenate(ngram_hashes(held, 13)))
    h = ngram_hashes([stream], 13)[0]
    present = np.zeros(1 << 24, dtype=bool)
    present[uniq >> np.uint64(40)] = True

    def lookup():
        maybe = np.flatnonzero(present[h >> np.uint64(40)])
        return np.searchsorted(uniq, h[maybe])

    rows.append(("13-gram look-up, presence table + binary search (report_mix)", best_of(lookup, args.repeats)))
    rows.append(("13-gram look-up, binary search alone", best_of(lambda: np.searchsorted(uniq, h), args.repeats)))
    for name, seconds in rows:
        print(f"  {name:55s} {tokens / seconds / 1e6:8.2f}M tokens/s")
    print(f"  vectorised / one-at-a-time signatures: {rows[1][1] / rows[0][1]:.1f}x; presence table / binary search "
          f"alone: {rows[5][1] / rows[4][1]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
