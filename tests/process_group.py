"""Subprocesses for tests that never outlive their test: each starts in a process group of its own, and the whole
tree (the group, and any descendant that moved to a session of its own, as the Docker entrypoint's command does) is
killed when the test times out, fails or ends with the process still running.

A `deepspeed --num_gpus 2` launch is three processes deep (runner -> launch -> ranks); `subprocess.run(timeout=...)`
kills only the runner, and the ranks keep training for minutes beside the tests after it (issue 15).

    from tests.process_group import run, started

    result = run([...], timeout=240, cwd=REPO)          # like subprocess.run(capture_output=True, text=True)
    with started([...], stdout=subprocess.PIPE) as proc:  # killed with its tree when the block exits
        ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of /proc/<pid>/stat is the parent pid; the command name (field 2) may hold spaces, so split
            # after its closing parenthesis.
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the process's group (started as a new session, its id is the pid: this also reaches members orphaned
    by a dead parent) and every descendant with its own group; then reap the process."""
    # Once reaped, the pid may belong to someone else: only a live process's tree is walked.
    pids = [proc.pid, *descendants(proc.pid)] if proc.poll() is None else []
    groups = {proc.pid}
    for pid in pids:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgid(0))  # never the test runner's own group
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def started(cmd: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """Popen in a new session; on leaving the block, whatever of its tree still runs is killed."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        kill_tree(proc)


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=timeout) that kills the whole tree on timeout.

    Raises subprocess.TimeoutExpired (with the output so far) after killing it."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    with started(cmd, **kwargs) as proc:
        t0 = time.monotonic()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            kill_tree(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, time.monotonic() - t0, output=out, stderr=err) from e
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
