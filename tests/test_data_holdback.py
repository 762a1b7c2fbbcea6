"""Grouped hold-back and near-duplicate removal (DESIGN "Hold-back before tokenization"), on hand-written
records through the build's own steps (`build.fetch` -> `build.holdback` -> `build.tokenize` ->
`build.decontaminate`), single process, tiny sizes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data import build
from data.audit import eval_contamination
from data.quality import NearDuplicateIndex, QualityFilters, estimate_cut, minhash_signatures, ngram_hashes
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
    assert removed[build.NEAR_DUPLICATE_REASON] == {"documents": 2, "tokens": 2 * (len(enc.encode_ordinary(near)) + 1)}
    kept = {w.name: [enc.decode(d[:-1].tolist()) for d in build.split_documents(
        build.read_split(w, json.loads((w / "tok-00000.meta.json").read_text()), "train"))]
        for w in (eval_dir, train_dir)}
    # `other` shares the template's sentences with the eval document (runs of up to ~30 tokens between the facts):
    # template boilerplate, not a copied passage, so containment keeps it too
    assert kept == {"qa": [other], "code": [unrelated]}
    assert removed[build.CONTAINMENT_REASON] == {"documents": 0, "documents_cut": 0, "tokens": 0}
    state = build.token_state(eval_dir)["train"]
    assert state["documents"] == 1 and state["tokens"] == len(enc.encode_ordinary(other)) + 1
    assert build.decontamination_state(train_dir)[build.NEAR_DUPLICATE_REASON]["documents"] == 1
    again = build.decontaminate([eval_dir, train_dir])  # checked: nothing redone
    assert all(not any(v.values()) for v in again.values())
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
    (4 signature rows) with the query, with full-signature agreement >= the cut (0.70); the best-agreeing one."""
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
        want.append(int(np.argmax(agree)) if agree.max() >= index.cut else -1)
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
    """CodeParrot groups by `repo_name`, StarCoder by `max_stars_repo_name`, and the Python and JS/Java
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
    key (the stamp change re-splits them; data/stamps.py)."""
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


def _words(rng, n):
    """`n` random made-up words: text whose 13-grams no other call shares."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return " ".join("".join(rng.choice(letters, int(rng.integers(3, 9)))) for _ in range(n))


def _train_texts(work):
    enc = get_tokenizer()
    out = []
    for m in sorted(work.glob("tok-*.meta.json")):
        out += [enc.decode(d[:-1].tolist()) for d in build.split_documents(
            build.read_split(work, json.loads(m.read_text()), "train"))]
    return out


def test_containment_cuts_held_out_passages_out_of_longer_training_documents(tmp_path):
    """An eval passage inside a much longer training article (Jaccard far below the near-duplicate cut) is cut out
    with its margin, the article's other text kept as pieces; a retrieval input's document holding it is removed
    whole; a boilerplate sentence that 12 training documents share with the eval passage is left; afterwards no
    held-out 13-gram beyond boilerplate is in training."""
    rng = np.random.default_rng(0)
    boiler = "This article is licensed under the terms of the Creative Commons Attribution Share Alike licence."
    passage = _words(rng, 120)
    held = f"{passage} {boiler}"  # (after the passage: no 13-gram joins the boilerplate to the text after it)
    before, after = _words(rng, 600), _words(rng, 600)
    article = f"{before} {passage} {after}"  # the eval passage inside a long training article
    quoted = " ".join(passage.split()[40:80])  # a third of the passage, inside a longer QA context
    qa = f"Context:\n{_words(rng, 150)} {quoted} {_words(rng, 150)}\n\nQuestion: What comes first?\nAnswer: {quoted}"
    boiler_docs = [f"{boiler} {_words(rng, 80)}" for _ in range(12)]
    clean = _words(rng, 300)
    wiki, web, squad = tmp_path / "wiki", tmp_path / "web", tmp_path / "squad"
    for d in (wiki, web, squad):
        d.mkdir()
    _write_part(wiki, "00000", {"eval": [held]})
    _write_part(web, "00000", {"train": [article, clean, *boiler_docs]})
    _write_part(squad, "00000", {"train": [qa, clean.upper()]})
    removed = build.decontaminate([wiki, web, squad], whole_document_inputs=frozenset({"squad"}))
    enc = get_tokenizer()
    got = removed[build.CONTAINMENT_REASON]
    assert got["documents"] == 1 and got["documents_cut"] == 1  # the QA document whole; the article cut
    assert removed[build.NEAR_DUPLICATE_REASON]["documents"] == 0  # Jaccard ~0.1: MinHash alone kept both
    web_docs, squad_docs = _train_texts(web), _train_texts(squad)
    assert squad_docs == [clean.upper()]
    assert web_docs[2:] == [clean, *boiler_docs]  # untouched, boilerplate included
    head, tail = web_docs[:2]  # the article's text before and after the passage, each its own document
    assert before.startswith(head) and len(head) > 0.8 * len(before)
    assert after.endswith(tail) and len(tail) > 0.8 * len(after)
    # the margin: about 50 tokens of the article on each side of the passage went with it
    cut = len(enc.encode_ordinary(article)) + 1 - sum(len(enc.encode_ordinary(t)) + 1 for t in web_docs[:2])
    assert 2 * 50 + len(enc.encode_ordinary(passage)) - 4 <= cut <= 2 * 50 + len(enc.encode_ordinary(passage)) + 6
    assert got["tokens"] == cut + len(enc.encode_ordinary(qa)) + 1
    # no held-out 13-gram is left in training except the boilerplate's, which 12 documents hold
    held_grams = set(ngram_hashes([np.array(enc.encode_ordinary(held))])[0].tolist())
    train_grams = Counter(g for w in (web, squad) for t in _train_texts(w)
                          for g in ngram_hashes([np.array(enc.encode_ordinary(t))])[0].tolist())
    left = [g for g in held_grams if train_grams[g]]
    assert left and all(train_grams[g] >= 12 for g in left)
    state = build.decontamination_state(web)[build.CONTAINMENT_REASON]
    assert state == {"documents": 0, "documents_cut": 1, "tokens": cut}
    meta = json.loads((web / "tok-00000.meta.json").read_text())
    assert meta["train"]["documents"] == 2 + 1 + 12 and meta["decontaminated"]["ngram"] == 13


def test_containment_removes_a_document_cut_into_too_many_pieces(tmp_path):
    """GPT-3's "too dirty": a document that would fall into more than 10 pieces is removed whole."""
    rng = np.random.default_rng(1)
    quotes = [_words(rng, 30) for _ in range(12)]
    held = " ".join(quotes)
    dirty = " ".join(f"{_words(rng, 90)} {q}" for q in quotes) + " " + _words(rng, 90)
    ev, tr = tmp_path / "ev", tmp_path / "tr"
    ev.mkdir()
    tr.mkdir()
    _write_part(ev, "00000", {"val": [held]})
    _write_part(tr, "00000", {"train": [dirty]})
    removed = build.decontaminate([ev, tr])[build.CONTAINMENT_REASON]
    assert removed["documents"] == 1 and removed["documents_cut"] == 0 and _train_texts(tr) == []


