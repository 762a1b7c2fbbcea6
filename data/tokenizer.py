"""GPT-2 BPE through tiktoken, offline.

`tiktoken.get_encoding("gpt2")` downloads its vocabulary at run time, which fails on a machine without internet
(a RunPod pod behind a proxy, this CI). The ranks file ships with the project instead
(`data/tokenizer/gpt2.tiktoken`, the same file as tiktoken's `r50k_base` and openai-whisper's `gpt2.tiktoken`)
and its sha256 is checked on every load, so a corrupted or swapped vocabulary cannot produce silently wrong ids.

    from data.tokenizer import get_tokenizer
    enc = get_tokenizer()
    enc.encode_ordinary("Hello world")  # [15496, 995]
"""

from __future__ import annotations

import base64
import functools
import hashlib
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
