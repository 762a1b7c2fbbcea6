"""Build steps of the dataset pipeline, each usable alone, all driven by
`scripts/unified_build/build_unified_dataset.py`:

1. fetch     stream records from each input's loader (data/input_loaders.py; seeded shuffle, data/shuffle.py),
             format them into documents, write `fetch-NNNNN.jsonl` parts of `docs_per_part` documents (temp name,
             then rename: a rerun resumes after the last complete part, from the stream state saved with it);
2. holdback  split each fetched part into train / val / eval documents by a stable hash of (source, group key):
             the group is a field of the record (SQuAD article title, TriviaQA question id, StackExchange question
             id, code repository or file content; `data.formats.group_field`) or else the document text -- before
             tokenization, so a group never spans two splits and a rebuild gives the same split;
3. tokenize  tokenize the split parts in parallel (multiprocessing, tiktoken `encode_ordinary_batch`, EOT after
             every document) into uint16 `tok-NNNNN.<split>.bin` files;
   decontaminate  remove from every train part what it shares with a held-out (eval or val) document of ANY
             input of the build: documents that are near duplicates (MinHash, Jaccard of token 5-shingles >= 0.8;
             a forked repository's copy, a re-asked question), and passages of held-out documents inside longer
             ones (13-gram containment: the span cut out, or the document removed; `CONTAINMENT`);
4. mix       assemble each mix (exactly its token budget per source, val split inside) and each eval set as
             self-contained token directories; full shards are hard-linked, not copied. An eval set with retrieval
             inputs also gets `qa_items.jsonl`: the QA item (context, question, gold answers) of every document it
             holds whole, from the "qa" the fetch put in each part line (data/qa_items.py), for evaluation by
             generation without a download.

Work files live in `<work_dir>/<input>/`; every step's output is a complete file or absent. How much each input
fetches, in how many rounds and processes, is data/fetch_rounds.py; the stamps that stale work files built under
another config are data/stamps.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.atomic import atomic_write, atomic_write_text, replace_dir
from data.formats import (
    REPOSITORY_KEY,
    RETRIEVAL_FORMATTERS,
    SchemaError,
    SkipRecord,
    get_formatter,
    group_field,
    holdback_group,
    qa_fields,
    qa_from_text,
    record_id,
    repository_key,
)
from data.input_loaders import guard_records, iter_records, loader_error, resumable, resume_records
from data.lineage import build_node, root_node
from data.qa_items import MANIFEST_KEY as QA_MANIFEST_KEY
from data.qa_items import write_qa_items
from data.quality import (
    NearDuplicateIndex,
    NgramSet,
    check_removed_shares,
    content_hash,
    minhash_signatures,
    ngram_hashes,
)
from data.source_config import Definitions, Input, input_targets
from data.stamps import read_stamp, stamp_hash
from data.token_dataset import DTYPE, sha256_file, write_manifest
from data.tokenizer import EOT, get_tokenizer, tokenizer_info

SPLITS = ("train", "val", "eval")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ 1. fetch


def fetch_state(work: Path) -> dict:
    """Totals over the complete fetched parts of one input."""
    state = {"parts": 0, "records_read": 0, "documents": 0, "chars": 0, "skipped": Counter(), "exhausted": False,
             "files": [], "filtered": {}, "modified": {}, "stream_state": None, "resumes": 0}
    for meta_path in sorted(work.glob("fetch-*.meta.json")):
        meta = _read_json(meta_path)
        state["parts"] += 1
        for k in ("records_read", "documents", "chars"):
            state[k] += meta[k]
        state["skipped"].update(meta["skipped"])
        state["exhausted"] |= meta["exhausted"]
        state["stream_state"] = meta.get("stream_state")
        state["resumes"] += bool(meta.get("resumed"))
        state["files"].append({"path": meta["file"], "sha256": meta["sha256"], "documents": meta["documents"]})
        for key in ("filtered", "modified"):
            _add_counts(state[key], meta.get(key, {}))
    return state


def _add_counts(total: dict, part: dict) -> dict:
    for reason, counts in part.items():
        t = total.setdefault(reason, {})
        for k, v in counts.items():
            t[k] = t.get(k, 0) + v
    return total


def load_seen(works: list[Path]) -> set[int]:
    """Content hashes of every document kept so far by the given inputs (complete parts only): the state of
    exact deduplication across all sources of a build."""
    seen: set[int] = set()
    for work in works:
        for meta_path in sorted(work.glob("fetch-*.meta.json")):
            hashes = meta_path.with_name(meta_path.name.replace(".meta.json", ".hashes.npy"))
            if hashes.is_file():
                seen.update(np.load(hashes).tolist())
    return seen


def _token_counts(texts: list[str]) -> list[int]:
    """Tokens each text occupies in a token file (EOT included): what a filter removed, in the budget's unit."""
    if not texts:
        return []
    return [len(x) + 1 for x in get_tokenizer().encode_ordinary_batch(texts, num_threads=1)]


