"""Seconds per billion tokens of each build stage, on this machine, without network: fetch (the build's json
streaming loader with the hub inputs' seeded shuffle, formatter, quality filters, deduplication, part files),
holdback, tokenize. The download itself is not in it: the hub's speed is the build machine's, not this code's.

    python scripts/bench/build_stages.py                 # ~20 MB of real prose (stdlib + numpy docstrings)
    python scripts/bench/build_stages.py --mb 50 --schema squad_v2

The records are written as JSON Lines in the schema of a real source (`wikipedia`: id, url, title, text -- the
`text` formatter with a title line; `squad_v2`: id, title, context, question, answers -- the retrieval template) and
read back through `data.build.fetch` exactly as a hub stream is (a `datasets` IterableDataset). Each stage runs in
one process; tokens are counted once (EOT included) and every stage's time is divided by them. Prints the CPU
capability; run it on a quiet machine or compare ratios from one run.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from data import build
from data.demo_corpus import docstrings
from data.quality import QualityFilters
from data.shuffle import DEFAULT_SHUFFLE
from data.source_config import Input


def records(schema: str, megabytes: float) -> list[dict]:
    out, size = [], 0
    for i, r in enumerate(docstrings(["{stdlib}", "{purelib}/numpy"])):
        text = r["text"]
        if schema == "wikipedia":
            out.append({"id": str(i), "url": f"https://example.org/{i}", "title": f"Article {i}", "text": text})
        else:  # a SQuAD v2 record whose answer is a span of its context
            words = text.split()
            answer = " ".join(words[len(words) // 2: len(words) // 2 + 2]) or text[:10]
            out.append({"id": str(i), "title": f"Article {i}", "context": text, "question": f"What is item {i}?",
                        "answers": {"text": [answer], "answer_start": [max(0, text.find(answer))]}})
        size += len(text)
        if size >= megabytes * 1e6:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=20, help="megabytes of record text (default 20)")
    ap.add_argument("--schema", choices=["wikipedia", "squad_v2"], default="wikipedia",
                    help="the real source schema the records are written in (default wikipedia)")
    args = ap.parse_args()
    rows = records(args.schema, args.mb)
    tmp = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    try:
        src = tmp / "records.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        formatter, options = ("text", {"title_field": "title", "min_chars": 200}) if args.schema == "wikipedia" \
            else ("squad_v2", {})
        inp = Input(source="bench", name="bench", share=1.0, formatter=formatter, formatter_options=options,
                    loader={"type": "jsonl", "path": str(src), "shuffle": dict(DEFAULT_SHUFFLE)},
                    filters=QualityFilters())
        work = tmp / "w"
        times = {}
        t0 = time.perf_counter()
        state = build.fetch(inp, work, 10**15, docs_per_part=2000, seen=set())
        times["fetch (format, filters, dedup; no download)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build.holdback(inp, work, 0.005, 0.003)
        times["holdback"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build.tokenize([work], workers=1)
        times["tokenize (1 process)"] = time.perf_counter() - t0
        tokens = sum(v["tokens"] for v in build.token_state(work).values())
        print(f"{len(rows):,} {args.schema} records, {state['documents']:,} documents kept, {tokens:,} tokens; "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs")
        print(f"{'stage':45s} {'seconds':>8s} {'tokens/s':>12s} {'core-s per 1B tokens':>21s}")
        for stage, sec in times.items():
            print(f"{stage:45s} {sec:>8.2f} {tokens / sec:>12,.0f} {sec / tokens * 1e9:>21,.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
