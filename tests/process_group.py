"""Subprocesses for tests that never outlive their test: every process a test starts (and everything those start) is
killed when the test times out, fails, or finishes with some of them still running.

A `deepspeed --num_gpus 2` launch is three processes deep (runner -> launch -> ranks); `subprocess.run(timeout=...)`
kills only the runner, and the ranks keep training for minutes beside the tests after it. Walking the
process tree is not enough either: a process whose parent died is re-parented to init, and the Docker entrypoint
starts its command in a session of its own. So each started command gets an environment variable with a token of its
own, which every descendant inherits (the deepspeed launcher and the entrypoint pass the environment on), and the
kill takes every process that carries it, wherever it now hangs in the tree.

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
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER = "RAGLLM_TEST_PROCESS_TREE"


def tree_pids(token: str) -> list[int]:
    """Live processes whose environment holds MARKER=token (Linux /proc; our own processes only)."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # exited meanwhile, or another user's process
            continue
    return pids


def kill_tree(proc: subprocess.Popen, token: str) -> None:
    """SIGKILL every process of the tree (repeated while new ones appear: a dying launcher may still spawn), then reap
    the direct child."""
    for _ in range(20):
        pids = tree_pids(token)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@contextlib.contextmanager
def started(cmd: list[str], env: dict[str, str] | None = None, **kwargs) -> Iterator[subprocess.Popen]:
    """Popen (in a session of its own, so a signal to the test's terminal does not reach it twice); on leaving the
    block, whatever of its tree still runs is killed."""
    token = uuid.uuid4().hex
    env = {**(os.environ if env is None else env), MARKER: token}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, **kwargs)
    proc.tree_token = token  # tree_pids(proc.tree_token): what of its tree still runs
    try:
        yield proc
    finally:
        kill_tree(proc, token)


def run(cmd: list[str], timeout: float, stderr=None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True, timeout=timeout), but the whole tree is killed on a
    timeout (subprocess.TimeoutExpired is raised after, with the output so far) and when the command returns.

    Output goes through temporary files, not pipes: a leftover process holding a pipe would make reading it wait for
    that process instead of the command. `stderr=subprocess.STDOUT` merges the two as usual."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        merged = stderr == subprocess.STDOUT
        with started(cmd, stdout=out, stderr=out if merged else err, **kwargs) as proc:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            else:
                timed_out = False
        # The block's exit killed what was left; the files now hold everything that was written.
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr_text = None if merged else err.read().decode(errors="replace")
    if timed_out:
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr_text)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr_text)
