"""Held-out grounded-QA items of an eval set: `qa_items.jsonl` next to its manifest, written by the build.

The build (data/build.py, mix step) writes one JSON line per retrieval document of the eval set (a SQuAD v2 or
TriviaQA rc question held back from training) whose tokens the eval set holds whole, so that evaluation by
generation (SQuAD v2 EM/F1, launcher/grounded_qa.py) needs no download and scores exactly the held-out questions:

    from data.qa_items import QA_ITEMS_FILE, fixed_subset, read_qa_items
    items = read_qa_items("data/demo/retrieval_eval_tokenized")   # None: this eval set has no QA items (rebuild)
    chosen = fixed_subset(items, 64, seed=1234)                   # the same items at any world size
    prompt = render_retrieval(chosen[0]["context"], chosen[0]["question"])   # data.formats

One line (fields and types `FIELDS`):

    {"id": "demo_qa:00003:17",            stable: input, part, line of the held-out split file
     "source": "demo_qa", "input": "demo_qa",
     "context": "...",                    as in the document (the window the formatter cut, if it cut one)
     "question": "...",
     "answers": ["1794", ...],            the answer the document shows first, then every other gold answer; []
                                          for an unanswerable question (whose document shows NOT_IN_CONTEXT)
     "answerable": true,
     "record_id": "5733be28...",          the dataset's own id, or null
     "lineage": {"input": "demo_qa", "part": "split-00003.eval.jsonl", "line": 17}}

The eval set's manifest records the file under `qa_items` ({"file", "count", "answerable", "unanswerable",
"sha256"}; "file" null and count 0 when its retrieval inputs held no whole document), which `read_qa_items` checks.
An eval set without retrieval documents has neither.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data.atomic import atomic_write_bytes

QA_ITEMS_FILE = "qa_items.jsonl"
MANIFEST_KEY = "qa_items"
REBUILD = ("rebuild the eval set with scripts/unified_build/build_unified_dataset.py (its mix step rewrites "
           f"{QA_ITEMS_FILE})")
FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "source": str, "input": str, "context": str, "question": str, "answers": list, "answerable": bool,
    "record_id": (str, type(None)), "lineage": dict}
LINEAGE_FIELDS: dict[str, type] = {"input": str, "part": str, "line": int}


def _problem(item) -> tuple[str, str] | None:
    """(field, what is wrong) for an invalid item, else None."""
    if not isinstance(item, dict):
        return "<line>", f"must be a JSON object, got {type(item).__name__}"
    for name, kind in FIELDS.items():
        if name not in item:
            return name, "is missing"
        value = item[name]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return name, f"must be {getattr(kind, '__name__', 'a string or null')}, got {type(value).__name__}"
    for name in ("id", "question"):
        if not item[name].strip():
            return name, "is empty"
    if not all(isinstance(a, str) for a in item["answers"]):
        return "answers", "must be a list of strings"
    if item["answerable"] and not any(a.strip() for a in item["answers"]):
        return "answers", "is empty for an answerable question"
    if not item["answerable"] and item["answers"]:
        return "answers", "must be [] for an unanswerable question"
    for name, kind in LINEAGE_FIELDS.items():
        value = item["lineage"].get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"lineage.{name}", f"must be {kind.__name__}, got {type(value).__name__}"
    return None


def check_item(item, where: str) -> dict:
    """`item` when it has every field of `FIELDS` with its type, else ValueError naming `where` and the field."""
    bad = _problem(item)
    if bad is not None:
        raise ValueError(f"{where}: field {bad[0]!r} {bad[1]}; {REBUILD}")
    return item


def write_qa_items(directory: str | os.PathLike, items: list[dict]) -> dict:
    """Write `items` (checked) as `directory/qa_items.jsonl` (temp name, then rename); returns the manifest entry.
    No items: no file, and the entry says so (file null, count 0)."""
    directory = Path(directory)
    path = directory / QA_ITEMS_FILE
    seen: set[str] = set()
    for i, it in enumerate(items):
        check_item(it, f"{path}: item {i}")
        if it["id"] in seen:
            raise ValueError(f"{path}: item {i}: field 'id' {it['id']!r} is not unique")
        seen.add(it["id"])
    answerable = sum(bool(it["answerable"]) for it in items)
    entry = {"file": None, "count": len(items), "answerable": answerable, "unanswerable": len(items) - answerable,
             "sha256": None}
    if not items:
        path.unlink(missing_ok=True)
        return entry
    data = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items).encode()
    atomic_write_bytes(path, data)
    return {**entry, "file": QA_ITEMS_FILE, "sha256": hashlib.sha256(data).hexdigest()}


def read_qa_items(eval_dir: str | os.PathLike) -> list[dict] | None:
    """The QA items of an eval set directory, every line checked (ValueError naming the file, the line, the field
    and the fix); None when the directory holds no `qa_items.jsonl` (an eval set without retrieval documents, or
    one built before the build wrote QA items: rebuild it). Where the manifest records the file, its count and
    sha256 must match too."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise ValueError(f"eval set directory {eval_dir} does not exist; {REBUILD}")
    path = eval_dir / QA_ITEMS_FILE
    if not path.is_file():
        return None
    data = path.read_bytes()
    items, seen = [], set()
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        where = f"{path}: line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e}); {REBUILD}") from None
        check_item(item, where)
        if item["id"] in seen:
            raise ValueError(f"{where}: field 'id' {item['id']!r} repeats an earlier line; {REBUILD}")
        seen.add(item["id"])
        items.append(item)
    mpath = eval_dir / "manifest.json"
    recorded = json.loads(mpath.read_text()).get(MANIFEST_KEY) if mpath.is_file() else None
    if recorded and recorded.get("file") == QA_ITEMS_FILE:
        digest = hashlib.sha256(data).hexdigest()
        if recorded.get("count") != len(items) or recorded.get("sha256") != digest:
            raise ValueError(f"{path}: {len(items)} items, sha256 {digest[:12]}..., but {mpath} records "
                             f"{recorded.get('count')} items, sha256 {str(recorded.get('sha256'))[:12]}...: the file "
                             f"was changed or belongs to another build; {REBUILD}")
    return items


def _rank(item: dict, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{item['id']}".encode()).hexdigest()


def fixed_subset(items: list[dict], count: int, seed: int) -> list[dict]:
    """`count` items (all of them when there are fewer) chosen by a seeded hash of each item's id: the same subset on
    every rank, at any world size and in any order of `items`. Answerable and unanswerable items are drawn
    separately, in their shares of `items` (rounded), with at least one of each when both exist and count >= 2;
    returned in hash order (kinds mixed)."""
    if count < 0:
        raise ValueError(f"fixed_subset: count must be >= 0, got {count}")
    ranked = sorted(items, key=lambda it: _rank(it, seed))
    if count >= len(ranked):
        return ranked
    yes = [it for it in ranked if it["answerable"]]
    no = [it for it in ranked if not it["answerable"]]
    n_no = round(count * len(no) / len(ranked))
    if yes and no and count >= 2:
        n_no = min(max(n_no, 1), count - 1)
    n_no = min(n_no, len(no))
    n_yes = min(count - n_no, len(yes))
    n_no = count - n_yes  # the other kind fills what one lacks
    chosen = {id(it) for it in yes[:n_yes] + no[:n_no]}
    return [it for it in ranked if id(it) in chosen]