def fetch(inp: Input, work: Path, target_chars: int, docs_per_part: int = 2000, bar: tqdm | None = None,
          seen: set[int] | None = None, records=None) -> dict:
    """Fetch until `target_chars` of formatted, filtered documents are on disk (or the source is exhausted).

    Each record: loader filter, formatter (SkipRecord: counted in `skipped`, documents), the source's quality
    filters (`inp.filters`: counted in `filtered` / `modified` with documents and tokens), then exact
    deduplication against `seen` (content hashes of every document kept before, across all inputs the caller
    shares `seen` with; default: this input's own earlier parts). Before a part is written, the share of
    records each reason removed is checked against `filters.max_removed_share` (FilterShareError with the
    numbers). Resumable: complete parts are kept, and the stream continues from the state saved with the last one
    (data/input_loaders.py). `records`: the input's stream, already opened (default: open `inp.loader`)."""
    work.mkdir(parents=True, exist_ok=True)
    state = fetch_state(work)
    if state["exhausted"] or state["chars"] >= target_chars:
        return state
    if seen is None:
        seen = load_seen([work])
    qf = inp.filters
    fmt = get_formatter(inp.formatter)
    gfield = group_field(inp.formatter, inp.formatter_options, inp.holdback_group)
    path_field = inp.formatter_options.get("path_field")
    filt = inp.loader.get("filter")
    filt_re = re.compile(filt["regex"]) if filt else None
    retrieval = inp.formatter in RETRIEVAL_FORMATTERS  # its part lines carry the document's QA item ("qa")
    try:
        stream = resume_records(iter_records(inp.loader) if records is None else records, state)
        resumed = state["parts"] > 0  # the first part written now continues an earlier run (lineage: `resumes`)
        records = guard_records(stream, inp)
    except Exception as e:  # load_dataset raises while resolving the repository, before any record
        raise loader_error(inp, e) from e
    part = state["parts"]
    # share check denominators: records past the loader filter (a selection, not a quality verdict)
    removed = Counter(state["skipped"]) + Counter({r: c["documents"] for r, c in state["filtered"].items()})
    candidates = state["records_read"] - removed.pop("loader_filter", 0)
    while state["chars"] < target_chars and not state["exhausted"]:
        docs, groups, qas, hashes, skipped, read = [], [], [], [], Counter(), 0
        dropped: dict[str, list[str]] = {}
        changed: dict[str, list[tuple[str, str]]] = {}
        for record in records:
            read += 1
            try:
                if filt_re:
                    if not isinstance(record, dict) or filt["field"] not in record:  # not a selection: a mismatch
                        raise SchemaError(filt["field"], "missing (read by the loader's filter)")
                    if not filt_re.search(str(record[filt["field"]] or "")):
                        raise SkipRecord("loader_filter")
                text = fmt(record, **inp.formatter_options)
                group = holdback_group(record, gfield)  # carried to the hold-back step in the part file
            except SkipRecord as s:
                skipped[s.reason] += 1
                continue
            except SchemaError as e:
                index = state["records_read"] + read - 1
                rid = record_id(record)
                raise ValueError(f"source {inp.source!r} input {inp.name!r} record {index}"
                                 f"{f' (id {rid})' if rid else ''}: {e} -- formatter {inp.formatter!r} does not "
                                 f"fit this dataset's schema; check the loader against its card "
                                 f"{inp.card or '(local input)'}") from None
            kept, reason, mods = qf.apply(text, record, path_field)
            if kept is not None and qf.exact_dedup:
                h = content_hash(kept)
                if h in seen:
                    kept, reason = None, "duplicate"
                else:
                    seen.add(h)
                    hashes.append(h)
            elif kept is not None:
                hashes.append(content_hash(kept))
            if kept is None:
                dropped.setdefault(reason, []).append(text)  # counted as formatted, before any modification
                continue
            for m, before, after in mods:  # counted for kept documents only: a removed one is counted whole
                changed.setdefault(m, []).append((before, after))
            docs.append(kept)
            groups.append(group)
            qas.append(qa_fields(inp.formatter, record, kept) if retrieval else None)  # from the text as kept
            if len(docs) >= docs_per_part:
                break
        else:
            state["exhausted"] = True
        filtered = {r: {"documents": len(t), "tokens": sum(_token_counts(t))} for r, t in sorted(dropped.items())}
        modified = {}
        for m, pairs in sorted(changed.items()):
            before, after = _token_counts([b for b, _ in pairs]), _token_counts([a for _, a in pairs])
            modified[m] = {"documents": len(pairs), "tokens_removed": sum(before) - sum(after)}
        removed.update(skipped)
        removed.update({r: len(t) for r, t in dropped.items()})
        candidates += read - skipped.get("loader_filter", 0)
        removed.pop("loader_filter", None)
        check_removed_shares(f"source {inp.source!r} input {inp.name!r}", candidates, removed,
                             qf.max_removed_share)
        name = f"fetch-{part:05d}.jsonl"
        path = work / name
        # the tokenize step reads "text" only: "group" (hold-back) and "qa" (the eval set's QA items) change no token
        atomic_write_text(path, "".join(json.dumps({"text": d, **({"group": g} if g else {}),
                                                     **({"qa": q} if q else {})}, ensure_ascii=False) + "\n"
                                         for d, g, q in zip(docs, groups, qas, strict=True)))
        hpath = work / f"fetch-{part:05d}.hashes.npy"
        atomic_write(hpath, lambda tmp, h=hashes: np.save(tmp, np.array(h, dtype=np.uint64)), suffix=".npy")
        chars = sum(len(d) for d in docs)
        meta = {"file": name, "sha256": sha256_file(path), "records_read": read, "documents": len(docs),
                "chars": chars, "skipped": dict(skipped), "filtered": filtered, "modified": modified,
                "exhausted": state["exhausted"], "stream_state": stream.state_dict() if resumable(stream) else None,
                "resumed": resumed}
        resumed = False
        atomic_write_text(work / f"fetch-{part:05d}.meta.json", json.dumps(meta))  # the part counts from here on
        state["parts"] += 1
        state["records_read"] += read
        state["documents"] += len(docs)
        state["chars"] += chars
        state["skipped"].update(skipped)
        _add_counts(state["filtered"], filtered)
        _add_counts(state["modified"], modified)
        state["files"].append({"path": name, "sha256": meta["sha256"], "documents": len(docs)})
        part += 1
        if bar is not None:
            bar.update(chars)
    return state


