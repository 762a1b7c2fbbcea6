"""Token directories: `manifest.json` + uint16 little-endian shard files, read through `np.memmap`.

A token directory is one concatenated stream of GPT-2 token ids (EOT 50256 after every document), split into
shard files. The manifest lists the shards in stream order with their token counts and sha256, plus the tokenizer
and the lineage of the tokens (see `data/lineage.py`). Every build step and every test writes through
`write_token_dir` / `write_manifest`; the trainer reads through `TokenDataset`.

    from data.token_dataset import TokenDataset, write_token_dir
    write_token_dir("/tmp/toy", [[1, 2, 3, 50256], np.arange(10)])
    ds = TokenDataset("/tmp/toy")               # verify="size": cheap checks on open
    ds.sample(0, block_size=4)                  # int64 array of 5 tokens
    TokenDataset("/tmp/toy", verify="full")     # also sha256 and max token id of every shard
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from data.tokenizer import N_VOCAB, tokenizer_info

MANIFEST_NAME = "manifest.json"
FORMAT = "uint16-tokens"
FORMAT_VERSION = 1
DTYPE = np.dtype("<u2")
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens = 128 MiB per shard: few files, and cheap to hash or hard-link
BUILD_HINT = "run scripts/unified_build/build_unified_dataset.py first (see docs/DATASET.md)"


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def max_token_file(path: str | os.PathLike, chunk_tokens: int = 1 << 24) -> int:
    """Largest token id in a shard, read in chunks so a 128 MiB shard never needs 128 MiB of int64."""
    arr = np.memmap(path, dtype=DTYPE, mode="r") if os.path.getsize(path) else np.zeros(0, DTYPE)
    best = -1
    for start in range(0, len(arr), chunk_tokens):
        best = max(best, int(arr[start : start + chunk_tokens].max()))
    return best


def check_token_ids(tokens: np.ndarray, where: str) -> None:
    """Refuse ids outside GPT-2's vocabulary: such tokens would index past the embedding table or train on junk."""
    if tokens.size and (int(tokens.max()) >= N_VOCAB or int(tokens.min()) < 0):
        bad = int(tokens.max()) if int(tokens.max()) >= N_VOCAB else int(tokens.min())
        raise ValueError(
            f"{where}: token id {bad} is outside the GPT-2 vocabulary [0, {N_VOCAB}); the file is corrupt or was "
            f"written with another tokenizer; rebuild it ({BUILD_HINT})"
        )


