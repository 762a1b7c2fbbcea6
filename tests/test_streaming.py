"""Streaming (data/shuffle.py, data/input_loaders.py, data/stamps.py, data/fetch_rounds.py, data/cross_dedup.py) on
local data in a real schema: `datasets`' json builder with streaming=True gives a real IterableDataset, the same
class and code path as a hub stream. Shuffle deterministic and not storage order; a resumed fetch continues from the
library's saved state (exactly the uninterrupted stream when unshuffled; with a shuffle, deterministic and without
repeats, as the library documents); stamps that remove what a config change makes stale; cross-input deduplication
that does not depend on the worker count; fetched text removed once split."""

import dataclasses
import json
from pathlib import Path

import pytest

from data import build, cross_dedup, fetch_rounds, stamps
from data.input_loaders import iter_records
from data.quality import QualityFilters
from data.source_config import Input, Source

N = 120


def _corpus(tmp_path: Path, n: int = N, files: int = 3, prefix: str = "doc") -> Path:
    """`files` JSON Lines files in SQuAD-free plain schema (id, text), records in id order across files."""
    root = tmp_path / f"corpus-{prefix}"
    root.mkdir()
    per = -(-n // files)
    for f in range(files):
        rows = [{"id": i, "text": f"{prefix} {i:04d}: " + "a sentence of ordinary prose. " * 3}
                for i in range(f * per, min(n, (f + 1) * per))]
        (root / f"part-{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _input(root: Path, shuffle=None, name: str = "corpus", **options) -> Input:
    loader = {"type": "jsonl", "path": str(root)}
    if shuffle is not None:
        loader["shuffle"] = shuffle
    return Input(source=name, name=name, share=1.0, loader=loader, formatter="text", formatter_options=options,
                 filters=QualityFilters())


def _ids(work: Path) -> list[int]:
    return [int(json.loads(line)["text"].split()[1].rstrip(":")) for p in sorted(work.glob("fetch-*.jsonl"))
            for line in p.open()]


SHUFFLE = {"seed": 7, "buffer_size": 16}


def test_shuffle_is_deterministic_and_not_storage_order(tmp_path):
    root = _corpus(tmp_path)
    ids = [[r["id"] for r in iter_records(_input(root, s).loader)]
           for s in (SHUFFLE, SHUFFLE, {"seed": 8, "buffer_size": 16}, None)]
    assert ids[0] == ids[1] and sorted(ids[0]) == list(range(N))  # same seed, same stream, every record once
    assert ids[3] == list(range(N))  # no shuffle: storage order
    assert ids[0] != ids[3] and ids[0] != ids[2]
    # not the first records of the first file: the first 16 come from more than one file (shards shuffled and
    # interleaved) and are not a prefix of storage order
    assert len({i // 40 for i in ids[0][:16]}) > 1 and set(ids[0][:16]) != set(range(16))


def _fetch(inp: Input, work: Path, chars: int) -> dict:
    return build.fetch(inp, work, chars, docs_per_part=10, seen=None)


def test_resume_from_the_saved_state_unshuffled_is_the_uninterrupted_stream(tmp_path):
    root = _corpus(tmp_path)
    inp = _input(root)
    _fetch(inp, tmp_path / "full", 10**9)
    _fetch(inp, tmp_path / "cut", 2500)  # stops after a few parts: the "interruption"
    parts = sorted((tmp_path / "cut").glob("fetch-*.meta.json"))
    assert 1 < len(parts) < 12
    state = json.loads(parts[-1].read_text())["stream_state"]
    assert state["examples_iterable"]["examples_iterable"]["type"] == "ArrowExamplesIterable"  # the library's own
    _fetch(inp, tmp_path / "cut", 10**9)
    assert _ids(tmp_path / "cut") == _ids(tmp_path / "full") == list(range(N))
    # the resume follows the saved state, not a count of records to read past: move the state on by 3 records
    # (3 one-record chunks past its checkpoint, datasets' RebatchedArrowExamplesIterable) and they are not fetched
    for p in sorted((tmp_path / "cut").glob("fetch-*"))[3:]:
        p.unlink()  # keep part 0 only (its .hashes.npy, .jsonl, .meta.json)
    meta_path = tmp_path / "cut" / "fetch-00000.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["stream_state"]["examples_iterable"]["num_chunks_since_previous_state"] += 3
    meta_path.write_text(json.dumps(meta))
    _fetch(inp, tmp_path / "cut", 10**9)
    assert _ids(tmp_path / "cut") == list(range(10)) + list(range(13, N))


def test_resume_of_a_shuffled_stream_is_deterministic_without_repeats(tmp_path):
    root = _corpus(tmp_path)
    inp = _input(root, SHUFFLE)
    _fetch(inp, tmp_path / "full", 10**9)
    full = _ids(tmp_path / "full")
    runs = []
    for k in range(2):
        work = tmp_path / f"cut{k}"
        _fetch(inp, work, 2500)
        _fetch(inp, work, 10**9)
        runs.append(_ids(work))
    assert runs[0] == runs[1]  # the same saved state resumes to the same records
    # the lineage says the stream was resumed (and so may miss a buffer of records)
    assert build.fetch_state(tmp_path / "cut0")["resumes"] == 1 and build.fetch_state(tmp_path / "full")["resumes"] == 0
    assert runs[0][:30] == full[:30]  # identical up to the interruption (3 parts of 10)
    assert len(set(runs[0])) == len(runs[0])  # nothing fetched twice (a repeat is dropped by deduplication)
    # what the library drops on resume: records that sat in the shuffle buffer, at most its size
    assert 0 < N - len(runs[0]) <= SHUFFLE["buffer_size"]


def _source(inp: Input, eval_share=0.1, val_share=0.1) -> Source:
    return Source(name=inp.source, category="general", inputs=[inp], eval_share=eval_share, val_share=val_share)


def test_changed_config_removes_what_it_makes_stale(tmp_path):
    root = _corpus(tmp_path)
    inp = _input(root, SHUFFLE)
    src = _source(inp)
    work = tmp_path / "w"
    assert stamps.refresh_stamp(inp, src, work) == []
    _fetch(inp, work, 10**9)
    build.holdback(inp, work, src.eval_share, src.val_share)
    build.tokenize([work])
    counts = {p: len(list(work.glob(f"{p}-*"))) for p in ("fetch", "split", "tok")}
    assert stamps.refresh_stamp(inp, src, work) == []  # unchanged: nothing removed
    assert {p: len(list(work.glob(f"{p}-*"))) for p in counts} == counts
    lineage = build.input_lineage(inp, work, type("D", (), {"sources": {inp.source: src}})())
    assert lineage["inputs"][0]["stamp"] == {k: v["hash"] for k, v in stamps.stamps(inp, src).items()}

    lines = stamps.refresh_stamp(inp, _source(inp, val_share=0.2), work)  # hold-back share: split + tok stale
    assert [ln.split(":")[1].strip().split(" config")[0] for ln in lines] == ["holdback", "tokenize"]
    assert "changed: val" in lines[0] and list(work.glob("fetch-*")) and not list(work.glob("split-*"))
    assert not list(work.glob("tok-*"))

    changed = dataclasses.replace(inp, formatter_options={"min_chars": 10})  # formatter option: everything stale
    lines = stamps.refresh_stamp(changed, src, work)
    assert lines[0].startswith("input 'corpus': fetch config changed: formatter_options.min_chars; removed its")
    assert not list(work.glob("fetch-*"))
    reseeded = dataclasses.replace(changed, loader={**changed.loader, "shuffle": {"seed": 9, "buffer_size": 16}})
    _fetch(changed, work, 10**9)
    assert "changed: loader.shuffle.seed, shuffle.seed" in stamps.refresh_stamp(reseeded, src, work)[0]
    _fetch(reseeded, work, 10**9)
    regrouped = dataclasses.replace(reseeded, holdback_group="id")  # the parts carry each document's group
    assert "changed: holdback_group" in stamps.refresh_stamp(regrouped, src, work)[0]


def test_fetched_text_removed_once_split_and_a_later_holdback_change_refetches(tmp_path):
    root = _corpus(tmp_path)
    inp = _input(root)
    src = _source(inp)
    work = tmp_path / "w"
    stamps.refresh_stamp(inp, src, work)
    _fetch(inp, work, 10**9)
    text_bytes = sum(p.stat().st_size for p in work.glob("fetch-*.jsonl"))
    build.holdback(inp, work, src.eval_share, src.val_share)
    assert build.remove_fetched_text(work) == text_bytes and not list(work.glob("fetch-*.jsonl"))
    metas = list(work.glob("fetch-*.meta.json"))
    assert build.fetch_state(work)["documents"] == N and len(metas) == 13  # 12 parts of 10 + an empty last one
    lines = stamps.refresh_stamp(inp, _source(inp, eval_share=0.2), work)
    assert "fetch config unchanged, but its text was removed once split" in lines[0]
    assert not list(work.glob("fetch-*")) and not list(work.glob("split-*"))


@pytest.mark.parametrize("workers", [1, 2])
def test_dedup_across_inputs_in_definitions_order(tmp_path, workers):
    # plain-text inputs (one document per file): a worker process starts without importing `datasets`
    texts = {name: [f"{name} {i:04d}: " + "a sentence of ordinary prose. " * 3 for i in range(12)] for name in "ab"}
    texts["b"] += texts["a"][3:8]  # b holds 5 of a's documents: removed from b, later in definitions order
    inputs = []
    for name, docs in texts.items():
        root = tmp_path / name
        root.mkdir()
        for i, doc in enumerate(docs):
            (root / f"{i:03d}.txt").write_text(doc)
        inputs.append(Input(source=name, name=name, share=1.0, loader={"type": "text", "path": str(root)},
                            formatter="text", filters=QualityFilters()))
    a, b = inputs
    jobs = [(b, str(tmp_path / "w" / "b"), 10**9, 4), (a, str(tmp_path / "w" / "a"), 10**9, 4)]  # b first
    assert sorted(n for n, _ in fetch_rounds.fetch_inputs(jobs, workers)) == ["a", "b"]
    assert cross_dedup.dedup_across([a, b], tmp_path / "w") == {"b": 5}
    assert _ids(tmp_path / "w" / "a") == list(range(12)) and _ids(tmp_path / "w" / "b") == list(range(12))
    fs = build.fetch_state(tmp_path / "w" / "b")
    assert fs["documents"] == 12 and fs["filtered"]["duplicate"]["documents"] == 5
    assert cross_dedup.dedup_across([a, b], tmp_path / "w") == {}  # checked parts are not touched again


def test_a_formatter_version_refetches_that_input_alone(tmp_path, monkeypatch):
    """FORMATTER_VERSIONS (data/formats.py): a formatter whose output changed makes its inputs' fetch stale, and
    leaves every other input's stamp hash as it was (the key is absent at version 1)."""
    from data import formats

    root = _corpus(tmp_path)
    inp = _input(root)
    src = _source(inp)
    before = stamps.stamps(inp, src)
    work = tmp_path / "w"
    stamps.refresh_stamp(inp, src, work)
    _fetch(inp, work, 10**9)
    monkeypatch.setitem(formats.FORMATTER_VERSIONS, inp.formatter, 1)  # version 1: nothing changes
    assert stamps.stamps(inp, src) == before and stamps.refresh_stamp(inp, src, work) == []
    monkeypatch.setitem(formats.FORMATTER_VERSIONS, inp.formatter, 2)
    lines = stamps.refresh_stamp(inp, src, work)
    assert lines and "fetch config changed: formatter_version" in lines[0] and not list(work.glob("fetch-*"))
    assert formats.FORMATTER_VERSIONS["triviaqa_rc"] == 2  # grounding: short aliases in their own case


def test_repository_grouped_inputs_get_a_new_holdback_stamp_and_the_others_keep_theirs(tmp_path):
    """The cross-source repository key changes the split of code inputs grouped by a repository field only:
    their holdback (and so tokenize) stamp changes, which re-splits them in an existing work directory; every other
    input's stamps are what they were."""
    root = _corpus(tmp_path)
    plain = _input(root)
    grouped = dataclasses.replace(plain, holdback_group="repo_name")
    plain_cfg = stamps.stage_configs(plain, _source(plain))
    grouped_cfg = stamps.stage_configs(grouped, _source(grouped))
    assert "group_key" not in plain_cfg["holdback"]
    assert grouped_cfg["holdback"]["group_key"] == "repository, across sources"
    without = {k: v for k, v in grouped_cfg["holdback"].items() if k != "group_key"}
    assert stamps.stamp_hash(without) != stamps.stamp_hash(grouped_cfg["holdback"])  # a changed stamp: re-split
