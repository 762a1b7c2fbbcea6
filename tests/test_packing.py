"""Grounding-safe packing (data/packing.py): every document that fits in a sample is read whole, padding is masked
out of the loss, the token format version is checked, and the data order stays a pure function of the step."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from data.loader import read_micro_batch
from data.packing import METHOD_FIXED, document_bounds, pack
from data.sampler import StepSampler
from data.token_dataset import TokenDataset, add_packing, grounding_report, write_token_dir
from data.tokenizer import EOT


def _random_docs(rng, n, max_len):
    """Documents of random length, each a distinct first token (its id) then random ids, EOT-terminated."""
    docs = []
    for i in range(n):
        body = rng.integers(0, EOT, size=int(rng.integers(0, max_len)))
        docs.append(np.concatenate([[i], body, [EOT]]).astype(np.int64))
    return docs


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether `needle` occurs contiguously in `haystack` (both int64), by brute force."""
    n = len(needle)
    return any(np.array_equal(haystack[i : i + n], needle) for i in np.flatnonzero(haystack == needle[0]))


@pytest.mark.parametrize("block_size,max_len,shard_tokens", [(32, 40, 50), (64, 200, 97), (16, 8, 1000)])
def test_every_short_document_is_whole_inside_one_sample(tmp_path, block_size, max_len, shard_tokens):
    """Brute force over every sample: each document of at most block_size + 1 tokens occurs whole (EOT included)
    inside one sample; every in-document token but the first is a target exactly once (long documents too);
    padding only at a sample's end."""
    rng = np.random.default_rng(block_size)
    docs = _random_docs(rng, 150, max_len)
    d = write_token_dir(tmp_path / "ds", docs, shard_tokens=shard_tokens, pack_block_sizes=[block_size])
    ds = TokenDataset(d, verify="full")
    samples = [ds.sample(i, block_size) for i in range(ds.num_samples(block_size))]
    assert all(s.shape == (block_size + 1,) for s in samples)
    for s in samples:
        real = np.flatnonzero(s != -1)
        assert real.size >= 2 and real[-1] == real.size - 1, "padding must come after every real token"
    short = [doc for doc in docs if len(doc) <= block_size + 1]
    assert len(short) > 20 and (max_len < block_size or len(short) < len(docs))
    for doc in short:
        assert sum(_contains(s, doc) for s in samples) == 1, f"document {doc[0]} is not whole in exactly one sample"
    # Every in-document (input, target) pair is trained exactly once: long documents' chunks share one token, so
    # no chunk's first token is lost as a target, and no token is a target twice. A sample's pairs that start with
    # an EOT join two documents packed side by side; no in-document pair starts with one.
    def pairs(t):
        return Counter(zip(t[:-1].tolist(), t[1:].tolist(), strict=True))

    in_docs = sum((pairs(doc) for doc in docs), Counter())
    trained = Counter()
    for s in samples:
        trained.update({p: c for p, c in pairs(s[s != -1]).items() if p[0] != EOT})
    assert trained == in_docs
    assert any(len(doc) > block_size + 1 for doc in docs) == (max_len > block_size)
    # The library's own account agrees with the brute force, and padding stays small.
    rep = grounding_report(d, block_size, categories=("all",))
    # (The report asks for every token but the EOT: a document one token longer than a sample counts too.)
    assert rep["categories"]["all"]["whole_packed"] == pytest.approx(
        np.mean([len(doc) - 1 <= block_size + 1 for doc in docs if len(doc) > 1]))
    assert rep["padding_share"] < 0.1


def test_padding_targets_are_masked_and_add_nothing_to_the_loss(tmp_path):
    from launcher.evaluation import FixedEvalSet, eval_sums
    from model.config import ModelConfig
    from model.transformer import Transformer

    block_size = 24
    # Best-fit decreasing puts the 20-token document in sample 1 (5 left) and the 8-token one, which does not fit
    # there, alone in sample 0: 8 real tokens and 17 of padding.
    docs = [np.array([5, 6, 7, 8, 9, 10, 11, EOT]), np.arange(100, 119).tolist() + [EOT]]
    d = write_token_dir(tmp_path / "ds", docs, pack_block_sizes=[block_size])
    ds = TokenDataset(d)
    assert ds.num_samples(block_size) == 2
    x, y = read_micro_batch(ds, np.array([0, 1]), block_size)
    real = [8, 20]
    for row, n in enumerate(real):
        assert (y[row, n - 1 :] == -1).all() and (y[row, : n - 1] != -1).all()
        assert (x[row, n:] == EOT).all()  # padded inputs are a valid id (EOT), never -1
    np.testing.assert_array_equal(x[0, :8], docs[0])

    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_embd=32, n_head=2, n_layer=1, block_size=block_size, dropout=0.0,
                                    fused_kernels=False)).eval()
    with torch.no_grad():
        _, padded = model(x[:1], y[:1])
        _, unpadded = model(x[:1, :7], y[:1, :7])
        # The same real targets with 17 padded positions appended: the same training loss, to float rounding.
        assert float(padded) == pytest.approx(float(unpadded), rel=1e-6)
        _, other = model(x[1:, :19], y[1:, :19])
        # Evaluation: the token-weighted mean over both samples' real targets (7 + 19), padding left out.
        sums = eval_sums(model, [FixedEvalSet("s", ds, block_size, 2, 0, 0, 1)], 2, torch.device("cpu"))[0]
    total, count = sums.nats, sums.tokens
    assert count == 7 + 19
    assert float(total) / count == pytest.approx((7 * float(unpadded) + 19 * float(other)) / 26, rel=1e-6)