def test_near_duplicates_at_true_jaccard_0_8_are_caught():
    """Pairs whose 5-shingle Jaccard is 0.80 are caught ~98% of the time (the cut on the estimate sits two standard
    errors below the threshold; at the threshold itself about half were missed), pairs at 0.5 almost never."""
    rng = np.random.default_rng(0)

    def pair(shared):  # 500 shingles each, `shared` of them in common: Jaccard shared / (1000 - shared)
        a = rng.permutation(50000)[:504]
        b = np.concatenate([a[: shared + 4], rng.integers(50000, 50257, 500 - shared)])
        return a, b

    for shared, lo, hi in ((445, 0.93, 1.0), (334, 0.0, 0.02)):  # true Jaccard 0.802 and 0.501
        pairs = [pair(shared) for _ in range(300)]
        assert abs(_jaccard(*pairs[0]) - shared / (1000 - shared)) < 0.01
        index = NearDuplicateIndex([a for a, _ in pairs])
        caught = np.mean(index.matches([b for _, b in pairs]) == np.arange(len(pairs)))
        assert lo <= caught <= hi, (shared, caught)
    assert estimate_cut(0.8) == pytest.approx(0.7)


def test_contaminated_spans_are_copied_passages_with_their_margin_inside_one_document():
    """A 20-token quote of a held-out document is a shared phrase (left); a 40-token one is a passage: it is
    covered with 50 tokens either side, clipped to its own document (the neighbours are untouched)."""
    rng = np.random.default_rng(2)
    held = rng.integers(0, 1000, 400)
    grams = build.NgramSet(ngram_hashes([held], 13)[0])

    def doc(quote, before=100, after=100):
        return np.concatenate([rng.integers(1000, 2000, before), quote, rng.integers(1000, 2000, after), [EOT]])

    docs = [doc(held[10:30]), doc(held[100:140], before=20), doc(held[300:340], after=0), doc([])]
    stream = np.concatenate(docs).astype(np.uint16)
    covered = build.contaminated_spans(stream, grams)
    starts = np.cumsum([0] + [d.size for d in docs])
    want = np.zeros(stream.size, bool)
    want[starts[1] : starts[1] + 20 + 40 + 50] = True  # the margin before is cut at the document's start
    want[starts[2] + 100 - 50 : starts[2] + 140] = True  # the quote ends the document (before its EOT)
    assert np.array_equal(covered, want)
