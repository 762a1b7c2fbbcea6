"""Document quality: the measurements behind the source audits and the filters they imply.

Measurements (used by `scripts/unified_build/audit_source.py` and `report_mix.py`):
- `detect_language(text)`: en / de / zh / other / unknown, from character scripts and stopword counts (no model,
  no dependency; see the function for the rule);
- `duplicated_line_share`, `has_front_matter`, `is_changelog`, `quote_reply_stats`, `grounded_answer`: the
  structures the source audit looks at (OpenSubtitles' repeated lines, README front matter and changelogs,
  Reddit quote-reply, grounded QA answers);
- `copyable_stats(docs)`: the share of tokens an ideal induction head would predict (the "induction
  signal", measured), for k = 1..4, with the distance back to the copied occurrence;
- `near_duplicate_flags(docs)`: MinHash over token 5-shingles with LSH banding (Jaccard >= 0.8);
  `NearDuplicateIndex(held_out).matches(docs)`: the same test of documents against a fixed set (the build removes
  training documents that are near duplicates of eval / val documents);
- `ngram_hashes(docs, 13)`: the token 13-grams of documents, for the eval-contamination measure of `report_mix.py`.

Filters (configured per source in `data/sources/*.json` under `filters`, applied by `data/build.py` at fetch):
`QualityFilters.from_config(cfg).apply(text, record)` returns the document to keep (possibly modified) or the
reason it is removed; the build counts documents and tokens per reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from data.formats import NOT_IN_CONTEXT, parse_retrieval

# ------------------------------------------------------------------------------------------------ language

# Frequent function words that are NOT also frequent in the other language ("in", "so", "was", "an", "die",
# "will" are left out on purpose: they are common in both English and German text).
EN_STOPWORDS = frozenset(
    "the of and to is that for it with as on are be this by from or at not have which you can we they their "
    "been has were but would there these its also more when if into than other then what about how all".split())
DE_STOPWORDS = frozenset(
    "der und den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an werden aus er hat "
    "dass sie nach wird bei einer um am sind noch wie einem über einen zum kann nur oder durch gemäss gemäß "
    "sowie wenn diese dieser ihre sein".split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_CODE_FENCE = re.compile(r"```.*?(```|\Z)|~~~.*?(~~~|\Z)|`[^`\n]*`", re.S)
LANGUAGES = ("en", "de", "zh", "other", "unknown")


def _is_han(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF


def _is_latin(c: str) -> bool:
    return c.isascii() or 0x00C0 <= ord(c) <= 0x024F


def detect_language(text: str, min_words: int = 20, min_stopword_share: float = 0.08) -> str:
    """en, de, zh, other or unknown, from scripts and stopwords. Code spans (``` fences, `inline`) are ignored.

    1. letters (str.isalpha): fewer than 20 -> unknown;
    2. Han characters >= 30% of letters -> zh; non-Latin letters (Cyrillic, Arabic, kana, Hangul, ...) >= 30% ->
       other;
    3. Latin text: English and German stopwords (lists above) among its words; if neither reaches
       `min_stopword_share` of the words -> other (another Latin-script language, or mostly identifiers);
       else the language with more stopword hits. Fewer than `min_words` words -> unknown.
    """
    prose = _CODE_FENCE.sub(" ", text)
    letters = [c for c in prose if c.isalpha()]
    if len(letters) < 20:
        return "unknown"
    han = sum(map(_is_han, letters))
    if han >= 0.3 * len(letters):
        return "zh"
    if sum(not _is_latin(c) for c in letters) - han >= 0.3 * len(letters):
        return "other"
    words = [w.lower() for w in _WORD.findall(prose)]
    if len(words) < min_words:
        return "unknown"
    en = sum(w in EN_STOPWORDS for w in words)
    de = sum(w in DE_STOPWORDS for w in words)
    if max(en, de) < min_stopword_share * len(words):
        return "other"
    return "de" if de > en else "en"


# ---------------------------------------------------------------------------------------------- structures


def _content_lines(text: str, min_chars: int) -> list[str]:
    return [s for s in (line.strip() for line in text.splitlines()) if len(s) >= min_chars]


def duplicated_line_share(text: str, min_chars: int = 20) -> tuple[int, int]:
    """(lines that repeat an earlier line of the document exactly, lines) over stripped lines of >= min_chars
    characters (short lines such as `}`, `else:` or `---` repeat legitimately)."""
    lines = _content_lines(text, min_chars)
    return len(lines) - len(set(lines)), len(lines)


def collapse_duplicate_lines(text: str, window: int = 16, min_chars: int = 20) -> str:
    """Drop each line of >= min_chars characters that repeats one of the previous `window` such lines exactly
    (after strip): the overlap that windowed subtitle/scrape dumps leave, while a far-apart repeat stays."""
    out, recent = [], []
    for line in text.splitlines(keepends=True):
        key = line.strip()
        if len(key) >= min_chars:
            if key in recent:
                continue
            recent.append(key)
            if len(recent) > window:
                recent.pop(0)
        out.append(line)
    return "".join(out)


_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\n(?:.*?\n)?---[ \t]*(?:\n|\Z)", re.S)


def has_front_matter(text: str) -> bool:
    """Jekyll / static-site front matter: a `---` line, `key: value` lines, a `---` line, at the very start."""
    m = _FRONT_MATTER.match(text)
    return bool(m) and bool(re.search(r"(?m)^[A-Za-z_][\w-]*\s*:", m.group(0)))


def strip_front_matter(text: str) -> str:
    return _FRONT_MATTER.sub("", text, count=1).lstrip() if has_front_matter(text) else text


_CHANGELOG_TITLE = re.compile(r"(?i)\A\s*(#+\s*|=+\s*)?(changelog|change log|changes|release notes|history|news)\b")
_VERSION_HEADING = re.compile(r"(?im)^\s*(#+\s*|\*\s*|-\s*)?\[?v?\d+\.\d+(\.\d+)?[\w.-]*\]?\s*(\(|-|–|—|/|$)")
_HEADING = re.compile(r"(?m)^\s*#+\s+\S|^.+\n[=-]{3,}\s*$")


def is_changelog(text: str, path: str | None = None) -> bool:
    """A changelog / release-notes document: its file name says so, or its title does, or version headings
    (`## [1.2.0] - 2021-03-01`, `v0.3.1 (2020)`) make up at least half of its headings (3 or more of them)."""
    if path and re.search(r"(?i)(^|/)(changelog|changes|history|news|release[-_ ]?notes)[^/]*$", path):
        return True
    if _CHANGELOG_TITLE.match(text):
        return True
    versions = len(_VERSION_HEADING.findall(text))
    return versions >= 3 and versions >= 0.5 * max(1, len(_HEADING.findall(text)))


