"""Token directories: `manifest.json` + uint16 little-endian shard files + a packing index per block size.

A token directory is one concatenated stream of GPT-2 token ids (EOT 50256 after every document), split into
shard files. The manifest lists the shards in stream order with their token counts and sha256, plus the tokenizer
and the lineage of the tokens (see `data/lineage.py`). Samples are not fixed windows of the stream: a packing
index (`data/packing.py`, format version 2) lists the stream pieces of each sample, so a document that fits in
one sample is always inside one sample. Every build step and every test writes through `write_token_dir` /
`write_manifest` / `add_packing`; the trainer reads through `TokenDataset`.

    from data.token_dataset import TokenDataset, write_token_dir
    write_token_dir("/tmp/toy", [[1, 2, 3, 50256], np.arange(10)], pack_block_sizes=[4])
    ds = TokenDataset("/tmp/toy")               # verify="size": cheap checks on open
    ds.sample(0, block_size=4)                  # int64 array of 5 tokens, -1 where padded
    TokenDataset("/tmp/toy", verify="full")     # also sha256 and max token id of every shard, sha256 of the index
    python scripts/unified_build/pack_tokens.py /tmp/toy --block-size 8    # index another block size (data/packing.py)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from data import packing as packing_mod
from data.atomic import atomic_write, atomic_write_text, replace_dir
from data.tokenizer import EOT, N_VOCAB, tokenizer_info

MANIFEST_NAME = "manifest.json"
FORMAT = "uint16-tokens"
FORMAT_VERSION = 2  # 2: samples come from the packing index (manifest "packing"); 1: fixed windows of the stream
DTYPE = np.dtype("<u2")
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens = 128 MiB per shard: few files, and cheap to hash or hard-link
BUILD_HINT = "run scripts/unified_build/build_unified_dataset.py first (see docs/DATASET.md)"
# the command the reader's errors name to add a packing index in place (its CLI lives in scripts/, not here)
PACK_COMMAND = "python scripts/unified_build/pack_tokens.py"


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
    atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_token_dir(directory: str | os.PathLike, arrays_or_token_lists: Iterable[Sequence[int] | np.ndarray], *,
                    lineage: dict | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                    extra: dict | None = None, pack_block_sizes: Sequence[int] = (),
                    pack_method: str = packing_mod.METHOD) -> Path:
    """Write the concatenation of `arrays_or_token_lists` as a token directory, atomically.

    Tokens are written as given (add EOT yourself: documents are split after each EOT). Shards are cut every
    `shard_tokens` tokens. A packing index is built for each of `pack_block_sizes` (a trainer can read only the
    block sizes indexed; `pack_method` METHOD_FIXED only for streams that lay out their samples themselves).
    Everything goes to a temp directory next to `directory` that is renamed into place when
    complete, so a reader never sees a half-written directory and an interrupted write leaves only a `.tmp-*`
    folder behind.
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
        for block_size in pack_block_sizes:
            add_packing(tmp, block_size, boundaries=packing_mod.BOUNDARIES_EOT, method=pack_method)
        replace_dir(tmp, directory)
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
        self.stream_fingerprint = fingerprint_of(self.manifest["files"])
        self.packing = self.manifest.get("packing") or {}
        self.fingerprint = sample_fingerprint(self.stream_fingerprint, self.packing)
        for block, entry in self.packing.get("block_sizes", {}).items():
            for role in ("offsets", "segments"):
                path = self.directory / entry[role]["path"]
                if not path.is_file():
                    raise ValueError(f"{path} (packing index for block_size {block}) is listed in {mpath} but "
                                     f"missing; re-copy the directory or re-add it with `{PACK_COMMAND} "
                                     f"{self.directory} --block-size {block}`")
                if verify == "full" and sha256_file(path) != entry[role]["sha256"]:
                    raise ValueError(f"{path}: sha256 does not match {mpath}; re-copy the directory or re-add the "
                                     f"index with `{PACK_COMMAND} {self.directory} --block-size {block}`")
        self._starts_list = [int(x) for x in self._starts]
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._maps: list[np.memmap | None] = [None] * len(self._paths)

    def _check_header(self, mpath: Path) -> None:
        m = self.manifest
        for key in ("format", "format_version", "dtype", "tokenizer", "files", "num_tokens"):
            if key not in m:
                raise ValueError(f"{mpath}: missing field {key!r}; {BUILD_HINT}")
        if m["format"] == FORMAT and m["format_version"] == 1 and m["dtype"] == "uint16":
            raise ValueError(
                f"{mpath}: format version 1 (samples were fixed windows of the stream, which cut documents at sample "
                f"boundaries); this reader needs version {FORMAT_VERSION}, with a grounding-safe packing index. The "
                f"shards are still good: add the index in place with `{PACK_COMMAND} {self.directory} "
                f"--block-size <model.block_size>` (docs/DATASET.md, \"Packing\"), or rebuild the directory"
            )
        if m["format"] != FORMAT or m["format_version"] != FORMAT_VERSION or m["dtype"] != "uint16":
            raise ValueError(f"{mpath}: format {m['format']!r} v{m['format_version']} dtype {m['dtype']!r}, this "
                             f"reader needs {FORMAT!r} v{FORMAT_VERSION} uint16; rebuild it with this version of the "
                             f"code, or read it with the code that wrote it")
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
        state["_index"] = {}
        return state

    def _map(self, i: int) -> np.memmap:
        if self._maps[i] is None:
            self._maps[i] = np.memmap(self._paths[i], dtype=DTYPE, mode="r")
        return self._maps[i]

    def _packing_index(self, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, segments) of the packing for `block_size`, memmapped once and checked for consistency."""
        index = self._index.get(block_size)
        if index is not None:
            return index
        entry = self.packing.get("block_sizes", {}).get(str(block_size))
        if entry is None:
            have = sorted(int(b) for b in self.packing.get("block_sizes", {}))
            raise ValueError(f"{self.directory} has no packing index for block_size {block_size} (it has "
                             f"{have or 'none'}); add one with `{PACK_COMMAND} {self.directory} "
                             f"--block-size {block_size}` (docs/DATASET.md, \"Packing\")")
        where = f"{self.directory}: packing index for block_size {block_size}"
        try:
            offsets = np.load(self.directory / entry["offsets"]["path"], mmap_mode="r")
            segments = np.load(self.directory / entry["segments"]["path"], mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{where} is unreadable ({e}); re-add it with `{PACK_COMMAND} "
                             f"{self.directory} --block-size {block_size}`") from e
        n, m = int(entry["num_samples"]), int(entry["num_segments"])
        if (offsets.shape != (n + 1,) or segments.shape != (m, 2) or offsets.dtype != np.int64
                or segments.dtype != np.int64 or int(offsets[0]) != 0 or int(offsets[-1]) != m):
            raise ValueError(f"{where}: shapes {offsets.shape} / {segments.shape} do not match the manifest "
                             f"({n} samples, {m} segments); re-add it with `{PACK_COMMAND} "
                             f"{self.directory} --block-size {block_size}`")
        self._index[block_size] = (offsets, segments)
        return offsets, segments

    def num_samples(self, block_size: int) -> int:
        """Number of samples of `block_size + 1` tokens (input plus shifted target) in the packing index."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if self.num_tokens < block_size + 1:
            raise ValueError(f"{self.directory} holds {self.num_tokens} tokens, fewer than one sample of "
                             f"block_size + 1 = {block_size + 1}; build a bigger dataset or lower block_size")
        return int(self._packing_index(block_size)[0].shape[0]) - 1

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
        """Sample `index` of the packing for `block_size`: block_size + 1 int64 tokens, PAD (-1) after its last
        real token. Whole documents and pieces of long ones, each segment copied from one shard."""
        offsets, segments = self._packing_index(block_size)
        n = offsets.shape[0] - 1
        if not 0 <= index < n:
            raise IndexError(f"{self.directory}: sample {index} outside [0, {n}) for block_size {block_size}")
        out = np.full(block_size + 1, packing_mod.PAD, dtype=np.int64)
        pos = 0
        starts = self._starts_list
        for start, length in segments[int(offsets[index]) : int(offsets[index + 1])].tolist():
            i = bisect.bisect_right(starts, start) - 1  # scalar search: bisect on a list beats np.searchsorted
            lo = start - starts[i]
            if i >= len(self._paths) or lo + length > starts[i + 1] - starts[i] or pos + length > block_size + 1:
                raise ValueError(f"{self.directory}: sample {index} of the packing for block_size {block_size} "
                                 f"names tokens [{start}, {start + length}) that cross a shard or overflow the "
                                 f"sample; the index is corrupt: re-add it with `{PACK_COMMAND} "
                                 f"{self.directory} --block-size {block_size}`")
            out[pos : pos + length] = self._map(i)[lo : lo + length]
            if length and int(out[pos : pos + length].max()) >= N_VOCAB:
                bad = int(out[pos : pos + length].max())
                raise ValueError(f"{self._paths[i]}: token id {bad} >= {N_VOCAB} in sample {index} (tokens "
                                 f"[{start}, {start + length}) of {self.directory}): the shard is corrupt; rebuild "
                                 f"the directory ({BUILD_HINT})")
            pos += length
        return out