def fingerprint_of(files: Sequence[dict]) -> str:
    """Short stable id of a token stream: same shard names, counts and hashes -> same id on every machine."""
    payload = json.dumps([[f["path"], int(f["num_tokens"]), f["sha256"]] for f in files], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_entry(directory: Path, path: Path, *, check_ids: bool = True) -> dict:
    """Manifest entry for one shard already in place under `directory`."""
    size = path.stat().st_size
    if size % 2:
        raise ValueError(f"{path}: odd byte size {size}, not a uint16 token file; rebuild it ({BUILD_HINT})")
    if check_ids:
        top = max_token_file(path)
        if top >= N_VOCAB:
            raise ValueError(f"{path}: token id {top} >= {N_VOCAB}; rebuild it ({BUILD_HINT})")
    return {"path": path.relative_to(directory).as_posix(), "num_tokens": size // 2, "sha256": sha256_file(path)}


def write_manifest(directory: str | os.PathLike, files: Sequence[dict], *, lineage: dict | None = None,
                   extra: dict | None = None) -> dict:
    """Write `manifest.json` (temp name, then rename) for shards already in `directory`; returns the manifest."""
    directory = Path(directory)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": "uint16",
        "byte_order": "little",
        "tokenizer": tokenizer_info(),
        "num_tokens": int(sum(int(f["num_tokens"]) for f in files)),
        "fingerprint": fingerprint_of(files),
        "files": list(files),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
        "lineage": lineage or {},
    }
    tmp = directory / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, directory / MANIFEST_NAME)
    return manifest


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp directory into place; an old directory of that name is removed only afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_token_dir(directory: str | os.PathLike, arrays_or_token_lists: Iterable[Sequence[int] | np.ndarray], *,
                    lineage: dict | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                    extra: dict | None = None) -> Path:
    """Write the concatenation of `arrays_or_token_lists` as a token directory, atomically.

    Tokens are written as given (add EOT yourself). Shards are cut every `shard_tokens` tokens. Everything goes
    to a temp directory next to `directory` that is renamed into place when complete, so a reader never sees a
    half-written directory and an interrupted write leaves only a `.tmp-*` folder behind.
    """
    directory = Path(directory)
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files: list[dict] = []
    shard_idx, in_shard, fh, h = 0, 0, None, None

    def close_shard():
        nonlocal fh, h, shard_idx, in_shard
        if fh is not None:
            fh.close()
            files.append({"path": f"shard_{shard_idx:05d}.bin", "num_tokens": in_shard, "sha256": h.hexdigest()})
            shard_idx, in_shard, fh, h = shard_idx + 1, 0, None, None

    try:
        for i, chunk in enumerate(arrays_or_token_lists):
            arr = np.asarray(chunk)
            if arr.ndim != 1:
                raise ValueError(f"write_token_dir: item {i} has shape {arr.shape}; expected a 1-D token list")
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"write_token_dir: item {i} has dtype {arr.dtype}; expected integer token ids")
            check_token_ids(arr, f"write_token_dir({directory}) item {i}")
            arr = arr.astype(DTYPE, copy=False)
            while arr.size:
                if fh is None:
                    fh, h = open(tmp / f"shard_{shard_idx:05d}.bin", "wb"), hashlib.sha256()
                take = arr[: shard_tokens - in_shard]
                data = take.tobytes()
                fh.write(data)
                h.update(data)
                in_shard += take.size
                arr = arr[take.size :]
                if in_shard == shard_tokens:
                    close_shard()
        close_shard()
        write_manifest(tmp, files, lineage=lineage, extra=extra)
        _replace_dir(tmp, directory)
    except BaseException:
        if fh is not None:
            fh.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


