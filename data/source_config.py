"""Source definitions (`data/sources/*.json`): load, merge, validate, and turn into per-input budgets.

A definitions file holds any of:
- `extends`: another definitions file (path relative to this one) loaded first;
- `sources`: {name: {category, eval_set, holdback {eval, val}, upsample, bytes_per_token, filters {...} (see
  `data/quality.py` QualityFilters), inputs: [{name, share, card, gated, loader, formatter, formatter_options,
  available_tokens_estimate {tokens, derivation}}]}};
- `mixes`: {mix_dir_name: {total_tokens, val_tokens, percent {source: %}}};
- `eval_sets`: {eval_dir_name: {sources: [...], min_tokens, max_tokens}}.
See docs/DATASET.md for every field. Everything is checked here, before any download: percentages that do not
sum to 100, unknown formatters, loaders or sources, and missing local paths stop the build naming the source;
`budget_problems` checks each input's declared available tokens against what the mixes ask of it, and
`gated_inputs` / `login_instructions` say which inputs need a Hugging Face login.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from data.demo_corpus import expand_path
from data.formats import (
    REPOSITORY_FIELDS,
    RETRIEVAL_FORMATTERS,
    SQUAD_V2_TRAIN_UNANSWERABLE_SHARE,
    get_formatter,
    group_field,
    unanswerable_keep_share,
)
from data.quality import QualityFilters
from data.shuffle import check_shuffle

LOADER_TYPES = {"hf", "jsonl", "parquet", "text", "code_dir", "python"}
HF_LOADER_KEYS = {"type", "path", "name", "split", "data_dir", "data_files", "builder", "revision", "streaming",
                  "filter", "hint", "shuffle"}
SHUFFLE_LOADERS = {"hf", "jsonl", "parquet"}  # the loaders that deliver a datasets.IterableDataset
CARD_PREFIX = "https://huggingface.co/datasets/"
# The login command of the huggingface_hub that the pinned `datasets` installs (2.x ships only the `hf` CLI; the
# older `huggingface-cli login` is gone). Checked with `hf auth login --help`.
LOGIN_COMMAND = "hf auth login"
LOCAL_LOADERS = {"jsonl", "parquet", "text", "code_dir"}
CATEGORIES = {"code", "retrieval", "general", "domain", "structured"}


@dataclass
class Input:
    source: str
    name: str
    share: float
    loader: dict
    formatter: str
    formatter_options: dict = field(default_factory=dict)
    filters: QualityFilters = field(default_factory=QualityFilters)  # the source's, shared by its inputs
    card: str | None = None  # the dataset card the schema was checked against (hub inputs)
    gated: bool = False  # the hub asks the user to accept terms and log in before any file is served
    available_tokens: int | None = None  # declared estimate of what the input can supply after its filters
    available_derivation: str = ""  # how that estimate was computed, so it can be re-checked
    available_rows: int | None = None  # records in what the loader reads, from the card (preflight projects with it)
    holdback_group: str | None = None  # record field grouping documents for the hold-back (default: per formatter)


@dataclass
class Source:
    name: str
    category: str
    inputs: list[Input]
    eval_set: str | None = None
    eval_share: float = 0.0
    val_share: float = 0.0
    upsample: float = 1.0
    bytes_per_token: float = 4.0
    filters: QualityFilters = field(default_factory=QualityFilters)


@dataclass
class Mix:
    name: str
    total_tokens: int
    val_tokens: int
    percent: dict[str, float]

    def source_tokens(self, source: str, total: int | None = None) -> int:
        """Exact integer budget of one source; rounding remainders go to the largest source so budgets sum."""
        total = self.total_tokens if total is None else total
        budgets = {s: int(total * p / 100) for s, p in self.percent.items()}
        budgets[max(self.percent, key=self.percent.get)] += total - sum(budgets.values())
        return budgets.get(source, 0)


@dataclass
class EvalSet:
    name: str
    sources: list[str]
    min_tokens: int = 0
    max_tokens: int | None = None


@dataclass
class Definitions:
    files: list[str]
    sources: dict[str, Source]
    mixes: dict[str, Mix]
    eval_sets: dict[str, EvalSet]
    raw: dict

    def inputs(self) -> list[Input]:
        return [i for s in self.sources.values() for i in s.inputs]


def _load_raw(path: Path, seen: list[str]) -> dict:
    if not path.is_file():
        raise ValueError(f"source definitions file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    merged: dict = {"sources": {}, "mixes": {}, "eval_sets": {}}
    if "extends" in raw:
        base = (path.parent / raw["extends"]).resolve()
        if str(base) not in seen:
            seen.append(str(base))
            merged = _load_raw(base, seen)
    unknown = set(raw) - {"extends", "description", "sources", "mixes", "eval_sets"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: description, extends, "
                         f"sources, mixes, eval_sets")
    for key in ("sources", "mixes", "eval_sets"):
        for name, value in raw.get(key, {}).items():
            if name in merged[key] and merged[key][name] != value:
                raise ValueError(f"{path}: {key[:-1]} {name!r} is defined differently in another definitions file")
            merged[key][name] = value
    return merged


def _check_keys(where: str, obj: dict, required: set[str], optional: set[str]) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    missing, unknown = required - set(obj), set(obj) - required - optional
    if missing:
        raise ValueError(f"{where}: missing field(s) {sorted(missing)}")
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(required | optional)}")


def _parse_input(src: str, i: int, raw: dict) -> Input:
    where = f"source {src!r} input {i}"
    _check_keys(where, raw, {"loader", "formatter"},
                {"name", "share", "formatter_options", "card", "gated", "available_tokens_estimate", "notes",
                 "holdback_group"})
    loader = raw["loader"]
    if not isinstance(loader, dict) or loader.get("type") not in LOADER_TYPES:
        raise ValueError(f"{where}: loader type {loader.get('type') if isinstance(loader, dict) else loader!r} "
                         f"unknown; use one of {sorted(LOADER_TYPES)}")
    try:
        get_formatter(raw["formatter"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    options = raw.get("formatter_options", {})
    if raw["formatter"] == "squad_v2" and options.get("unanswerable_share") is not None:
        try:  # checked here, not at the first unanswerable record of the fetch
            unanswerable_keep_share(options["unanswerable_share"],
                                    options.get("split_unanswerable_share", SQUAD_V2_TRAIN_UNANSWERABLE_SHARE))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    card = raw.get("card")
    if "shuffle" in loader:
        if loader["type"] not in SHUFFLE_LOADERS:
            raise ValueError(f"{where}: loader.shuffle applies to {sorted(SHUFFLE_LOADERS)} loaders only, not "
                             f"{loader['type']!r}")
        check_shuffle(where, loader["shuffle"])
    if loader["type"] == "hf":
        _check_keys(f"{where} loader", loader, {"type", "path"}, HF_LOADER_KEYS)
        expected = CARD_PREFIX + loader["path"]
        # the card is where the split, field and gating facts of this input come from: it must be the loader's
        if card != expected:
            raise ValueError(f"{where}: card {card!r} must be the dataset card of loader.path, {expected!r}")
        if loader.get("builder") and not loader.get("data_files"):
            raise ValueError(f"{where}: loader.builder {loader['builder']!r} needs loader.data_files (paths of the "
                             f"data files inside the dataset repository)")
    group = raw.get("holdback_group")
    if group is not None and (not isinstance(group, str) or not group):
        raise ValueError(f"{where}: holdback_group must be a field name of the dataset's records (or \"text\"), "
                         f"got {group!r}")
    gated = raw.get("gated", False)
    if not isinstance(gated, bool):
        raise ValueError(f"{where}: gated must be true or false, got {gated!r}")
    est = raw.get("available_tokens_estimate")
    tokens, derivation, rows = None, "", None
    if est is not None:
        _check_keys(f"{where} available_tokens_estimate", est, {"tokens", "derivation"}, {"rows"})
        tokens, derivation, rows = est["tokens"], est["derivation"], est.get("rows")
        for key, value in (("tokens", tokens), ("rows", rows)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{where}: available_tokens_estimate.{key} must be a whole number >= 0 or null "
                                 f"(unknown), got {value!r}")
    return Input(source=src, name=raw.get("name", src if i == 0 else f"{src}_{i}"), share=float(raw.get("share", 1)),
                 loader=loader, formatter=raw["formatter"], formatter_options=raw.get("formatter_options", {}),
                 card=card, gated=gated, available_tokens=tokens, available_derivation=derivation,
                 available_rows=rows, holdback_group=group)


def load_definitions(*paths: str | os.PathLike) -> Definitions:
    """Load and merge definitions files, validate them, and return typed definitions (ValueError naming the
    file/source/field on any problem; no network, no file reading besides the definitions)."""
    seen: list[str] = []
    merged: dict = {"sources": {}, "mixes": {}, "eval_sets": {}}
    for p in paths:
        p = Path(p).resolve()
        if str(p) in seen:
            continue
        seen.append(str(p))
        part = _load_raw(p, seen)
        for key in merged:
            for name, value in part[key].items():
                if name in merged[key] and merged[key][name] != value:
                    raise ValueError(f"{p}: {key[:-1]} {name!r} is defined differently in another definitions file")
                merged[key][name] = value
    where0 = ", ".join(paths_str := [str(p) for p in paths])
    sources: dict[str, Source] = {}
    for name, raw in merged["sources"].items():
        where = f"source {name!r}"
        _check_keys(where, raw, {"category", "inputs"},
                    {"eval_set", "holdback", "upsample", "bytes_per_token", "description", "tokens_note", "filters"})
        if raw["category"] not in CATEGORIES:
            raise ValueError(f"{where}: category {raw['category']!r} unknown; use one of {sorted(CATEGORIES)}")
        if not raw["inputs"]:
            raise ValueError(f"{where}: empty inputs list; give at least one input")
        inputs = [_parse_input(name, i, r) for i, r in enumerate(raw["inputs"])]
        if abs(sum(i.share for i in inputs) - 1) > 1e-6:
            raise ValueError(f"{where}: input shares {[i.share for i in inputs]} sum to "
                             f"{sum(i.share for i in inputs)}, not 1")
        hb = raw.get("holdback", {})
        _check_keys(f"{where} holdback", hb, set(), {"eval", "val"})
        src = Source(name=name, category=raw["category"], inputs=inputs, eval_set=raw.get("eval_set"),
                     eval_share=float(hb.get("eval", 0)), val_share=float(hb.get("val", 0)),
                     upsample=float(raw.get("upsample", 1)), bytes_per_token=float(raw.get("bytes_per_token", 4)),
                     filters=QualityFilters.from_config(raw.get("filters"), f"{where} filters"))
        if not (0 <= src.eval_share and 0 <= src.val_share and src.eval_share + src.val_share < 0.9):
            raise ValueError(f"{where}: holdback eval {src.eval_share} + val {src.val_share} must be in [0, 0.9)")
        if src.upsample < 1:
            raise ValueError(f"{where}: upsample {src.upsample} must be >= 1 (1 = no repetition)")
        if src.eval_set and src.eval_share <= 0:
            raise ValueError(f"{where}: eval_set {src.eval_set!r} but holdback.eval is 0; set a share > 0")
        for inp in inputs:
            inp.filters = src.filters
        sources[name] = src
    names = {i.name for s in sources.values() for i in s.inputs}
    if len(names) != sum(len(s.inputs) for s in sources.values()):
        raise ValueError(f"{where0}: input names must be unique across sources")
    # A repository is one hold-back group across sources, split by one hash (data/build.py `holdback_split`): the
    # sources holding repositories must split at the same shares, or a repository could be eval in one and train in
    # another.
    repo_shares = {name: (s.eval_share, s.val_share) for name, s in sources.items()
                   if any(group_field(i.formatter, i.formatter_options, i.holdback_group) in REPOSITORY_FIELDS
                          for i in s.inputs)}
    if len(set(repo_shares.values())) > 1:
        raise ValueError(f"{where0}: the sources grouped by repository hold back different shares {repo_shares} "
                         "(eval, val); a repository is one group across sources, so give them the same holdback")
    mixes: dict[str, Mix] = {}
    for name, raw in merged["mixes"].items():
        where = f"mix {name!r}"
        _check_keys(where, raw, {"total_tokens", "percent"}, {"val_tokens", "description"})
        percent = {k: float(v) for k, v in raw["percent"].items()}
        for s, pct in percent.items():
            if s not in sources:
                raise ValueError(f"{where}: source {s!r} is not defined; defined: {sorted(sources)}")
            if pct <= 0:
                raise ValueError(f"{where}: source {s!r} has percentage {pct}; remove it or give a positive share")
        total = sum(percent.values())
        if abs(total - 100) > 1e-6:
            raise ValueError(f"{where}: percentages sum to {total:g}, not 100 ({percent})")
        mixes[name] = Mix(name=name, total_tokens=int(raw["total_tokens"]), val_tokens=int(raw.get("val_tokens", 0)),
                          percent=percent)
    eval_sets: dict[str, EvalSet] = {}
    for name, raw in merged["eval_sets"].items():
        _check_keys(f"eval set {name!r}", raw, {"sources"}, {"min_tokens", "max_tokens", "description"})
        for s in raw["sources"]:
            if s not in sources or sources[s].eval_set != name:
                raise ValueError(f"eval set {name!r}: source {s!r} is not defined or its eval_set is not {name!r}")
        eval_sets[name] = EvalSet(name=name, sources=list(raw["sources"]), min_tokens=int(raw.get("min_tokens", 0)),
                                  max_tokens=raw.get("max_tokens"))
    for s in sources.values():
        if s.eval_set and s.eval_set not in eval_sets:
            raise ValueError(f"source {s.name!r}: eval_set {s.eval_set!r} is not defined under eval_sets")
    if not mixes:
        raise ValueError(f"{where0}: no mixes defined")
    return Definitions(files=paths_str, sources=sources, mixes=mixes, eval_sets=eval_sets, raw=merged)


def size_retrieval_documents(defs: Definitions, block_sizes: list[int]) -> None:
    """Give every retrieval-template input (`RETRIEVAL_FORMATTERS`) `formatter_options.max_tokens` = the largest
    block size packed + 1 unless its definition sets one, so each passage, question and answer fits one sample and
    is packed whole. The option is part of the fetch stamp: building for a larger block size later refetches these
    inputs, and only these. A definition's larger value is a ValueError naming the input."""
    cap = max(block_sizes) + 1
    for inp in defs.inputs():
        if inp.formatter not in RETRIEVAL_FORMATTERS:
            continue
        have = inp.formatter_options.get("max_tokens")
        if have is None:
            inp.formatter_options = {**inp.formatter_options, "max_tokens": cap}
        elif not isinstance(have, int) or not 2 <= have <= cap:
            raise ValueError(f"input {inp.name!r} formatter_options.max_tokens {have!r} must be an integer in "
                             f"[2, {cap}] (the largest --block-size {cap - 1} + 1): a longer retrieval document is "
                             f"split across samples; remove it to size documents by --block-size")


