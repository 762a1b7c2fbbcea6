"""Source audits: measure a sample of documents, from a source (its loader and formatter, as the build reads it)
or from a token directory (as built). Used by `scripts/unified_build/audit_source.py` and `report_mix.py`.

    from data.audit import sample_source, sample_token_dir, audit_documents
    texts, info = sample_source(defs, "demo_python", 1000)
    report = audit_documents(texts=texts, filters=defs.sources["demo_python"].filters)
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np

from data.formats import SkipRecord, get_formatter
from data.input_loaders import iter_records
from data.quality import (
    LANGUAGES,
    NearDuplicateIndex,
    NgramSet,
    QualityFilters,
    content_hash,
    copyable_stats,
    detect_language,
    duplicated_line_share,
    grounded_answer,
    has_front_matter,
    is_changelog,
    minhash_signatures,
    near_duplicate_flags,
    ngram_hashes,
    quote_reply_stats,
)
from data.source_config import Definitions
from data.token_dataset import DTYPE, TokenDataset
from data.tokenizer import EOT, get_tokenizer

KS = (1, 2, 3, 4)
LONG_RANGE = 128  # tokens: a copy whose nearest source is this far back needs the context, not the local n-gram


def sample_source(defs: Definitions, source: str, n: int) -> tuple[list[str], dict]:
    """The first `n` documents of a source in stream order (inputs in proportion to their share), through the
    build's loader, loader filter and formatter; quality filters are NOT applied (the audit measures what they
    would remove). Returns (texts, {"records_read", "skipped", "paths"})."""
    if source not in defs.sources:
        raise ValueError(f"unknown source {source!r}; known sources in {', '.join(defs.files)}: "
                         f"{', '.join(sorted(defs.sources))}")
    texts, read, skipped, paths = [], 0, Counter(), []
    src = defs.sources[source]
    for i, inp in enumerate(src.inputs):
        want = n - len(texts) if i == len(src.inputs) - 1 else max(1, round(n * inp.share))
        fmt = get_formatter(inp.formatter)
        filt = inp.loader.get("filter")
        filt_re = re.compile(filt["regex"]) if filt else None
        path_field = inp.formatter_options.get("path_field")
        got = 0
        for record in iter_records(inp.loader):
            read += 1
            try:
                if filt_re and not filt_re.search(str(record.get(filt["field"], ""))):
                    raise SkipRecord("loader_filter")
                texts.append(fmt(record, **inp.formatter_options))
                paths.append(str(record.get(path_field) or "") if path_field else None)
                got += 1
            except SkipRecord as s:
                skipped[s.reason] += 1
            if got >= want:
                break
    return texts, {"records_read": read, "skipped": dict(skipped), "paths": paths}


def token_dir_documents(directory: str | Path, n: int, seed: int = 0,
                        prefix: str | None = None) -> tuple[list[np.ndarray], dict]:
    """A seeded random sample of `n` whole documents (EOT-terminated) of a token directory, or of its files
    under `prefix` (a mix's source subdirectory). A document cut by a shard end is not a whole document and is
    never sampled. Returns (documents without their EOT, {"documents": total whole documents})."""
    ds = TokenDataset(directory)
    bounds = []  # (file index, start, end) of every whole document
    for fi, entry in enumerate(ds.manifest["files"]):
        if prefix and not entry["path"].startswith(prefix):
            continue
        tokens = np.memmap(ds.directory / entry["path"], dtype=DTYPE, mode="r") if entry["num_tokens"] else []
        ends = np.flatnonzero(np.asarray(tokens) == EOT)
        starts = np.concatenate([[0], ends[:-1] + 1])
        bounds += [(fi, int(s), int(e)) for s, e in zip(starts, ends, strict=True)]
    if not bounds:
        return [], {"documents": 0}
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(bounds), size=min(n, len(bounds)), replace=False))
    docs = []
    for i in pick:
        fi, s, e = bounds[i]
        docs.append(np.array(np.memmap(ds.directory / ds.manifest["files"][fi]["path"], dtype=DTYPE, mode="r")[s:e],
                             dtype=np.int64))
    return docs, {"documents": len(bounds)}


CONTAMINATION_N = 13  # the n-gram length of the usual contamination checks (GPT-3's 13-gram overlap analysis)


def _rolling_ngrams(tokens: np.ndarray, n: int) -> np.ndarray:
    """`ngram_hashes` of one token stream without splitting it: windows that cross an EOT hold an EOT, which no
    held-out document's n-gram holds (they are hashed without their EOT), so they can never match."""
    return ngram_hashes([tokens], n)[0]


def eval_contamination(mix_dir: str | Path, eval_dirs: list[str | Path], n: int = 500, seed: int = 0,
                       ngram: int = CONTAMINATION_N, threshold: float = 0.8, boilerplate: int = 10,
                       min_run: int = 32) -> dict:
    """How much of each eval set the training mix contains, on a seeded sample of `n` whole eval documents per set:

    - `near_duplicate_documents`: share of sampled eval documents with a training document at MinHash Jaccard
      (token 5-shingles) >= `threshold` (what the build's decontaminate step removes: ~0 after it);
    - `ngram_windows_in_train`: share of the sampled eval documents' token `ngram`-gram windows (with multiplicity)
      that occur anywhere in the training mix (exact, by 64-bit hash); shared boilerplate (licence headers, import
      blocks, a generator's template sentences) is what a clean split leaves;
    - `ngram_windows_in_train_beyond_boilerplate`: the same, counting only n-grams that occur fewer than
      `boilerplate` times in the mix (a passage copied into training, not a phrase every document has);
    - `ngram_windows_in_train_passages`: of those, the windows in runs of consecutive ones that cover at least
      `min_run` tokens of the eval document (a passage, not a shared phrase or a template sentence with a common
      fill: what the build's containment step cuts, `data.build.CONTAINMENT`; ~0 after it).

    One pass over the mix's token files (an upsampled source's repeated passes, `-r1-` and up, are copies and
    skipped): every 13-gram is hashed and looked up (binary search) among the eval n-grams; only training documents
    that share an eval n-gram get a MinHash signature (a near duplicate at Jaccard 0.8 shares many; documents
    shorter than `ngram` tokens are not looked at). Returns per eval set and `train_tokens_scanned`."""
    evals = {}
    for d in eval_dirs:
        docs, info = token_dir_documents(d, n, seed)
        grams = ngram_hashes(docs, ngram)
        evals[Path(d).name] = {"docs": docs, "grams": grams, "total_documents": info["documents"]}
    grams = NgramSet(np.concatenate([g for e in evals.values() for g in e["grams"]] or [np.zeros(0, np.uint64)]))
    uniq = grams.hashes
    seen = np.zeros(uniq.size, dtype=np.int64)  # occurrences of each eval n-gram in the mix
    ds = TokenDataset(mix_dir)
    candidates, scanned = [], 0
    for entry in ds.manifest["files"]:
        if re.search(r"-r[1-9]\d*-", entry["path"]) or not entry["num_tokens"]:
            continue
        tokens = np.fromfile(ds.directory / entry["path"], dtype=DTYPE)
        scanned += tokens.size
        if not uniq.size:
            continue
        found = grams.find(_rolling_ngrams(tokens, ngram))
        hit = np.flatnonzero(found >= 0)
        np.add.at(seen, found[hit], 1)
        if hit.size:  # the documents holding a hit are the only possible near duplicates
            ends = np.flatnonzero(tokens == EOT)
            starts = np.concatenate([[0], ends[:-1] + 1])
            docs_hit = np.unique(np.searchsorted(ends, hit))
            candidates += [np.asarray(tokens[starts[i] : ends[i]], dtype=np.int64) for i in docs_hit
                           if i < ends.size]
    index = NearDuplicateIndex(candidates, threshold)
    out = {}
    for name, e in evals.items():
        windows = sum(g.size for g in e["grams"])
        counts = [seen[np.searchsorted(uniq, g)] for g in e["grams"] if g.size]
        in_train = sum(int((c > 0).sum()) for c in counts)
        rare_masks = [(c > 0) & (c < boilerplate) for c in counts]
        rare = sum(int(m.sum()) for m in rare_masks)
        passages = sum(int(_windows_in_runs(m, ngram, min_run).sum()) for m in rare_masks)
        near = index.matches_signatures(minhash_signatures(e["docs"])) >= 0 if e["docs"] else np.zeros(0, bool)
        out[name] = {"documents": len(e["docs"]), "total_documents": e["total_documents"],
                     "near_duplicate_documents": _share(int(near.sum()), len(e["docs"])),
                     "ngram_windows": windows, "ngram_windows_in_train": _share(in_train, windows),
                     "ngram_windows_in_train_beyond_boilerplate": _share(rare, windows),
                     "ngram_windows_in_train_passages": _share(passages, windows)}
    return {"eval_sets": out, "ngram": ngram, "threshold": threshold, "boilerplate": boilerplate, "min_run": min_run,
            "train_tokens_scanned": int(scanned),
            "train_documents_checked": len(candidates)}


def _windows_in_runs(hit: np.ndarray, ngram: int, min_run: int) -> np.ndarray:
    """bool per window: in a run of consecutive `hit` windows covering at least `min_run` tokens."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], hit.astype(np.int8), [0]])))
    out = np.zeros(hit.size, dtype=bool)
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        if b - 1 + ngram - a >= min_run:
            out[a:b] = True
    return out


def _share(num: float, den: float) -> float | None:
    return float(num) / den if den else None


def audit_documents(texts: list[str] | None = None, token_docs: list[np.ndarray] | None = None,
                    context: int = 1024, filters: QualityFilters | None = None,
                    paths: list[str | None] | None = None) -> dict:
    """Every audit number for one sample of documents (give `texts`, or `token_docs` which are decoded).

    Shares of documents unless named otherwise; `copyable` is a share of tokens (see quality.copyable_stats);
    `*_token_share` weights documents by their tokens. With `filters`, `filters_would_remove` gives the share of
    documents each of the source's filters would remove (exact duplicates within the sample included)."""
    enc = get_tokenizer()
    if token_docs is None:
        token_docs = [np.array(x, dtype=np.int64) for x in enc.encode_ordinary_batch(texts or [])]
    if texts is None:
        texts = enc.decode_batch([d.tolist() for d in token_docs])
    n = len(texts)
    if n == 0:
        raise ValueError("no documents to audit")
    lengths = np.array([len(d) for d in token_docs])
    total_tokens = int(lengths.sum())
    dup_lines = np.array([duplicated_line_share(t) for t in texts])
    seen, exact = set(), 0
    for d in token_docs:
        h = hashlib.sha256(d.astype("<u2").tobytes()).digest()
        exact += h in seen
        seen.add(h)
    near = near_duplicate_flags(token_docs)
    langs = Counter(detect_language(t) for t in texts)
    qr = [quote_reply_stats(t) for t in texts]
    grounded = [grounded_answer(t) for t in texts]
    qa_tokens = sum(int(length) for g, length in zip(grounded, lengths, strict=True) if g in ("grounded",
                                                                                                "unanswerable"))
    cp = copyable_stats(token_docs, KS, LONG_RANGE)
    out = {
        "documents": n,
        "tokens": total_tokens,
        "tokens_per_document": {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
                                "p95": float(np.percentile(lengths, 95))},
        "context": context,
        "longer_than_context": _share((lengths > context).sum(), n),
        "duplicated_lines": {"line_share": _share(dup_lines[:, 0].sum(), dup_lines[:, 1].sum()),
                             "documents_with": _share((dup_lines[:, 0] > 0).sum(), n)},
        "exact_duplicate_documents": exact / n,
        "near_duplicate_documents": float(near.mean()),
        "language": {lang: langs.get(lang, 0) / n for lang in LANGUAGES},
        "structure": {
            "quote_reply_documents": _share(sum(r for _, _, r in qr), n),
            "quote_lines": _share(sum(q for q, _, _ in qr), sum(x for _, x, _ in qr)),
            "front_matter_documents": _share(sum(map(has_front_matter, texts)), n),
            "changelog_documents": _share(sum(is_changelog(t, p) for t, p in zip(texts, paths or [None] * n,
                                                                                 strict=True)), n),
            "qa_template_documents": _share(sum(g is not None for g in grounded), n),
            "qa_grounded": _share(grounded.count("grounded"), n),
            "qa_unanswerable": _share(grounded.count("unanswerable"), n),
            "qa_ungrounded": _share(grounded.count("ungrounded"), n),
            "qa_token_share": _share(qa_tokens, total_tokens),
        },
        "copyable": {str(k): {"share": _share(v["copyable"], v["tokens"]), "mean_distance": v["mean_distance"],
                              "long_range_share": _share(v["long_range"], v["tokens"])} for k, v in cp.items()},
        "long_range": LONG_RANGE,
    }
    if filters is not None:
        removed, seen_h = Counter(), set()
        for t, p in zip(texts, paths or [None] * n, strict=True):
            kept, reason, _ = filters.apply(t, {"path": p}, "path")
            if kept is not None and filters.exact_dedup:
                h = content_hash(kept)
                reason = "duplicate" if h in seen_h else ""
                seen_h.add(h)
            if reason:
                removed[reason] += 1
        out["filters"] = filters.config()
        out["filters_would_remove"] = {r: c / n for r, c in sorted(removed.items())}
    return out


# --------------------------------------------------------------------------------------------- table output

ROWS = [
    ("documents", lambda a: f"{a['documents']:,}"),
    ("tokens/doc mean", lambda a: f"{a['tokens_per_document']['mean']:,.0f}"),
    ("tokens/doc p50", lambda a: f"{a['tokens_per_document']['p50']:,.0f}"),
    ("tokens/doc p95", lambda a: f"{a['tokens_per_document']['p95']:,.0f}"),
    ("docs > context", lambda a: _pct(a["longer_than_context"])),
    ("duplicated lines", lambda a: _pct(a["duplicated_lines"]["line_share"])),
    ("exact duplicate docs", lambda a: _pct(a["exact_duplicate_documents"])),
    ("near duplicate docs", lambda a: _pct(a["near_duplicate_documents"])),
    *[(f"language {lang}", lambda a, lang=lang: _pct(a["language"][lang])) for lang in LANGUAGES],
    ("quote-reply docs", lambda a: _pct(a["structure"]["quote_reply_documents"])),
    ("front matter docs", lambda a: _pct(a["structure"]["front_matter_documents"])),
    ("changelog docs", lambda a: _pct(a["structure"]["changelog_documents"])),
    ("QA grounded docs", lambda a: _pct(a["structure"]["qa_grounded"])),
    ("QA unanswerable docs", lambda a: _pct(a["structure"]["qa_unanswerable"])),
    ("QA ungrounded docs", lambda a: _pct(a["structure"]["qa_ungrounded"])),
    *[(f"copyable k={k}", lambda a, k=k: _pct(a["copyable"][str(k)]["share"])) for k in KS],
    *[(f"copy distance k={k}", lambda a, k=k: _num(a["copyable"][str(k)]["mean_distance"])) for k in KS],
    (f"long-range copy k=4 (>= {LONG_RANGE})", lambda a: _pct(a["copyable"]["4"]["long_range_share"])),
]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def format_table(audits: dict[str, dict], markdown: bool = False) -> str:
    """One column per audited source or directory, one row per number."""
    names = list(audits)
    rows = [(label, [fn(audits[n]) for n in names]) for label, fn in ROWS]
    removal = sorted({r for a in audits.values() for r in a.get("filters_would_remove", {})})
    rows += [(f"filter removes: {r}", [_pct(audits[n].get("filters_would_remove", {}).get(r, 0.0))
                                       if "filters" in audits[n] else "-" for n in names]) for r in removal]
    if markdown:
        lines = ["| measure | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        lines += ["| " + label + " | " + " | ".join(vals) + " |" for label, vals in rows]
        return "\n".join(lines)
    w = max(len(r[0]) for r in rows)
    cw = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    lines = [" " * w + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cw, strict=True))]
    lines += [label.ljust(w) + "  " + "  ".join(v.rjust(c) for v, c in zip(vals, cw, strict=True))
              for label, vals in rows]
    return "\n".join(lines)
