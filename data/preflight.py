"""Preflight: open every input of a build, read a few hundred records through the build's own loader, formatter and
quality filters, and judge each input against its token budget -- in minutes, before a single shard is fetched.

    python scripts/unified_build/build_unified_dataset.py --preflight            # report, exit 1 on any problem
    python scripts/unified_build/build_unified_dataset.py                        # runs it before the first fetch

Per input it prints: the hub's view (commit sha, gated or not) for hub inputs, the fields found in the records
(name:type), the pass rate of every filter in the order the build applies them (the loader's selection filter,
the formatter's skips, the source's quality filters, exact deduplication within the sample), tokens per kept
record, and the projected available tokens against the tokens the mixes need of it (after upsampling and
hold-back, as `--dry-run` computes them). Projected = rows x kept share x tokens per kept record, with the rows
from the card (`IterableDataset.info.splits[split].num_examples`, the card's `dataset_info`; only for a loader
that reads a whole split: a `data_dir`/`data_files` subset has no row count of its own), or the definitions'
`available_tokens_estimate.rows`, or the data files (`file_rows`: their sizes x the rows per byte measured on a
few of them); a stream that ends inside the sample is counted whole. The need must be met NOISE_SIGMAS standard
errors of the sample below the projection; an input that cannot be projected is a problem unless accepted by name
(`--accept-unprojected`).

Problems, one line each, stop the build: an input that cannot be opened or streamed, a record that does not fit
its formatter, a filter that removes more than `max_removed_share`, nothing kept, a projection below the need (or
within the sample's noise of it), an input that cannot be projected and was not accepted,
a gated input without a token, a hub gating that the definitions do not declare. Offline (the hub cannot be
reached) it says so in one line and stops: a real build cannot be judged from here.

The sample: hub inputs (and json/parquet inputs with `loader.shuffle`) are read with the loader's seed and a
buffer of the sample size, so the sample is spread over up to 10 data files (`IterableDataset.shuffle`'s
`max_buffer_input_shards`) rather than the first records of the first file; other local inputs in storage order.
Its pass rates and lengths are estimates from a few hundred records (the margin above), and the fetch's own share
check still runs on every part.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from data import build
from data.demo_corpus import expand_path
from data.input_loaders import LoaderError, guard_records, hub_data_files, iter_records, loader_error
from data.shuffle import shuffle_settings
from data.source_config import LOGIN_COMMAND, Definitions, Input, fetch_needs
from data.tokenizer import get_tokenizer

SAMPLE_RECORDS = 300
NOISE_SIGMAS = 2.0
"""A projection meets its need only if it does so NOISE_SIGMAS standard errors below the estimate (~98% one-sided):
SQuAD v2's 20.58M declared against a 20.31M need is 1.3% apart, inside the ~2-3% standard error of a 300-record
sample, so the mix could still stop hours in."""
FILE_SAMPLES = 3
"""Data files read to measure rows per byte (spread over the list): parquet footers, or the head of a json file."""
HEAD_BYTES = 16 << 20
HUB = "https://huggingface.co"
# Reasons a quality filter gives (data/quality.py QualityFilters.apply), in the order it applies them, with the
# filter setting that turns each on; deduplication (the build's, across the sample here) comes last.
QUALITY_REASONS = (("changelog", "changelog"), ("language", "languages"), ("no_quote_reply", "quote_reply_keep_share"),
                   ("min_chars", "min_chars"), ("duplicate", "exact_dedup"))


@dataclasses.dataclass
class InputCheck:
    """What the preflight found for one input."""

    name: str
    source: str
    where: str  # loader in one line
    gated: bool
    hub: dict | None = None  # {"sha", "gated"} as the hub reports them
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    records: int = 0
    exhausted: bool = False
    stages: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (filter, entered, removed)
    kept: int = 0
    kept_tokens: int = 0
    rows: int | None = None
    rows_from: str = ""
    projected: int | None = None
    projected_from: str = ""
    need: int = 0
    kept_tokens_sq: int = 0  # sum of squared tokens per kept record: the spread of document lengths
    accepted: bool = False  # the user accepted an input the preflight cannot project (--accept-unprojected)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def tokens_per_kept(self) -> float:
        return self.kept_tokens / self.kept if self.kept else 0.0

    @property
    def relative_error(self) -> float:
        """Standard error of the projection relative to it, from the sample: the kept share (binomial over the
        records read) and the mean tokens per kept record (their spread over the kept records). 0 for a stream read
        whole."""
        if self.exhausted or not self.kept or not self.records:
            return 0.0
        share = self.kept / self.records
        mean = self.tokens_per_kept
        var = max(0.0, self.kept_tokens_sq / self.kept - mean * mean)
        return math.sqrt((1 - share) / (share * self.records) + var / (mean * mean) / self.kept)

    @property
    def projected_low(self) -> int | None:
        """The projection less NOISE_SIGMAS standard errors: what the budget must fit under."""
        return None if self.projected is None else int(self.projected * (1 - NOISE_SIGMAS * self.relative_error))


def is_offline_error(e: BaseException) -> bool:
    """The hub could not be reached at all (no network, DNS, proxy, HF_HUB_OFFLINE), as opposed to an answer from it.
    huggingface_hub 2.4 raises its http client's ConnectError (MRO ConnectError < NetworkError < TransportError,
    seen here with no network) or OfflineModeIsEnabled (a ConnectionError, huggingface_hub/errors.py)."""
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        c.__name__ in ("TransportError", "ConnectError", "ConnectTimeout") for c in type(e).__mro__)


def hub_status(path: str, revision: str | None) -> dict:
    """The hub's metadata of a dataset repository (no data files): commit sha and gating ("auto", "manual" or
    False). `HfApi.dataset_info` (huggingface_hub/hf_api.py) answers for gated repositories without a token."""
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(path, revision=revision, timeout=20)
    return {"sha": info.sha, "gated": info.gated}


def have_token() -> bool:
    from huggingface_hub import get_token  # a local file/env look-up, no network

    return bool(get_token())


def _where(inp: Input) -> str:
    ld = inp.loader
    if ld["type"] == "hf":
        sub = ld.get("name") or ld.get("data_dir") or ",".join(ld.get("data_files") or []) or "default"
        return f"hf {ld['path']} {sub}/{ld.get('split', 'train')} @ {ld.get('revision') or 'main'}"
    return f"{ld['type']} {ld.get('path') or ld.get('callable')}"


def _card_rows(records, loader: dict) -> int | None:
    """The split's row count from the dataset's info (the card's dataset_info), when the loader reads a whole split."""
    if any(loader.get(k) for k in ("data_dir", "data_files", "builder")):
        return None
    splits = getattr(getattr(records, "info", None), "splits", None)
    split = splits.get(loader.get("split", "train")) if splits else None
    return int(split.num_examples) if split is not None and split.num_examples else None


def _fields(sample: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in sample:
        if isinstance(r, dict):
            for k, v in r.items():
                if k not in out or out[k] == "NoneType":
                    out[k] = type(v).__name__
    return out


def _stages(inp: Input, records: int, removed: Counter) -> list[tuple[str, int, int]]:
    """(filter, records that reached it, records it removed), in the build's order: the loader's selection, the
    formatter's skip reasons, then the active quality filters and deduplication."""
    stages, entered, left = [], records, Counter(removed)
    if inp.loader.get("filter"):
        n = left.pop("loader_filter", 0)
        stages.append(("loader filter " + inp.loader["filter"]["field"], entered, n))
        entered -= n
    quality = {reason for reason, _ in QUALITY_REASONS}
    fmt = sorted(r for r in left if r not in quality)
    n = sum(left[r] for r in fmt)
    stages.append((f"formatter {inp.formatter}" + (f" ({', '.join(f'{r} {left[r]}' for r in fmt)})" if fmt else ""),
                   entered, n))
    entered -= n
    cfg = inp.filters.config()
    for reason, key in QUALITY_REASONS:
        if cfg.get(key) not in (None, False, 0, []) or left.get(reason):
            stages.append((reason, entered, left.get(reason, 0)))
            entered -= left.get(reason, 0)
    return stages


def check_input(inp: Input, need: int, sample: int = SAMPLE_RECORDS,
                open_records: Callable[[dict], object] = iter_records,
                hub: Callable[[str, str | None], dict] | None = hub_status, token: bool = True,
                accepted: bool = False, files: Callable | None = None) -> InputCheck:
    """Open one input, read `sample` records, run them through `build.fetch` (formatter, filters, deduplication,
    the share check) into a temporary folder, and judge the projection against `need` tokens. `open_records`
    opens a loader (tests pass the jsonl loader of a fixture); `hub` gives a hub input's metadata (None: not
    asked); `files(loader, inp) -> (rows, how)` projects rows from data files (default `file_rows`). Without a row
    count (card, definitions or files) an input is a problem unless `accepted` (the user named it). Loader, schema
    and filter failures become problem lines, never exceptions."""
    c = InputCheck(name=inp.name, source=inp.source, where=_where(inp), gated=inp.gated, need=need)
    head = f"source {inp.source!r} input {inp.name!r}"
    if hub is not None and inp.loader["type"] == "hf":
        try:
            c.hub = hub(inp.loader["path"], inp.loader.get("revision"))
        except Exception as e:  # not found, revision not found, or an unreachable hub (the caller checks first)
            c.problems.append(str(loader_error(inp, e)))
            return c
        if c.hub.get("gated") and not inp.gated:
            c.problems.append(f"{head}: the hub says the dataset is gated ({c.hub['gated']}) but the definitions do "
                              f"not; add \"gated\": true to the input so the build asks for a login first")
    if inp.gated and not token:
        c.problems.append(f"{head}: gated and no Hugging Face token: accept the terms on {inp.card} and run "
                          f"`{LOGIN_COMMAND}` (or export HF_TOKEN)")
        return c
    loader = dict(inp.loader)
    if shuffle_settings(loader) is not None:  # the same seed, a buffer of the sample's size: spread, and quick
        loader["shuffle"] = {"seed": shuffle_settings(loader)["seed"], "buffer_size": sample}
    try:
        records = open_records(loader)
        c.rows = _card_rows(records, loader)
        c.rows_from = "card" if c.rows else ""
        got = list(itertools.islice(guard_records(records, inp), sample))
    except LoaderError as e:
        c.problems.append(str(e))
        return c
    except Exception as e:  # load_dataset raises while resolving the repository, before any record
        c.problems.append(str(loader_error(inp, e)))
        return c
    c.fields, c.records, c.exhausted = _fields(got), len(got), len(got) < sample
    if not c.rows and inp.available_rows:
        c.rows, c.rows_from = inp.available_rows, "declared"
    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        try:
            state = build.fetch(inp, Path(tmp), 10**18, docs_per_part=sample + 1, seen=set(), records=iter(got))
        except ValueError as e:  # a schema mismatch, or a filter removing more than max_removed_share
            c.problems.append(f"{head}: {e}" if not str(e).startswith("source ") else str(e))
            return c
        docs = [json.loads(line)["text"] for p in sorted(Path(tmp).glob("fetch-*.jsonl")) for line in p.open()]
    c.kept = len(docs)
    lengths = [len(t) + 1 for t in get_tokenizer().encode_ordinary_batch(docs, num_threads=1)] if docs else []
    c.kept_tokens, c.kept_tokens_sq = sum(lengths), sum(n * n for n in lengths)
    removed = Counter(state["skipped"]) + Counter({r: v["documents"] for r, v in state["filtered"].items()})
    c.stages = _stages(inp, c.records, removed)
    if not c.kept:
        why = ", ".join(f"{r} {n}" for r, n in sorted(removed.items()))
        c.problems.append(f"{head}: none of {c.records} records kept ({why}); check the formatter and filters "
                          f"against the card {inp.card or '(local input)'}")
        return c
    if c.exhausted:
        c.projected, c.projected_from = c.kept_tokens, f"the whole stream ({c.records} records) read"
    elif c.rows:
        c.projected = int(c.rows * c.kept / c.records * c.tokens_per_kept)
        c.projected_from = (f"{c.rows:,} rows ({c.rows_from}) x {c.kept}/{c.records} kept x "
                            f"{c.tokens_per_kept:,.0f} tokens per kept record")
    else:
        try:
            rows, how = file_rows(loader, inp) if files is None else files(loader, inp)
        except Exception as e:  # no file list, an unknown format, a file that cannot be read: judged below
            rows, how = None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        if rows:
            c.rows, c.rows_from = rows, how
            c.projected = int(c.rows * c.kept / c.records * c.tokens_per_kept)
            c.projected_from = (f"~{c.rows:,} rows ({how}) x {c.kept}/{c.records} kept x "
                                f"{c.tokens_per_kept:,.0f} tokens per kept record")
        else:
            declared = f"; declared {inp.available_tokens:,}, not measured" if inp.available_tokens else ""
            c.projected_from = f"cannot project: no row count on the card or in the definitions, {how}{declared}"
    if c.projected is None:
        if accepted:
            c.accepted = True
        else:
            c.problems.append(f"{head}: {c.projected_from}; the preflight cannot judge it. Declare its rows "
                              f"(available_tokens_estimate.rows), or build anyway with --accept-unprojected "
                              f"{inp.name}")
    elif c.projected_low < need:
        err = f" (-{NOISE_SIGMAS:g} standard errors of the {c.records}-record sample: {c.projected_low:,})" \
            if c.relative_error else ""
        narrow = f"; within the sample's noise: --preflight-records {4 * c.records} narrows it" \
            if c.projected >= need else ""
        c.problems.append(f"{head}: can supply about {c.projected:,} tokens{err} ({c.projected_from}) but needs "
                          f"{need:,} before hold-back{narrow}; lower its percentage, raise upsample, or add data")
    return c


def _data_files(loader: dict) -> list[str]:
    """The files a hub (or local-folder) loader reads, resolved by `datasets` itself: `load_dataset_builder` lists
    the repository at the revision and applies the config's / data_dir's / data_files' patterns, no data read
    (datasets 5.2.0 `builder.py` `_create_builder_config` calls `builder_config._resolve_data_files`, which turns the
    patterns into a `DataFilesDict` of `hf://datasets/<repo>@<sha>/...` files). A `builder` loader names its files:
    `data.input_loaders.hub_data_files`."""
    if loader.get("builder"):
        return hub_data_files(loader)
    if loader["type"] in ("jsonl", "parquet"):  # a local file or folder, listed as the loader lists it
        path = Path(expand_path(loader["path"]))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return [str(f) for f in files if f.stat().st_size]
    if loader["type"] != "hf":
        raise ValueError(f"a {loader['type']!r} loader has no data files to measure")
    import datasets

    kwargs = {k: loader[k] for k in ("name", "data_dir", "data_files", "revision") if loader.get(k)}
    config = datasets.load_dataset_builder(loader["path"], **kwargs).config
    split = loader.get("split", "train")
    if not config.data_files or split not in config.data_files:
        raise ValueError(f"no data files listed for split {split!r}")
    return [str(f) for f in config.data_files[split]]


def _rows_per_byte(fs, path: str, size: int) -> tuple[int, int]:
    """(rows, bytes) measured on one data file: a parquet footer's row count over the file's size, or the complete
    json lines in the first HEAD_BYTES of a (gzipped) json-lines file over the compressed bytes read."""
    name = path.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows, size
    if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        with fs.open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        if name.endswith(".gz"):
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS)
            text = raw.decompress(head)
            whole = len(head) >= size and raw.eof
        else:
            text, whole = head, len(head) >= size
        lines = text.count(b"\n") + (whole and not text.endswith(b"\n") and bool(text.strip()))
        if not whole:  # a partial last line: count the read share of the compressed bytes that complete lines used
            used = text.rfind(b"\n") + 1
            return lines, max(1, round(len(head) * used / max(1, len(text))))
        return lines, size
    raise ValueError(f"cannot measure rows per byte of {path.rsplit('/', 1)[-1]} (parquet and json lines only)")


def file_rows(loader: dict, inp: Input | None = None) -> tuple[int | None, str]:
    """Rows of what a loader reads, projected from the data files' sizes and the rows per byte of FILE_SAMPLES of
    them (spread over the list): for a `data_dir`/`data_files`/`builder` subset, which has no row count on the
    card. Returns (rows, how) or (None, why not)."""
    from fsspec.core import url_to_fs

    files = _data_files(loader)
    if not files:
        return None, "no data files"
    fs, _ = url_to_fs(files[0])
    paths = [url_to_fs(f)[1] for f in files]
    sizes = [int(fs.info(p)["size"]) for p in paths]
    total = sum(sizes)
    picks = sorted({round(i * (len(paths) - 1) / max(1, FILE_SAMPLES - 1)) for i in range(FILE_SAMPLES)})
    rows = nbytes = 0
    for i in picks:
        r, b = _rows_per_byte(fs, paths[i], sizes[i])
        rows, nbytes = rows + r, nbytes + b
    if not rows:
        return None, "no rows in the sampled data files"
    return int(total * rows / nbytes), (f"{len(files)} data files, {total / 1e9:,.2f} GB x {rows:,} rows per "
                                         f"{nbytes / 1e6:,.1f} MB measured in {len(picks)} of them")


def run(defs: Definitions, sample: int = SAMPLE_RECORDS, open_records=iter_records, hub=hub_status,
        token: bool | None = None, names: list[str] | None = None, accept: frozenset[str] = frozenset(),
        files: Callable | None = None) -> tuple[list[InputCheck], list[str]]:
    """Check every input (or those in `names`); `accept`: inputs the user lets through unprojected
    (--accept-unprojected). Returns the checks and the problem lines; with hub inputs and no hub, one line says so
    and those inputs are not checked."""
    needs = fetch_needs(defs)
    inputs = [i for i in defs.inputs() if names is None or i.name in names]
    hub_inputs = [i for i in inputs if i.loader["type"] == "hf"]
    problems: list[str] = []
    if hub is not None and hub_inputs:
        first = hub_inputs[0].loader
        try:
            hub(first["path"], first.get("revision"))
            offline = None
        except Exception as e:  # an answer from the hub (not found, ...) is that input's problem line, below
            offline = e if is_offline_error(e) else None
        if offline is not None:
            e = offline
            problems.append(f"offline: the Hugging Face hub ({HUB}) cannot be reached from here "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); the "
                            f"{len(hub_inputs)} hub inputs cannot be checked, so the build cannot start. Run where "
                            f"the hub is reachable (HF_HUB_OFFLINE unset)")
            inputs = [i for i in inputs if i.loader["type"] != "hf"]
    if token is None:
        token = have_token() if any(i.gated for i in inputs) else True
    checks = [check_input(i, needs[i.name], sample, open_records, hub, token, i.name in accept, files)
              for i in inputs]
    return checks, problems + [p for c in checks for p in c.problems]