def quote_reply_stats(text: str) -> tuple[int, int, bool]:
    """(quoted lines `> ...`, non-blank lines, has a quote followed by a reply): Reddit's quote-reply structure."""
    lines = [line for line in text.splitlines() if line.strip()]
    # `>>>` is a Python prompt (doctests), not a quote
    quoted = [line.lstrip().startswith(">") and not line.lstrip().startswith(">>>") for line in lines]
    reply = any(q and not nxt for q, nxt in zip(quoted, quoted[1:], strict=False))
    return sum(quoted), len(lines), reply


def grounded_answer(text: str) -> str | None:
    """For a document in the retrieval template: 'grounded' (answer found in the context), 'unanswerable'
    (the explicit not-in-context answer) or 'ungrounded'; None for any other document."""
    try:  # the template's one parser (data/formats.py), not a second copy of it as a pattern
        context, _, answer = parse_retrieval(text.strip())
    except ValueError:
        return None
    if answer is None:  # a prompt, not a document
        return None
    answer = answer.strip()
    if answer == NOT_IN_CONTEXT:
        return "unanswerable"
    return "grounded" if answer and answer.lower() in context.lower() else "ungrounded"


def stable_unit(text: str, salt: str = "") -> float:
    """A number in [0, 1) from a hash of the text: the same document gets the same draw on every rebuild."""
    return int.from_bytes(hashlib.sha256(f"{salt}\x00{text}".encode()).digest()[:8], "little") / 2**64


