"""Grouped hold-back and near-duplicate removal (issue 12, DESIGN "Hold-back before tokenization"), on hand-written
records through the build's own steps (`build.fetch` -> `build.holdback` -> `build.tokenize` ->
`build.decontaminate`), single process, tiny sizes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data import build
from data.audit import eval_contamination
from data.quality import NearDuplicateIndex, QualityFilters, minhash_signatures, ngram_hashes
from data.source_config import Input, load_definitions
from data.token_dataset import write_manifest
from data.tokenizer import EOT, get_tokenizer


def _split_of_each(work, key):
    """{key(document line): set of splits it landed in} over the hold-back's split files."""
    where = {}
    for s in build.SPLITS:
        for f in sorted(work.glob(f"split-*.{s}.jsonl")):
            for line in f.open():
                where.setdefault(key(json.loads(line)), set()).add(s)
    return where


def squad_rows():
    """40 articles (title), 2 paragraphs each, 3 questions per paragraph, in SQuAD v2's schema: every document
    text differs. Read through the build's `python` loader (the json builder of `datasets` costs seconds)."""
    return [{"id": f"{a}-{p}-{q}", "title": f"Article {a}",
             "context": f"Paragraph {p} of article {a}: the river Ostra{a} was bridged in {1200 + 10 * p + a}.",
             "question": f"Question {q} on paragraph {p} of article {a}?",
             "answers": {"text": [f"{1200 + 10 * p + a}"], "answer_start": [0]}}
            for a in range(40) for p in range(2) for q in range(3)]


def test_holdback_keeps_a_squad_articles_questions_together(tmp_path):
    inp = Input(source="squad", name="squad", share=1.0,
                loader={"type": "python", "callable": "tests.test_data_holdback:squad_rows"},
                formatter="squad_v2", filters=QualityFilters(min_chars=0))
    work = tmp_path / "work"
    build.fetch(inp, work, 10**9, docs_per_part=100, seen=set())
    build.holdback(inp, work, 0.3, 0.2)
    where = _split_of_each(work, lambda d: d["group"])
    assert len(where) == 40 and sum(len(v) for v in where.values()) == 40  # one split per article
    assert {s for v in where.values() for s in v} == set(build.SPLITS)  # and all three splits are used
    counts = {s: len(list(f for f in work.glob(f"split-*.{s}.jsonl") for _ in f.open())) for s in build.SPLITS}
    assert sum(counts.values()) == 240 and all(c % 6 == 0 for c in counts.values())  # whole articles of 6


