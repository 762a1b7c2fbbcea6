"""scripts/eval/grounded_qa.py run for real on a GOLD checkpoint and on its Hugging Face export: the numbers it prints
and the items it writes are those of the scorer (launcher/grounded_qa.py) called directly on the same items; the
trained copier control (tests/fixtures/retrieval_control) reads high and the same model untrained reads zero; bad
input stops with one line and a non-zero exit, no traceback."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data.qa_items import QA_ITEMS_FILE, fixed_subset, write_qa_items
from launcher.grounded_qa import score_items
from model.io import load_model_checkpoint, save_model_checkpoint
from scripts.eval import grounded_qa as cli

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is the code?"  # the marked-fact task the control was trained on (scripts/experiments)
# (context, answers, answerable): the copier answers the number after "The code is", or abstains when only a decoy
# ("gate", "room", "seat") is there. "83 points" is a gold the copier's "83" matches only in part: EM 0, F1 2/3, so
# EM and F1 over all items differ.
CASES = [
    ("Anna has 31. The code is 47. Bob owes 12.", ["47"], True),
    ("The gate is 12. Carl wants 55. Dan sells 80.", [], False),
    ("Eric has 64. Fred owes 22. The code is 19. The room is 70.", ["19", "nineteen"], True),
    ("The code is 83. Jack sells 41.", ["83 points"], True),
    ("Mark wants 15. The seat is 90. Paul has 33.", [], False),
    ("Sam owes 58. The code is 26.", ["26"], True),
    ("The room is 44. Tom has 71.", [], False),
    ("Kate sells 39. The code is 62. Max owes 17. The gate is 28.", ["62"], True),
]
ITEMS = [{"id": f"cli_qa:00000:{i}", "source": "cli_qa", "input": "cli_qa", "context": context, "question": QUESTION,
          "answers": answers, "answerable": answerable, "record_id": None,
          "lineage": {"input": "cli_qa", "part": "split-00000.eval.jsonl", "line": i}}
         for i, (context, answers, answerable) in enumerate(CASES)]
# The report's row names -> the scorer's keys (written out here, not taken from the CLI, so a swapped row shows).
ROWS = {"EM (all items)": "exact", "F1 (all items)": "f1", "EM answerable": "answerable_exact",
        "F1 answerable": "answerable_f1", "answerable answered 'not in the context'": "answerable_abstained",
        "unanswerable answered 'not in the context'": "no_answer_not_in_context",
        "unanswerable answered with something else": "no_answer_answered_otherwise"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The eval set directory (qa_items.jsonl + the manifest entry the build writes), the trained control and the same
    model untrained as GOLD checkpoints, and the trained one's Hugging Face export."""
    from launcher.export import export
    from launcher.probes.trained_control import init_model
    from tests.controls import load_fixture_control

    root = tmp_path_factory.mktemp("grounded_qa_cli")
    eval_dir = root / "retrieval_eval_tokenized"
    eval_dir.mkdir()
    entry = write_qa_items(eval_dir, ITEMS)
    (eval_dir / "manifest.json").write_text(json.dumps({"qa_items": entry}))
    trained, _ = load_fixture_control()
    untrained = init_model().eval()
    save_model_checkpoint(root / "gold", trained, trained.config, {"step": 3000})
    save_model_checkpoint(root / "untrained", untrained, untrained.config, {"step": 0})
    export(root / "gold", root / "hf")
    return {"eval_dir": eval_dir, "gold": root / "gold", "untrained": root / "untrained", "hf": root / "hf",
            "root": root}


def _report(out: str) -> dict[str, float]:
    """The numbers the CLI printed, as the scorer's keys (shares in [0, 1], NaN for '-')."""
    head = re.search(r"(\d+) items \((\d+) answerable, (\d+) unanswerable; (\d+) too long", out)
    assert head, out
    got = dict(zip(("items", "answerable", "unanswerable", "too_long"), map(float, head.groups()), strict=True))
    for name, key in ROWS.items():
        m = re.search(rf"^  {re.escape(name)}\s+(-|[\d.]+) %$", out, flags=re.M)
        assert m, f"no row {name!r} in:\n{out}"
        got[key] = float("nan") if m.group(1) == "-" else float(m.group(1)) / 100
    return got


