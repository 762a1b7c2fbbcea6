"""Held-out grounded-QA items (data/qa_items.py): the build writes, for the retrieval eval set, one item per QA
document it holds whole, so evaluation by generation needs no download. Built once per module from a small version
of the demo definitions (~3 s): the demo QA corpus and its prose, one mix, the retrieval eval set capped so that its
last token file is cut (only whole documents give items), and a prose eval set (no items)."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from data import build
from data.formats import NOT_IN_CONTEXT, parse_retrieval, qa_fields, render_retrieval
from data.qa_items import QA_ITEMS_FILE, fixed_subset, read_qa_items
from data.source_config import load_definitions
from data.token_dataset import TokenDataset
from data.tokenizer import EOT, get_tokenizer
from tests.process_group import run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "unified_build" / "build_unified_dataset.py"
ENC = get_tokenizer()


def _small_demo(path: Path) -> Path:
    raw = json.loads((ROOT / "data/sources/demo.json").read_text())
    raw["sources"] = {k: raw["sources"][k] for k in ("demo_qa", "demo_prose")}
    raw["sources"]["demo_qa"]["inputs"][0]["loader"]["kwargs"]["num_articles"] = 3000
    raw["mixes"] = {"unified_6B": {"total_tokens": 150_000, "val_tokens": 10_000,
                                   "percent": {"demo_qa": 60, "demo_prose": 40}}}
    raw["eval_sets"] = {  # min == max: more eval tokens are fetched than taken, so the last file is cut
        "retrieval_eval_tokenized": {"sources": ["demo_qa"], "min_tokens": 15_000, "max_tokens": 15_000},
        "general_eval_tokenized": {"sources": ["demo_prose"], "min_tokens": 5_000, "max_tokens": 20_000}}
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qa_items")
    out = tmp / "out"
    proc = run([sys.executable, str(SCRIPT), "--quiet", "--sources", str(_small_demo(tmp / "defs.json")),
                "--out-root", str(out), "--workers", "2", "--block-size", "256"], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return out


def _documents(directory: Path) -> list[tuple[int, ...]]:
    """Documents of a token directory that end with EOT (EOT dropped), file by file: a cut file's last piece is not
    a document."""
    docs = []
    for f in TokenDataset(directory).manifest["files"]:
        t = np.fromfile(directory / f["path"], dtype="<u2")
        ends = np.flatnonzero(t == EOT)
        starts = np.concatenate([[0], ends[:-1] + 1])
        docs += [tuple(t[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]
    return docs


def _shown(item: dict) -> str:
    return item["answers"][0] if item["answerable"] else NOT_IN_CONTEXT


def test_parse_retrieval_round_trips_render_retrieval():
    cases = [("Ulm lies on the Danube.", "Where is Ulm?", "on the Danube"),
             ("A passage.", "Is it here?", NOT_IN_CONTEXT),
             ("  padded context \n", " padded question? ", " padded answer "),
             # the markers inside a passage (a quoted Q&A) and inside an answer
             ("FAQ\n\nQuestion: old one?\nAnswer: old. More text.", "Which one?", "the new one"),
             ("Text.", "Why?", "because\nAnswer: of this")]
    for context, question, answer in cases:
        for a in (answer, None):
            doc = render_retrieval(context, question, a)
            got = parse_retrieval(doc)
            assert got == (context.strip(), question.strip(), None if a is None else a.strip()), doc
            assert render_retrieval(*got) == doc
    doc = render_retrieval("x\n\nQuestion: q\nAnswer: y", "real?", "z")
    assert parse_retrieval(doc, question="real?") == ("x\n\nQuestion: q\nAnswer: y", "real?", "z")
    for bad in ("plain prose", "Context:\nno question here", "Context:\nc\n\nQuestion: q\nAnswer:x"):
        with pytest.raises(ValueError, match="not a retrieval document"):
            parse_retrieval(bad)


def test_qa_fields_take_every_gold_answer_and_the_shown_one_first():
    squad = {"id": "s1", "title": "t", "context": "Ulm is on the Danube river.", "question": "Where is Ulm?",
             "answers": {"text": ["the Danube ", "Danube", "the Danube ", "Danube river"],
                         "answer_start": [10, 14, 10, 14]}}
    from data.formats import format_squad_v2, format_triviaqa_rc

    qa = qa_fields("squad_v2", squad, format_squad_v2(squad))
    assert qa == {"context": squad["context"], "question": "Where is Ulm?", "answerable": True, "id": "s1",
                  "answers": ["the Danube", "Danube", "Danube river"]}
    none = dict(squad, id="s2", answers={"text": [], "answer_start": []})
    assert qa_fields("squad_v2", none, format_squad_v2(none))["answers"] == []
    assert qa_fields("squad_v2", none, format_squad_v2(none))["answerable"] is False
    trivia = {"question": "Capital of France?", "question_id": "tc_1", "question_source": "",
              "entity_pages": {"doc_source": ["x"], "filename": ["f"], "title": ["France"],
                               "wiki_context": ["Its capital is paris, on the Seine."]},
              "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                                 "search_context": []},
              "answer": {"value": "Paris", "aliases": ["City of Light", "Paris"], "normalized_aliases": ["paris"],
                         "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                         "normalized_value": "paris", "type": "WikipediaEntity"}}
    qa = qa_fields("triviaqa_rc", trivia, format_triviaqa_rc(trivia))
    assert qa["answers"] == ["paris", "Paris", "City of Light"] and qa["answerable"] and qa["id"] == "tc_1"
    assert qa_fields("squad_v2", squad, "not a QA document") is None


def test_fetch_carries_qa_and_tokens_read_only_the_text(tmp_path):
    """Part lines of a retrieval input carry "qa"; the token files are the same with it or without it."""
    inp = load_definitions(ROOT / "data/sources/demo.json").sources["demo_qa"].inputs[0]
    work = tmp_path / "work"
    build.fetch(inp, work, 20_000, docs_per_part=60)
    lines = [json.loads(line) for p in sorted(work.glob("fetch-*.jsonl")) for line in p.open()]
    assert lines and all(d["qa"]["question"] in d["text"] for d in lines)
    assert all(d["text"] == render_retrieval(d["qa"]["context"], d["qa"]["question"],
                                             d["qa"]["answers"][0] if d["qa"]["answerable"] else NOT_IN_CONTEXT)
               for d in lines)
    assert {d["qa"]["answerable"] for d in lines} == {True, False}
    bare = tmp_path / "bare"
    shutil.copytree(work, bare)
    for p in bare.glob("fetch-*.jsonl"):  # as a fetch before this change wrote them
        p.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "qa"}) + "\n"
                             for line in p.open()))
    for w in (work, bare):
        build.holdback(inp, w, 0.2, 0.1)
        build.tokenize([w])
    assert build.token_state(work) == build.token_state(bare)


def test_retrieval_eval_set_holds_the_qa_items_of_its_whole_documents(built):
    eval_dir = built / "retrieval_eval_tokenized"
    items = read_qa_items(eval_dir)
    assert items and (eval_dir / QA_ITEMS_FILE).is_file()
    docs = _documents(eval_dir)
    # every item is one document of the eval set (prompt, " " + the shown answer, then EOT) and every whole
    # document one item: the cut last file gives only the documents before its cut
    rendered = [tuple(ENC.encode_ordinary(render_retrieval(it["context"], it["question"], _shown(it))))
                for it in items]
    assert sorted(rendered) == sorted(docs)
    assert len({it["id"] for it in items}) == len(items)
    assert any(it["answerable"] for it in items) and any(not it["answerable"] for it in items)
    assert all(it["record_id"].startswith("demo-1234-") and it["source"] == it["input"] == "demo_qa" for it in items)
    m = TokenDataset(eval_dir).manifest
    recorded = m["qa_items"]
    assert recorded == m["lineage"]["qa_items"]
    assert recorded["count"] == len(items) and recorded["file"] == QA_ITEMS_FILE
    assert recorded["sha256"] == hashlib.sha256((eval_dir / QA_ITEMS_FILE).read_bytes()).hexdigest()
    assert recorded["answerable"] + recorded["unanswerable"] == len(items)
    # the prose eval set has no retrieval documents: no file, nothing recorded
    assert read_qa_items(built / "general_eval_tokenized") is None
    assert "qa_items" not in TokenDataset(built / "general_eval_tokenized").manifest


def test_the_eval_set_was_cut_and_items_stop_at_the_cut(built):
    """The fixture's cap cuts the last eval token file: its partial last document is no item."""
    eval_dir = built / "retrieval_eval_tokenized"
    files = TokenDataset(eval_dir).manifest["files"]
    last = np.fromfile(eval_dir / files[-1]["path"], dtype="<u2")
    assert last[-1] != EOT  # cut inside a document
    items = read_qa_items(eval_dir)
    work = built / "unified_work" / "demo_qa"
    for it in items:  # the lineage names the held-out line the item is
        line = (work / it["lineage"]["part"]).read_text().splitlines()[it["lineage"]["line"]]
        assert it["lineage"]["part"].endswith(".eval.jsonl")
        assert json.loads(line)["text"] == render_retrieval(it["context"], it["question"], _shown(it))


