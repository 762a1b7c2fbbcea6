"""Locked inputs (data/input_lock.py, DESIGN "Inputs are locked"): every unpinned hub input is resolved once to a
commit sha, written to the lock file, and read at that sha by every later run; the lock is in the fetch stamp and the
lineage. The hub is a stand-in resolver here (no network); the definitions are the real ones."""

import json

import datasets
import pytest

from data import build, stamps
from data.input_loaders import open_hub_dataset
from data.input_lock import LOCK_NAME, is_commit_sha, lock_inputs, read_lock
from data.source_config import load_definitions

DEFS = "data/sources/unified_from_scratch.json"


class Hub:
    """A resolver: `sha` per (path, revision) from a seed, and the calls it answered."""

    def __init__(self, seed="a"):
        self.seed, self.calls = seed, []

    def __call__(self, path, revision):
        self.calls.append((path, revision))
        return {"sha": build.hashlib.sha1(f"{self.seed}{path}{revision}".encode()).hexdigest(), "gated": False}


def test_unpinned_hub_inputs_are_locked_once_and_read_at_the_lock(tmp_path, monkeypatch):
    defs = load_definitions(DEFS)
    hub_inputs = [i for i in defs.inputs() if i.loader["type"] == "hf"]
    unpinned = [i.name for i in hub_inputs if not is_commit_sha(i.loader.get("revision"))]
    pinned = {i.name: i.loader["revision"] for i in hub_inputs if is_commit_sha(i.loader.get("revision"))}
    assert unpinned and pinned  # the real definitions have both kinds
    lock = tmp_path / LOCK_NAME
    hub = Hub("first")
    lines, problems = lock_inputs(defs, lock, hub)
    assert not problems and len(lines) == len(unpinned) == len(hub.calls)
    entries = read_lock(lock)
    assert sorted(entries) == sorted(unpinned)
    for inp in defs.inputs():
        if inp.name in entries:
            assert inp.loader["revision"] == entries[inp.name]["sha"] and inp.loader["ref"] == "main"
        elif inp.name in pinned:
            assert inp.loader["revision"] == pinned[inp.name] and "ref" not in inp.loader

    # A later run (a resume days later) reads the lock even though the hub has moved on: no call, same shas.
    later, moved = load_definitions(DEFS), Hub("second")
    assert lock_inputs(later, lock, moved) == ([], []) and moved.calls == []
    assert [i.loader for i in later.inputs()] == [i.loader for i in defs.inputs()]
    # ... and the fetch opens the dataset at that sha
    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.update(k))
    squad = next(i for i in later.inputs() if i.name == "squad_v2")
    open_hub_dataset(squad.loader)
    assert seen["revision"] == entries["squad_v2"]["sha"]
    # the lineage names the commit read
    node = build.input_lineage(squad, tmp_path / "work", later)["inputs"][0]
    assert node["revision"] == entries["squad_v2"]["sha"] and node["loader"]["ref"] == "main"

    # A changed lock is a changed fetch stamp, for that input alone.
    raw = json.loads(lock.read_text())
    raw["inputs"]["squad_v2"]["sha"] = "f" * 40
    lock.write_text(json.dumps(raw))
    edited = load_definitions(DEFS)
    lock_inputs(edited, lock, None)
    changed = {a.name for a, b in zip(later.inputs(), edited.inputs(), strict=True)
               if stamps.stamps(a, later.sources[a.source])["fetch"]["hash"]
               != stamps.stamps(b, edited.sources[b.source])["fetch"]["hash"]}
    assert changed == {"squad_v2"}


def test_a_moved_ref_is_resolved_again_and_failures_are_problems(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock_inputs(load_definitions(DEFS), lock, Hub())
    defs = load_definitions(DEFS)
    squad = next(i for i in defs.inputs() if i.name == "squad_v2")
    squad.loader = {**squad.loader, "revision": "v2.0"}  # the definitions now name a tag
    hub = Hub("tagged")
    lines, _ = lock_inputs(defs, lock, hub)
    assert hub.calls == [("rajpurkar/squad_v2", "v2.0")]
    assert lines == [f"locked squad_v2: rajpurkar/squad_v2@v2.0 -> {squad.loader['revision']} (the lock had "
                     f"rajpurkar/squad_v2@main: definitions moved)"]
    assert read_lock(lock)["squad_v2"]["ref"] == "v2.0"

    def missing(path, revision):
        raise RuntimeError("404 Client Error: Repository Not Found")

    fresh = tmp_path / "other" / LOCK_NAME
    lines, problems = lock_inputs(load_definitions(DEFS), fresh, missing)
    assert not lines and problems and all("cannot lock" in p and "Repository Not Found" in p for p in problems)
    assert not fresh.exists()  # nothing resolved, nothing written
    lock.write_text("{not json")
    with pytest.raises(ValueError, match=f"{LOCK_NAME}: not valid JSON .* delete it"):
        lock_inputs(load_definitions(DEFS), lock, None)