def report(checks: list[InputCheck], sample: int, total: int | None = None) -> str:
    """The per-input report, as printed. `total`: the inputs asked for, when some could not be checked (no hub,
    missing local path): the header then says how many of them were, so "0 input(s)" never reads as "nothing to
    check"."""
    if total is not None and total != len(checks):
        head = f"preflight: {len(checks)} of {total} input(s) checked (the problems below say why not the others)"
    else:
        head = f"preflight: {len(checks)} input(s)"
    out = [f"{head}, up to {sample} records each"]
    for c in checks:
        gated = "gated" if c.gated else "not gated"
        hub = f", hub sha {c.hub['sha'][:12]} gated={c.hub['gated']}" if c.hub and c.hub.get("sha") else ""
        out.append(f"\n{c.name} [{c.where}; {gated}{hub}]")
        if not c.records:
            out.append("  not read: " + ("; ".join(c.problems) or "no records"))
            continue
        out.append("  fields: " + ", ".join(f"{k}:{v}" for k, v in c.fields.items()))
        out.append(f"  records read {c.records}{' (the whole stream)' if c.exhausted else ''}, kept {c.kept} "
                   f"({c.kept / c.records:.1%})")
        for name, entered, removed in c.stages:
            rate = (entered - removed) / entered if entered else 1.0
            out.append(f"    {name}: pass {rate:.1%} ({entered - removed} of {entered})")
        out.append(f"  tokens per kept record: {c.tokens_per_kept:,.0f}")
        proj = "?" if c.projected is None else f"{c.projected:,}"
        if c.projected is not None and c.relative_error:
            proj += f" (+/- {c.relative_error:.1%}; {NOISE_SIGMAS:g} standard errors below: {c.projected_low:,})"
        verdict = ("accepted unprojected (--accept-unprojected)" if c.accepted else "NOT JUDGED" if c.projected is None
                   else "OK" if c.projected_low >= c.need else "SHORT")
        out.append(f"  projected {proj} vs need {c.need:,} tokens: {verdict} ({c.projected_from})")
    return "\n".join(out)
