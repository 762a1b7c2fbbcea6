"""Stage stamps: every work file of an input is marked with a hash of the config that produced it.

`<work>/stamp.json` holds, per stage, a hash of the config that produced the files of that stage:
fetch (source, loader, shuffle, formatter and options, quality filters), holdback (the fetch stamp + eval/val
shares), tokenize (the holdback stamp + tokenizer). A changed config removes the files of the stage it affects and
of every later stage (one line each says what and why), so a rerun rebuilds them instead of reusing stale parts;
the lineage's `fetched` node carries the stamp, so it describes the config of what is on disk. A share between
inputs or a mix percentage only changes how much is fetched and what the mix takes: it does not stale any file
(more is fetched, and the mix's own plan hash rebuilds the mix). A stamp hashes config values only (no code
location), so moving code between modules never stales a work directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.atomic import atomic_write_text
from data.formats import FORMATTER_VERSIONS, REPOSITORY_FIELDS, group_field
from data.shuffle import shuffle_settings
from data.source_config import Input, Source
from data.tokenizer import tokenizer_info

STAMP_FILE = "stamp.json"
STAMP_VERSION = 1
# stage -> the work files it produces (and that a changed config of the stage or an earlier one makes stale)
STAGE_FILES = {"fetch": ("fetch-*",), "holdback": ("split-*",), "tokenize": ("tok-*",)}
STAGES = tuple(STAGE_FILES)


def stamp_hash(obj) -> str:
    """The 16-hex-digit hash a stamp records for one stage's config (sha256 of its sorted-key JSON)."""
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
    holdback = {"fetch": stamp_hash(fetch), "source": src.name, "eval": src.eval_share, "val": src.val_share}
    if fetch["holdback_group"] in REPOSITORY_FIELDS:  # only these inputs' splits changed: the others' stamps stay
        holdback["group_key"] = "repository, across sources"
    tokenize = {"holdback": stamp_hash(holdback), "tokenizer": tokenizer_info()}
    return {"fetch": fetch, "holdback": holdback, "tokenize": tokenize}


def stamps(inp: Input, src: Source) -> dict[str, dict]:
    """{stage: {"hash", "config"}} for one input."""
    return {stage: {"hash": stamp_hash(cfg), "config": cfg} for stage, cfg in stage_configs(inp, src).items()}


def read_stamp(work: Path) -> dict | None:
    """The stamp on disk of one input's work directory, or None where it has none."""
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
            stale_from = "fetch"  # the fetched text was removed once split (build.remove_fetched_text): fetch again
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
    atomic_write_text(work / STAMP_FILE, json.dumps(new, indent=1, sort_keys=True) + "\n")
    return lines