def sample_fingerprint(stream_fingerprint: str, packing: dict) -> str:
    """What the sampler and checkpoints identify a dataset by: its token stream and how it is cut into samples
    (the packing method and document boundaries; the block size is in the training config's fingerprint)."""
    if not packing:
        return stream_fingerprint
    blob = f"{stream_fingerprint}|{packing.get('method')}|{packing.get('document_boundaries')}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _documents(ds: TokenDataset, boundaries: str, file_range: tuple[int, int] | None = None,
               chunk_tokens: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Document bounds (starts + end) of the stream, or of files [a, b) of it, read shard by shard in chunks, and
    whether each document ends with EOT (one that does not is a file the mix cut, or the stream's end)."""
    a, b = file_range or (0, len(ds._paths))
    eots = []
    for i in range(a, b):
        arr = ds._map(i) if ds._starts[i + 1] > ds._starts[i] else np.zeros(0, DTYPE)
        for lo in range(0, len(arr), chunk_tokens):
            eots.append(np.flatnonzero(arr[lo : lo + chunk_tokens] == EOT) + int(ds._starts[i]) + lo)
    eot = np.concatenate(eots) if eots else np.zeros(0, np.int64)
    lo, hi = int(ds._starts[a]), int(ds._starts[b])
    files = ds._starts[a:b] if boundaries == packing_mod.BOUNDARIES_EOT_FILES else None
    bounds = packing_mod.document_bounds(eot - lo, hi - lo, None if files is None else files - lo) + lo
    return bounds, np.isin(bounds[1:] - 1, eot)  # a document ends with EOT when its last token is one


def _default_boundaries(manifest: dict) -> str:
    # The build pipeline's directories (a `sources` table) start a document at every file: a mix cuts a source's
    # last file mid-document, and the next file must not continue that document.
    return packing_mod.BOUNDARIES_EOT_FILES if manifest.get("sources") else packing_mod.BOUNDARIES_EOT


def add_packing(directory: str | os.PathLike, block_size: int, *, boundaries: str | None = None,
                method: str = packing_mod.METHOD) -> dict:
    """Build the packing index of `directory` for `block_size` and record it in its manifest; returns the entry.

    `method`: best-fit decreasing (data/packing.py), or METHOD_FIXED for a stream whose writer laid out every
    sample itself. `boundaries` (default: the directory's, else by `_default_boundaries`): where documents start.

    Nothing is rewritten when the manifest already has an index for this block size, stream and boundaries (a
    rebuild that changed nothing keeps its files). Index files are written to temp names and renamed, then the
    manifest is replaced (temp name, rename), so a reader sees the old directory or the new one."""
    directory = Path(directory)
    mpath = directory / MANIFEST_NAME
    if not mpath.is_file():
        raise ValueError(f"{mpath} is missing; not a token directory ({BUILD_HINT})")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format_version") == 1:  # the shards are the same in v1 and v2: upgrading is adding the index
        manifest["format_version"] = FORMAT_VERSION
        atomic_write_text(mpath, json.dumps(manifest, indent=1) + "\n")
    ds = TokenDataset(directory)
    boundaries = boundaries or ds.packing.get("document_boundaries") or _default_boundaries(ds.manifest)
    if boundaries not in (packing_mod.BOUNDARIES_EOT, packing_mod.BOUNDARIES_EOT_FILES):
        raise ValueError(f"document boundaries must be {packing_mod.BOUNDARIES_EOT!r} or "
                         f"{packing_mod.BOUNDARIES_EOT_FILES!r}, got {boundaries!r}")
    if method not in (packing_mod.METHOD, packing_mod.METHOD_FIXED):
        raise ValueError(f"packing method must be {packing_mod.METHOD!r} or {packing_mod.METHOD_FIXED!r}, got "
                         f"{method!r}")
    section = dict(ds.packing)
    if section and (section.get("method"), section.get("document_boundaries")) != (method, boundaries):
        section = {}  # another method or boundary rule: every block size is re-indexed under the new one
    entry = section.get("block_sizes", {}).get(str(block_size))
    if entry is not None and entry.get("stream_fingerprint") == ds.stream_fingerprint:
        return entry
    if method == packing_mod.METHOD_FIXED:
        packed = packing_mod.fixed_windows(ds.num_tokens, block_size, shard_starts=ds._starts)
    else:
        bounds, closed = _documents(ds, boundaries)
        packed = packing_mod.pack(bounds, block_size, shard_starts=ds._starts, ends_with_eot=closed)
    sub = directory / "packing"
    sub.mkdir(exist_ok=True)
    entry = {"stream_fingerprint": ds.stream_fingerprint, **packed.stats}
    for role, arr in (("offsets", packed.offsets), ("segments", packed.segments)):
        path = sub / f"b{block_size}.{role}.npy"
        atomic_write(path, lambda tmp, arr=arr: np.save(tmp, np.ascontiguousarray(arr, dtype=np.int64)), suffix=".npy")
        entry[role] = {"path": path.relative_to(directory).as_posix(), "sha256": sha256_file(path)}
    section = {"method": method, "document_boundaries": boundaries,
               "block_sizes": {**section.get("block_sizes", {}), str(block_size): entry}}
    manifest = dict(ds.manifest, format_version=FORMAT_VERSION, packing=section)
    manifest["lineage"] = manifest.pop("lineage", {})  # keep the long lineage last, as write_manifest does
    atomic_write_text(mpath, json.dumps(manifest, indent=1) + "\n")
    return entry


def grounding_report(directory: str | os.PathLike, block_size: int, categories: Sequence[str] = ("retrieval",)
                     ) -> dict:
    """How many documents one sample holds whole, per category: under the old fixed windows and under the packing.

    A document counts when every token but its EOT (for a QA document: the passage, the question and the answer)
    lies inside one sample. Categories come from a pipeline-built directory's `sources` table and the files under
    `<source>/`; any other directory is one category, "all"."""
    ds = TokenDataset(directory)
    offsets, segments = ds._packing_index(block_size)
    offsets, segments = np.asarray(offsets), np.asarray(segments)
    boundaries = ds.packing.get("document_boundaries", packing_mod.BOUNDARIES_EOT)
    by_cat: dict[str, list[int]] = {}
    sources = ds.manifest.get("sources") or {}
    for i, f in enumerate(ds.manifest["files"]):
        src = f["path"].split("/", 1)[0]
        cat = sources[src]["category"] if src in sources else "all"
        if not sources or cat in categories:
            by_cat.setdefault(cat, []).append(i)
    out = {}
    for cat, idx in by_cat.items():
        starts, lengths = [], []
        # runs of consecutive files, so a document is never taken across files of another category
        for run in np.split(np.asarray(idx), np.flatnonzero(np.diff(idx) != 1) + 1):
            b, _ = _documents(ds, boundaries, (int(run[0]), int(run[-1]) + 1))
            starts.append(b[:-1])
            lengths.append(np.diff(b))
        s, n = np.concatenate(starts), np.concatenate(lengths)
        s, n = s[n > 1], n[n > 1]  # an empty document (EOT alone) has nothing to keep together
        whole = packing_mod.whole_in_packing(s, n, offsets, segments)
        out[cat] = {"documents": int(s.size), "fit_one_sample": float(np.mean(n <= block_size + 1)) if s.size else None,
                    "whole_fixed_windows": packing_mod.whole_share_fixed_windows(s, n, block_size),
                    "whole_packed": float(np.mean(whole)) if s.size else float("nan")}
    entry = ds.packing["block_sizes"][str(block_size)]
    return {"directory": str(directory), "block_size": block_size, "padding_share": entry["padding_share"],
            "pad_tokens": entry["pad_tokens"], "num_samples": entry["num_samples"], "categories": out}
