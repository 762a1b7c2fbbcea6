"""Locked inputs: every Hugging Face hub input of a build is read at one commit, resumes included (DESIGN, "Inputs
are locked").

A hub input whose definition does not pin a commit sha (`loader.revision` absent, a branch or a tag) follows that
ref: a build resumed days later could mix two revisions of one dataset, and its lineage could not say which it read.
So before the first fetch (and by `--preflight`) the build resolves each such input's ref to the commit sha the hub
reports (`HfApi.dataset_info(path, revision=ref).sha`, the call the preflight already makes) and writes it to the
lock file `inputs.lock.json` in the output root, next to the datasets built from it:

    {"version": 1, "inputs": {"triviaqa_rc": {"path": "mandarjoshi/trivia_qa", "ref": "main", "sha": "8d35a53...",
                                              "resolved_at": "2026-12-03T09:00:00+00:00"}}}

Every later run reads the sha from the lock, never from the hub: the loader gets `revision=<sha>` (and `ref`, the
name it was resolved from), so the fetch, its resume, the preflight's sample and the lineage (`fetched.revision`) all
name the same commit. The loader is part of the fetch stamp (data/stamps.py), so a changed lock (the file edited
or deleted and re-resolved to a newer commit) is a changed stamp: that input's work files are refetched, and only
its. An entry whose path or ref no longer matches the definitions is resolved again (the build says so). To move an
input to the hub's newest commit on purpose: delete its entry (or the file) and rerun.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from pathlib import Path

from data.atomic import atomic_write_text
from data.input_loaders import loader_error
from data.preflight import is_offline_error
from data.source_config import Definitions

LOCK_NAME = "inputs.lock.json"
LOCK_VERSION = 1
_SHA = re.compile(r"[0-9a-f]{40}")


def is_commit_sha(revision: str | None) -> bool:
    """A full 40-hex git commit sha: a revision that cannot move."""
    return bool(revision) and bool(_SHA.fullmatch(str(revision)))


def read_lock(path: Path) -> dict:
    """The lock file's entries ({} when there is none); a lock this code cannot read stops with the fix."""
    if not path.is_file():
        return {}
    try:
        lock = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it from a backup, or delete it to resolve every hub "
                         f"input again (their work files are then refetched if the hub moved)") from None
    if lock.get("version") != LOCK_VERSION or not isinstance(lock.get("inputs"), dict):
        raise ValueError(f"{path}: lock version {lock.get('version')!r}, this code reads version {LOCK_VERSION}; "
                         f"delete it to resolve every hub input again")
    return lock["inputs"]


def lock_inputs(defs: Definitions, path: Path, resolve: Callable[[str, str | None], dict] | None
                ) -> tuple[list[str], list[str]]:
    """Pin every unpinned hub input of `defs` to a commit: from the lock at `path`, or resolved now with
    `resolve(path, ref) -> {"sha": ...}` (data/preflight.py `hub_status`) and added to the lock (written to a temp
    name, then renamed). Sets each such input's `loader["revision"]` to the sha and `loader["ref"]` to the ref it
    stands for. Returns (one line per input resolved now, one problem line per input that could not be resolved:
    those stay unpinned and the build must not start). An unreachable hub raises (the caller says "offline").
    `resolve` None: apply the lock's entries only (a step that reads no hub, e.g. `--steps mix`, must still see the
    loaders the fetch stamped)."""
    entries = read_lock(path)
    lines, problems, changed = [], [], False
    for inp in defs.inputs():
        loader = inp.loader
        if loader["type"] != "hf" or is_commit_sha(loader.get("revision")):
            continue
        ref = loader.get("revision") or "main"
        entry = entries.get(inp.name)
        if (entry is None or (entry.get("path"), entry.get("ref")) != (loader["path"], ref)) and resolve is None:
            continue
        if entry is None or (entry.get("path"), entry.get("ref")) != (loader["path"], ref):
            was = "" if entry is None else f" (the lock had {entry.get('path')}@{entry.get('ref')}: definitions moved)"
            try:
                sha = resolve(loader["path"], loader.get("revision"))["sha"]
            except Exception as e:  # not found, revision not found, gated: that input's problem; offline: all of them
                if is_offline_error(e):
                    raise
                problems.append(f"cannot lock {inp.name!r} to a commit: {loader_error(inp, e)}")
                continue
            if not is_commit_sha(sha):
                problems.append(f"cannot lock {inp.name!r}: the hub answered {sha!r} for {loader['path']}@{ref}, "
                                f"not a commit sha")
                continue
            entry = {"path": loader["path"], "ref": ref, "sha": sha,
                     "resolved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
            entries[inp.name] = entry
            changed = True
            lines.append(f"locked {inp.name}: {loader['path']}@{ref} -> {sha}{was}")
        inp.loader = {**loader, "revision": entry["sha"], "ref": ref}
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"version": LOCK_VERSION, "inputs": dict(sorted(entries.items()))},
                                           indent=1) + "\n")
    return lines, problems