# --------------------------------------------------------------------------------------------- 2. holdback


def holdback_split(source: str, key: str, eval_share: float, val_share: float) -> str:
    """'eval', 'val' or 'train' from a hash of (source, key): stable across runs, machines and worker counts. The
    key is the document's hold-back group ("title=Beyonce") or, without one, its text. A repository key
    ("repo=owner/name") is hashed without the source, so the repository's files land on one side in every input and
    source that holds them (the sources holding repositories share their eval/val shares: data/source_config.py)."""
    salt = "repository" if key.startswith(REPOSITORY_KEY) else source
    u = int.from_bytes(hashlib.sha256(f"{salt}\x00{key}".encode()).digest()[:8], "little") / 2**64
    return "eval" if u < eval_share else "val" if u < eval_share + val_share else "train"


def holdback(inp: Input, work: Path, eval_share: float, val_share: float) -> list[Path]:
    """Split every fetched part not yet split; returns the split meta files (resumable, atomic per part). A
    document's key is its `group` (written by `fetch`) or, for a document without one, its text: parts fetched
    before groups existed split as they always did."""
    metas = []
    for meta_path in sorted(work.glob("fetch-*.meta.json")):
        part = meta_path.name[len("fetch-") : -len(".meta.json")]
        out_meta = work / f"split-{part}.meta.json"
        if not out_meta.exists():
            buckets: dict[str, list[str]] = {s: [] for s in SPLITS}
            with open(work / f"fetch-{part}.jsonl") as f:
                for line in f:
                    doc = json.loads(line)
                    # repository_key: parts fetched before repository keys carry "repo_name=Owner/Name"
                    key = repository_key(doc.get("group")) or doc["text"]
                    buckets[holdback_split(inp.source, key, eval_share, val_share)].append(line)
            for s in SPLITS:
                atomic_write_text(work / f"split-{part}.{s}.jsonl", "".join(buckets[s]))
            atomic_write_text(out_meta, json.dumps({s: len(buckets[s]) for s in SPLITS}))
        metas.append(out_meta)
    return metas


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


# --------------------------------------------------------------------------------------------- 3. tokenize


def tokenize_texts(texts: list[str]) -> np.ndarray:
    """uint16 tokens of `texts`, EOT after every document. One thread: parallelism comes from processes."""
    enc = get_tokenizer()
    ids = enc.encode_ordinary_batch(texts, num_threads=1)
    total = sum(len(x) for x in ids) + len(ids)
    for x in ids:
        x.append(EOT)
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=DTYPE, count=total)