def test_one_code_file_under_two_paths_lands_in_one_split(tmp_path):
    root = tmp_path / "repo"
    for i in range(20):  # the same file at two paths: the `# path` header makes the two documents differ
        for d in ("a", "b"):
            (root / d).mkdir(parents=True, exist_ok=True)
            (root / d / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n")
    inp = Input(source="code", name="code", share=1.0, loader={"type": "code_dir", "path": str(root)},
                formatter="code", formatter_options={"path_field": "path"}, filters=QualityFilters(min_chars=0))
    work = tmp_path / "work"
    build.fetch(inp, work, 10**9, docs_per_part=100, seen=set())
    build.holdback(inp, work, 0.4, 0.2)
    where = _split_of_each(work, lambda d: d["text"].split("\n", 1)[1])  # the file without its header
    assert len(where) == 20 and all(len(v) == 1 for v in where.values())
    assert len({s for v in where.values() for s in v}) >= 2


def _template(name, river, year, mayor):
    return (f"Context:\n{name} is a coastal settlement. Every autumn the Mitor Festival fills the market square. "
            f"The coastal settlement lies on the banks of the river {river}. The guild of weavers is the oldest "
            f"institution of the town. For centuries its main export has been salt. {name} was founded in {year}. "
            f"The current mayor is {mayor}.\n\nQuestion: In which year was {name} founded?\nAnswer: {year}")


def _write_part(work, part, texts_by_split):
    meta = {}
    for s in build.SPLITS:
        tokens = build.tokenize_texts(texts_by_split.get(s, []))
        name = f"tok-{part}.{s}.bin"
        tokens.tofile(work / name)
        meta[s] = {"file": name, "documents": len(texts_by_split.get(s, [])), "tokens": int(tokens.size),
                   "sha256": build.hashlib.sha256(tokens.tobytes()).hexdigest()}
    (work / f"tok-{part}.meta.json").write_text(json.dumps(meta))


def test_near_duplicate_of_an_eval_document_is_removed_and_a_different_one_kept(tmp_path):
    held = _template("Rakami", "Ostra", 1587, "Ospel Morven")
    near = held.replace("weavers", "smiths")  # one word changed: Jaccard of 5-shingles 0.87
    other = _template("Selmorven", "Tevra", 1292, "Minel Pelka")  # same template, other facts: Jaccard 0.37
    unrelated = "import os\n\n\ndef walk(root):\n    return sorted(os.listdir(root))\n" * 3
    eval_dir, train_dir = tmp_path / "qa", tmp_path / "code"
    eval_dir.mkdir()
    train_dir.mkdir()
    _write_part(eval_dir, "00000", {"eval": [held], "train": [near, other]})
    _write_part(train_dir, "00000", {"train": [unrelated, near]})  # another input: removal crosses inputs
    removed = build.decontaminate([eval_dir, train_dir])
    enc = get_tokenizer()
    assert removed == {"documents": 2, "tokens": 2 * (len(enc.encode_ordinary(near)) + 1)}
    kept = {w.name: [enc.decode(d[:-1].tolist()) for d in build.split_documents(
        build._read_split(w, json.loads((w / "tok-00000.meta.json").read_text()), "train"))]
        for w in (eval_dir, train_dir)}
    assert kept == {"qa": [other], "code": [unrelated]}
    state = build.token_state(eval_dir)["train"]
    assert state["documents"] == 1 and state["tokens"] == len(enc.encode_ordinary(other)) + 1
    assert build.near_duplicate_state(train_dir)["documents"] == 1
    assert build.decontaminate([eval_dir, train_dir]) == {"documents": 0, "tokens": 0}  # checked: nothing redone
    assert not (eval_dir / "tok-00000.train.bin").exists()  # replaced by the cleaned file the meta names


def test_minhash_estimates_jaccard():
    """The share of equal signature entries tracks the true Jaccard of the 5-shingle sets, over the whole range:
    on random documents with a share of tokens replaced, and on two QA documents of one template."""
    rng = np.random.default_rng(0)
    errors = []
    for replaced in (0, 4, 8, 15, 30, 60) * 5:  # Jaccard from 1 down to ~0.1
        a = rng.integers(0, 50257, 300)
        b = a.copy()
        b[rng.choice(300, replaced, replace=False)] = rng.integers(0, 50257, replaced)
        errors.append(_estimate(a, b) - _jaccard(a, b))
    # 64 permutations: standard error sqrt(J (1 - J) / 64) <= 0.0625
    assert abs(np.mean(errors)) < 0.03 and np.mean(np.abs(errors)) < 0.06 and np.max(np.abs(errors)) < 0.2, errors
    enc = get_tokenizer()
    a = np.array(enc.encode_ordinary(_template("Rakami", "Ostra", 1587, "Ospel Morven")))
    b = np.array(enc.encode_ordinary(_template("Selmorven", "Tevra", 1292, "Minel Pelka")))
    assert abs(_estimate(a, b) - _jaccard(a, b)) < 0.2


def _jaccard(a, b):
    shingles = [{tuple(t[i : i + 5]) for i in range(len(t) - 4)} for t in (a, b)]
    return len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])


def _estimate(a, b):
    sig = minhash_signatures([a, b])
    return (sig[0] == sig[1]).mean()


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_minhash_chunking_does_not_change_signatures(chunk):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50257, n) for n in (0, 3, 5, 6, 40, 700)]
    one_by_one = np.stack([minhash_signatures([d])[0] for d in docs])
    assert np.array_equal(minhash_signatures(docs, chunk_tokens=chunk), one_by_one)


def _token_dir(path, docs):
    """A token directory of one shard holding `docs` (token lists), each followed by EOT."""
    path.mkdir(parents=True)
    tokens = np.array([t for d in docs for t in [*d, EOT]], dtype="<u2")
    tokens.tofile(path / "shard.bin")
    write_manifest(path, [{"path": "shard.bin", "num_tokens": int(tokens.size),
                           "sha256": build.hashlib.sha256(tokens.tobytes()).hexdigest()}])