def content_hash(text: str) -> int:
    """64-bit content id of a document for exact deduplication (collisions ~1e-7 at 1e6 documents)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


# --------------------------------------------------------------------------------------- copyable tokens


def _doc_arrays(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    tokens = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    doc_id = np.repeat(np.arange(len(docs)), lengths)
    pos = np.arange(tokens.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position inside its document
    return tokens, doc_id, pos


def copyable_stats(docs: list[np.ndarray], ks: tuple[int, ...] = (1, 2, 3, 4),
                   long_range: int = 128) -> dict[int, dict]:
    """Per k: how many tokens an ideal induction head of order k would predict.

    Token t_i of a document (i >= k) is copyable at order k if the (k+1)-gram t_{i-k..i} occurred earlier in the
    same document, i.e. the k tokens before t_i occurred ending at some j < i AND were followed there by t_i.
    Its distance is i - j for the most recent such j (the nearest copy source). Returns per k: `copyable`
    (count), `tokens` (all tokens of the documents: the denominator, the same for every k), `mean_distance`,
    `long_range` (copyable tokens whose nearest copy source is >= `long_range` tokens back).
    Vectorised with numpy: one stable sort of gram hashes per k (a few seconds for 5M tokens, k = 1..4).
    """
    tokens, doc_id, pos = _doc_arrays(docs)
    out = {}
    # A 64-bit polynomial hash of (document, t_i, t_{i-1}, ..., t_{i-m}), extended one token back per order, so
    # order k costs one stable sort. Equal grams hash equal; a collision between different grams needs two of a
    # few million values to meet among 2^64 (probability ~1e-6 per audit), and would only add a copyable token.
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
        h = doc_id.astype(np.uint64) * mult + tokens.astype(np.uint64)
        for m in range(1, max(ks) + 1):
            back = np.where(pos >= m, np.roll(tokens, m), 65535).astype(np.uint64)  # 65535: not a GPT-2 id
            h = h * mult + back + np.uint64(1)
            if m not in ks:
                continue
            idx = np.flatnonzero(pos >= m)  # positions whose m tokens of context lie inside the document
            order = np.argsort(h[idx], kind="stable")  # stable: within a gram, positions stay increasing
            g, p = h[idx][order], pos[idx][order]
            same = g[1:] == g[:-1]
            dist = (p[1:] - p[:-1])[same]  # the previous position of the same gram is the nearest earlier copy
            out[m] = {"copyable": int(same.sum()), "tokens": int(tokens.size),
                      "mean_distance": float(dist.mean()) if dist.size else None,
                      "long_range": int((dist >= long_range).sum())}
    return {k: out[k] for k in ks}


# ------------------------------------------------------------------------------------------ near duplicates

def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele et al. 2014, as in Java's SplittableRandom): every output bit depends on every
    input bit, so a per-permutation multiply below acts on well-spread values."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def minhash_signatures(docs: list[np.ndarray], shingle: int = 5, num_perm: int = 64, seed: int = 0,
                       chunk_tokens: int = 1 << 16) -> np.ndarray:
    """(documents, num_perm) MinHash signatures over token `shingle`-grams; documents shorter than a shingle get
    a signature of their whole token tuple (so equal short documents still match). The share of equal entries of
    two signatures estimates the Jaccard similarity of the two shingle sets (standard error sqrt(J(1-J)/num_perm)).

    Each shingle gets a 64-bit hash (a polynomial over its tokens, then `_mix64`); permutation p maps it to
    `a_p * h + b_p mod 2^64` (a_p odd), whose minimum over a document is the signature entry. (An earlier version
    used 31-bit multipliers under a 61-bit modulus: for most shingles the product never wrapped, so every
    "permutation" kept the order of the raw hash, all entries picked the same shingle, and two documents sharing
    only their lowest shingle read as Jaccard ~0.8: template-sharing QA documents at true Jaccard 0.23 did.)

    Vectorised over documents: a chunk of ~`chunk_tokens` tokens is hashed at once and each permutation's minimum
    per document is one `np.minimum.reduceat` (small chunks stay in cache), so the cost is ~3 array passes per
    token and permutation, not a Python loop per document (the build runs this over every training document)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True)
    sigs = np.empty((len(docs), num_perm), dtype=np.uint64)
    n = 0
    while n < len(docs):
        group, size = [], 0
        while n + len(group) < len(docs) and (not group or size < chunk_tokens):
            d = np.asarray(docs[n + len(group)], dtype=np.uint64)
            if d.size < shingle:  # padded with a non-id so the whole short document is one shingle
                d = np.concatenate([d, np.full(shingle - d.size, 65535, np.uint64)])
            group.append(d)
            size += d.size
        lengths = np.array([d.size for d in group], dtype=np.int64)
        tokens = np.concatenate(group)
        starts = np.cumsum(lengths) - lengths
        windows = tokens.size - shingle + 1
        h = np.zeros(windows, dtype=np.uint64)
        with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
            for k in range(shingle):
                h = h * np.uint64(0x100000001B3) + tokens[k : k + windows]
        # keep the windows that lie inside one document: document i owns windows starts[i] .. starts[i]+len-shingle
        doc_of = np.repeat(np.arange(len(group)), lengths)[:windows]
        h = _mix64(h[np.arange(windows) - starts[doc_of] <= lengths[doc_of] - shingle])
        first = np.cumsum(lengths - shingle + 1) - (lengths - shingle + 1)  # each document's first kept window
        x = np.empty_like(h)
        with np.errstate(over="ignore"):
            for p in range(num_perm):
                np.multiply(h, a[p], out=x)
                x += b[p]
                sigs[n : n + len(group), p] = np.minimum.reduceat(x, first)
        n += len(group)
    return sigs


