"""Tokenization throughput: our tokenize step vs bare tiktoken `encode_ordinary_batch`, same text, same run.

    python scripts/bench/tokenize_throughput.py     # ~20 MB of real text (stdlib code + docstrings), 1 and 2 workers
    python scripts/bench/tokenize_throughput.py --mb 50 --workers 1 2 4 8 16

"ours" is `data.build.tokenize` end to end (read the split JSONL parts, encode, append EOT, write uint16 files)
with N processes; "bare" is `tiktoken.Encoding.encode_ordinary_batch(texts, num_threads=N)` on the texts in memory.
Prints tokens/s for each and the ratio; the target is >= 0.85 of bare per core, and near-linear scaling.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from data import build
from data.demo_corpus import docstrings, expand_path
from data.tokenizer import get_tokenizer


def corpus(megabytes: float) -> list[str]:
    texts, size = [], 0
    files = sorted(Path(expand_path("{stdlib}")).rglob("*.py"))
    prose = (r["text"] for r in docstrings(["{stdlib}"]))
    for i, p in enumerate(files):
        texts.append(p.read_text(encoding="utf-8", errors="replace"))
        if i % 2 == 0:  # mix prose in: code alone tokenizes faster than the real mix
            texts.append(next(prose, ""))
        size += len(texts[-1]) + len(texts[-2])
        if size >= megabytes * 1e6:
            break
    return [t for t in texts if t]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=20, help="megabytes of text to tokenize (default 20)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    ap.add_argument("--parts", type=int, default=16, help="parts the text is split into (the unit of parallelism)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting; the best is reported")
    args = ap.parse_args()
    texts = corpus(args.mb)
    enc = get_tokenizer()
    n_tokens = sum(len(x) for x in enc.encode_ordinary_batch(texts)) + len(texts)  # + one EOT per document
    print(f"text: {sum(map(len, texts)) / 1e6:.1f} MB, {len(texts)} documents, {n_tokens:,} tokens (with EOT); "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7s} {'bare tok/s':>12s} {'ours tok/s':>12s} {'ours/bare':>9s} {'ours per worker':>15s}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    try:
        work = tmp / "w"
        work.mkdir()
        step = -(-len(texts) // args.parts)
        for i in range(args.parts):
            chunk = texts[i * step : (i + 1) * step]
            body = "".join(json.dumps({"text": t}) + "\n" for t in chunk)
            (work / f"split-{i:05d}.train.jsonl").write_text(body)
            for s in ("val", "eval"):
                (work / f"split-{i:05d}.{s}.jsonl").write_text("")
            (work / f"split-{i:05d}.meta.json").write_text("{}")
        for w in args.workers:
            bare = ours = 0.0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                enc.encode_ordinary_batch(texts, num_threads=w)
                bare = max(bare, n_tokens / (time.perf_counter() - t0))
                for f in work.glob("tok-*"):
                    f.unlink()
                t0 = time.perf_counter()
                build.tokenize([work], workers=w)
                ours = max(ours, n_tokens / (time.perf_counter() - t0))
            assert build.token_state(work)["train"]["tokens"] == n_tokens
            print(f"{w:>7d} {bare:>12,.0f} {ours:>12,.0f} {ours / bare:>9.2f} {ours / w:>15,.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
