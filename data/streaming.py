"""Streaming a real build can live with: a deterministic shuffle of each input's stream, resume through the
`datasets` library's own stream state, and work files stamped with the config that produced them.

Shuffle. A hub input (and a local json/parquet input that asks for it with `loader.shuffle`) is read through
`IterableDataset.shuffle(seed=..., buffer_size=...)` (datasets 5.2.0, `datasets/iterable_dataset.py`
`IterableDataset.shuffle`): the order of the data files (shards) is shuffled with the seed, up to 10 shards feed the
buffer at a time (`max_buffer_input_shards`), and records come out of a `buffer_size` buffer drawn with the same
seed. So the first documents of Wikipedia are not its first pages in page-id order, and the same seed gives the
same stream on every machine. `loader.shuffle`: `{"seed": int, "buffer_size": int}`, or `null` for storage order;
default for `hf` loaders: DEFAULT_SHUFFLE. The buffer holds `buffer_size` raw records in memory (TriviaQA rc
records are ~90 kB each, hence its smaller buffer in the definitions).

Resume. Every fetched part records `IterableDataset.state_dict()` after its last record; a rerun calls
`load_state_dict()` with the last complete part's state instead of reading and discarding every record consumed
before (`.skip(n)` decodes all of them: `SkipExamplesIterable.__iter__`). With the state, whole data files already
read are not opened again, and inside the current file whole Arrow tables are passed over without turning rows
into Python objects (`ArrowExamplesIterable.__iter__`). What the library does NOT restore (its docstring of
`IterableDataset.state_dict`: "examples from shuffle buffers are lost when resuming and the buffers are refilled
with new data"): the records that were in the shuffle buffer when the part ended. So a resumed shuffled stream is
deterministic (the same state gives the same records) but not the uninterrupted stream: the buffer's records are
never fetched (at most `buffer_size` per interruption, measured: 18 lost and 2 repeated of 300 records at buffer
32, 3 files), and a repeated one is dropped by exact deduplication. An unshuffled stream resumes exactly.

Stamps. `<work>/stamp.json` holds, per stage, a hash of the config that produced the files of that stage:
fetch (source, loader, shuffle, formatter and options, quality filters), holdback (the fetch stamp + eval/val
shares), tokenize (the holdback stamp + tokenizer). A changed config removes the files of the stage it affects and
of every later stage (one line each says what and why), so a rerun rebuilds them instead of reusing stale parts;
the lineage's `fetched` node carries the stamp, so it describes the config of what is on disk. A share between
inputs or a mix percentage only changes how much is fetched and what the mix takes: it does not stale any file
(more is fetched, and the mix's own plan hash rebuilds the mix).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from data.formats import FORMATTER_VERSIONS, REPOSITORY_FIELDS, group_field
from data.tokenizer import tokenizer_info

if TYPE_CHECKING:  # source_config imports check_shuffle from here
    from data.source_config import Input, Source

DEFAULT_SHUFFLE = {"seed": 1234, "buffer_size": 10_000}
STAMP_FILE = "stamp.json"
STAMP_VERSION = 1
# stage -> the work files it produces (and that a changed config of the stage or an earlier one makes stale)
STAGE_FILES = {"fetch": ("fetch-*",), "holdback": ("split-*",), "tokenize": ("tok-*",)}
STAGES = tuple(STAGE_FILES)


def shuffle_settings(loader: dict) -> dict | None:
    """The shuffle this loader's stream gets: its `shuffle` key (None = storage order), else the default for hub
    loaders; local files keep their order unless asked."""
    if "shuffle" in loader:
        return loader["shuffle"]
    return dict(DEFAULT_SHUFFLE) if loader.get("type") == "hf" else None


def check_shuffle(where: str, value) -> None:
    """ValueError naming the input when `loader.shuffle` is neither null nor {"seed": int, "buffer_size": int >= 1}."""
    if value is None:
        return
    if (not isinstance(value, dict) or set(value) != {"seed", "buffer_size"}
            or not all(isinstance(value[k], int) and not isinstance(value[k], bool) for k in value)
            or value["buffer_size"] < 1 or value["seed"] < 0):
        raise ValueError(f"{where}: loader.shuffle {value!r}; use null (storage order) or "
                         f'{{"seed": 1234, "buffer_size": 10000}} (integers, buffer_size >= 1)')


def shuffled(dataset, loader: dict):
    """The dataset through `IterableDataset.shuffle(seed, buffer_size)` when its loader asks for a shuffle."""
    s = shuffle_settings(loader)
    return dataset if s is None else dataset.shuffle(seed=s["seed"], buffer_size=s["buffer_size"])


def resumable(records) -> bool:
    """A `datasets.IterableDataset` (it has the library's stream state); generators of local loaders are not."""
    return hasattr(records, "state_dict") and hasattr(records, "load_state_dict")


# ------------------------------------------------------------------------------------------------- stamps


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stage_configs(inp: Input, src: Source) -> dict[str, dict]:
    """What each stage's files of one input depend on (the `hint` and `notes` text do not change any file)."""
    loader = {k: v for k, v in inp.loader.items() if k != "hint"}
    fetch = {"version": STAMP_VERSION, "source": inp.source, "loader": loader, "shuffle": shuffle_settings(loader),
             "formatter": inp.formatter, "formatter_options": inp.formatter_options,
             "quality_filters": inp.filters.config(),
             # the fetched part carries each document's hold-back group: another group field rewrites the parts
             "holdback_group": group_field(inp.formatter, inp.formatter_options, inp.holdback_group)}
    if FORMATTER_VERSIONS.get(inp.formatter, 1) > 1:  # absent at version 1: other inputs' stamps stay as they were
        fetch["formatter_version"] = FORMATTER_VERSIONS[inp.formatter]
    holdback = {"fetch": _hash(fetch), "source": src.name, "eval": src.eval_share, "val": src.val_share}
    if fetch["holdback_group"] in REPOSITORY_FIELDS:  # only these inputs' splits changed: the others' stamps stay
        holdback["group_key"] = "repository, across sources"
    tokenize = {"holdback": _hash(holdback), "tokenizer": tokenizer_info()}
    return {"fetch": fetch, "holdback": holdback, "tokenize": tokenize}


def stamps(inp: Input, src: Source) -> dict[str, dict]:
    """{stage: {"hash", "config"}} for one input."""
    return {stage: {"hash": _hash(cfg), "config": cfg} for stage, cfg in stage_configs(inp, src).items()}


def read_stamp(work: Path) -> dict | None:
    path = Path(work) / STAMP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def refresh_stamp(inp: Input, src: Source, work: Path) -> list[str]:
    """Compare the input's stamp on disk with its config now; remove the files of the first changed stage and of
    every later one, then write the new stamp. Returns one line per stage whose files were removed (empty when
    nothing changed). Work files without any stamp (a build from before stamps) count as stale: their config is
    unknown."""
    work = Path(work)
    new = stamps(inp, src)
    old = read_stamp(work)
    lines = []
    if work.is_dir():
        stale_from = None
        for stage in STAGES:
            if old is None or old.get(stage, {}).get("hash") != new[stage]["hash"]:
                stale_from = stage
                break
        if stale_from == "holdback" and any(not m.with_name(m.name.replace(".meta.json", ".jsonl")).is_file()
                                            for m in work.glob("fetch-*.meta.json")):
            stale_from = "fetch"  # the fetched text was removed once split (remove_fetched_text): fetch again
        if stale_from is not None:
            for stage in STAGES[STAGES.index(stale_from):]:
                files = sorted(p for pat in STAGE_FILES[stage] for p in work.glob(pat))
                if not files:
                    continue
                if old is None:
                    why = "no stamp.json (written by a build before config stamps): config unknown"
                elif stage == stale_from and old.get(stage, {}).get("hash") == new[stage]["hash"]:
                    why = "unchanged, but its text was removed once split and the holdback config changed"
                elif stage == stale_from:
                    why = "changed: " + ", ".join(_changed_keys(old[stage].get("config", {}),
                                                                new[stage]["config"])[:6])
                else:
                    why = f"built from the {stale_from} files, which are rebuilt"
                for p in files:
                    p.unlink()
                lines.append(f"input {inp.name!r}: {stage} config {why}; removed its {len(files)} {stage} file(s) "
                             f"in {work}, they are rebuilt")
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{STAMP_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, work / STAMP_FILE)
    return lines


def remove_fetched_text(work: Path) -> int:
    """Delete `fetch-NNNNN.jsonl` of every part whose split files are complete: the split files hold exactly its
    documents (partitioned by hold-back), so keeping both doubled the text on disk. The part's meta (counts,
    sha256 of the deleted text, stream state) and content hashes (deduplication state) stay. Not compressed: no
    stage reads it again, and the split text is kept as it is for re-tokenizing and audits. Returns bytes freed."""
    freed = 0
    for meta in sorted(Path(work).glob("split-*.meta.json")):
        text = meta.with_name(meta.name.replace("split-", "fetch-").replace(".meta.json", ".jsonl"))
        if text.is_file():
            freed += text.stat().st_size
            text.unlink()
    return freed


# ------------------------------------------------------------------------- parallel fetch, cross-source dedup


def _fetch_job(job: tuple) -> tuple[str, dict]:
    """One input's fetch in a worker process (deduplicated against its own parts; across inputs afterwards)."""
    from data import build

    inp, work, target_chars, per_part = job
    state = build.fetch(inp, Path(work), target_chars, per_part)
    return inp.name, {k: state[k] for k in ("parts", "records_read", "documents", "chars", "exhausted")}


def fetch_inputs(jobs: list[tuple], workers: int):
    """Fetch several inputs, `workers` at a time in processes (the work is network reads plus formatting in
    Python, which holds the GIL, hence processes, not threads): yields (input name, totals) as each finishes. Each
    input is deduplicated against its own parts here; `dedup_across` then removes what another input kept, in a
    fixed order, so the result does not depend on the worker count. A failure in one input stops the others
    (their complete parts stay: every part is complete or absent) and is raised here."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_fetch_job, jobs)
        return
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
    try:
        yield from pool.imap_unordered(_fetch_job, jobs)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def dedup_across(inputs: list[Input], work_dir: Path) -> dict[str, int]:
    """Exact deduplication across inputs, after a fetch round: every fetched part not checked yet, in definitions
    order (then part order), loses the documents whose content hash another input's part already holds (checked
    parts of any input first, then the parts before it in this pass). So a document is never in one source's
    train and another's eval, whatever the worker count. A part is rewritten (text, hashes, meta with the
    removals counted under `filtered.duplicate`) and marked `cross_checked`; a part already split is never
    touched. Re-running after a crash mid-part is safe: hashes are recomputed from the text on disk. Returns
    documents removed per input."""
    import numpy as np

    from data.quality import content_hash
    from data.tokenizer import get_tokenizer

    work_dir = Path(work_dir)
    held: set[int] = set()
    todo = []
    for inp in inputs:
        for meta_path in sorted((work_dir / inp.name).glob("fetch-*.meta.json")):
            meta = json.loads(meta_path.read_text())
            hashes = meta_path.with_name(meta_path.name.replace(".meta.json", ".hashes.npy"))
            if meta.get("cross_checked") or (work_dir / inp.name / meta_path.name.replace("fetch-", "split-")).exists():
                held.update(np.load(hashes).tolist() if hashes.is_file() else [])
            else:
                todo.append((inp, meta_path, meta))
    removed: dict[str, int] = {}
    for inp, meta_path, meta in todo:
        text_path = meta_path.with_name(meta["file"])
        lines = text_path.read_text().splitlines(keepends=True)
        texts = [json.loads(line)["text"] for line in lines]
        hashes = [content_hash(t) for t in texts]
        keep = [not (inp.filters.exact_dedup and h in held) for h in hashes]
        dropped = [t for t, k in zip(texts, keep, strict=True) if not k]
        if dropped:
            kept_lines = [line for line, k in zip(lines, keep, strict=True) if k]
            _atomic(text_path, "".join(kept_lines))
            tokens = sum(len(x) + 1 for x in get_tokenizer().encode_ordinary_batch(dropped, num_threads=1))
            dup = meta.setdefault("filtered", {}).setdefault("duplicate", {"documents": 0, "tokens": 0})
            dup["documents"] += len(dropped)
            dup["tokens"] += tokens
            meta["documents"] -= len(dropped)
            meta["chars"] -= sum(len(t) for t in dropped)
            meta["sha256"] = hashlib.sha256(text_path.read_bytes()).hexdigest()
            removed[inp.name] = removed.get(inp.name, 0) + len(dropped)
        kept_hashes = [h for h, k in zip(hashes, keep, strict=True) if k]
        npy = meta_path.with_name(meta_path.name.replace(".meta.json", ".hashes.npy"))
        tmp = npy.with_name(f".{npy.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, np.array(kept_hashes, dtype=np.uint64))
        os.replace(tmp, npy)
        meta["cross_checked"] = True
        _atomic(meta_path, json.dumps(meta))
        held.update(kept_hashes)
    return removed


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