def test_no_qa_item_question_is_in_the_training_mix(built):
    train_questions = set()
    for directory in (built / "unified_6B",):
        for doc in _documents(directory):
            try:
                train_questions.add(parse_retrieval(ENC.decode(list(doc)))[1])
            except ValueError:
                continue  # prose, or a piece the decontamination cut
    assert len(train_questions) > 500
    items = read_qa_items(built / "retrieval_eval_tokenized")
    leaked = [it["question"] for it in items if it["question"] in train_questions]
    assert not leaked, f"{len(leaked)} held-out questions are in training: {leaked[:3]}"


def test_read_qa_items_rejects_a_bad_line_naming_it(built, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(built / "retrieval_eval_tokenized", eval_dir)
    path = eval_dir / QA_ITEMS_FILE
    lines = path.read_text().splitlines(keepends=True)
    bad = json.loads(lines[2])
    bad["answers"] = "Ulm"
    path.write_text("".join(lines[:2] + [json.dumps(bad) + "\n"] + lines[3:]))
    with pytest.raises(ValueError, match=rf"{QA_ITEMS_FILE}: line 3: field 'answers' must be list.*rebuild the "
                                         r"eval set with scripts/unified_build/build_unified_dataset.py"):
        read_qa_items(eval_dir)
    path.write_text("".join(lines[:4] + ["{not json\n"] + lines[5:]))
    with pytest.raises(ValueError, match="line 5: not valid JSON"):
        read_qa_items(eval_dir)
    del bad["answers"]
    path.write_text("".join(lines[:1] + [json.dumps(bad) + "\n"] + lines[2:]))
    with pytest.raises(ValueError, match="line 2: field 'answers' is missing"):
        read_qa_items(eval_dir)
    path.write_text("".join(lines[1:]))  # valid lines, but not what the build wrote
    with pytest.raises(ValueError, match="manifest.json records"):
        read_qa_items(eval_dir)
    path.unlink()
    assert read_qa_items(eval_dir) is None
    with pytest.raises(ValueError, match="does not exist"):
        read_qa_items(tmp_path / "nowhere")


def _items(n_yes, n_no):
    return [{"id": f"i{i}", "answerable": i < n_yes, "answers": ["a"] if i < n_yes else []}
            for i in range(n_yes + n_no)]


def test_fixed_subset_is_seeded_order_free_and_holds_both_kinds():
    items = _items(80, 20)
    a = fixed_subset(items, 10, seed=1)
    assert [x["id"] for x in a] == [x["id"] for x in fixed_subset(list(reversed(items)), 10, seed=1)]
    assert [x["id"] for x in a] != [x["id"] for x in fixed_subset(items, 10, seed=2)]
    assert len(a) == 10 and sum(not x["answerable"] for x in a) == 2  # the unanswerable share, 20%
    rare = fixed_subset(_items(99, 1), 5, seed=0)
    assert sum(not x["answerable"] for x in rare) == 1 and len(rare) == 5
    assert len(fixed_subset(items, 500, seed=0)) == 100 and fixed_subset(items, 0, seed=0) == []
    assert all(x["answerable"] for x in fixed_subset(_items(5, 0), 3, seed=0))
    assert len(fixed_subset(_items(1, 9), 4, seed=0)) == 4