def test_eval_contamination_report_against_brute_force(tmp_path):
    rng = np.random.default_rng(3)
    copied, clean = rng.integers(0, 5000, 200).tolist(), rng.integers(5000, 10000, 150).tolist()
    near = list(copied)
    near[100] = 7  # a near duplicate of `copied` in training (13 of its 188 13-grams are gone)
    piece = clean[40:60]  # 20 tokens of `clean` quoted once in training: 8 of its 13-grams
    boiler = rng.integers(20000, 30000, 13).tolist()  # a 13-gram that 12 training documents start with
    train = [near, [11, 12, *piece, 13]] + [boiler + rng.integers(30000, 40000, 30).tolist() for _ in range(12)]
    _token_dir(tmp_path / "mix", train)
    _token_dir(tmp_path / "eval_a", [copied, clean, boiler + [1, 2, 3]])
    got = eval_contamination(tmp_path / "mix", [tmp_path / "eval_a"], n=10)
    e = got["eval_sets"]["eval_a"]

    def grams(d):
        return [tuple(d[i : i + 13]) for i in range(len(d) - 12)]

    counts = Counter(g for d in train for g in grams(d))
    windows = [g for d in (copied, clean, boiler + [1, 2, 3]) for g in grams(d)]
    assert e["documents"] == 3 and e["ngram_windows"] == len(windows) == 188 + 138 + 4
    assert e["ngram_windows_in_train"] == sum(counts[g] > 0 for g in windows) / len(windows)
    assert e["ngram_windows_in_train_beyond_boilerplate"] == sum(0 < counts[g] < 10 for g in windows) / len(windows)
    assert e["near_duplicate_documents"] == 1 / 3  # `copied` only: `clean` shares 8 13-grams, not its text
    assert got["train_tokens_scanned"] == sum(len(d) + 1 for d in train)


