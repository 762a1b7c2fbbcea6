"""Every hub source of the real definitions on records in the exact schema of its dataset card, without network:
tests/fixtures/sources/*.jsonl (a few records each, see the README there) go through the build's own jsonl loader
(the `datasets` json builder, so nesting and types are what the library delivers), the input's formatter and
options from data/sources/unified_from_scratch.json, the source's quality filters and the tokenizer -- `build.fetch`
itself, on a local copy of the input. A record that does not fit its formatter stops the build naming the source,
the record and the field. Also: declared-budget feasibility, gated inputs and loader failures, before any fetch.

`python -m tests.test_source_schemas` prints the fixture figures table of docs/DATASET.md."""

import dataclasses
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from data import build, input_loaders
from data.formats import NOT_IN_CONTEXT, record_id
from data.quality import stable_unit
from data.source_config import budget_problems, load_definitions
from tests.process_group import run

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "sources"
SCRIPT = ROOT / "scripts" / "unified_build" / "build_unified_dataset.py"
REAL = [ROOT / "data/sources/unified_phase1_circuit.json", ROOT / "data/sources/unified_from_scratch.json"]
DEFS = load_definitions(*REAL)

FIXTURE_OF = {
    "fineweb_edu": "fineweb_edu.jsonl", "wikipedia_en": "wikipedia.jsonl", "wikipedia_de": "wikipedia.jsonl",
    "codeparrot_python": "codeparrot_clean.jsonl", "starcoder_python": "starcoderdata.jsonl",
    "starcoder_javascript": "starcoderdata.jsonl", "starcoder_java": "starcoderdata.jsonl",
    "stackexchange": "stack_exchange_preferences.jsonl", "triviaqa_rc": "trivia_qa_rc.jsonl",
    "squad_v2": "squad_v2.jsonl", "reddit_changemyview": "reddit_threaded.jsonl",
    "reddit_askscience": "reddit_threaded.jsonl", "reddit_explainlikeimfive": "reddit_threaded.jsonl",
    "pes2o": "pes2o.jsonl", "github_readme": "the_stack_dedup_markdown.jsonl",
}
HUB_INPUTS = [i.name for i in DEFS.inputs() if i.loader["type"] == "hf"]


def local_copy(name: str, fixture: Path | None = None):
    """The real input with its hub loader replaced by the jsonl loader on its fixture (the loader's selection
    filter, e.g. README paths, is kept)."""
    inp = next(i for i in DEFS.inputs() if i.name == name)
    loader = {"type": "jsonl", "path": str(fixture or FIX / FIXTURE_OF[name])}
    if "filter" in inp.loader:
        loader["filter"] = inp.loader["filter"]
    return dataclasses.replace(inp, loader=loader)


def run_fixture(name: str, work: Path) -> dict:
    """loader -> formatter -> filters -> tokens for one input's fixture, through build.fetch."""
    state = build.fetch(local_copy(name), work, 10**9, docs_per_part=1000, seen=set())
    lines = [json.loads(line) for f in sorted(work.glob("fetch-*.jsonl")) for line in f.open()]
    docs = [d["text"] for d in lines]
    tokens = build.tokenize_texts(docs) if docs else []
    return {"records": state["records_read"], "docs": docs, "groups": [d.get("group") for d in lines],
            "skipped": dict(state["skipped"]),
            "filtered": {r: c["documents"] for r, c in state["filtered"].items()},
            "modified": {r: c["documents"] for r, c in state["modified"].items()}, "tokens": len(tokens)}


def test_every_hub_input_has_a_card_and_a_fixture():
    assert len(HUB_INPUTS) == 15
    for name in HUB_INPUTS:
        inp = next(i for i in DEFS.inputs() if i.name == name)
        assert inp.card == f"https://huggingface.co/datasets/{inp.loader['path']}", name
        assert (FIX / FIXTURE_OF[name]).is_file(), name


def test_loader_delivers_the_cards_nesting():
    """What the formatters see is the json builder's view of the card schema: Sequence-of-struct columns are
    dicts of lists (TriviaQA), SQuAD's answers a dict of lists, StackExchange's answers a list of structs."""
    trivia = list(input_loaders.iter_records({"type": "jsonl", "path": str(FIX / "trivia_qa_rc.jsonl")}))
    assert isinstance(trivia[0]["entity_pages"], dict) and isinstance(trivia[0]["entity_pages"]["wiki_context"], list)
    assert trivia[0]["search_results"]["search_context"] == [] and isinstance(trivia[0]["answer"]["aliases"], list)
    squad = list(input_loaders.iter_records({"type": "jsonl", "path": str(FIX / "squad_v2.jsonl")}))
    assert squad[1]["answers"] == {"text": [], "answer_start": []}
    se = list(input_loaders.iter_records({"type": "jsonl", "path": str(FIX / "stack_exchange_preferences.jsonl")}))
    assert isinstance(se[0]["answers"], list) and se[0]["answers"][1]["selected"] is True
    reddit = list(input_loaders.iter_records({"type": "jsonl", "path": str(FIX / "reddit_threaded.jsonl")}))
    assert isinstance(reddit[0]["text"], str) and isinstance(reddit[0]["num_messages"], int)