_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)


def _window_hashes(t: np.ndarray, n: int) -> np.ndarray:
    """sum_k t[i+k] B^(n-1-k) mod 2^64 for every window of `n` of `t` (uint64), by doubling: windows of 1, 2, 4, 8
    tokens, and a window of n joined from the ones its binary digits name (13 = 1 + 4 + 8: 5 array passes, not
    13). Joining a prefix hash p (length a) and the suffix hash s (length b) is p B^b + s."""
    res, rlen, cur, clen, m = None, 0, t, 1, n
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
        while m:
            if m & 1:
                if res is None:
                    res, rlen = cur, clen
                else:
                    w = t.size - (rlen + clen) + 1
                    res, rlen = res[:w] * _NGRAM_BASE ** np.uint64(clen) + cur[rlen : rlen + w], rlen + clen
            m >>= 1
            if m:
                w = cur.size - clen
                cur, clen = cur[:w] * _NGRAM_BASE ** np.uint64(clen) + cur[clen : clen + w], clen * 2
    return res


def ngram_hashes(docs: list[np.ndarray], n: int = 13) -> list[np.ndarray]:
    """Per document: uint64 hashes of its token n-grams (windows inside the document; none if it is shorter than n).
    A polynomial hash of (token + 1) with wrapping 64-bit arithmetic: equal n-grams hash equal, and two different
    n-grams collide with odds ~2^-64 per pair."""
    out = []
    for d in docs:
        d = np.asarray(d, dtype=np.uint64)
        out.append(_window_hashes(d + np.uint64(1), n) if d.size >= n else np.zeros(0, dtype=np.uint64))
    return out


class NgramSet:
    """A fixed set of n-gram hashes (`ngram_hashes`), looked up by whole arrays: `find(h)` gives each hash's index in
    `self.hashes` (sorted, unique) or -1. A 2^24-entry presence table on the top hash bits sends only the windows
    that may be in the set on to the binary search, whose cache misses dominate otherwise (3x faster at 2M held-out
    n-grams, scripts/bench/minhash_throughput.py)."""

    def __init__(self, hashes: np.ndarray, presorted: bool = False):
        """`presorted`: `hashes` are already sorted and unique (an earlier set's `hashes`: no second sort)."""
        self.hashes = np.asarray(hashes, dtype=np.uint64) if presorted else np.unique(np.asarray(hashes, np.uint64))
        self.present = np.zeros(1 << 24, dtype=bool)
        self.present[self.hashes >> np.uint64(40)] = True

    def __len__(self) -> int:
        return int(self.hashes.size)

    def find(self, h: np.ndarray) -> np.ndarray:
        """int64 index into `self.hashes` of each of `h`, -1 where absent."""
        out = np.full(h.size, -1, dtype=np.int64)
        if not self.hashes.size or not h.size:
            return out
        maybe = np.flatnonzero(self.present[h >> np.uint64(40)])
        pos = np.minimum(np.searchsorted(self.hashes, h[maybe]), self.hashes.size - 1)
        hit = self.hashes[pos] == h[maybe]
        out[maybe[hit]] = pos[hit]
        return out


