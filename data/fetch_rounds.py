"""Fetch rounds: how much each input fetches (its token budget turned into characters), the inputs fetched in
parallel processes, and the rounds of fetch -> hold back -> tokenize -> decontaminate that repeat while an input is
short of its budget. `scripts/unified_build/build_unified_dataset.py` calls `run_rounds` and prints what its
`RoundsProgress` hooks report.

A round fetches every input whose token counts are short of what the mixes and eval sets need of it (after
hold-back), asking for the characters that need takes at the characters per token seen so far (the definitions'
`bytes_per_token` before any token exists), with a margin that grows by 10% each round. Each input deduplicates
against its own parts while it fetches; `data.cross_dedup.dedup_across` then removes what another input kept, in
definitions order, so the result does not depend on the number of fetch processes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from data import build
from data.cross_dedup import dedup_across
from data.input_loaders import LoaderError
from data.source_config import Definitions, Input, Source
from data.stamps import refresh_stamp

WORK_STEPS = ("fetch", "holdback", "tokenize")
"""The steps that write an input's work files: any of them refreshes the stamps first, all three run in rounds."""
LARGE_TRAIN_TOKENS = 100_000_000
"""Inputs whose train budget exceeds this fetch parts of LARGE_PART_DOCUMENTS, the others SMALL_PART_DOCUMENTS."""
LARGE_PART_DOCUMENTS = 20000
SMALL_PART_DOCUMENTS = 500


class FetchStopped(RuntimeError):
    """A fetch failed (filter share, schema, loader); its message is the cause's, in one line."""


class RoundsProgress:
    """What `run_rounds` reports while it works; every hook here shows nothing (a caller overrides what it prints)."""

    def bar(self, **kwargs):
        """A progress bar (tqdm's keyword arguments: total, unit, unit_scale, desc) used as a context manager, with
        `update(n)`; None: no bar."""
        return contextlib.nullcontext()

    def stamp(self, line: str) -> None:
        """Work files built under another config were removed (one line per input and stage)."""

    def fetched(self, bar, name: str, totals: dict) -> None:
        """One input's fetch of this round finished; `totals` as `fetch_inputs` yields them."""

    def duplicates(self, name: str, removed: int) -> None:
        """Documents of this input removed as duplicates of another input's, after a fetch round."""

    def decontaminated(self, removed: dict) -> None:
        """What this round's decontaminate step removed, as `data.build.decontaminate` returns it."""


def target_chars(src: Source, need: dict[str, int], have: dict[str, int], chars: int, rnd: int) -> int:
    """Characters of formatted documents an input must have fetched to meet `need` tokens per split (train, val,
    eval) after hold-back: tokens per character from what it has (`have` tokens from `chars` characters), else the
    source's declared bytes per token, with a margin of 5% plus 10% per round already run."""
    tok_total = sum(have.values())
    bpt = chars / tok_total if tok_total and chars else src.bytes_per_token
    fracs = {"train": 1 - src.eval_share - src.val_share, "val": src.val_share, "eval": src.eval_share}
    need_tokens = max(need[s] / fracs[s] for s in build.SPLITS if fracs[s] > 0)
    return int(need_tokens * bpt * (1.05 + 0.1 * rnd)) + 1


def part_documents(need: dict[str, int], docs_per_part: int | None = None) -> int:
    """Documents per fetched part: `docs_per_part` when given, else by the size of the input's train budget."""
    return docs_per_part or (LARGE_PART_DOCUMENTS if need["train"] > LARGE_TRAIN_TOKENS else SMALL_PART_DOCUMENTS)


def default_fetch_workers(inputs: list[Input], jobs: int, requested: int | None = None) -> int:
    """Fetch processes for `jobs` inputs: `requested`, else every core when an input streams from the hub (network
    bound), else 1 (local inputs are CPU-bound and starting processes costs more than it saves); never more than
    the jobs."""
    hub = any(i.loader["type"] == "hf" for i in inputs)
    return min(requested or ((os.cpu_count() or 1) if hub else 1), jobs)