# input -> (records, kept documents, skips and filter removals by reason)
EXPECTED = {
    "fineweb_edu": (3, 2, {"too_short": 1}),
    "wikipedia_en": (3, 2, {"too_short": 1}),
    "wikipedia_de": (3, 2, {"too_short": 1}),
    "codeparrot_python": (2, 1, {"too_long": 1}),
    "starcoder_python": (3, 3, {}),
    "starcoder_javascript": (3, 3, {}),
    "starcoder_java": (3, 3, {}),
    "stackexchange": (2, 1, {"no_answers": 1}),
    "triviaqa_rc": (3, 2, {"ungrounded": 1}),
    "squad_v2": (4, 3, {"unanswerable_over_share": 1}),  # unanswerable kept at 0.5 (to ~20%), by a hash of the id
    "pes2o": (2, 1, {"too_short": 1}),
    "github_readme": (4, 1, {"loader_filter": 1, "changelog": 1, "language": 1}),
}
FLAT_THREAD = json.loads((FIX / "reddit_threaded.jsonl").read_text().splitlines()[1])["text"]
FLAT_KEPT = stable_unit(FLAT_THREAD, "quote_reply") < 0.1  # the configured keep share, drawn from the hash
for _name in ("reddit_changemyview", "reddit_askscience", "reddit_explainlikeimfive"):
    EXPECTED[_name] = (4, 3 if FLAT_KEPT else 2, {"single_message": 1, **({} if FLAT_KEPT else {"no_quote_reply": 1})})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_through_loader_formatter_filters_tokens(name, tmp_path):
    out = run_fixture(name, tmp_path)
    records, kept, removed = EXPECTED[name]
    assert out["records"] == records and len(out["docs"]) == kept, out
    assert {**out["skipped"], **out["filtered"]} == removed, out
    assert out["tokens"] > 20 * kept  # real documents, each ending in EOT


def test_what_each_formatter_makes_of_the_real_fields(tmp_path):
    docs = {n: run_fixture(n, tmp_path / n)["docs"] for n in
            ("wikipedia_en", "codeparrot_python", "starcoder_java", "stackexchange", "triviaqa_rc", "squad_v2",
             "reddit_changemyview", "github_readme", "pes2o")}
    assert docs["wikipedia_en"][0].startswith("Ulm\n\nUlm is a city")  # title line from the `title` field
    assert docs["codeparrot_python"][0].startswith("# tools/files.py\nimport os")  # codeparrot's `path`
    assert docs["starcoder_java"][2].startswith("# src/main/java/Counter.java\npublic class Counter")
    se = docs["stackexchange"][0]
    assert se.startswith("Question:\nWhy does x = [] * 3 give") and "<p>" not in se and "Downvoted" not in se
    assert se.index("Accepted answer (score 9)") < se.index("Answer (score 2)")
    paris, aar = docs["triviaqa_rc"]
    assert paris.startswith("Context:\nFrance is a country") and paris.endswith("\nAnswer: Paris")
    assert "river Aar" in aar and aar.endswith("\nAnswer: Aar")  # grounded in search_results.search_context
    assert [d.rsplit("\nAnswer: ", 1)[1] for d in docs["squad_v2"]] == ["September 4, 1981", NOT_IN_CONTEXT,
                                                                        "Houston, Texas"]
    reddit = docs["reddit_changemyview"]
    assert reddit[0].startswith("CMV: Tabs") and "\n\n> Everyone can set the width they like.\n\n" in reddit[0]
    assert any("\n\n> Nobody knows for sure.\n\n" in d for d in reddit)  # `&gt;` unescaped into a quote
    assert docs["github_readme"] == [docs["github_readme"][0]] and docs["github_readme"][0].startswith("# logsum")
    assert docs["pes2o"][0].startswith("Sparse attention for long documents")