def _tokenize_part(job: tuple[str, str]) -> tuple[str, str, dict]:
    work, part = Path(job[0]), job[1]
    meta = {}
    for s in SPLITS:
        with open(work / f"split-{part}.{s}.jsonl") as f:
            texts = [json.loads(line)["text"] for line in f]
        tokens = tokenize_texts(texts)
        out = work / f"tok-{part}.{s}.bin"
        atomic_write(out, tokens.tofile)
        meta[s] = {"file": out.name, "documents": len(texts), "tokens": int(tokens.size),
                   "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()}
    atomic_write_text(work / f"tok-{part}.meta.json", json.dumps(meta))
    return job[0], part, meta


def tokenize(works: list[Path], workers: int = 1, bar: tqdm | None = None) -> None:
    """Tokenize every split part without a `tok-*.meta.json` yet, across `workers` processes."""
    jobs = [(str(w), m.name[len("split-") : -len(".meta.json")]) for w in works
            for m in sorted(w.glob("split-*.meta.json")) if not (w / m.name.replace("split-", "tok-")).exists()]
    if not jobs:
        return
    with _job_results(_tokenize_part, jobs, workers) as results:
        for _, _, meta in results:
            if bar is not None:
                bar.update(sum(v["tokens"] for v in meta.values()))


@contextlib.contextmanager
def _job_results(fn, jobs: list, workers: int):
    """Results of `fn` over `jobs`: in this process, or unordered across `workers` spawned processes (the pool is
    closed and joined on the way out, also when the consumer fails)."""
    if workers <= 1 or len(jobs) <= 1:
        yield map(fn, jobs)
        return
    pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
    try:
        yield pool.imap_unordered(fn, jobs)
    finally:
        pool.close()
        pool.join()


# ---------------------------------------------------------------------------------------- 3b. decontaminate

HELD_OUT = ("eval", "val")
NEAR_DUPLICATE_REASON = "near_duplicate_of_held_out"
PARALLEL_MIN_TOKENS = 50_000_000


def split_documents(tokens: np.ndarray) -> list[np.ndarray]:
    """The documents of a token stream, each with its EOT."""
    ends = np.flatnonzero(tokens == EOT) + 1
    return [d for d in np.split(tokens, ends) if d.size]


def read_split(work: Path, meta: dict, split: str) -> np.ndarray:
    """The tokens of one split of a tokenized part (`meta`: its `tok-NNNNN.meta.json`), empty when it has none."""
    entry = meta[split]
    return np.fromfile(work / entry["file"], dtype=DTYPE) if entry["tokens"] else np.zeros(0, DTYPE)


CONTAINMENT_REASON = "contains_held_out_ngrams"
CONTAINMENT = {"method": "ngram-containment-v1", "ngram": 13, "boilerplate_count": 10, "min_run_tokens": 32,
               "margin_tokens": 50, "min_piece_tokens": 50, "max_pieces": 10}
"""Containment decontamination, after GPT-3's (Brown et al. 2020, appendix C; the parameters as EleutherAI's
lm-evaluation-harness `scripts/clean_training_data/README.md` records them: 13-grams, 200 characters removed each
side, pieces under 200 characters dropped, a document cut into more than 10 pieces removed), in tokens at ~4
characters per token. Two rules keep boilerplate out of it:
- a held-out 13-gram found `boilerplate_count` or more times in the build's training documents (a licence header, a
  template sentence) is not contamination: the rule `data.audit.eval_contamination` reports "beyond boilerplate" by;
- a match counts where consecutive matching 13-grams of one training document cover at least `min_run_tokens`
  tokens: a copied passage, not a shared phrase. Measured on the demo work files (stdlib code and docstrings, the
  generated QA corpus): single 13-gram matches seen < 10 times cover 13% of the code's and the QA corpus's training
  tokens (idioms; the generator's template sentences, whose fills come from small pools), runs of >= 32 tokens
  0.8% and 0.0%; GPT-3's rule as it stands (every such 13-gram, 50 tokens either side) would have removed 49% of
  the code and 69% of the QA corpus.
Changing any value changes the fingerprint the parts record, so every part is checked again."""


def held_out_documents(works: list[Path]) -> tuple[list[np.ndarray], list]:
    """Every eval and val document (without its EOT) of the given inputs, and ids of the files they came from (the
    held-out token files' hashes) for the fingerprint: a train part checked against it needs no second check."""
    docs, ids = [], []
    for work in sorted(works, key=lambda w: w.name):
        for meta_path in sorted(work.glob("tok-*.meta.json")):
            meta = _read_json(meta_path)
            for s in HELD_OUT:
                docs += [d[:-1] for d in split_documents(read_split(work, meta, s))]
                ids.append([work.name, meta_path.name, s, meta[s]["sha256"]])
    return docs, ids


def _save_ngrams(path: Path, hashes: np.ndarray) -> str:
    atomic_write(path, lambda tmp: np.save(tmp, hashes), suffix=".npy")
    return str(path)


def _scan_train(job: tuple[str, str, str, bool]) -> tuple[str, str, np.ndarray | None, np.ndarray, np.ndarray]:
    """One train part: MinHash signatures of its documents (when asked) and how often it holds each held-out n-gram
    (indices into the saved sorted n-gram set, with counts)."""
    work, meta_name, ngram_path, signatures = Path(job[0]), job[1], job[2], job[3]
    tokens = read_split(work, _read_json(work / meta_name), "train")
    sigs = minhash_signatures([d[:-1] for d in split_documents(tokens)]) if signatures else None
    found = NgramSet(np.load(ngram_path), presorted=True).find(ngram_hashes([tokens], CONTAINMENT["ngram"])[0])
    idx, counts = np.unique(found[found >= 0], return_counts=True)
    return job[0], meta_name, sigs, idx, counts


def contaminated_spans(tokens: np.ndarray, contaminating: NgramSet) -> np.ndarray:
    """bool per token of a train stream: inside a run of consecutive contaminating n-grams that covers at least
    `min_run_tokens` tokens, or within `margin_tokens` of one, never past the document that holds it (a window that
    crosses an EOT holds an EOT, which no held-out n-gram does, so a run never crosses one either)."""
    n, margin = CONTAINMENT["ngram"], CONTAINMENT["margin_tokens"]
    covered = np.zeros(tokens.size + 1, dtype=np.int64)
    hit = contaminating.find(ngram_hashes([tokens], n)[0]) >= 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hit.astype(np.int8), [0]])))
    first, end = edges[::2], edges[1::2] - 1 + n  # a run of windows first..last covers tokens [first, last + n)
    keep = end - first >= CONTAINMENT["min_run_tokens"]
    first, end = first[keep], end[keep]
    if first.size:
        eots = np.flatnonzero(tokens == EOT)
        eots = np.append(eots, tokens.size) if not eots.size or eots[-1] != tokens.size - 1 else eots
        starts = np.concatenate([[0], eots[:-1] + 1])
        doc = np.searchsorted(eots, first)
        np.add.at(covered, np.maximum(first - margin, starts[doc]), 1)
        np.add.at(covered, np.minimum(end + margin, eots[doc]), -1)
    return np.cumsum(covered[:-1]) > 0


