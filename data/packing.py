"""Grounding-safe packing: every document that fits in one sample is trained (and evaluated) whole.

A sample is `block_size + 1` tokens (inputs plus the shifted target). Cutting the token stream into fixed windows
splits a document wherever it happens to fall: a TriviaQA example (~730 tokens) fits inside a 1,025-token window
only about a third of the time, and when it is cut the passage is often in one sample and the question and answer
in the next, which trains question -> answer without its evidence. Instead (Ding et al. 2024, "Fewer Truncations
Improve Language Modeling", best-fit decreasing):

1. documents are the stream split after every EOT (and, for directories the build pipeline assembled, at every
   file start: a mix's last file of a source may be cut mid-document, and the next file starts a new one);
2. a document of at most `S = block_size + 1` tokens is *short*: short documents are packed whole into samples of
   capacity S by best-fit decreasing (longest first, each into the sample whose free room fits it most tightly);
3. a *long* document is cut into S-token chunks every `block_size` tokens from its start (one sample each):
   consecutive chunks share one token, the last target of one chunk being the first input of the next (as fixed
   windows had). Its rest (from the shared token on, at most `block_size` tokens) joins the filler stream, which
   fills the free room left in the packed samples, in sample order, and then further samples; where the stream is
   cut at the end of one sample's room, the next room begins with the token it was cut after. So every token of a
   long document but its first is a target exactly once (best-fit-decreasing-v1 shared no token: about 1 target in
   S of long documents was never trained). Only chunks and rests are cut, so short documents are never split;
4. a document that does not end with EOT (a file the mix cut mid-document, or the end of a stream) is never
   followed by another document in a sample: it and the rest of it get samples of their own. The model finds
   document boundaries from EOT ids alone (model/attention.py), so a document packed after it would read it, and
   its last token would be trained to predict the next document's first (best-fit-decreasing-v2 packed it like any
   other; at most one such document per input file of a mix);
5. what is left is padding at the end of a sample: the reader returns -1 there, the loader turns a -1 input into
   EOT and keeps -1 as the target, which the loss ignores (`F.cross_entropy(..., ignore_index=-1)`).

The result is an index per block size, two `.npy` files next to the shards: `offsets` (num_samples + 1, int64) and
`segments` (num_segments, 2) int64 rows of (stream start, length): sample i is the concatenation of segments
offsets[i] .. offsets[i+1], padded to S. No segment crosses a shard file. `data.token_dataset.TokenDataset` reads
it; `add_packing` writes it and records it in `manifest.json` (`packing`).

    python scripts/unified_build/pack_tokens.py data/demo/unified_6B data/demo/unified_6B/val --block-size 256
    python scripts/unified_build/pack_tokens.py data/unified_6B --block-size 1024 --report   # print its figures

The index is a pure function of (token stream, block size, document boundaries, method): the sampler's and
resume guarantees (DESIGN, "Data order is a pure function of the optimizer step") hold over samples as before.
"""

from __future__ import annotations

import dataclasses

import numpy as np

METHOD = "best-fit-decreasing-v3"
"""Changing the packing (order, tie-breaks, what counts as a document) must change this string: it is part of a
token directory's sample fingerprint, so a checkpoint never resumes onto differently packed samples."""
METHOD_FIXED = "fixed-windows"
"""The pre-packing layout, sample i = stream tokens [i * block_size, i * block_size + block_size + 1), for streams
whose writer laid out every sample itself (scripts/experiments/ablation_tiny.py places answers at chosen positions
of the window). It cuts documents anywhere: never for a training mix."""
BOUNDARIES_EOT = "eot"
BOUNDARIES_EOT_FILES = "eot_and_file_starts"
PAD = -1
"""What `TokenDataset.sample` returns at padding positions (the loss's ignore index)."""