def _assert_report_is(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:  # printed with one decimal of a percentage
            assert got[key] == pytest.approx(value, abs=0.0005 + 1e-9), (key, got[key], value)


def _run(argv: list[str], capsys) -> tuple[dict[str, float], list[dict], str]:
    assert cli.main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    details = []
    if "--json" in argv:
        details = [json.loads(line) for line in Path(argv[argv.index("--json") + 1]).read_text().splitlines()]
    return _report(out), details, out


_DIRECT: dict[tuple[Path, tuple[str, ...]], tuple[dict[str, float], list[dict]]] = {}


def _direct(checkpoint: Path, items: list[dict]) -> tuple[dict[str, float], list[dict]]:
    """The scorer called directly on the checkpoint's model (once per checkpoint and items: the tests share it)."""
    key = (checkpoint, tuple(it["id"] for it in items))
    if key not in _DIRECT:
        model, _, _ = load_model_checkpoint(checkpoint)
        details: list[dict] = []
        _DIRECT[key] = score_items(model.float().eval(), items, "cpu", details=details), details
    metrics, details = _DIRECT[key]
    return dict(metrics), [dict(d) for d in details]


def test_a_gold_checkpoint_scores_as_the_scorer_and_the_trained_copier_reads_high(models, capsys):
    out_json = models["root"] / "out" / "gold.jsonl"
    got, details, out = _run([str(models["gold"]), str(models["eval_dir"]), "--count", "0", "--json", str(out_json),
                              "--show", "2"], capsys)
    expected, expected_details = _direct(models["gold"], ITEMS)
    _assert_report_is(got, expected)
    assert details == expected_details and [d["id"] for d in details] == [it["id"] for it in ITEMS]
    assert got["items"] == 8 and got["answerable"] == 5 and got["unanswerable"] == 3 and got["too_long"] == 0
    # The copier answers every code and abstains on every decoy; "83" against the gold "83 points" is EM 0, F1 2/3.
    assert got["answerable_exact"] == pytest.approx(0.8) and got["exact"] == pytest.approx(0.875), out
    assert got["f1"] == pytest.approx((7 + 2 / 3) / 8, abs=0.0005) and got["f1"] > got["exact"]
    assert got["no_answer_not_in_context"] == 1.0 and got["no_answer_answered_otherwise"] == 0.0
    by_id = {d["id"]: d for d in details}
    assert by_id["cli_qa:00000:3"]["prediction"] == "83" and by_id["cli_qa:00000:3"]["f1"] == pytest.approx(2 / 3)
    assert all(d["prediction"] == "The answer is not in the context." for d in details if not d["answerable"])
    assert out.count("\n--- cli_qa:") == 2 and f"on {models['eval_dir'] / QA_ITEMS_FILE}" in out


def test_the_same_model_untrained_reads_zero(models, capsys):
    got, _, out = _run([str(models["untrained"]), str(models["eval_dir"]), "--count", "0"], capsys)
    expected, _ = _direct(models["untrained"], ITEMS)
    _assert_report_is(got, expected)
    assert got["exact"] == 0.0 and got["f1"] < 0.05 and got["no_answer_not_in_context"] == 0.0, out
    assert got["items"] == 8 and got["unanswerable"] == 3


def test_the_hugging_face_export_answers_as_its_gold_checkpoint(models, capsys):
    out_json = models["root"] / "out" / "hf.jsonl"
    got, details, _ = _run([str(models["hf"]), str(models["eval_dir"] / QA_ITEMS_FILE), "--count", "0",
                            "--json", str(out_json), "--batch-size", "3"], capsys)
    # The export through transformers' generate: the scorer's numbers and answers of the GOLD checkpoint it came from.
    expected, expected_details = _direct(models["gold"], ITEMS)
    _assert_report_is(got, expected)
    assert [(d["id"], d["prediction"]) for d in details] == [(d["id"], d["prediction"]) for d in expected_details]
    assert got["exact"] == pytest.approx(0.875) and got["no_answer_not_in_context"] == 1.0


def test_count_scores_the_trainers_fixed_subset(models, capsys):
    out_json = models["root"] / "out" / "subset.jsonl"
    got, details, _ = _run([str(models["gold"]), str(models["eval_dir"]), "--count", "4", "--seed", "7",
                            "--json", str(out_json)], capsys)
    chosen = fixed_subset(ITEMS, 4, 7)
    assert [d["id"] for d in details] == [it["id"] for it in chosen]
    assert any(not it["answerable"] for it in chosen) and any(it["answerable"] for it in chosen)
    expected, _ = _direct(models["gold"], chosen)
    _assert_report_is(got, expected)
    assert got["items"] == 4


def _bad_eval_dirs(root: Path) -> dict[str, Path]:
    dirs = {}
    dirs["no_items"] = root / "no_items"
    dirs["no_items"].mkdir()
    dirs["bad_line"] = root / "bad_line"
    dirs["bad_line"].mkdir()
    (dirs["bad_line"] / QA_ITEMS_FILE).write_text(json.dumps(ITEMS[0]) + "\n{not json\n")
    dirs["changed"] = root / "changed"
    dirs["changed"].mkdir()
    entry = write_qa_items(dirs["changed"], ITEMS)
    (dirs["changed"] / "manifest.json").write_text(json.dumps({"qa_items": {**entry, "count": 9}}))
    dirs["other_name"] = root / "other_name" / "items.jsonl"
    dirs["other_name"].parent.mkdir()
    dirs["other_name"].write_text(json.dumps(ITEMS[0]) + "\n")
    return dirs


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "does not exist"),
    ("missing_file", f"holds no {QA_ITEMS_FILE}"),
    ("no_items", f"holds no {QA_ITEMS_FILE}"),
    ("bad_line", "line 2: not valid JSON"),
    ("changed", "records 9 items"),
    ("other_name", f"is a file but not {QA_ITEMS_FILE}"),
    ("missing_checkpoint", "is not a directory"),
    ("not_a_checkpoint", "neither a GOLD checkpoint"),
    ("broken_export", "grounded_qa: "),
])
def test_bad_input_stops_with_a_message(models, tmp_path, case, message):
    dirs = _bad_eval_dirs(tmp_path)
    checkpoint, items = models["gold"], models["eval_dir"]
    if case == "missing_dir":
        items = tmp_path / "nowhere"
    elif case == "missing_file":
        items = dirs["no_items"] / QA_ITEMS_FILE
    elif case in dirs:
        items = dirs[case]
    elif case == "missing_checkpoint":
        checkpoint = tmp_path / "no_checkpoint"
    elif case == "not_a_checkpoint":
        checkpoint = dirs["no_items"]
    elif case == "broken_export":  # a config.json and no weights
        checkpoint = tmp_path / "broken_export"
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text((models["hf"] / "config.json").read_text())
    with pytest.raises(SystemExit) as stop:
        cli.main([str(checkpoint), str(items), "--device", "cpu"])
    assert isinstance(stop.value.code, str) and stop.value.code.startswith("grounded_qa: "), stop.value.code
    assert message in stop.value.code


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--count", "-1")])
def test_bad_numbers_are_refused_by_the_parser(models, flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([str(models["gold"]), str(models["eval_dir"]), flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_a_wrong_items_path_is_one_line_and_a_nonzero_exit_from_the_command_line(models, tmp_path):
    result = subprocess.run([sys.executable, "scripts/eval/grounded_qa.py", str(models["gold"]),
                             str(tmp_path / "nowhere" / QA_ITEMS_FILE), "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"grounded_qa: eval set directory {tmp_path / 'nowhere'} does not exist")