def _band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
    """(documents, bands) uint64: one key per band of `rows = num_perm // bands` signature entries (equal rows give
    equal keys; different rows collide with odds ~2^-64, and a collision only adds a candidate that the full
    signature then rejects)."""
    rows = sigs.shape[1] // bands
    keys = np.zeros((len(sigs), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = _mix64(keys * np.uint64(0x100000001B3) + sigs[:, r : bands * rows : rows])
    return keys


def estimate_cut(threshold: float, num_perm: int = 64, sigmas: float = 2.0) -> float:
    """The cut on the MinHash estimate that catches a pair whose true Jaccard is `threshold` with ~97.7% odds (two
    standard errors below it, sqrt(J (1 - J) / num_perm)): cutting at the threshold itself misses about half of the
    pairs that sit exactly on it. At 0.8 and 64 permutations: 0.70 (a pair at true Jaccard 0.6 passes it ~5% of the
    time: a few more training documents removed, never a held-out copy kept)."""
    return threshold - sigmas * math.sqrt(threshold * (1 - threshold) / num_perm)


class NearDuplicateIndex:
    """MinHash LSH over a fixed set of documents (the held-out ones), queried with other documents: which of them
    is a near duplicate (true Jaccard of token 5-shingles >= threshold, caught with ~97.7% odds at the threshold:
    `estimate_cut`) of an indexed document. Candidates come from banding (16 bands of 4 rows: a pair at Jaccard 0.8
    shares a band with probability 0.9998, at 0.5 with 0.64), then the full signatures decide. Vectorised: per band,
    the indexed keys are sorted once and the queries' keys binary-searched, so a query costs no Python work unless
    it has a candidate."""

    def __init__(self, docs: list[np.ndarray], threshold: float = 0.8, bands: int = 16):
        self.threshold, self.bands = threshold, bands
        self.sigs = minhash_signatures(docs)
        self.cut = estimate_cut(threshold, self.sigs.shape[1])
        keys = _band_keys(self.sigs, bands)
        self.order = np.argsort(keys, axis=0, kind="stable")  # per band: indexed documents by key
        self.sorted_keys = np.take_along_axis(keys, self.order, axis=0)

    def __len__(self) -> int:
        return len(self.sigs)

    def matches(self, docs: list[np.ndarray]) -> np.ndarray:
        """For each document: the index of an indexed near duplicate (the one its signature agrees with most), or
        -1."""
        return self.matches_signatures(minhash_signatures(docs) if docs and len(self) else
                                       np.zeros((len(docs), self.sigs.shape[1]), dtype=np.uint64))

    def matches_signatures(self, sigs: np.ndarray) -> np.ndarray:
        """`matches` for documents whose signatures (`minhash_signatures`) are already computed."""
        out = np.full(len(sigs), -1, dtype=np.int64)
        if not len(self) or not len(sigs):
            return out
        keys = _band_keys(sigs, self.bands)
        queries, indexed = [], []
        for band in range(self.bands):  # (query, indexed document) pairs that share this band
            lo = np.searchsorted(self.sorted_keys[:, band], keys[:, band], side="left")
            count = np.searchsorted(self.sorted_keys[:, band], keys[:, band], side="right") - lo
            total = int(count.sum())
            if not total:
                continue
            offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
            queries.append(np.repeat(np.arange(len(sigs)), count))
            indexed.append(self.order[np.repeat(lo, count) + offset, band])
        if not queries:
            return out
        pair = np.unique(np.concatenate(queries) * len(self) + np.concatenate(indexed))
        q, m = pair // len(self), pair % len(self)
        agree = (sigs[q] == self.sigs[m]).mean(axis=1)
        keep = agree >= self.cut
        q, m, agree = q[keep], m[keep], agree[keep]
        best = np.lexsort((m, -agree, q))  # per query: highest agreement first (ties: the lowest index)
        first = np.ones(best.size, dtype=bool)
        first[1:] = q[best][1:] != q[best][:-1]
        out[q[best][first]] = m[best][first]
        return out


def near_duplicate_flags(docs: list[np.ndarray], threshold: float = 0.8, bands: int = 16) -> np.ndarray:
    """True for each document whose MinHash Jaccard estimate with an EARLIER document is >= threshold (the first
    of a group is not flagged, as with exact duplicates). Candidates from LSH banding, then checked on the full
    signature."""
    sigs = minhash_signatures(docs)
    rows = sigs.shape[1] // bands
    flags = np.zeros(len(docs), dtype=bool)
    buckets: dict[tuple, list[int]] = {}
    for n in range(len(docs)):
        cands = set()
        for band in range(bands):
            key = (band, sigs[n, band * rows : (band + 1) * rows].tobytes())
            cands.update(buckets.get(key, ()))
            buckets.setdefault(key, []).append(n)
        if any((sigs[n] == sigs[m]).mean() >= threshold for m in cands):
            flags[n] = True
    return flags


# -------------------------------------------------------------------------------------------------- filters


FILTER_KEYS = {"exact_dedup", "min_chars", "collapse_lines", "front_matter", "changelog", "languages",
               "quote_reply_keep_share", "max_removed_share"}


@dataclass
class QualityFilters:
    """One source's filters. Defaults: exact deduplication across all sources on, documents under 50 characters
    removed, at most 50% of a source's documents removed by any one filter; everything else off (each source
    turns on what its audit found, see data/sources/*.json and docs/DATASET.md)."""

    exact_dedup: bool = True
    min_chars: int = 50
    collapse_lines: dict | None = None  # {"window": 16, "min_chars": 20}
    front_matter: bool = False  # strip Jekyll front matter
    changelog: bool = False  # remove changelog / release-notes documents
    languages: list[str] | None = None  # keep only these detected languages ("unknown" = too little prose: kept)
    quote_reply_keep_share: float | None = None  # threads without quote-reply kept at this share
    max_removed_share: float = 0.5

    @classmethod
    def from_config(cls, cfg: dict | None, where: str = "filters") -> QualityFilters:
        cfg = dict(cfg or {})
        unknown = set(cfg) - FILTER_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown filter(s) {sorted(unknown)}; allowed: {sorted(FILTER_KEYS)}")
        f = cls(**cfg)
        if f.collapse_lines is not None:
            if f.collapse_lines is True:
                f.collapse_lines = {}
            if not isinstance(f.collapse_lines, dict) or set(f.collapse_lines) - {"window", "min_chars"}:
                raise ValueError(f"{where}.collapse_lines: expected null or {{\"window\": 16, \"min_chars\": 20}}, "
                                 f"got {f.collapse_lines!r}")
        if f.languages is not None and (not isinstance(f.languages, list) or set(f.languages) - set(LANGUAGES)):
            raise ValueError(f"{where}.languages: {f.languages!r}; use a list of {list(LANGUAGES)}")
        if f.quote_reply_keep_share is not None and not 0 <= f.quote_reply_keep_share <= 1:
            raise ValueError(f"{where}.quote_reply_keep_share: {f.quote_reply_keep_share} must be in [0, 1] or null")
        if not 0 < f.max_removed_share <= 1:
            raise ValueError(f"{where}.max_removed_share: {f.max_removed_share} must be in (0, 1]")
        if not isinstance(f.min_chars, int) or f.min_chars < 0:
            raise ValueError(f"{where}.min_chars: {f.min_chars!r} must be an integer >= 0")
        return f

    def config(self) -> dict:
        return {k: getattr(self, k) for k in sorted(FILTER_KEYS)}

    def apply(self, text: str, record: dict | None = None,
              path_field: str | None = None) -> tuple[str | None, str, list[tuple[str, str, str]]]:
        """(document or None, removal reason or "", [(modification, text before, text after)]). Modifications
        first (front matter, repeated lines), then removals in a fixed order; exact deduplication is the
        caller's (it needs state across documents and sources)."""
        mods = []
        if self.front_matter and has_front_matter(text):
            mods.append(("front_matter", text, strip_front_matter(text)))
            text = mods[-1][2]
        if self.collapse_lines is not None:
            collapsed = collapse_duplicate_lines(text, **self.collapse_lines)
            if collapsed != text:
                mods.append(("duplicate_lines", text, collapsed))
                text = collapsed
        path = str((record or {}).get(path_field) or "") if path_field else None
        if self.changelog and is_changelog(text, path):
            return None, "changelog", mods
        if self.languages is not None:
            lang = detect_language(text)
            if lang != "unknown" and lang not in self.languages:
                return None, "language", mods
        if self.quote_reply_keep_share is not None and not quote_reply_stats(text)[2]:
            if stable_unit(text, "quote_reply") >= self.quote_reply_keep_share:
                return None, "no_quote_reply", mods
        if len(text.strip()) < self.min_chars:
            return None, "min_chars", mods
        return text, "", mods


class FilterShareError(ValueError):
    """A filter removed more than `max_removed_share` of a source's documents (usually a schema mismatch)."""


def check_removed_shares(where: str, entered: int, removed: Counter, max_share: float, min_documents: int = 100,
                         final: bool = False) -> None:
    """Stop when one reason removed more than `max_share` of the documents that reached the filters; judged once
    `min_documents` have been seen (or at the end of the source), so the first few documents cannot trip it."""
    if entered == 0 or (entered < min_documents and not final):
        return
    for reason, n in removed.items():
        if n > max_share * entered:
            raise FilterShareError(
                f"{where}: filter {reason!r} removed {n:,} of {entered:,} documents ({n / entered:.1%}), more than "
                f"max_removed_share {max_share:.0%}. That usually means a schema mismatch (wrong field, formatter "
                f"or loader) rather than bad data: check a few fetched records (audit_source.py shows the "
                f"shares); if the share is right, raise filters.max_removed_share for this source in the "
                f"definitions")