def plan_round(defs: Definitions, targets: dict[str, dict], work_dir: Path, rnd: int, fetching: bool,
               docs_per_part: int | None = None) -> tuple[list[Input], list[tuple]]:
    """(inputs this round works on, fetch jobs): round 0 takes every input, a later one those neither exhausted nor
    at their budget; an input is fetched (when `fetching`) while it has fewer characters than `target_chars`. A
    job is (input, work dir, target characters, documents per part), as `fetch_inputs` takes it."""
    short, jobs = [], []
    for inp in defs.inputs():
        src, t, work = defs.sources[inp.source], targets[inp.name], work_dir / inp.name
        ts, fs = build.token_state(work), build.fetch_state(work)
        have = {s: ts[s]["tokens"] for s in build.SPLITS}
        if rnd and (fs["exhausted"] or all(have[s] >= t[s] for s in build.SPLITS)):
            continue
        chars = target_chars(src, t, have, fs["chars"], rnd)
        short.append(inp)
        if fetching and not fs["exhausted"] and fs["chars"] < chars:
            jobs.append((inp, str(work), chars, part_documents(t, docs_per_part)))
    return short, jobs


def fetch_job(job: tuple) -> tuple[str, dict]:
    """One input's fetch in a worker process (deduplicated against its own parts; across inputs afterwards)."""
    inp, work, chars, per_part = job
    state = build.fetch(inp, Path(work), chars, per_part)
    return inp.name, {k: state[k] for k in ("parts", "records_read", "documents", "chars", "exhausted")}


def fetch_inputs(jobs: list[tuple], workers: int):
    """Fetch several inputs, `workers` at a time in processes (the work is network reads plus formatting in
    Python, which holds the GIL, hence processes, not threads): yields (input name, totals) as each finishes. Each
    input is deduplicated against its own parts here; `dedup_across` then removes what another input kept, in a
    fixed order, so the result does not depend on the worker count. A failure in one input stops the others
    (their complete parts stay: every part is complete or absent) and is raised here."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fetch_job, jobs)
        return
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
    try:
        yield from pool.imap_unordered(fetch_job, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def run_rounds(defs: Definitions, targets: dict[str, dict], work_dir: Path, steps: list[str], *, max_rounds: int,
               workers: int, fetch_workers: int | None = None, docs_per_part: int | None = None,
               progress: RoundsProgress | None = None) -> None:
    """The fetch, holdback, tokenize and decontaminate steps of a build (those in `steps`): the stamps refreshed
    first (work files made under another config removed), then rounds while an input is short of its budget, at
    most `max_rounds` when all three work steps run, else one. `workers`: tokenizer and decontamination processes;
    `fetch_workers`: fetch processes (default `default_fetch_workers`). Raises FetchStopped when a fetch fails."""
    progress = progress or RoundsProgress()
    inputs = defs.inputs()
    if any(s in steps for s in WORK_STEPS):
        for inp in inputs:
            for line in refresh_stamp(inp, defs.sources[inp.source], work_dir / inp.name):
                progress.stamp(line)
    full = all(s in steps for s in WORK_STEPS)
    for rnd in range(max_rounds if full else 1):
        short, jobs = plan_round(defs, targets, work_dir, rnd, "fetch" in steps, docs_per_part)
        if jobs:
            n = default_fetch_workers(inputs, len(jobs), fetch_workers)
            with progress.bar(total=len(jobs), unit="input", desc=f"fetch round {rnd + 1} ({n} process(es))") as bar:
                try:
                    for name, totals in fetch_inputs(jobs, n):
                        if bar is not None:
                            bar.update(1)
                        progress.fetched(bar, name, totals)
                except (ValueError, LoaderError) as e:
                    raise FetchStopped(str(e)) from e
            # across inputs, in definitions order: a document kept by an earlier input is a duplicate in a later one
            for name, removed in dedup_across(inputs, work_dir).items():
                progress.duplicates(name, removed)
        if "holdback" in steps:
            for inp in short:
                work = work_dir / inp.name
                if work.exists():
                    src = defs.sources[inp.source]
                    build.holdback(inp, work, src.eval_share, src.val_share)
                    build.remove_fetched_text(work)  # the split files hold the same documents
        if "tokenize" in steps and short:
            with progress.bar(unit="tok", unit_scale=True, desc=f"tokenize ({workers} workers)") as bar:
                build.tokenize([work_dir / i.name for i in short if (work_dir / i.name).exists()], workers, bar)
        if "decontaminate" in steps:
            # against the held-out documents of every input: a fetch round adds some, so every round rechecks
            works = [work_dir / i.name for i in inputs if (work_dir / i.name).exists()]
            with progress.bar(unit="part", desc=f"decontaminate ({workers} workers)") as bar:
                # a retrieval document without its passage would teach an answer without evidence: removed whole
                whole = frozenset(i.name for i in inputs if defs.sources[i.source].category == "retrieval")
                removed = build.decontaminate(works, workers, bar=bar, whole_document_inputs=whole)
            progress.decontaminated(removed)
        if not short:
            break
