"""The Hugging Face tokenizer in an export (scripts/export_hf.py, data.tokenizer.save_hf_tokenizer): the ids tiktoken
gives, its special tokens and length, and `pipeline("text-generation")` continuing a prompt as our model does."""

from __future__ import annotations

import json
import random

import pytest
import torch

from data.tokenizer import EOT, EOT_TEXT, N_VOCAB, get_tokenizer, tokenizer_info
from launcher.export import export
from model.config import ModelConfig
from model.generate import generate as model_generate
from model.io import load_model_checkpoint, save_model_checkpoint
from model.transformer import Transformer

TINY = dict(n_embd=64, n_head=4, n_layer=2, block_size=64, dropout=0.0, fused_kernels=False)

CORPUS = [
    # Python code: 4-space and tab indentation, blank lines, trailing spaces, spaces before a newline.
    'def greet(name: str) -> str:\n    """Say hi."""\n    if name:\n        return f"Hi {name}!"  \n\n\n'
    "\treturn None\t\n\t\tpass\n",
    "class A:\n  x = [1, 2, 3]  # two-space indent   \n\n    \n",
    # English prose with contractions (GPT-2's pattern is case-sensitive: "IT'S" splits differently from "it's").
    "It's what they're saying: we'll see, I've been told you'd've known. Don't. IT'S WE'RE",
    "Hello , world . isn 't it ? ( yes ) -- \"quoted\" 'single'",  # spaces before punctuation: a decode that
    # cleaned up tokenization spaces would lose them
    # Non-ASCII: accents, combining marks, CJK, emoji (with a skin-tone modifier and a ZWJ sequence), Cyrillic, Arabic.
    "naïve café résumé — e\u0301 Ångström",
    "日本語のテキストです。中文测试，한국어",
    "emoji 😀👍🏽👨‍👩‍👧 ok",
    "Привет, мир! Как дела? ٣٤٥ مرحبا",
    # Whitespace runs.
    "a" + " " * 17 + "b",
    "\n\n\n",
    "trailing spaces   ",
    "space before newline  \nnext\r\n\r\nline",
    " leading space and \u00a0non-breaking\u3000ideographic",
    # Digits.
    "1234567890 3.14159 2024-01-01 0x1F 1,000,000 -42",
    # The special token inside text: one id, 50256, wherever it is.
    f"end of one document.{EOT_TEXT}Start of the next",
    f"{EOT_TEXT}",
    f"a {EOT_TEXT} b{EOT_TEXT}{EOT_TEXT}\n",
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    # Short strings over the characters where regex engines differ (Unicode whitespace, letters vs numbers, quotes).
    rng = random.Random(seed)
    alphabet = list(" \t\n\r\x0b\f\u00a0\u3000") * 3 + list("ab'sStlmdvreZ09١²½.,!?-_\"(){}é日🎉я\u200b\u0301")
    alphabet += [EOT_TEXT, "'ll", "'re", "'s"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint whose greedy continuation depends on the context, exported: (export dir, checkpoint dir)."""
    tmp = tmp_path_factory.mktemp("hf_tokenizer")
    config = ModelConfig(**TINY)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        # At init the residual stream is mostly the input embedding and lm_head is tied to it, so greedy decoding
        # repeats the last token. Larger block weights make the continuation depend on the context; a larger final
        # norm gain widens the top-1 margins, so float noise between the two implementations cannot flip an argmax.
        for name, p in model.named_parameters():
            if name.startswith("layers.") and p.dim() == 2:
                p.mul_(25)
        model.norm.weight.uniform_(20, 40)
    save_model_checkpoint(tmp / "ckpt", model, config, {"step": 1})
    export(tmp / "ckpt", tmp / "hf")
    return tmp / "hf", tmp / "ckpt"


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(exported[0])


def test_hf_tokenizer_gives_tiktoken_ids_and_decodes_back(hf_tokenizer):
    enc = get_tokenizer()
    assert hf_tokenizer.is_fast
    mismatched, not_round_trip = [], []
    for text in CORPUS + _random_strings(2000):
        ids = hf_tokenizer.encode(text)  # the default add_special_tokens=True must add nothing
        if ids != enc.encode(text, allowed_special="all"):
            mismatched.append((text, ids, enc.encode(text, allowed_special="all")))
        if hf_tokenizer.decode(ids) != text:
            not_round_trip.append((text, hf_tokenizer.decode(ids)))
    assert not mismatched, mismatched[:3]
    assert not not_round_trip, not_round_trip[:3]
    ids = hf_tokenizer.encode(f"a{EOT_TEXT}b")
    assert ids.count(EOT) == 1 and len(ids) == 3


def test_hf_tokenizer_special_tokens_and_length(exported, hf_tokenizer):
    export_dir, ckpt = exported
    _, config, _ = load_model_checkpoint(ckpt)
    assert hf_tokenizer.eos_token_id == hf_tokenizer.bos_token_id == EOT
    assert hf_tokenizer.eos_token == EOT_TEXT
    assert hf_tokenizer.model_max_length == config.block_size == 64
    assert len(hf_tokenizer) == N_VOCAB
    assert hf_tokenizer.pad_token is None  # batched pipelines need one set by the caller (scripts/export_hf.py)
    # transformers 5 ignores clean-up for a BPE tokenizer anyway; 4.x applies it, and " ." would decode to ".".
    assert hf_tokenizer.clean_up_tokenization_spaces is False
    # tokenizer.json alone (what tools without transformers read) holds the special token; AutoTokenizer would add a
    # missing one from tokenizer_config.json and hide its absence.
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    assert raw.token_to_id(EOT_TEXT) == EOT and raw.get_vocab_size() == N_VOCAB
    assert raw.encode(f"a{EOT_TEXT}b").ids == get_tokenizer().encode(f"a{EOT_TEXT}b", allowed_special="all")
    metadata = json.loads((export_dir / "export_metadata.json").read_text())
    assert {k: metadata["tokenizer"][k] for k in tokenizer_info()} == tokenizer_info()
    assert all((export_dir / name).is_file() for name in metadata["tokenizer"]["files"])
    assert not (export_dir.parent / "hf.tmp").exists()


def test_text_generation_pipeline_continues_like_our_greedy_decode(exported):
    from transformers import pipeline

    export_dir, ckpt = exported
    model, _, _ = load_model_checkpoint(ckpt)
    enc = get_tokenizer()
    generate = pipeline("text-generation", model=str(export_dir), device="cpu")
    new_tokens = 8
    for prompt in ["The cat sat on the", "def main():\n    return", "Paris is the capital of"]:
        ids = enc.encode(prompt)
        with torch.no_grad():  # the greedy path must not hang on a near tie, or the comparison would be noise
            idx = torch.tensor([ids])
            for _ in range(new_tokens):
                top2 = model(idx)[0][0, -1, :N_VOCAB].topk(2)
                assert (top2.values[0] - top2.values[1]).item() > 1e-3, "a near tie"
                idx = torch.cat([idx, top2.indices[:1].view(1, 1)], dim=1)
        # Our KV-cache generator (never a padded id; the export's generation_config suppresses them for HF too).
        ours = model_generate(model, [ids], new_tokens)[0].tokens
        assert ours == idx[0, len(ids):].tolist()
        assert len(set(ours)) > 2, f"trivial continuation {ours}: the test model does not read the context"
        out = generate(prompt, do_sample=False, max_new_tokens=new_tokens, return_tensors=True)
        assert out[0]["generated_token_ids"] == ids + ours, prompt
        text = generate(prompt, do_sample=False, max_new_tokens=new_tokens)[0]["generated_text"]
        assert text == prompt + enc.decode(ours), prompt


def test_save_hf_tokenizer_refuses_a_tokenizer_that_differs_from_tiktoken(tmp_path, monkeypatch):
    # The converter's default pattern (cl100k's, digits in groups of three) instead of GPT-2's: refused, not written.
    import inspect

    from transformers.convert_slow_tokenizer import TikTokenConverter

    import data.tokenizer

    data.tokenizer.get_tokenizer()  # cached with the right pattern first: the check compares against it
    default_pattern = inspect.signature(TikTokenConverter).parameters["pattern"].default
    monkeypatch.setattr(data.tokenizer, "GPT2_PAT_STR", default_pattern)
    with pytest.raises(ValueError, match="does not match tiktoken"):
        data.tokenizer.save_hf_tokenizer(tmp_path, model_max_length=64)
    assert list(tmp_path.iterdir()) == []