def missing_local_paths(defs: Definitions) -> list[str]:
    """Problems with local inputs (path missing), one line each naming the source; empty when all is present."""
    problems = []
    for inp in defs.inputs():
        if inp.loader["type"] in LOCAL_LOADERS:
            path = Path(expand_path(inp.loader.get("path", "")))
            if not inp.loader.get("path") or not path.exists():
                problems.append(f"source {inp.source!r} input {inp.name!r}: local path {str(path)!r} does not exist "
                                f"({inp.loader.get('hint', 'put the files there or change loader.path')})")
    return problems


def input_targets(defs: Definitions) -> dict[str, dict]:
    """Per input: tokens needed for train (max over mixes, divided by upsampling), for val (max over mixes)."""
    out = {}
    for src in defs.sources.values():
        for inp in src.inputs:
            train = max((m.source_tokens(src.name) for m in defs.mixes.values()), default=0)
            val = max((m.source_tokens(src.name, m.val_tokens) for m in defs.mixes.values() if m.val_tokens),
                      default=0)
            out[inp.name] = {"train": int(train * inp.share / src.upsample + 0.999999), "val": int(val * inp.share)}
    return out


def fetch_needs(defs: Definitions) -> dict[str, int]:
    """Per input: tokens it must supply before hold-back, so that after the eval / val shares are held back its
    train split covers the mixes (after upsampling) and its val and eval splits cover theirs."""
    tg = input_targets(defs)
    out = {}
    for src in defs.sources.values():
        fracs = {"train": 1 - src.eval_share - src.val_share, "val": src.val_share, "eval": src.eval_share}
        for inp in src.inputs:
            t = tg[inp.name]
            out[inp.name] = int(max(t[s] / fracs[s] for s in ("train", "val") if fracs[s] > 0 and t[s]) + 0.5) \
                if any(t[s] for s in ("train", "val")) else 0
    return out