def test_holdback_groups_come_from_the_cards_fields(tmp_path):
    """The group key each kept document carries from the formatter to the hold-back step is the card's field:
    SQuAD's article title, TriviaQA's question id, StackExchange's question id, the code repository; sources
    without a group field carry none (their text decides)."""
    groups = {n: run_fixture(n, tmp_path / n)["groups"] for n in
              ("squad_v2", "triviaqa_rc", "stackexchange", "codeparrot_python", "starcoder_java", "fineweb_edu")}
    assert groups["squad_v2"] == ["title=Beyonce"] * 3
    assert groups["triviaqa_rc"] == ["question_id=qb_1", "question_id=qb_2"]
    assert groups["stackexchange"] == ["qid=11227809"]
    # A repository is one key whatever the schema's field: CodeParrot's repo_name, StarCoder's
    # max_stars_repo_name.
    assert groups["codeparrot_python"] == ["repo=someone/tools"]
    assert groups["starcoder_java"] == ["repo=someone/walker", "repo=someone/adder", "repo=someone/counter"]
    assert groups["fineweb_edu"] == [None, None]


@pytest.mark.parametrize("name, field", [
    ("fineweb_edu", "text"), ("wikipedia_de", "title"), ("codeparrot_python", "path"),
    ("starcoder_python", "max_stars_repo_path"), ("stackexchange", "answers"), ("triviaqa_rc", "entity_pages"),
    ("squad_v2", "answers"), ("reddit_askscience", "num_messages"), ("pes2o", "text"),
    ("github_readme", "max_stars_repo_path"),
])
def test_record_without_a_schema_field_stops_naming_source_record_field(name, field, tmp_path):
    # the column absent from the whole stream, as in a dataset whose schema differs (a key missing from one row
    # only is a null to the json builder, which fills the column it inferred from the other rows)
    rows = [json.loads(line) for line in (FIX / FIXTURE_OF[name]).read_text().splitlines()]
    for r in rows:
        del r[field]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    inp = local_copy(name, bad)
    with pytest.raises(ValueError, match=rf"source '{inp.source}' input '{name}' record 0 "
                                         rf"\(id {re.escape(str(record_id(rows[0])))}\): field '{field}': missing"):
        build.fetch(inp, tmp_path / "w", 10**9, docs_per_part=1000, seen=set())
    assert not list((tmp_path / "w").glob("fetch-*"))


def test_invented_reddit_schema_is_refused(tmp_path):
    old = tmp_path / "old.jsonl"  # the schema the first reddit formatter was written for: not REDDIT_threaded's
    old.write_text(json.dumps({"id": "abc", "title": "t", "selftext": "s", "num_messages": 3,
                               "comments": [{"id": "c1", "parent_id": "t3_abc", "body": "b"}]}) + "\n")
    with pytest.raises(ValueError, match=r"input 'reddit_changemyview' record 0 \(id abc\): field 'text': missing"):
        build.fetch(local_copy("reddit_changemyview", old), tmp_path / "w", 10**9, seen=set())


# ------------------------------------------------------------------ budgets, gating and loader failures


def test_real_definitions_are_feasible_and_every_input_declares_an_estimate():
    assert budget_problems(DEFS) == []
    for inp in DEFS.inputs():
        assert inp.available_derivation, inp.name  # a number (or null = unknown) with how it was derived


def _real_defs_with(tmp_path, edit) -> Path:
    raw = json.loads(REAL[1].read_text())
    edit(raw)
    path = tmp_path / "defs.json"
    path.write_text(json.dumps(raw))
    return path


def test_dry_run_stops_with_one_line_per_infeasible_input(tmp_path):
    def shrink(raw):
        raw["sources"]["reddit_threaded"]["inputs"][0]["available_tokens_estimate"]["tokens"] = 10_000_000
        raw["sources"]["domain_itsec_swisslaw"]["upsample"] = 2.6  # the planned 2.6x: 404M < 420M
    proc = run([sys.executable, str(SCRIPT), "--dry-run", "--sources", str(_real_defs_with(tmp_path, shrink))],
               cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "can supply about" in line]
    assert len(lines) == 2, proc.stdout
    domain, reddit = lines  # in definitions order
    assert "input 'domain_itsec_swisslaw': needs 167,397,370 tokens" in domain and "161,000,000" in domain
    assert "input 'reddit_changemyview': needs 68,605,817 tokens" in reddit and "about 10,000,000" in reddit