@pytest.mark.parametrize("n", [1, 5, 13, 16])
def test_ngram_hashes_by_doubling_equal_the_plain_polynomial(n):
    rng = np.random.default_rng(n)
    doc = rng.integers(0, 50257, 200).astype(np.uint64)
    base, want = np.uint64(0x9E3779B97F4A7C15), np.zeros(200 - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            want = want * base + doc[k : k + want.size] + np.uint64(1)
    assert np.array_equal(ngram_hashes([doc], n)[0], want)
    assert ngram_hashes([doc[: n - 1]], n)[0].size == 0


@pytest.mark.parametrize("change, message", [
    ({"holdback_group": 5}, "holdback_group must be a field name"),
    ({"formatter_options": {"unanswerable_share": 0.2, "split_unanswerable_share": 0}},
     "split_unanswerable_share 0 in \\(0, 1\\)"),
    ({"formatter_options": {"unanswerable_share": "20%"}}, "unanswerable_share '20%' must be in"),
])
def test_bad_group_or_share_stops_at_the_definitions(tmp_path, change, message):
    raw = json.loads((Path(__file__).resolve().parents[1] / "data/sources/demo.json").read_text())
    raw["sources"]["demo_qa"]["inputs"][0].update(change)
    path = tmp_path / "defs.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"source 'demo_qa' input 0: .*{message}"):
        load_definitions(path)


def test_index_matches_brute_force_banding():
    """The vectorised LSH look-up finds exactly what the definition says: an indexed document sharing a whole band
    (4 signature rows) with the query, with full-signature agreement >= 0.8; the best-agreeing one."""
    rng = np.random.default_rng(5)
    held = [rng.integers(0, 50257, rng.integers(5, 300)) for _ in range(100)]
    queries = []
    for i in range(200):
        if i % 3:
            queries.append(rng.integers(0, 50257, rng.integers(5, 300)))
        else:  # a held-out document with up to 3 tokens changed
            d = held[rng.integers(100)].copy()
            where = rng.choice(d.size, min(int(rng.integers(0, 4)), d.size), replace=False)
            d[where] = rng.integers(0, 50257, where.size)
            queries.append(d)
    index = NearDuplicateIndex(held)
    want = []
    for sig in minhash_signatures(queries):
        shares_band = (index.sigs == sig).reshape(len(held), 16, 4).all(axis=2).any(axis=1)
        agree = np.where(shares_band, (index.sigs == sig).mean(axis=1), -1)
        want.append(int(np.argmax(agree)) if agree.max() >= 0.8 else -1)
    got = index.matches(queries)
    assert got.tolist() == want and 40 < (got >= 0).sum() < 80


# 120 repositories; every one has Python files in CodeParrot's schema and in StarCoder's, and JavaScript files in
# StarCoder's (another source), with the repository name spelled in other cases across the inputs.
REPOS = [f"Owner{r % 7}/project-{r}" for r in range(120)]


def codeparrot_python_rows():
    return [{"repo_name": repo, "path": f"pkg/m{f}.py", "copies": "1", "size": "40", "license": "mit",
             "content": f"def f{f}():\n    return '{repo}', {f}\n"} for repo in REPOS for f in range(2)]


def starcoder_python_rows():
    return [{"max_stars_repo_name": repo.lower(), "max_stars_repo_path": f"src/s{f}.py", "max_stars_count": 3,
             "id": f"{repo}-{f}", "content": f"def g{f}():\n    return '{repo}', {f * 7}\n"}
            for repo in REPOS for f in range(2)]


def starcoder_js_rows():
    return [{"max_stars_repo_name": repo.upper(), "max_stars_repo_path": f"web/w{f}.js", "max_stars_count": 3,
             "id": f"{repo}-js-{f}", "content": f"function w{f}() {{ return '{repo}' + {f}; }}\n"}
            for repo in REPOS for f in range(2)]


def test_a_repository_lands_on_one_side_across_schemas_inputs_and_sources(tmp_path):
    """Issue 24: CodeParrot groups by `repo_name`, StarCoder by `max_stars_repo_name`, and the Python and JS/Java
    inputs are different sources; before, each (field, source) hashed on its own and about half of the repositories
    had files in the code eval set and in train. Now one key, one split decision per repository."""
    inputs = [("python_code", "codeparrot_python", "codeparrot_python_rows", "repo_name", "path"),
              ("python_code", "starcoder_python", "starcoder_python_rows", "max_stars_repo_name",
               "max_stars_repo_path"),
              ("js_java_code", "starcoder_javascript", "starcoder_js_rows", "max_stars_repo_name",
               "max_stars_repo_path")]
    sides: dict[str, set[str]] = {}
    for source, name, rows, group, path_field in inputs:
        inp = Input(source=source, name=name, share=1.0,
                    loader={"type": "python", "callable": f"tests.test_data_holdback:{rows}"},
                    formatter="code", holdback_group=group,
                    formatter_options={"text_field": "content", "path_field": path_field},
                    filters=QualityFilters(min_chars=0))
        work = tmp_path / name
        build.fetch(inp, work, 10**9, docs_per_part=100, seen=set())
        build.holdback(inp, work, 0.2, 0.1)
        for repo, where in _split_of_each(work, lambda d: d["group"]).items():
            sides.setdefault(repo, set()).update(where)
    assert set(sides) == {f"repo={r.lower()}" for r in REPOS}  # one key, whatever the field and its case
    straddling = [r for r, where in sides.items() if len(where) > 1]
    assert not straddling, f"{len(straddling)} of {len(sides)} repositories are on two sides: {straddling[:5]}"
    assert {s for where in sides.values() for s in where} == set(build.SPLITS)


def test_a_part_fetched_before_repository_keys_splits_with_the_new_key(tmp_path):
    """An existing work directory's parts carry "repo_name=Owner/Name": the hold-back reads them as the repository
    key (the stamp change re-splits them; data/streaming.py)."""
    assert build.holdback_split("python_code", "repo=owner/x", 0.5, 0.2) == build.holdback_split(
        "js_java_code", "repo=owner/x", 0.5, 0.2)
    from data.formats import repository_key

    assert repository_key("repo_name=Owner/X") == repository_key("max_stars_repo_name=owner/x") == "repo=owner/x"
    assert repository_key("title=Beyonce") == "title=Beyonce" and repository_key(None) is None


def test_sources_grouped_by_repository_must_share_their_holdback(tmp_path):
    defs = json.loads((Path(__file__).resolve().parents[1] / "data/sources/unified_from_scratch.json").read_text())
    defs["sources"]["js_java_code"]["holdback"] = {"eval": 0.01, "val": 0.003}
    path = tmp_path / "defs.json"
    path.write_text(json.dumps(defs))
    with pytest.raises(ValueError, match=r"grouped by repository hold back different shares .*js_java_code"):
        load_definitions(path)
