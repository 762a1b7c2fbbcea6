"""The preflight (data/preflight.py) without network: every hub input of the real definitions opened through a local
loader on its card-schema fixture (tests/fixtures/sources/), run through the build's formatter and filters, and
judged against its real budget -- which a few fixture records cannot meet, so each input gets its one SHORT line;
a projection from row counts that passes and one that fails; a schema that does not match; a loader that fails;
gating the hub reports but the definitions do not; and the command line offline, with --preflight and before the
first fetch of a build."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from data import build, preflight
from data.input_loaders import iter_records
from data.source_config import Input, load_definitions
from tests.test_source_schemas import EXPECTED, FIX, FIXTURE_OF, REAL

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "unified_build" / "build_unified_dataset.py"
DEFS = load_definitions(*REAL)
HUB_INPUTS = [i for i in DEFS.inputs() if i.loader["type"] == "hf"]
FIXTURE_OF_DATASET = {i.loader["path"]: FIX / FIXTURE_OF[i.name] for i in HUB_INPUTS}


def open_local(loader: dict):
    """The local loader: a hub loader's dataset read from its fixture with the build's json loader, shuffled as
    the preflight asks (so the same IterableDataset code path as on the hub)."""
    if loader["type"] == "hf":
        loader = {"type": "jsonl", "path": str(FIXTURE_OF_DATASET[loader["path"]]), "shuffle": loader.get("shuffle")}
    return iter_records(loader)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_hub_input_on_its_fixture_and_the_real_budgets():
    checks, problems = preflight.run(DEFS, open_records=open_local, hub=None, token=True,
                                     names=[i.name for i in HUB_INPUTS])
    assert [c.name for c in checks] == [i.name for i in HUB_INPUTS]
    for c in checks:
        fixture = _rows(FIXTURE_OF_DATASET[next(i for i in HUB_INPUTS if i.name == c.name).loader["path"]])
        assert set(c.fields) == set(fixture[0]), c.name  # every field of the card's schema, as delivered
        assert c.records == len(fixture) and c.exhausted, c.name
        if c.name in EXPECTED:  # the reddit inputs' count depends on a hash draw; test_source_schemas pins it
            assert c.kept == EXPECTED[c.name][1], c.name
        assert c.records - sum(removed for _, _, removed in c.stages) == c.kept, (c.name, c.stages)
        assert c.kept_tokens > 20 * c.kept and c.projected == c.kept_tokens  # a stream read whole counts whole
    assert dict(checks[0].fields)["text"] == "str" and dict(checks[9].fields)["answers"] == "dict"  # SQuAD's dict
    readme = next(c for c in checks if c.name == "github_readme")
    assert [(name.split(" (")[0], entered, removed) for name, entered, removed in readme.stages] == [
        ("loader filter max_stars_repo_path", 4, 1), ("formatter readme", 3, 0), ("changelog", 3, 1),
        ("language", 2, 1), ("min_chars", 1, 0), ("duplicate", 1, 0)]
    # a few fixture records cannot meet a budget of millions of tokens: one line per input, naming it
    short = [p for p in problems if "can supply about" in p]
    assert len(short) == len(problems) == 15
    assert short[9].startswith(f"source 'triviaqa_squad_v2' input 'squad_v2': can supply about "
                               f"{checks[9].kept_tokens:,} tokens (the whole stream ({checks[9].records} records) "
                               f"read) but needs 20,307,692 before hold-back")
    text = preflight.report(checks, preflight.SAMPLE_RECORDS)
    assert "squad_v2 [hf rajpurkar/squad_v2 squad_v2/train @ main; not gated]" in text
    assert "    changelog: pass 66.7% (2 of 3)" in text and "SHORT" in text


def _local(tmp_path: Path, texts: list[str], rows: int | None) -> Input:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return Input(source="corpus", name="corpus", share=1.0, loader={"type": "jsonl", "path": str(path)},
                 formatter="text", available_rows=rows, available_derivation="test")


def test_projection_from_row_counts_meets_or_misses_the_budget(tmp_path):
    # 8 documents of equal token count (checked), 2 too short for the min_chars filter, read 6 at a time
    texts = [f"Record {c} holds a sentence long enough to pass the minimum length filter." for c in "ABCDEFGH"]
    texts[1] = texts[4] = "short"
    per_doc = {len(x) for x in build.get_tokenizer().encode_ordinary_batch([t for t in texts if t != "short"])}
    assert len(per_doc) == 1
    t = per_doc.pop() + 1  # + EOT
    inp = _local(tmp_path, texts, rows=1_000_000)
    # 4 of 6 kept, equal lengths: the projection's standard error is the kept share's alone, sqrt((1/3) / (2/3 x 6))
    projected = int(1_000_000 * 4 / 6 * t)
    low = int(projected * (1 - 2 * (1 / 12) ** 0.5))
    ok = preflight.check_input(inp, need=low, sample=6, open_records=iter_records)
    assert (ok.records, ok.kept, ok.exhausted, ok.kept_tokens) == (6, 4, False, 4 * t) and not ok.problems
    assert ok.projected == projected and ok.rows_from == "declared" and ok.projected_low == low
    assert ok.relative_error == pytest.approx((1 / 12) ** 0.5)
    # inside the sample's noise: a problem, with the larger sample that narrows it
    noisy = preflight.check_input(inp, need=low + 1, sample=6, open_records=iter_records)
    assert noisy.problems == [f"source 'corpus' input 'corpus': can supply about {projected:,} tokens (-2 standard "
                              f"errors of the 6-record sample: {low:,}) (1,000,000 rows (declared) x 4/6 kept x "
                              f"{t:,} tokens per kept record) but needs {low + 1:,} before hold-back; within the "
                              f"sample's noise: --preflight-records 24 narrows it; lower its percentage, raise "
                              f"upsample, or add data"]
    short = preflight.check_input(inp, need=projected + 1, sample=6, open_records=iter_records)
    assert len(short.problems) == 1 and "narrows" not in short.problems[0]
    whole = preflight.check_input(inp, need=1, sample=50, open_records=iter_records)  # stream read whole
    assert whole.exhausted and whole.projected == 6 * t and whole.projected_from.startswith("the whole stream")
    assert whole.relative_error == 0 and not whole.problems
    # no row count anywhere: projected from the data file (the jsonl file read whole: its 8 rows) ...
    undeclared = dataclasses.replace(inp, available_rows=None)
    files = preflight.check_input(undeclared, need=1, sample=6, open_records=iter_records)
    assert files.rows == 8 and files.projected == int(8 * 4 / 6 * t) and not files.problems
    assert files.rows_from == "1 data files, 0.00 GB x 8 rows per 0.0 MB measured in 1 of them"
    # ... and where nothing can project it, a problem unless the user names it
    def no_files(loader, inp):
        return None, "a 'python' loader has no data files to measure"

    unknown = preflight.check_input(undeclared, need=10**12, sample=6, open_records=iter_records,
                                    files=no_files)
    assert unknown.projected is None and unknown.problems == [
        "source 'corpus' input 'corpus': cannot project: no row count on the card or in the definitions, a 'python' "
        "loader has no data files to measure; the preflight cannot judge it. Declare its rows "
        "(available_tokens_estimate.rows), or build anyway with --accept-unprojected corpus"]
    accepted = preflight.check_input(undeclared, need=10**12, sample=6, open_records=iter_records,
                                     files=no_files, accepted=True)
    assert accepted.accepted and not accepted.problems
    assert "accepted unprojected" in preflight.report([accepted], 6)


def refusing_loader(**_):
    raise RuntimeError("Dataset scripts are no longer supported, but found peS2o.py")


def test_schema_mismatch_loader_failure_and_undeclared_gating_are_problem_lines(tmp_path):
    squad = next(i for i in HUB_INPUTS if i.name == "squad_v2")
    rows = _rows(FIX / "squad_v2.jsonl")
    for r in rows:
        del r["answers"]  # another dataset's schema behind the same name
    bad = tmp_path / "squad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = preflight.check_input(squad, need=1, open_records=lambda ld: iter_records(
        {"type": "jsonl", "path": str(bad)}), hub=None)
    assert len(c.problems) == 1 and "input 'squad_v2' record 0 (id " in c.problems[0]
    assert "field 'answers': missing" in c.problems[0] and c.fields == {k: "str" for k in rows[0]}

    pes2o = next(i for i in HUB_INPUTS if i.name == "pes2o")
    c = preflight.check_input(pes2o, need=1, open_records=lambda ld: refusing_loader(), hub=None)
    assert c.records == 0 and len(c.problems) == 1
    assert c.problems[0].startswith("source 'pes2o' input 'pes2o' (allenai/peS2o): cannot load records: "
                                    "RuntimeError: Dataset scripts are no longer supported") and "Fix:" in c.problems[0]

    c = preflight.check_input(squad, need=1, open_records=open_local,
                              hub=lambda path, rev: {"sha": "a" * 40, "gated": "manual"})
    assert c.hub == {"sha": "a" * 40, "gated": "manual"}
    assert c.problems == ["source 'triviaqa_squad_v2' input 'squad_v2': the hub says the dataset is gated (manual) "
                          "but the definitions do not; add \"gated\": true to the input so the build asks for a "
                          "login first"]
    def not_found(path, revision):  # an answer from the hub, not an unreachable hub: that input's problem line
        raise RuntimeError(f"404 Client Error: Repository Not Found for url: .../api/datasets/{path}")

    checks, problems = preflight.run(DEFS, names=["squad_v2"], open_records=open_local, hub=not_found, token=True)
    assert checks[0].records == 0 and problems == [
        "source 'triviaqa_squad_v2' input 'squad_v2' (rajpurkar/squad_v2): cannot load records: RuntimeError: 404 "
        "Client Error: Repository Not Found for url: .../api/datasets/rajpurkar/squad_v2. Fix: check "
        "loader.path/name/split/revision against the dataset card https://huggingface.co/datasets/rajpurkar/squad_v2"]
    star = next(i for i in HUB_INPUTS if i.name == "starcoder_java")
    c = preflight.check_input(star, need=1, open_records=open_local, hub=None, token=False)
    assert c.records == 0 and "gated and no Hugging Face token" in c.problems[0]


def _script():
    spec = importlib.util.spec_from_file_location("build_unified_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_preflight_and_build_stop_before_any_fetch(tmp_path, monkeypatch, capsys):
    # the library's own offline mode (huggingface_hub/constants.py is_offline_mode, read at every request), so the
    # hub is unreachable here whatever the network; a token so the gated-input check passes and the preflight is
    # what stops the build
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_a_real_token")
    domain = tmp_path / "domain"
    domain.mkdir()
    (domain / "a.jsonl").write_text(json.dumps({"text": "Art. 1 Datenschutz " * 20}) + "\n")
    raw = json.loads(REAL[1].read_text())
    raw["sources"]["domain_itsec_swisslaw"]["inputs"][0]["loader"]["path"] = str(domain)
    defs = tmp_path / "defs.json"
    defs.write_text(json.dumps(raw))
    script = _script()
    assert script.main(["--preflight", "--sources", str(defs)]) == 1
    out = capsys.readouterr().out
    assert "offline: the Hugging Face hub (https://huggingface.co) cannot be reached from here " \
           "(OfflineModeIsEnabled" in out
    assert "the 15 hub inputs cannot be checked" in out and "nothing was fetched" in out
    assert "preflight: 1 of 16 input(s) checked (the problems below say why not the others)" in out
    # the local input is still checked: one short document cannot supply the domain budget
    assert "source 'domain_itsec_swisslaw' input 'domain_itsec_swisslaw': can supply about" in out
    out_root = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        script.main(["--quiet", "--sources", str(defs), "--out-root", str(out_root)])
    assert str(stop.value).startswith("preflight failed, nothing was fetched") and "offline:" in str(stop.value)
    assert not list(out_root.glob("unified_work/*/fetch-*"))


def test_data_dir_inputs_are_projected_from_their_files(tmp_path, monkeypatch):
    """A `data_dir` subset has no row count on the card: its rows come from the data files datasets resolves for
    it, their sizes, and the rows per byte of a few of them (parquet footers; the head of a gzipped json-lines file).
    A local folder stands in for the hub repository (the same `load_dataset_builder` resolution, local paths)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)

    def text():
        return " ".join(f"w{int(x)}" for x in rng.integers(0, 10**6, int(rng.integers(20, 60))))

    repo = tmp_path / "repo"
    (repo / "python").mkdir(parents=True)
    (repo / "java").mkdir()
    for i, n in enumerate((400, 700, 500, 650, 300)):  # 2,550 rows in five parquet files under python/
        pq.write_table(pa.table({"text": [text() for _ in range(n)]}), repo / "python" / f"train-{i:05d}.parquet")
    pq.write_table(pa.table({"text": ["other"] * 9000}), repo / "java" / "train-00000.parquet")  # not read
    inp = Input(source="code", name="starcoder_like", share=1.0,
                loader={"type": "hf", "path": str(repo), "data_dir": "python", "split": "train", "streaming": True},
                formatter="text")
    c = preflight.check_input(inp, need=1, sample=40, hub=None)
    assert not c.exhausted and not c.problems and c.rows_from.startswith("5 data files")
    assert abs(c.rows - 2550) / 2550 < 0.05, c.rows  # rows per byte from 3 of the 5 files
    assert c.projected == int(c.rows * c.kept / c.records * c.tokens_per_kept)

    # gzipped json lines, a file larger than the head read: complete lines per compressed byte of the head
    (repo / "jsonl").mkdir()
    for i in range(2):
        with gzip.open(repo / "jsonl" / f"part-{i}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"text": text()}) + "\n" for _ in range(12000))
    monkeypatch.setattr(preflight, "HEAD_BYTES", 256 << 10)  # a quarter of each file (16 MB on the hub)
    rows, how = preflight.file_rows({**inp.loader, "data_dir": "jsonl"})
    assert abs(rows - 24000) / 24000 < 0.03, (rows, how)
    with pytest.raises(ValueError, match="has no data files to measure"):
        preflight.file_rows({"type": "python", "callable": "x:y"})


def test_accept_unprojected_names_a_real_input(tmp_path):
    with pytest.raises(SystemExit, match=r"--accept-unprojected nope: no such input in the definitions; inputs: "
                                         r"demo_python, demo_qa"):
        _script().main(["--sources", str(ROOT / "data/sources/demo.json"), "--out-root", str(tmp_path),
                        "--preflight", "--accept-unprojected", "nope"])