def cut_document(body: np.ndarray, covered: np.ndarray) -> list[np.ndarray]:
    """The pieces of a document (without its EOT) left after its covered tokens are removed: runs of at least
    `min_piece_tokens`, none if more than `max_pieces` would be left (GPT-3's "too dirty": removed whole)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[True], covered, [True]]).astype(np.int8)))
    pieces = [body[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)
              if b - a >= CONTAINMENT["min_piece_tokens"]]
    return [] if len(pieces) > CONTAINMENT["max_pieces"] else pieces


def _clean_train(job: tuple) -> tuple[str, str, dict | None, dict, dict]:
    """Write one train part without its near duplicates of held-out documents (`near`: per document) and without
    the spans holding contaminating n-grams (a `whole` input's contaminated documents are removed whole: a QA
    document without its passage teaches an answer without evidence). Returns the new train entry (None: nothing
    changed) and the counts of both removals."""
    work, meta_name, near, ngram_path, whole, fp = Path(job[0]), job[1], job[2], job[3], job[4], job[5]
    meta = _read_json(work / meta_name)
    tokens = read_split(work, meta, "train")
    docs = split_documents(tokens)
    covered = contaminated_spans(tokens, NgramSet(np.load(ngram_path), presorted=True))
    near_counts = {"documents": 0, "tokens": 0}
    contained = {"documents": 0, "documents_cut": 0, "tokens": 0}
    kept, start = [], 0
    for d, is_near in zip(docs, near, strict=True):
        span = covered[start : start + d.size - 1]
        start += d.size
        if is_near:
            near_counts["documents"] += 1
            near_counts["tokens"] += int(d.size)
        elif span.any():
            pieces = [] if whole else cut_document(d[:-1], span)
            left = [np.append(p, np.asarray(EOT, DTYPE)) for p in pieces]
            contained["documents" if not left else "documents_cut"] += 1
            contained["tokens"] += int(d.size) - sum(int(p.size) for p in left)
            kept += left
        else:
            kept.append(d)
    if not near_counts["documents"] and not contained["tokens"]:
        return job[0], meta_name, None, near_counts, contained
    out_tokens = np.concatenate(kept) if kept else np.zeros(0, DTYPE)
    part = meta_name[len("tok-") : -len(".meta.json")]
    out = work / f"tok-{part}.train.{fp[:8]}.bin"
    atomic_write(out, out_tokens.tofile)
    entry = {"file": out.name, "documents": len(kept), "tokens": int(out_tokens.size),
             "sha256": hashlib.sha256(out_tokens.tobytes()).hexdigest()}
    return job[0], meta_name, entry, near_counts, contained


def decontaminate(works: list[Path], workers: int = 1, threshold: float = 0.8, bar: tqdm | None = None,
                  whole_document_inputs: frozenset[str] = frozenset()) -> dict:
    """Remove from every train part what it shares with a held-out (eval or val) document of any of `works`; returns
    the totals removed by this call, per reason: {NEAR_DUPLICATE_REASON: {documents, tokens}, CONTAINMENT_REASON:
    {documents (removed whole), documents_cut, tokens}}.

    1. near duplicates: documents whose MinHash estimate of Jaccard with a held-out document passes `threshold`
       (`data.quality.NearDuplicateIndex`), removed whole;
    2. containment (`CONTAINMENT`): held-out 13-grams found in a train document (unless found `boilerplate_count`
       or more times in all train parts together) whose consecutive windows cover `min_run_tokens` or more are cut
       out with `margin_tokens` either side;
       the document's pieces of at least `min_piece_tokens` stay as documents of their own (EOT after each), or it
       is removed whole when it would fall into more than `max_pieces`, or when its input is one of
       `whole_document_inputs` (the build passes its retrieval inputs).

    Each checked part records the fingerprint it was checked against; a part whose fingerprint is current is
    skipped, and a later fetch round that adds held-out documents makes every part be checked again (removal only
    grows). The cleaned part is written under a new name (`tok-NNNNN.train.<fp>.bin`) and its meta, rewritten
    atomically, is the commit point; counts accumulate in the meta's `near_duplicates` and `held_out_ngrams`. Parts
    are read twice, in `workers` processes: signatures and n-gram counts, then the cut (cost: MinHash ~`num_perm`
    array passes per token, the n-gram look-ups ~10; scripts/bench/minhash_throughput.py)."""
    docs, ids = held_out_documents(works)
    index, fp = NearDuplicateIndex(docs, threshold), stamp_hash([ids, threshold, CONTAINMENT])
    held = NgramSet(np.concatenate(ngram_hashes(docs, CONTAINMENT["ngram"]) or [np.zeros(0, np.uint64)]))
    del docs
    parts, to_check, total_tokens = [], set(), 0
    for work in works:
        for meta_path in sorted(work.glob("tok-*.meta.json")):
            meta = _read_json(meta_path)
            parts.append((str(work), meta_path.name))
            total_tokens += meta["train"]["tokens"]
            if meta.get("decontaminated", {}).get("against") != fp:
                to_check.add((str(work), meta_path.name))
    total = {NEAR_DUPLICATE_REASON: {"documents": 0, "tokens": 0},
             CONTAINMENT_REASON: {"documents": 0, "documents_cut": 0, "tokens": 0}}
    if not to_check:
        return total
    # below ~50M tokens one process is done (at ~5M tokens/s) before a spawned pool has imported numpy
    pool = workers if workers > 1 and len(parts) > 1 and total_tokens >= PARALLEL_MIN_TOKENS else 1
    scratch = works[0].parent
    held_path = scratch / f".held_out_ngrams-{fp[:8]}.npy"
    bad_path = scratch / f".contaminating_ngrams-{fp[:8]}.npy"
    try:
        # Pass 1 (every part: the boilerplate counts are over all training documents): signatures where unchecked.
        _save_ngrams(held_path, held.hashes)
        counts = np.zeros(len(held), dtype=np.int64)
        near: dict[tuple[str, str], np.ndarray] = {}
        jobs = [(w, m, str(held_path), (w, m) in to_check) for w, m in parts]
        with _job_results(_scan_train, jobs, pool) as results:
            for work_s, meta_name, sigs, idx, n in results:
                counts[idx] += n
                if sigs is not None:
                    near[(work_s, meta_name)] = (index.matches_signatures(sigs) >= 0 if len(sigs)
                                                 else np.zeros(0, dtype=bool))
        contaminating = held.hashes[counts[: len(held)] < CONTAINMENT["boilerplate_count"]]
        # Pass 2 (unchecked parts): the cut.
        _save_ngrams(bad_path, contaminating)
        jobs = [(w, m, near[(w, m)], str(bad_path), Path(w).name in whole_document_inputs, fp)
                for w, m in parts if (w, m) in to_check]
        with _job_results(_clean_train, jobs, pool) as results:
            for work_s, meta_name, entry, near_n, contained in results:
                work = Path(work_s)
                meta = _read_json(work / meta_name)
                old = meta["train"]["file"]
                if entry is not None:
                    meta["train"] = entry
                for key, reason, n in (("near_duplicates", NEAR_DUPLICATE_REASON, near_n),
                                       ("held_out_ngrams", CONTAINMENT_REASON, contained)):
                    meta[key] = {k: meta.get(key, {}).get(k, 0) + v for k, v in n.items()}
                    total[reason] = {k: total[reason][k] + v for k, v in n.items()}
                meta["decontaminated"] = {"against": fp, "held_out_documents": len(index), "threshold": threshold,
                                          "held_out_ngrams": len(held), "contaminating_ngrams": int(contaminating.size),
                                          **CONTAINMENT}
                atomic_write_text(work / meta_name, json.dumps(meta))  # the cleaned part counts from here on
                if meta["train"]["file"] != old:
                    (work / old).unlink(missing_ok=True)
                if bar is not None:
                    bar.update(1)
    finally:
        held_path.unlink(missing_ok=True)
        bad_path.unlink(missing_ok=True)
    return total


def decontamination_state(work: Path) -> dict:
    """What the decontaminate step removed from one input's train split, per reason (as `decontaminate` returns)."""
    out = {NEAR_DUPLICATE_REASON: {"documents": 0, "tokens": 0},
           CONTAINMENT_REASON: {"documents": 0, "documents_cut": 0, "tokens": 0}}
    for meta_path in sorted(work.glob("tok-*.meta.json")):
        meta = _read_json(meta_path)
        for key, reason in (("near_duplicates", NEAR_DUPLICATE_REASON), ("held_out_ngrams", CONTAINMENT_REASON)):
            for k, v in meta.get(key, {}).items():
                out[reason][k] += v
    return out