class TokenDataset:
    """A token directory: manifest.json + uint16 little-endian shard files, read through np.memmap.

    verify="size" (default, cheap): the manifest parses, has the expected format and tokenizer, every listed file
    is present and its byte size is 2 x its token count. verify="full": also the sha256 and the largest token id
    of every file. `sample()` checks the ids of every sample it returns in any case.
    """

    def __init__(self, directory: str | os.PathLike, *, verify: str = "size"):
        if verify not in ("size", "full"):
            raise ValueError(f"TokenDataset verify must be 'size' or 'full', got {verify!r}")
        self.directory = Path(directory)
        mpath = self.directory / MANIFEST_NAME
        if not self.directory.is_dir():
            raise ValueError(f"token directory {self.directory} does not exist; {BUILD_HINT}")
        if not mpath.is_file():
            raise ValueError(f"{mpath} is missing (an unfinished or foreign directory?); {BUILD_HINT}")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath} is not valid JSON ({e}); {BUILD_HINT}") from e
        self._check_header(mpath)
        self._paths: list[Path] = []
        counts = []
        for i, entry in enumerate(self.manifest["files"]):
            missing = {"path", "num_tokens", "sha256"} - set(entry)
            if missing:
                raise ValueError(f"{mpath}: files[{i}] lacks {sorted(missing)}; {BUILD_HINT}")
            path = self.directory / entry["path"]
            if not path.is_file():
                raise ValueError(f"{path} is listed in {mpath} but missing; re-copy the directory or {BUILD_HINT}")
            size = path.stat().st_size
            if size % 2:
                raise ValueError(f"{path}: odd byte size {size}, the shard is truncated or corrupt; {BUILD_HINT}")
            if size != 2 * int(entry["num_tokens"]):
                raise ValueError(
                    f"{path}: {size} bytes but {mpath} says {entry['num_tokens']} tokens ({2 * entry['num_tokens']}"
                    f" bytes); the shard is truncated or was replaced; re-copy the directory or {BUILD_HINT}"
                )
            if verify == "full":
                actual = sha256_file(path)
                if actual != entry["sha256"]:
                    raise ValueError(f"{path}: sha256 {actual} does not match {mpath} ({entry['sha256']}); "
                                     f"re-copy the directory or {BUILD_HINT}")
                top = max_token_file(path)
                if top >= N_VOCAB:
                    raise ValueError(f"{path}: token id {top} >= {N_VOCAB}; {BUILD_HINT}")
            self._paths.append(path)
            counts.append(int(entry["num_tokens"]))
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_tokens = int(self._starts[-1])
        if self.num_tokens != int(self.manifest["num_tokens"]):
            raise ValueError(f"{mpath}: num_tokens {self.manifest['num_tokens']} != sum over files "
                             f"{self.num_tokens}; {BUILD_HINT}")
        self.fingerprint = fingerprint_of(self.manifest["files"])
        self._maps: list[np.memmap | None] = [None] * len(self._paths)

    def _check_header(self, mpath: Path) -> None:
        m = self.manifest
        for key in ("format", "format_version", "dtype", "tokenizer", "files", "num_tokens"):
            if key not in m:
                raise ValueError(f"{mpath}: missing field {key!r}; {BUILD_HINT}")
        if m["format"] != FORMAT or m["format_version"] != FORMAT_VERSION or m["dtype"] != "uint16":
            raise ValueError(f"{mpath}: format {m['format']!r} v{m['format_version']} dtype {m['dtype']!r}, this "
                             f"reader needs {FORMAT!r} v{FORMAT_VERSION} uint16; rebuild with this version")
        tok, want = m["tokenizer"], tokenizer_info()
        if tok.get("sha256") != want["sha256"] or tok.get("n_vocab") != want["n_vocab"]:
            raise ValueError(f"{mpath}: tokenizer {tok} differs from this project's GPT-2 ({want}); "
                             f"retokenize with data/tokenizer.py")

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.directory)!r}, num_tokens={self.num_tokens}, fingerprint={self.fingerprint})"

    def __getstate__(self):
        # memmaps would pickle as full copies of the data (DataLoader workers): reopen them lazily instead.
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._paths)
        return state

    def _map(self, i: int) -> np.memmap:
        if self._maps[i] is None:
            self._maps[i] = np.memmap(self._paths[i], dtype=DTYPE, mode="r")
        return self._maps[i]

    def num_samples(self, block_size: int) -> int:
        """Number of non-overlapping samples of `block_size + 1` tokens (input plus shifted target)."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        n = (self.num_tokens - 1) // block_size
        if n < 1:
            raise ValueError(f"{self.directory} holds {self.num_tokens} tokens, fewer than one sample of "
                             f"block_size + 1 = {block_size + 1}; build a bigger dataset or lower block_size")
        return n

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, spanning shards as needed (ids checked)."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise ValueError(f"{self.directory}: token range [{start}, {stop}) outside [0, {self.num_tokens})")
        out = np.empty(stop - start, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            lo = pos - int(self._starts[i])
            hi = min(stop, int(self._starts[i + 1])) - int(self._starts[i])
            if hi > lo:
                piece = self._map(i)[lo:hi]
                if int(piece.max()) >= N_VOCAB:
                    raise ValueError(f"{self._paths[i]}: token id {int(piece.max())} >= {N_VOCAB} near token {lo}; "
                                     f"the shard is corrupt; {BUILD_HINT}")
                out[pos - start : pos - start + (hi - lo)] = piece
                pos += hi - lo
            i += 1
        return out

    def sample(self, index: int, block_size: int) -> np.ndarray:
        """Tokens [index*block_size, index*block_size + block_size + 1) as int64 (may span shards)."""
        n = self.num_samples(block_size)
        if not 0 <= index < n:
            raise IndexError(f"{self.directory}: sample {index} outside [0, {n}) for block_size {block_size}")
        start = index * block_size
        return self.tokens(start, start + block_size + 1)
