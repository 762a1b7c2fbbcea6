"""Atomic writes of files and directories: each is complete under its final name or absent.

Every writer goes through a temporary name in the same directory (the process id in it, so two processes never share
one) and `os.replace`, which is atomic on one filesystem: a crash leaves a stray temporary file, never a truncated
file that a resume would take for a complete one. The one copy of this pattern: the build's work files, manifests,
QA items and the input lock, the audits and reports, and the checkpoint markers (`durable=True`: fsynced, so a
marker never outlives a power loss that the files it vouches for did not survive).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: so a rename in it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], suffix: str = "", durable: bool = False) -> None:
    """`write(tmp)` writes the file at a temporary name, which then replaces `path`. `suffix` ends the temporary name
    (np.save appends ".npy" to a name without it); `durable` fsyncs the file and its directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    write(tmp)
    if durable:
        fsync_path(tmp)
    os.replace(tmp, path)
    if durable:
        fsync_path(path.parent)


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    """Write `text` to `path` through a temporary name, so a reader sees the old file or the whole new one."""
    atomic_write(path, lambda tmp: tmp.write_text(text), durable=durable)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temp directory into place; an old directory of that name is removed only afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