def undecontaminated_parts(inputs: list[Input], work_dir: Path) -> list[Path]:
    """The token part metas of these inputs that the decontaminate step never checked (a mix built from them could
    hold near duplicates of held-out documents)."""
    return [m for i in inputs for m in sorted((work_dir / i.name).glob("tok-*.meta.json"))
            if "decontaminated" not in _read_json(m)]


def token_state(work: Path) -> dict:
    """Per split: tokens, documents and the list of complete token files in part order."""
    state = {s: {"tokens": 0, "documents": 0, "files": []} for s in SPLITS}
    for meta_path in sorted(work.glob("tok-*.meta.json")):
        meta = _read_json(meta_path)
        for s in SPLITS:
            state[s]["tokens"] += meta[s]["tokens"]
            state[s]["documents"] += meta[s]["documents"]
            if meta[s]["tokens"]:
                state[s]["files"].append({"path": meta[s]["file"], "num_tokens": meta[s]["tokens"],
                                          "sha256": meta[s]["sha256"]})
    return state


def input_lineage(inp: Input, work: Path, defs: Definitions) -> dict:
    """Lineage of one input's tokens: tokenized <- fetched (dataset, config, filters, counts, file hashes)."""
    fs, ts = fetch_state(work), token_state(work)
    src = defs.sources[inp.source]
    loader = {k: v for k, v in inp.loader.items() if k != "hint"}
    fetched = build_node("fetched", inp.name, source=inp.source, loader=loader,
                         dataset=loader.get("path") or loader.get("callable"), config=loader.get("name"),
                         revision=loader.get("revision"), split=loader.get("split"), formatter=inp.formatter,
                         formatter_options=inp.formatter_options, filters=[loader.get("filter")] if
                         loader.get("filter") else [], quality_filters=inp.filters.config(),
                         records_read=fs["records_read"], documents=fs["documents"], skipped=dict(fs["skipped"]),
                         filtered=fs["filtered"], modified=fs["modified"], exhausted=fs["exhausted"],
                         resumes=fs["resumes"], files=fs["files"],
                         stamp={k: v["hash"] for k, v in (read_stamp(work) or {}).items()},
                         text_on_disk=[f["path"] for f in fs["files"] if (work / f["path"]).is_file()])
    return build_node("tokenized", inp.name, source=inp.source, category=src.category, tokenizer=tokenizer_info(),
                      holdback={"method": "sha256(source \\0 group key, else text) / 2^64; a repository key "
                                          "(repo=owner/name): sha256(repository \\0 key), the same in every source",
                                "eval": src.eval_share,
                                "val": src.val_share,
                                "group": group_field(inp.formatter, inp.formatter_options, inp.holdback_group)},
                      splits={s: {"tokens": ts[s]["tokens"], "documents": ts[s]["documents"]} for s in SPLITS},
                      decontaminated=decontamination_state(work), inputs=[fetched])


# -------------------------------------------------------------------------------------------------- 4. mix


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "linked"
    except OSError:  # another filesystem, or no hard links (some network mounts): copy instead
        shutil.copyfile(src, dst)
        return "copied"