@dataclasses.dataclass
class Packing:
    """A packing index and what it did."""

    offsets: np.ndarray
    """(num_samples + 1,) int64: sample i is segments[offsets[i]:offsets[i + 1]]."""
    segments: np.ndarray
    """(num_segments, 2) int64: (start in the token stream, length)."""
    stats: dict


def document_bounds(eot_positions: np.ndarray, num_tokens: int, file_starts: np.ndarray | None = None) -> np.ndarray:
    """Start of every document, plus `num_tokens` at the end ((num_docs + 1,) int64).

    A document ends after an EOT; with `file_starts`, every file start begins a new document too. A final piece
    without an EOT (a cut file) is a document of its own."""
    cuts = [np.zeros(1, np.int64), np.asarray(eot_positions, np.int64) + 1, np.array([num_tokens], np.int64)]
    if file_starts is not None:
        cuts.append(np.asarray(file_starts, np.int64))
    bounds = np.unique(np.concatenate(cuts))
    return bounds[(bounds >= 0) & (bounds <= num_tokens)]


def _best_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """Bin of every item (lengths <= capacity) under best-fit decreasing, and the number of bins.

    Exact BFD, computed per group of equal lengths: items are taken longest first (ties in input order); each goes
    to the bin with the least free room that still fits it, a new bin when none does (ties between bins with equal
    room: the most recently filled). Equal items are interchangeable, so a group moves many bins in one step:
    O(number of distinct (length, room) pairs) Python iterations, not O(items)."""
    n = lengths.size
    order = np.lexsort((np.arange(n), -lengths))
    sorted_len = lengths[order]
    bin_sorted = np.empty(n, np.int64)
    free: list[list[int]] = [[] for _ in range(capacity + 1)]  # bins by free room
    has_room = np.zeros(capacity + 1, bool)  # has_room[r]: some bin has exactly r free
    n_bins = 0
    group_starts = np.flatnonzero(np.diff(sorted_len, prepend=-1)) if n else np.zeros(0, np.int64)
    for g, i0 in enumerate(group_starts):
        i0 = int(i0)
        i1 = int(group_starts[g + 1]) if g + 1 < len(group_starts) else n
        size = int(sorted_len[i0])
        i = i0
        while i < i1:
            fits = np.flatnonzero(has_room[size:])
            if fits.size:
                room = size + int(fits[0])
                per_bin = room // size  # the best-fit bin stays the best fit until it has less room than `size`
                bins = free[room]
                k = min(len(bins), (i1 - i) // per_bin)
                if k:
                    moved = bins[len(bins) - k:]
                    del bins[len(bins) - k:]
                    bin_sorted[i : i + k * per_bin] = np.repeat(moved, per_bin)
                    i += k * per_bin
                    left = room - per_bin * size
                    if left:
                        free[left].extend(moved)
                        has_room[left] = True
                else:  # fewer items left than this bin takes: they all go into it
                    b = bins.pop()
                    m = i1 - i
                    bin_sorted[i:i1] = b
                    i = i1
                    free[room - m * size].append(b)
                    has_room[room - m * size] = True
                if not bins:
                    has_room[room] = False
            else:  # no bin fits: open new ones, each filled with as many of this length as fit
                per_bin = capacity // size
                m = i1 - i
                nb = -(-m // per_bin)
                new = np.arange(n_bins, n_bins + nb)
                bin_sorted[i:i1] = np.repeat(new, per_bin)[:m]
                n_bins += nb
                counts = np.full(nb, per_bin)
                counts[-1] = m - per_bin * (nb - 1)
                for b, c in zip(new.tolist(), counts.tolist(), strict=True):
                    left = capacity - c * size
                    if left:
                        free[left].append(b)
                        has_room[left] = True
                i = i1
        has_room[0] = False
    bins = np.empty(n, np.int64)
    bins[order] = bin_sorted
    return bins, n_bins


def _fill(gap_bins: np.ndarray, gap_sizes: np.ndarray, piece_starts: np.ndarray, piece_lens: np.ndarray):
    """Lay the pieces, in order, into the gaps, in order, each gap beginning with the last token of the gap before.

    The pieces are one virtual line; gap i holds its stretch [v_i, v_i + g_i) with v_i = sum_{j<i} (g_j - 1), so a
    piece cut at the end of one gap continues in the next from the token it was cut after: that token is the last
    target of one sample and the first input of the next, and every filler token but the line's first is a target
    exactly once. A gap that would hold one token only (no new target) is left empty. Returns (bin, stream start,
    length) of every segment: a gap's stretch cut at the piece ends inside it."""
    empty = np.zeros(0, np.int64)
    if not gap_sizes.size or not piece_lens.size:
        return empty, empty, empty
    piece_end = np.cumsum(piece_lens)
    piece_begin = piece_end - piece_lens
    total = int(piece_end[-1])
    lo = np.concatenate([[0], np.cumsum(gap_sizes - 1)[:-1]])
    hi = np.minimum(lo + gap_sizes, total)
    live = np.flatnonzero(hi - lo >= 2)
    gaps, lo, hi = gap_bins[live], lo[live], hi[live]
    first = np.searchsorted(piece_end, lo, side="right")  # the piece holding each stretch's first token
    last = np.searchsorted(piece_end, hi - 1, side="right")  # ... and its last
    count = last - first + 1
    gap_of = np.repeat(np.arange(live.size), count)
    piece = first[gap_of] + np.arange(gap_of.size) - np.repeat(np.cumsum(count) - count, count)
    seg_lo = np.maximum(piece_begin[piece], lo[gap_of])
    seg_hi = np.minimum(piece_end[piece], hi[gap_of])
    return gaps[gap_of], piece_starts[piece] + (seg_lo - piece_begin[piece]), seg_hi - seg_lo


def pack(bounds: np.ndarray, block_size: int, shard_starts: np.ndarray | None = None,
         ends_with_eot: np.ndarray | None = None) -> Packing:
    """The packing index of a stream whose documents start at `bounds[:-1]` (bounds[-1] = number of tokens).

    `shard_starts` (stream offset of each shard file, plus the total at the end): segments are cut there, so the
    reader copies each segment from one file. `ends_with_eot` (one bool per document; None: all do): a document
    that does not gets samples of its own (step 4 of the module doc)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    S = block_size + 1
    bounds = np.asarray(bounds, np.int64)
    starts, lengths = bounds[:-1], np.diff(bounds)
    closed = np.ones(starts.size, bool) if ends_with_eot is None else np.asarray(ends_with_eot, bool)
    if closed.shape != starts.shape:
        raise ValueError(f"ends_with_eot has {closed.size} entries for {starts.size} documents")
    keep = lengths > 0
    starts, lengths, closed = starts[keep], lengths[keep], closed[keep]
    short = lengths <= S
    s_start, s_len = starts[short & closed], lengths[short & closed]
    o_start, o_len = starts[short & ~closed], lengths[short & ~closed]  # open-ended: a sample each
    l_start, l_len, l_closed = starts[~short], lengths[~short], closed[~short]

    # Short documents: best-fit decreasing into bins of S tokens.
    short_bin, n_bins = _best_fit_decreasing(s_len, S)
    used = np.bincount(short_bin, weights=s_len, minlength=n_bins).astype(np.int64)

    # Long documents: chunks of S tokens every `block_size` tokens from the start (one sample each), so consecutive
    # chunks share one token: the last target of a chunk is the first input of the next, as fixed windows had.
    n_full = (l_len - 1) // block_size
    chunk_doc = np.repeat(np.arange(l_len.size), n_full)
    chunk_idx = np.arange(chunk_doc.size) - np.repeat(np.cumsum(n_full) - n_full, n_full)
    chunk_start = l_start[chunk_doc] + chunk_idx * block_size
    chunk_bin = n_bins + np.arange(chunk_start.size)
    n_bins += chunk_start.size
    # The rest (from the shared token; one token alone is already a target) fills the room left, then new samples.
    tail_len = l_len - n_full * block_size
    tail_start = l_start + n_full * block_size
    has_tail = tail_len > 1
    # An open-ended document's rest is a sample of its own, like a short open-ended document.
    o_start = np.concatenate([o_start, tail_start[has_tail & ~l_closed]])
    o_len = np.concatenate([o_len, tail_len[has_tail & ~l_closed]])
    tail_start, tail_len = tail_start[has_tail & l_closed], tail_len[has_tail & l_closed]
    own_bin = n_bins + np.arange(o_start.size)
    n_bins += o_start.size

    gap_bins = np.flatnonzero(used < S)  # best-fit bins only: no filler follows an open-ended document
    gap_sizes = S - used[gap_bins]
    # Each gap after the first re-reads one token of the filler (see _fill), so the room holds sum(g - 1) + 1.
    room = int((gap_sizes - 1).sum()) + 1 if gap_sizes.size else 0
    overflow = max(0, int(tail_len.sum()) - room)
    n_new = -(-overflow // block_size) + (overflow > 0 and room == 0)
    gap_bins = np.concatenate([gap_bins, n_bins + np.arange(n_new)])
    gap_sizes = np.concatenate([gap_sizes, np.full(n_new, S)])
    n_bins += n_new
    fill_bin, fill_start, fill_len = _fill(gap_bins, gap_sizes, tail_start, tail_len)

    # Segments: whole short documents first (stream order), then filler pieces, then each sample's padding.
    seg_bin = np.concatenate([short_bin, chunk_bin, own_bin, fill_bin])
    seg_start = np.concatenate([s_start, chunk_start, o_start, fill_start])
    seg_len = np.concatenate([s_len, np.full(chunk_start.size, S), o_len, fill_len])
    kind = np.concatenate([np.zeros(s_len.size), np.ones(chunk_start.size), np.zeros(o_len.size),
                           np.full(fill_len.size, 2)])
    per_bin = np.bincount(seg_bin, weights=seg_len, minlength=n_bins).astype(np.int64)
    # A sample of one token has no target (its only token is an input); drop it rather than train on nothing.
    dropped = per_bin < 2
    # Sample ids in stream order of their first segment: eval reads sorted ids, so they walk the files forward.
    first = np.full(n_bins, np.iinfo(np.int64).max)
    np.minimum.at(first, seg_bin, seg_start)
    bin_order = np.lexsort((np.arange(n_bins), first))
    bin_order = bin_order[~dropped[bin_order]]
    rank = np.full(n_bins, -1)
    rank[bin_order] = np.arange(bin_order.size)
    alive = rank[seg_bin] >= 0
    order = np.lexsort((seg_start[alive], kind[alive], rank[seg_bin][alive]))
    seg_sample = rank[seg_bin][alive][order]
    segments = np.stack([seg_start[alive][order], seg_len[alive][order]], axis=1)
    if shard_starts is not None:
        segments, seg_sample = _split_at(segments, seg_sample, np.asarray(shard_starts, np.int64))
    offsets = np.zeros(bin_order.size + 1, np.int64)
    np.cumsum(np.bincount(seg_sample, minlength=bin_order.size), out=offsets[1:])
    tokens = int(segments[:, 1].sum()) if segments.size else 0
    num_samples = int(bin_order.size)
    stats = {"block_size": block_size, "num_samples": num_samples, "num_segments": int(segments.shape[0]),
             "documents": int(lengths.size), "short_documents": int(s_len.size),
             "long_documents": int(l_len.size), "open_ended_documents": int((~closed).sum()), "tokens": tokens,
             "pad_tokens": num_samples * S - tokens,
             "padding_share": (num_samples * S - tokens) / (num_samples * S) if num_samples else 0.0,
             "dropped_tokens": int(per_bin[dropped].sum())}
    return Packing(offsets, segments, stats)


def fixed_windows(num_tokens: int, block_size: int, shard_starts: np.ndarray | None = None) -> Packing:
    """METHOD_FIXED as an index: consecutive windows overlapping by one token, no padding."""
    n = (num_tokens - 1) // block_size
    segments = np.stack([np.arange(n, dtype=np.int64) * block_size, np.full(n, block_size + 1, np.int64)], axis=1)
    sample = np.arange(n)
    if shard_starts is not None:
        segments, sample = _split_at(segments, sample, np.asarray(shard_starts, np.int64))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(sample, minlength=n), out=offsets[1:])
    stats = {"block_size": block_size, "num_samples": n, "num_segments": int(segments.shape[0]), "documents": None,
             "short_documents": None, "long_documents": None, "tokens": n * (block_size + 1), "pad_tokens": 0,
             "padding_share": 0.0, "dropped_tokens": num_tokens - 1 - n * block_size}
    return Packing(offsets, segments, stats)


def _split_at(segments: np.ndarray, seg_sample: np.ndarray, shard_starts: np.ndarray):
    """Cut segments that cross a shard boundary (few: packed segments do not overlap)."""
    start, length = segments[:, 0], segments[:, 1]
    first = np.searchsorted(shard_starts, start, side="right") - 1
    last = np.searchsorted(shard_starts, start + length - 1, side="right") - 1
    crossing = np.flatnonzero(first != last)
    if not crossing.size:
        return segments, seg_sample
    pieces, samples = [], []
    prev = 0
    for c in crossing.tolist():
        pieces.append(segments[prev:c])
        samples.append(seg_sample[prev:c])
        s, n = int(start[c]), int(length[c])
        cuts = [s, *shard_starts[(shard_starts > s) & (shard_starts < s + n)].tolist(), s + n]
        pieces.append(np.array([[a, b - a] for a, b in zip(cuts[:-1], cuts[1:], strict=True)], np.int64))
        samples.append(np.full(len(cuts) - 1, seg_sample[c]))
        prev = c + 1
    pieces.append(segments[prev:])
    samples.append(seg_sample[prev:])
    return np.concatenate(pieces), np.concatenate(samples)


def whole_share_fixed_windows(starts: np.ndarray, lengths: np.ndarray, block_size: int) -> float:
    """Share of documents (start, length) lying inside one sample of the old fixed layout: sample i was tokens
    [i * block_size, i * block_size + block_size + 1). A document is inside if all its tokens but the EOT are."""
    if not len(starts):
        return float("nan")
    end = starts + np.maximum(lengths - 1, 1)  # exclusive end without the EOT
    i = starts // block_size
    return float(np.mean(end <= i * block_size + block_size + 1))


def whole_in_packing(starts: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Per document (start, length): whether one sample holds all its tokens but the EOT, in order.

    Brute force over the index: consecutive segments of one sample that continue each other in the stream are
    joined, then each document must lie inside one joined run."""
    if not len(segments):
        return np.zeros(len(starts), bool)
    sample_of_seg = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    seg_start, seg_len = segments[:, 0], segments[:, 1]
    joins = np.ones(seg_start.size, bool)
    if seg_start.size > 1:
        joins[1:] = (sample_of_seg[1:] != sample_of_seg[:-1]) | (seg_start[1:] != seg_start[:-1] + seg_len[:-1])
    run_id = np.cumsum(joins) - 1
    run_start = seg_start[joins]
    run_end = np.bincount(run_id, weights=seg_len).astype(np.int64) + run_start
    order = np.argsort(run_start, kind="stable")
    rs, re = run_start[order], run_end[order]
    need_end = starts + np.maximum(lengths - 1, 1)
    k = np.searchsorted(rs, starts, side="right") - 1
    ok = k >= 0
    kk = np.clip(k, 0, None)
    return ok & (rs[kk] <= starts) & (need_end <= re[kk])
