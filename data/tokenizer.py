"""GPT-2 BPE through tiktoken, offline.

`tiktoken.get_encoding("gpt2")` downloads its vocabulary at run time, which fails on a machine without internet
(a RunPod pod behind a proxy, this CI). The ranks file ships with the project instead
(`data/tokenizer/gpt2.tiktoken`, the same file as tiktoken's `r50k_base` and openai-whisper's `gpt2.tiktoken`)
and its sha256 is checked on every load, so a corrupted or swapped vocabulary cannot produce silently wrong ids.

    from data.tokenizer import get_tokenizer
    enc = get_tokenizer()
    enc.encode_ordinary("Hello world")  # [15496, 995]

`save_hf_tokenizer(directory, model_max_length)` writes the same encoding as a Hugging Face fast tokenizer
(`tokenizer.json` + configs, built offline from the same ranks file; `scripts/export_hf.py` puts it in every export),
so `transformers.AutoTokenizer.from_pretrained(directory)` gives the ids tiktoken gives. It needs `transformers`,
imported only there: the rest of this module (all that training uses) needs tiktoken alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path

import tiktoken

RANKS_PATH = Path(__file__).resolve().parent / "tokenizer" / "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
N_VOCAB = 50257
EOT = 50256
EOT_TEXT = "<|endoftext|>"
# GPT-2's split pattern in tiktoken's faster but equivalent form (tiktoken_ext/openai_public.py r50k_pat_str).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def load_ranks(path: str | Path = RANKS_PATH, expected_sha256: str = RANKS_SHA256) -> dict[bytes, int]:
    """Parse a `.tiktoken` ranks file (base64 token, space, rank per line) after checking its sha256."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tokenizer ranks file {path} is missing; restore it from git (git checkout -- {path})")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ValueError(
            f"tokenizer ranks file {path} has sha256 {actual}, expected {expected_sha256} (the GPT-2 vocabulary); "
            f"restore it from git (git checkout -- {path})"
        )
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: cannot parse ranks line {line[:40]!r}") from e
    return ranks


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding (50257 ids, `<|endoftext|>` = 50256), built from the committed ranks file."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=load_ranks(),
        special_tokens={EOT_TEXT: EOT},
        explicit_n_vocab=N_VOCAB,
    )


def tokenizer_info() -> dict:
    """What a manifest records about the tokenizer, so a reader can refuse tokens from a different vocabulary."""
    return {"name": "gpt2", "sha256": RANKS_SHA256, "n_vocab": N_VOCAB, "eot": EOT}


# Encoded by `save_hf_tokenizer` with both tokenizers before anything is written: code, whitespace runs,
# contractions, digits, non-ASCII and the special token, the places where two BPE front ends could differ.
_HF_SELF_CHECK = "def f(x):\n\tif x:\n        return 'a'  \n\n\nIt's 3.14159 café 日本 🎉 да<|endoftext|>  end   "


def save_hf_tokenizer(directory: str | Path, model_max_length: int) -> list[str]:
    """Write this encoding as a Hugging Face fast tokenizer into `directory` (which must exist): `tokenizer.json`,
    `tokenizer_config.json` (PreTrainedTokenizerFast; bos = eos = unk = `<|endoftext|>`, no pad token) and
    `special_tokens_map.json`. Returns the names written. Offline: built from the shipped ranks file (sha256-checked)
    and checked to encode a sample exactly as `get_tokenizer()` does; a mismatch is a ValueError."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class ShippedRanksConverter(TikTokenConverter):
        # The base reads vocab_file with tiktoken.load.load_tiktoken_bpe (a cache dir, no sha256 check); read ours.
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return load_ranks(tiktoken_url)

    # transformers/convert_slow_tokenizer.py TikTokenConverter.converted(): BPE(vocab, merges rebuilt from the ranks,
    # ignore_merges) behind Split(pattern, "isolated") + ByteLevel(use_regex=False), each extra special token appended
    # as AddedToken(special=True) (so <|endoftext|> takes the next id, 50256), ByteLevel decoder.
    tokenizer = ShippedRanksConverter(
        vocab_file=str(RANKS_PATH), pattern=GPT2_PAT_STR, extra_special_tokens=[EOT_TEXT]
    ).converted()
    expected = get_tokenizer().encode(_HF_SELF_CHECK, allowed_special="all")
    got = tokenizer.encode(_HF_SELF_CHECK, add_special_tokens=False).ids
    if tokenizer.get_vocab_size() != N_VOCAB or tokenizer.token_to_id(EOT_TEXT) != EOT or got != expected:
        raise ValueError(
            f"the Hugging Face tokenizer converted from {RANKS_PATH} does not match tiktoken's GPT-2 encoding "
            f"(vocab {tokenizer.get_vocab_size()}, {EOT_TEXT} -> {tokenizer.token_to_id(EOT_TEXT)}, sample ids "
            f"{got[:12]}... vs {expected[:12]}...): did transformers' TikTokenConverter or GPT2_PAT_STR change?"
        )
    directory = Path(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    config = {
        # Loaded from tokenizer.json alone, no network (transformers 5: models/auto/tokenization_auto.py maps it to
        # TokenizersBackend, the class PreTrainedTokenizerFast now names); "TokenizersBackend" would break 4.x.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # True: 4.x decodes " ." as "." (5.x ignores it for BPE)
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
