"""scripts/generate.py on a GOLD checkpoint: the RAG prompt is the training template, the completion is the
generator's, bad input stops with a message before the model loads."""

from __future__ import annotations

import json

import pytest
import torch

from data.formats import render_retrieval
from data.tokenizer import get_tokenizer
from model.config import ModelConfig
from model.generate import generate
from model.io import save_model_checkpoint
from model.transformer import Transformer
from scripts import generate as cli


@pytest.fixture()
def gold(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(n_embd=64, n_head=4, n_layer=2, block_size=128, dropout=0.0, fused_kernels=False,
                         init_std=0.3)
    model = Transformer(config).eval()
    save_model_checkpoint(tmp_path / "gold", model, config, {"step": 3})
    return tmp_path / "gold", model


def test_rag_mode_renders_the_training_template_and_prints_the_generators_answer(gold, tmp_path, capsys):
    path, model = gold
    (tmp_path / "passage.txt").write_text("Aline Berg founded Nordlicht Tools in Bergen in 1987.\n")
    questions = ["Who founded Nordlicht Tools?", "Where is it?"]
    argv = [str(path), "--context", str(tmp_path / "passage.txt"), "--show-prompt", "--json", str(tmp_path / "o")]
    for q in questions:
        argv += ["--question", q]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    enc = get_tokenizer()
    prompts = [render_retrieval("Aline Berg founded Nordlicht Tools in Bergen in 1987.", q) for q in questions]
    expected = generate(model, [enc.encode(p) for p in prompts], 48, stop_ids=cli.line_stop_ids(enc))
    records = [json.loads(line) for line in (tmp_path / "o").read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts
    assert [r["tokens"] for r in records] == [g.tokens for g in expected]
    assert all(p in out for p in prompts) and prompts[0].endswith("\nAnswer:")
    assert [r["completion"] for r in records] == [enc.decode(g.tokens).split("\n")[0].strip() for g in expected]


def test_sampled_completions_are_reproducible_by_seed(gold, capsys):
    path, _ = gold
    argv = [str(path), "--prompt", "Once upon", "--temperature", "1.0", "--seed", "7", "--samples", "2",
            "--max-new-tokens", "6"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first and "completion 1.2" in first


@pytest.mark.parametrize("argv, message", [
    (["--context", "missing.txt", "--question", "q"], "does not exist"),
    (["--question", "q"], "needs both --context"),
    ([], "nothing to generate"),
    (["--prompt", "x", "--samples", "2"], "needs --temperature"),
])
def test_bad_arguments_stop_with_a_message(gold, argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main([str(gold[0]), *argv])
    assert message in capsys.readouterr().err


def test_a_folder_that_is_no_checkpoint_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit, match="neither a GOLD checkpoint"):
        cli.main([str(tmp_path), "--prompt", "x"])


def test_a_prompt_longer_than_the_block_is_refused(gold):
    with pytest.raises(SystemExit, match="model.block_size"):
        cli.main([str(gold[0]), "--prompt", "word " * 200])
