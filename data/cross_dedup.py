"""Exact deduplication across inputs: after each fetch round, a document another input already holds is removed from
the later input's fetched parts, in definitions order, so the result does not depend on how many inputs were
fetched at once (each input deduplicates only against its own parts while it fetches, data/fetch_rounds.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from data.atomic import atomic_write, atomic_write_text
from data.quality import content_hash
from data.source_config import Input
from data.tokenizer import get_tokenizer


def dedup_across(inputs: list[Input], work_dir: Path) -> dict[str, int]:
    """Exact deduplication across inputs, after a fetch round: every fetched part not checked yet, in definitions
    order (then part order), loses the documents whose content hash another input's part already holds (checked
    parts of any input first, then the parts before it in this pass). So a document is never in one source's
    train and another's eval, whatever the worker count. A part is rewritten (text, hashes, meta with the
    removals counted under `filtered.duplicate`) and marked `cross_checked`; a part already split is never
    touched. Re-running after a crash mid-part is safe: hashes are recomputed from the text on disk. Returns
    documents removed per input."""
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
            atomic_write_text(text_path, "".join(kept_lines))
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
        atomic_write(npy, lambda tmp, h=kept_hashes: np.save(tmp, np.array(h, dtype=np.uint64)), suffix=".npy")
        meta["cross_checked"] = True
        atomic_write_text(meta_path, json.dumps(meta))
        held.update(kept_hashes)
    return removed