def test_format_version_and_missing_index_errors_say_what_to_do(tmp_path):
    d = write_token_dir(tmp_path / "ds", [np.arange(300) % 100], pack_block_sizes=[16])
    with pytest.raises(ValueError, match=r"no packing index for block_size 32 .*scripts/unified_build/pack_tokens\.py "
                                         r".* --block-size 32"):
        TokenDataset(d).num_samples(32)
    # A directory written before packing (format 1): refused, with the command that upgrades it in place.
    m = json.loads((d / "manifest.json").read_text())
    old = {k: v for k, v in m.items() if k != "packing"} | {"format_version": 1}
    (d / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"format version 1 .* `python scripts/unified_build/pack_tokens\.py .*"
                                          r" --block-size"):
        TokenDataset(d)
    add_packing(d, 16)
    assert TokenDataset(d).num_samples(16) == 19  # 18 chunks of 17 tokens every 16, the 12-token rest
    # A future version: refused, naming both versions.
    m = json.loads((d / "manifest.json").read_text()) | {"format_version": 3}
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="v3 .* needs 'uint16-tokens' v2"):
        TokenDataset(d)


def test_packing_is_deterministic_and_the_sample_order_a_function_of_the_step(tmp_path):
    rng = np.random.default_rng(3)
    docs = _random_docs(rng, 200, 60)
    a = write_token_dir(tmp_path / "a", docs, shard_tokens=500, pack_block_sizes=[32])
    b = write_token_dir(tmp_path / "b", docs, shard_tokens=500, pack_block_sizes=[32])
    ma, mb = (json.loads((p / "manifest.json").read_text())["packing"] for p in (a, b))
    assert ma["block_sizes"]["32"]["segments"] == mb["block_sizes"]["32"]["segments"]  # same sha256
    da, db = TokenDataset(a), TokenDataset(b)
    assert da.fingerprint == db.fingerprint
    before = (a / "manifest.json").stat().st_mtime_ns
    add_packing(a, 32)  # already indexed: nothing rewritten
    assert (a / "manifest.json").stat().st_mtime_ns == before
    # The same step reads the same samples in a fresh sampler (a resume), on 1 or 2 ranks.
    n = da.num_samples(32)
    s1 = StepSampler(n, 8, seed=5, fingerprint=da.fingerprint)
    s2 = StepSampler(n, 8, seed=5, fingerprint=db.fingerprint)
    for step in (0, 3, 40):
        ids = s1.sample_ids(step)
        np.testing.assert_array_equal(ids, s2.sample_ids(step))
        two = np.concatenate([s2.micro_batches(step, r, 2, 2)[j] for j in range(2) for r in range(2)])
        np.testing.assert_array_equal(two, ids)
        xa, _ = read_micro_batch(da, ids, 32)
        xb, _ = read_micro_batch(db, ids, 32)
        assert torch.equal(xa, xb)
    # Another layout is another sample identity: a checkpoint never resumes onto differently cut samples.
    c = write_token_dir(tmp_path / "c", docs, shard_tokens=500, pack_block_sizes=[32], pack_method=METHOD_FIXED)
    assert TokenDataset(c).fingerprint != da.fingerprint
    assert TokenDataset(c).stream_fingerprint == da.stream_fingerprint


def _stream_positions(ds: TokenDataset, index: int, block_size: int) -> np.ndarray:
    """The stream position of every token of sample `index` (-1 for padding), from its packing segments."""
    offsets, segments = ds._packing_index(block_size)
    pos = [np.arange(start, start + length) for start, length in segments[offsets[index] : offsets[index + 1]]]
    out = np.concatenate(pos) if pos else np.zeros(0, np.int64)
    return np.concatenate([out, np.full(block_size + 1 - out.size, -1)])