def test_dry_run_names_gated_inputs_and_login_steps():
    proc = run([sys.executable, str(SCRIPT), "--dry-run"], cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "gated inputs: starcoder_python, starcoder_javascript, starcoder_java, github_readme" in out
    assert "https://huggingface.co/datasets/bigcode/starcoderdata" in out and "`hf auth login`" in out
    assert "triviaqa_rc            need      72,000,000 available      80,800,000  OK" in out


def test_build_with_gated_inputs_and_no_token_stops_before_fetching(tmp_path):
    raw = json.loads((ROOT / "data/sources/demo.json").read_text())
    raw["sources"]["demo_python"]["inputs"][0]["gated"] = True
    defs = tmp_path / "defs.json"
    defs.write_text(json.dumps(raw))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    proc = run([sys.executable, str(SCRIPT), "--quiet", "--sources", str(defs), "--out-root", str(tmp_path / "out")],
               cwd=ROOT, timeout=120, env=env)
    assert proc.returncode != 0 and "need a Hugging Face token" in proc.stderr, proc.stderr
    assert "gated inputs: demo_python" in proc.stdout and "`hf auth login`" in proc.stdout
    assert not (tmp_path / "out" / "unified_work").exists()  # nothing fetched


def refusing_loader(**_):
    """What the pinned datasets raises for a repository with a loading script (datasets/load.py)."""
    raise RuntimeError("Dataset scripts are no longer supported, but found peS2o.py")


def failing_stream(**_):
    yield {"text": "x" * 100}
    raise ConnectionError("Couldn't reach 'allenai/peS2o' on the Hub (ConnectError)")


def test_loader_failures_are_one_clear_line(tmp_path):
    inp = dataclasses.replace(local_copy("pes2o"), loader={"type": "python",
                                                           "callable": "tests.test_source_schemas:refusing_loader"})
    with pytest.raises(input_loaders.LoaderError,
                       match=r"source 'pes2o' input 'pes2o' .*scripts are no longer supported.*Fix: .*loader.builder"):
        build.fetch(inp, tmp_path / "a", 10**9)
    inp = dataclasses.replace(inp, loader={"type": "python", "callable": "tests.test_source_schemas:failing_stream"})
    with pytest.raises(input_loaders.LoaderError, match="ConnectionError.*Fix: the Hugging Face hub cannot be reached"):
        build.fetch(inp, tmp_path / "b", 10**9)


def test_script_refusal_through_the_build_has_no_traceback(tmp_path):
    raw = json.loads((ROOT / "data/sources/demo.json").read_text())
    raw["sources"]["demo_python"]["inputs"][0]["loader"] = {"type": "python",
                                                            "callable": "tests.test_source_schemas:refusing_loader"}
    defs = tmp_path / "defs.json"
    defs.write_text(json.dumps(raw))
    # The loader lives in tests/, which is not installed: the build imports it from the repository root.
    proc = run([sys.executable, str(SCRIPT), "--quiet", "--sources", str(defs), "--out-root", str(tmp_path / "out")],
               cwd=ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "fetch stopped: source 'demo_python' input 'demo_python'" in proc.stderr and "loader.builder" in proc.stderr


def test_pes2o_reads_its_data_files_at_the_pinned_revision_not_its_script():
    inp = next(i for i in DEFS.inputs() if i.name == "pes2o")
    assert inp.loader["builder"] == "json" and len(inp.loader["revision"]) == 40
    assert input_loaders.hub_data_files(inp.loader) == [
        "hf://datasets/allenai/peS2o@787e75b30fcd4cfcecb76971e2200e843950915f/data/v1/train-00010-of-00020.json.gz"]


def test_reddit_reads_subreddit_splits():
    splits = {i.loader["split"] for i in DEFS.sources["reddit_threaded"].inputs}
    assert splits == {"changemyview", "askscience", "explainlikeimfive"}  # the card has no `train` split


@pytest.mark.parametrize("edit, message", [
    (lambda i: i.pop("card"), "card None must be the dataset card of loader.path"),
    (lambda i: i.update(card="https://huggingface.co/datasets/other/x"), "must be the dataset card of loader.path"),
    (lambda i: i.update(gated="yes"), "gated must be true or false"),
    (lambda i: i["loader"].update(config="rc"), "unknown field(s) ['config']"),
    (lambda i: i.update(available_tokens_estimate={"tokens": 1.5, "derivation": "x"}), "whole number"),
])
def test_bad_input_declarations(tmp_path, edit, message):
    path = _real_defs_with(tmp_path, lambda raw: edit(raw["sources"]["triviaqa_squad_v2"]["inputs"][1]))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_definitions(path)


# ------------------------------------------------------------------ the fixture figures of docs/DATASET.md


def fixture_table(tmp: Path) -> str:
    rows = ["| input | fixture records | kept | removed (reason: records) | tokens per kept record |",
            "| --- | ---: | ---: | --- | ---: |"]
    for name in HUB_INPUTS:
        out = run_fixture(name, tmp / name)
        removed = Counter({**out["skipped"], **out["filtered"]})
        why = ", ".join(f"{r}: {n}" for r, n in sorted(removed.items())) or "-"
        per = out["tokens"] / len(out["docs"]) if out["docs"] else 0
        rows.append(f"| {name} | {out['records']} | {len(out['docs'])} | {why} | {per:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(fixture_table(Path(d)))