def budget_problems(defs: Definitions) -> list[str]:
    """One line per input whose declared `available_tokens_estimate` is below what the mixes need of it (after
    upsampling and hold-back); inputs without an estimate (tokens null or absent) are not judged here."""
    problems = []
    needs = fetch_needs(defs)
    for inp in defs.inputs():
        need, have = needs[inp.name], inp.available_tokens
        if have is not None and have < need:
            src = defs.sources[inp.source]
            problems.append(
                f"source {inp.source!r} input {inp.name!r}: needs {need:,} tokens before hold-back "
                f"(train budget x share {inp.share:g} / upsample {src.upsample:g}, / train share "
                f"{1 - src.eval_share - src.val_share:.3f}) but can supply about {have:,} "
                f"({inp.available_derivation}); lower its percentage, raise upsample, or add data")
    return problems


def gated_inputs(defs: Definitions) -> list[Input]:
    return [i for i in defs.inputs() if i.gated]


def login_instructions(defs: Definitions) -> list[str]:
    """The steps a user takes once before a build that has gated inputs (empty when there are none)."""
    gated = gated_inputs(defs)
    if not gated:
        return []
    cards = sorted({i.card for i in gated if i.card})
    return [f"gated inputs: {', '.join(i.name for i in gated)}",
            "  1. open each dataset page while logged in to huggingface.co and accept its terms:",
            *(f"       {c}" for c in cards),
            "  2. create a read token at https://huggingface.co/settings/tokens",
            f"  3. run `{LOGIN_COMMAND}` and paste the token (or export HF_TOKEN=<token>)"]