@pytest.mark.parametrize("document_targets, doubled", [(True, False), (False, True)], ids=["document", "causal"])
def test_every_in_document_target_is_trained_once_from_its_own_document(tmp_path, document_targets, doubled):
    """120 documents of 2-40 tokens at block 16, through the real writer, packing index and read_micro_batch: map
    every (input, target) pair the loss sees back to stream positions. With document targets, each in-document
    token but the first is a target exactly once, from its stream predecessor in the same document, and nothing
    else is a target; without them (model.attention "causal"), filler pieces make some targets twice, once from
    another document's EOT."""
    rng = np.random.default_rng(0)
    docs = [np.concatenate([rng.integers(0, EOT, size=int(rng.integers(1, 40))), [EOT]]) for _ in range(120)]
    block = 16
    d = write_token_dir(tmp_path / "ds", docs, shard_tokens=300, pack_block_sizes=[block])
    ds = TokenDataset(d)
    stream = np.concatenate(docs)
    doc_of = np.cumsum(stream == EOT) - (stream == EOT)  # the EOT belongs to the document it ends
    n = ds.num_samples(block)
    x, y = read_micro_batch(ds, np.arange(n), block, document_targets=document_targets)
    trained = Counter()
    foreign = 0
    for i in range(n):
        pos = _stream_positions(ds, i, block)
        for t in np.flatnonzero(y[i].numpy() != -1):
            src, dst = pos[t], pos[t + 1]
            assert stream[src] == x[i, t] and stream[dst] == y[i, t]
            trained[dst] += 1
            foreign += dst != src + 1 or doc_of[src] != doc_of[dst]
    expected = {p for p in range(1, stream.size) if doc_of[p - 1] == doc_of[p]}  # every token but a first
    assert set(trained) >= expected
    extra = sum(c - 1 for c in trained.values()) + len(set(trained) - expected)
    if doubled:
        assert foreign > 0 and extra > 0  # the double target document targets remove
    else:
        assert foreign == 0 and extra == 0 and set(trained) == expected
        assert sum(trained.values()) == len(expected) > 2000


def _joins(packed, stream: np.ndarray, doc_of: np.ndarray) -> int:
    """Adjacent tokens of a sample that are neither the stream's next token of the same document nor after an EOT."""
    joins = 0
    for i in range(packed.offsets.size - 1):
        segs = packed.segments[packed.offsets[i] : packed.offsets[i + 1]]
        pos = np.concatenate([np.arange(start, start + n) for start, n in segs])
        joins += sum(not ((b == a + 1 and doc_of[a] == doc_of[b]) or stream[a] == EOT)
                     for a, b in zip(pos[:-1], pos[1:], strict=True))
    return joins


@pytest.mark.parametrize("block_size", [16, 24])
def test_a_document_without_an_eot_is_never_followed_by_another_in_a_sample(tmp_path, block_size):
    """Three files end mid-document (a mix cut them; the last is the stream's end): such a document gets samples of
    its own, so the document mask, which reads boundaries from EOTs, never lets a later document read it."""
    rng = np.random.default_rng(1)
    docs = [np.concatenate([rng.integers(0, EOT, size=int(rng.integers(1, 30))), [EOT]]) for _ in range(80)]
    for cut in (10, 40, 79):
        docs[cut] = docs[cut][: -1 - int(rng.integers(0, 5))]
    stream = np.concatenate(docs)
    file_starts = np.cumsum([0] + [sum(len(doc) for doc in docs[a:b]) for a, b in ((0, 11), (11, 41))])
    bounds = document_bounds(np.flatnonzero(stream == EOT), stream.size, file_starts)
    closed = stream[bounds[1:] - 1] == EOT
    doc_of = np.searchsorted(bounds, np.arange(stream.size), side="right") - 1
    packed = pack(bounds, block_size, ends_with_eot=closed)
    assert packed.stats["open_ended_documents"] == 3
    assert _joins(packed, stream, doc_of) == 0
    assert _joins(pack(bounds, block_size), stream, doc_of) > 0  # the packing before: an open document joined
    # A token directory finds which documents end with EOT itself: written as one file, the two cut documents run
    # on into the next, and only the stream's end is open.
    d = write_token_dir(tmp_path / "ds", docs, pack_block_sizes=[block_size])
    entry = TokenDataset(d).packing["block_sizes"][str(block_size)]
    assert entry["open_ended_documents"] == 1 and entry["documents"] == len(docs) - 2