def take_tokens(files: list[dict], work: Path, budget: int, max_repeats: float, out_dir: Path, prefix: str,
                where: str, taken: list | None = None) -> tuple[list[dict], dict]:
    """Put exactly `budget` tokens of a stream (the `files`, in order, repeated if needed) into `out_dir`: whole
    files hard-linked, the last one cut to a prefix. Returns manifest file entries and counts; `taken` (a list)
    gets (repeat, file, tokens taken from its start) per entry."""
    total = sum(f["num_tokens"] for f in files)
    if budget and total == 0:
        raise ValueError(f"{where}: no tokens available (empty source or everything filtered); check the fetch "
                         f"counts in {work}")
    if budget > total * max_repeats + 1e-9:
        raise ValueError(f"{where}: needs {budget:,} tokens but the source has {total:,} and may repeat at most "
                         f"{max_repeats:g}x; fetch more (or raise upsample in the definitions)")
    entries, counts, left, rep = [], Counter(), budget, 0
    out_dir.mkdir(parents=True, exist_ok=True)
    while left > 0:
        for f in files:
            if left <= 0:
                break
            src = work / f["path"]
            dst = out_dir / f"{prefix}-r{rep}-{f['path']}"
            if f["num_tokens"] <= left:
                counts[_link_or_copy(src, dst)] += 1
                entries.append({"path": dst.name, "num_tokens": f["num_tokens"], "sha256": f["sha256"]})
                if taken is not None:
                    taken.append((rep, f, f["num_tokens"]))
                left -= f["num_tokens"]
            else:
                tokens = np.fromfile(src, dtype=DTYPE, count=left)
                tokens.tofile(dst)
                counts["cut"] += 1
                entries.append({"path": dst.name, "num_tokens": left,
                                "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()})
                if taken is not None:
                    taken.append((rep, f, left))
                left = 0
        rep += 1
    return entries, {"repeats": rep, **counts}


def _up_to_date(directory: Path, plan: str, qa_items: bool = False) -> bool:
    """The directory was built from this plan (and, for an eval set with retrieval inputs, `qa_items`, has its QA
    items: one built before the build wrote them is assembled again, its tokens unchanged)."""
    mpath = directory / "manifest.json"
    if not mpath.is_file():
        return False
    m = _read_json(mpath)
    return m.get("plan_hash") == plan and (not qa_items or QA_MANIFEST_KEY in m)


_EVAL_TOK = re.compile(r"tok-(\d+)\.eval\.bin")


def eval_qa_items(source: str, inp: Input, work: Path, taken: list[tuple[int, dict, int]]) -> list[dict]:
    """The QA items of the documents an eval set took whole from one retrieval input's eval token files (`taken`, as
    `take_tokens` reports it): a whole file gives every line of its `split-NNNNN.eval.jsonl`, a file cut to a prefix
    the lines whose tokens (EOT included) lie inside it; a repeated pass adds none. A line's "qa" (written by the
    fetch), or for a part fetched before the fetch wrote it, the text parsed (`data.formats.qa_from_text`); a line
    that is not a retrieval document gives no item."""
    items = []
    for rep, f, num_tokens in taken:
        m = _EVAL_TOK.fullmatch(f["path"])
        if rep or not m:
            continue
        part, split_file = m.group(1), f"split-{m.group(1)}.eval.jsonl"
        tokens = np.fromfile(work / f["path"], dtype=DTYPE, count=num_tokens)
        whole = int(np.count_nonzero(tokens == EOT))  # documents end with EOT: those before the cut are whole
        lines = (work / split_file).read_text().splitlines()
        if len(lines) < whole or (num_tokens == f["num_tokens"] and len(lines) != whole):
            raise ValueError(f"{work / split_file}: {len(lines)} documents, but {whole} in the first {num_tokens:,} "
                             f"tokens of {f['path']}: the split file and its tokens disagree; remove the tok-{part}.* "
                             f"files of {work} and rebuild (scripts/unified_build/build_unified_dataset.py)")
        for i, line in enumerate(lines[:whole]):
            doc = json.loads(line)
            qa = doc.get("qa") or qa_from_text(doc["text"])
            if qa is None:
                continue
            items.append({"id": f"{inp.name}:{part}:{i}", "source": source, "input": inp.name,
                          "context": qa["context"], "question": qa["question"], "answers": qa["answers"],
                          "answerable": qa["answerable"], "record_id": qa.get("id"),
                          "lineage": {"input": inp.name, "part": split_file, "line": i}})
    return items


def assemble(directory: Path, parts: list[tuple[str, Input, list[dict], int, float]], work_dir: Path,
             lineage_kind: str, name: str, defs: Definitions, definitions_info: list[dict], command: list[str],
             extra_subdirs: dict[str, Path] | None = None, allow_short: bool = False) -> dict:
    """Write one token directory (atomically) from (source, input, files, budget, max_repeats) parts. An eval set
    with retrieval inputs also gets the QA items of the documents it holds whole (`qa_items.jsonl`, data/qa_items.py),
    recorded in its manifest and lineage under `qa_items`."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files, per_source, children, qa_items = [], {}, [], []
        with_qa = lineage_kind == "eval_set" and any(p[1].formatter in RETRIEVAL_FORMATTERS for p in parts)
        for source, inp, inp_files, budget, repeats in parts:
            avail = sum(f["num_tokens"] for f in inp_files)
            take = min(budget, int(avail * repeats)) if allow_short else budget
            taken: list = []
            entries, counts = take_tokens(inp_files, work_dir / inp.name, take, repeats, tmp / source, inp.name,
                                          f"{name}: source {source!r} input {inp.name!r}", taken)
            if with_qa and inp.formatter in RETRIEVAL_FORMATTERS:
                qa_items += eval_qa_items(source, inp, work_dir / inp.name, taken)
            for e in entries:
                e["path"] = f"{source}/{e['path']}"
            files += entries
            got = sum(e["num_tokens"] for e in entries)
            s = per_source.setdefault(source, {"category": defs.sources[source].category, "target_tokens": 0,
                                               "actual_tokens": 0, "repeats": 0, "inputs": {}})
            s["target_tokens"] += budget
            s["actual_tokens"] += got
            s["repeats"] = max(s["repeats"], counts["repeats"])
            s["inputs"][inp.name] = {"target_tokens": budget, "actual_tokens": got, **counts}
            # what the filters removed from everything fetched for this source (not only the part taken here)
            fs = fetch_state(work_dir / inp.name)
            _add_counts(s.setdefault("filtered", {}), fs["filtered"])
            removed = decontamination_state(work_dir / inp.name)
            _add_counts(s["filtered"], {r: c for r, c in removed.items() if c["tokens"]})
            _add_counts(s.setdefault("modified", {}), fs["modified"])
            s.setdefault("skipped", Counter()).update(fs["skipped"])
            node = input_lineage(inp, work_dir / inp.name, defs)
            children.append(build_node("taken", inp.name, source=source, target_tokens=budget, tokens=got,
                                       repeats=counts["repeats"], files=entries, inputs=[node]))
        for v in per_source.values():
            v["skipped"] = dict(v["skipped"])
        total = sum(v["target_tokens"] for v in per_source.values())
        extra = {"name": name, "sources": per_source, "target_tokens": total,
                 "plan_hash": stamp_hash([[p[0], p[1].name, p[2], p[3], p[4]] for p in parts])}
        lineage = root_node(lineage_kind, name, command=command, definitions=definitions_info, inputs=children)
        if with_qa:  # written inside the temp directory: complete with the eval set or absent
            extra[QA_MANIFEST_KEY] = lineage[QA_MANIFEST_KEY] = write_qa_items(tmp, qa_items)
        for sub, sub_dir in (extra_subdirs or {}).items():
            os.replace(sub_dir, tmp / sub)
            lineage.setdefault("contains", {})[sub] = _read_json(tmp / sub / "manifest.json")["fingerprint"]
        manifest = write_manifest(tmp, files, lineage=lineage, extra=extra)
        replace_dir(tmp, directory)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mix_plans(defs: Definitions, work_dir: Path) -> dict[str, dict]:
    """What each output directory takes: {dir_name: {"kind", "parts": [...], "val_parts": [...]}}."""
    plans = {}
    for mix in defs.mixes.values():
        parts, val_parts = [], []
        for source in mix.percent:
            src = defs.sources[source]
            for split, total, out, repeats in (("train", mix.total_tokens, parts, src.upsample),
                                               ("val", mix.val_tokens, val_parts, 1.0)):
                if not total:
                    continue
                budget = mix.source_tokens(source, total)
                shares = [int(budget * i.share) for i in src.inputs]
                shares[-1] += budget - sum(shares)
                for inp, b in zip(src.inputs, shares, strict=True):
                    out.append((source, inp, token_state(work_dir / inp.name)[split]["files"], b, repeats))
        plans[mix.name] = {"kind": "mix", "parts": parts, "val_parts": val_parts}
    for ev in defs.eval_sets.values():
        parts = []
        for source in ev.sources:
            for inp in defs.sources[source].inputs:
                files = token_state(work_dir / inp.name)["eval"]["files"]
                avail = sum(f["num_tokens"] for f in files)
                cap = int(ev.max_tokens * inp.share / len(ev.sources)) if ev.max_tokens else avail
                parts.append((source, inp, files, min(avail, cap), 1.0))
        plans[ev.name] = {"kind": "eval_set", "parts": parts, "min_tokens": ev.min_tokens}
    return plans


def _build_output(directory: Path, name: str, plan: dict, key: str, work_dir: Path, out_root: Path,
                  defs: Definitions, definitions_info: list[dict], command: list[str]) -> dict:
    """Assemble one mix (with its val split) or eval set, and stamp its manifest with the plan hash."""
    if plan["kind"] == "mix":
        subdirs = {}
        if plan["val_parts"]:
            val_tmp = out_root / f".{name}.val.tmp-{os.getpid()}"
            assemble(val_tmp, plan["val_parts"], work_dir, "val_split", f"{name}/val", defs, definitions_info,
                     command, allow_short=True)
            subdirs["val"] = val_tmp
        assemble(directory, plan["parts"], work_dir, "mix", name, defs, definitions_info, command,
                 extra_subdirs=subdirs)
    else:
        assemble(directory, plan["parts"], work_dir, "eval_set", name, defs, definitions_info, command,
                 allow_short=True)
    # the plan hash (a mix's covers its val split too) lets an unchanged rerun skip the directory as a whole
    m = _read_json(directory / "manifest.json")
    m["plan_hash"] = key
    atomic_write_text(directory / "manifest.json", json.dumps(m, indent=1) + "\n")
    return m


def mix(defs: Definitions, work_dir: Path, out_root: Path, definitions_info: list[dict], command: list[str],
        bar: tqdm | None = None) -> dict[str, dict]:
    """Assemble every mix (with `val/` inside) and eval set under `out_root`; skip ones already up to date."""
    results = {}
    for name, plan in mix_plans(defs, work_dir).items():
        directory = out_root / name
        key = stamp_hash([[p[0], p[1].name, p[2], p[3], p[4]] for p in plan["parts"] + plan.get("val_parts", [])])
        qa = plan["kind"] == "eval_set" and any(p[1].formatter in RETRIEVAL_FORMATTERS for p in plan["parts"])
        if _up_to_date(directory, key, qa):
            results[name] = _read_json(directory / "manifest.json")
        else:
            results[name] = _build_output(directory, name, plan, key, work_dir, out_root, defs, definitions_info,
                                          command)
        if bar is not None:
            bar.update(results[name]["num_tokens"])
    return results


def targets(defs: Definitions) -> dict[str, dict]:
    """Per input: train/val tokens needed by the mixes and eval tokens wanted by its eval set."""
    out = input_targets(defs)
    for ev in defs.eval_sets.values():
        n = sum(len(defs.sources[s].inputs) for s in ev.sources)
        for s in ev.sources:
            for inp in defs.sources[s].inputs:
                out[inp.name]["eval"] = -(-ev.min_tokens // n) if ev.min_tokens else 0
    for t in out.values():
        t.setdefault("eval", 0)
    return out


def output_dirs(defs: Definitions, out_root: Path) -> list[Path]:
    """Every token directory the mix step writes under `out_root`: the mixes, the eval sets, then each mix's val/
    that exists (the directories the pack step indexes)."""
    dirs = [out_root / m for m in defs.mixes] + [out_root / e for e in defs.eval_sets]
    return dirs + [d / "val" for d in dirs[: len(defs.mixes)] if (d / "val").is_dir()]
