"""Input loaders: how the build opens an input's `loader` (hub, local json/parquet, text, code, python callable) as a
stream of raw records, turns a loader failure into one message naming the input and the fix, and resumes a stream
after the records that complete parts already consumed. The fetch (data/build.py), the preflight, the audits and
the input lock all open inputs through here.

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
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

from data.demo_corpus import expand_path
from data.shuffle import shuffled
from data.source_config import LOGIN_COMMAND, Input


def resumable(records) -> bool:
    """A `datasets.IterableDataset` (it has the library's stream state); generators of local loaders are not."""
    return hasattr(records, "state_dict") and hasattr(records, "load_state_dict")


def iter_records(loader: dict) -> Iterator[dict]:
    """Records of one loader in their dataset's own schema, in a stable order (shuffled with a seed where the
    loader asks, data/shuffle.py). Hub and json/parquet loaders return a `datasets.IterableDataset`, whose
    state_dict() the fetch saves per part to resume from."""
    kind = loader["type"]
    if kind == "hf":
        return shuffled(open_hub_dataset(loader), loader)
    if kind in ("jsonl", "parquet"):
        import datasets

        path = Path(expand_path(loader["path"]))
        files = sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else [str(path)]
        files = [f for f in files if os.path.getsize(f)]  # datasets' json builder dies on an empty file
        if not files:
            return iter([])
        return shuffled(datasets.load_dataset("json" if kind == "jsonl" else "parquet", data_files=files,
                                              split="train", streaming=True), loader)
    if kind in ("text", "code_dir"):
        root = Path(expand_path(loader["path"]))
        exts = tuple(loader.get("extensions", [".txt"] if kind == "text" else [".py"]))
        exclude = [re.compile(p) for p in loader.get("exclude", [])]
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                     if p.is_file() and p.name.endswith(exts))
        field = "text" if kind == "text" else "content"

        def gen():
            for p in files:
                rel = p.relative_to(root).as_posix() if p != root else p.name
                if any(x.search(rel) for x in exclude):
                    continue
                yield {field: p.read_text(encoding="utf-8", errors="replace"), "path": f"{root.name}/{rel}"}

        return gen()
    if kind == "python":
        module, _, func = loader["callable"].partition(":")
        return iter(getattr(importlib.import_module(module), func)(**loader.get("kwargs", {})))
    raise ValueError(f"unknown loader type {kind!r}")


class LoaderError(RuntimeError):
    """An input's loader could not open or stream its dataset; the message names the input and the fix."""


def loader_error(inp: Input, e: BaseException) -> LoaderError:
    """One clear message for a loader failure: which input, what went wrong (first line), and what to do."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    what = f"{type(e).__name__}: {first}"
    where = f"source {inp.source!r} input {inp.name!r} ({inp.loader.get('path') or inp.loader.get('callable')})"
    if "scripts are no longer supported" in first:
        fix = ("the dataset repository ships a loading script, which the pinned `datasets` refuses; load its data "
               "files instead: loader.builder (json/parquet) + loader.data_files (paths inside the repository) + "
               "loader.revision, as the pes2o input does (docs/DATASET.md)")
    elif "gated" in first.lower() or "authenticated" in first.lower() or "ask for access" in first.lower():
        fix = (f"the dataset is gated: accept its terms on {inp.card or 'its dataset page'}, then run "
               f"`{LOGIN_COMMAND}` (or export HF_TOKEN)")
    elif isinstance(e, ConnectionError) or "offline" in first.lower() or "couldn't reach" in first.lower():
        fix = "the Hugging Face hub cannot be reached from here: check the network (HF_HUB_OFFLINE must be unset)"
    else:
        fix = f"check loader.path/name/split/revision against the dataset card {inp.card or ''}".rstrip()
    return LoaderError(f"{where}: cannot load records: {what}. Fix: {fix}")


def guard_records(records, inp: Input):
    """The records, with any loader failure while streaming turned into a LoaderError naming the input."""
    it = iter(records)
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except Exception as e:  # datasets/hub/fsspec raise many types; each is the same stop for the user
            raise loader_error(inp, e) from e
        yield record


def resume_records(records, state: dict):
    """The records after those the complete parts of a fetch consumed (`state`: `data.build.fetch_state`): from the
    library's stream state saved with the last part when there is one (this module's doc says what it restores),
    else by reading past them."""
    if state["stream_state"] is not None and resumable(records):
        records.load_state_dict(state["stream_state"])
        return records
    n = state["records_read"]
    if not n:
        return records
    if hasattr(records, "skip"):  # a part written before stream states: IterableDataset.skip reads past them
        return records.skip(n)
    return itertools.islice(records, n, None)


def hub_data_files(loader: dict) -> list[str]:
    """`hf://` URLs of loader.data_files inside the dataset repository, at loader.revision when given."""
    files = loader["data_files"]
    files = [files] if isinstance(files, str) else list(files)
    at = f"@{loader['revision']}" if loader.get("revision") else ""
    return [f"hf://datasets/{loader['path']}{at}/{f}" for f in files]


def open_hub_dataset(loader: dict):
    """An HF streaming dataset object (not an iterator), so resuming can use its `.skip()`.

    With `builder` (json, parquet, ...) the repository's data files are read by that packaged builder, never by
    the repository's own loading script: the pinned `datasets` refuses scripts even when data_files are given
    (datasets/load.py raises "Dataset scripts are no longer supported" if `<name>.py` exists in the repo)."""
    import datasets  # imported here: the demo and --dry-run never load the hub client

    split, streaming = loader.get("split", "train"), loader.get("streaming", True)
    if loader.get("builder"):
        return datasets.load_dataset(loader["builder"], data_files={split: hub_data_files(loader)}, split=split,
                                     streaming=streaming)
    kwargs = {k: loader[k] for k in ("name", "data_dir", "data_files", "revision") if loader.get(k)}
    return datasets.load_dataset(loader["path"], split=split, streaming=streaming, **kwargs)
