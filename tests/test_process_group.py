"""tests/process_group.py: no process a test starts outlives it (once, a timed-out `make demo` kept its launcher and
both ranks training for 16 minutes beside the tests after it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.process_group import run, started

# A launcher-like tree: a child in the caller's process group, a grandchild in a session of its own (as the Docker
# entrypoint starts its command), both sleeping far past any test.
TREE = """
import pathlib, subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
same_group = subprocess.Popen(sleeper)
own_session = subprocess.Popen(sleeper, start_new_session=True)
pathlib.Path(sys.argv[1]).write_text(f"{same_group.pid} {own_session.pid}")
if sys.argv[2] == "hang":
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


def _pids(path: Path) -> list[int]:
    deadline = time.time() + 30
    while time.time() < deadline:
        if path.is_file() and path.read_text():
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the tree never started")


def _gone(pids: list[int]) -> bool:
    deadline = time.time() + 10
    while time.time() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_a_timed_out_run_kills_its_whole_tree(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-c", TREE, str(tmp_path / "pids"), "hang"], timeout=5)
    pids = _pids(tmp_path / "pids")
    assert _gone(pids), [p for p in pids if _alive(p)]


def test_a_finished_run_leaves_no_orphans(tmp_path):
    # The parent exits at once: its children are orphans that no `wait` would ever see.
    result = run([sys.executable, "-c", TREE, str(tmp_path / "pids"), "exit"], timeout=60)
    assert result.returncode == 0, result.stderr
    pids = _pids(tmp_path / "pids")
    assert _gone(pids), [p for p in pids if _alive(p)]


def test_a_failing_block_kills_the_tree(tmp_path):
    with pytest.raises(RuntimeError), started([sys.executable, "-c", TREE, str(tmp_path / "pids"), "hang"]):
        _pids(tmp_path / "pids")
        raise RuntimeError("the test failed here")
    pids = _pids(tmp_path / "pids")
    assert _gone(pids), [p for p in pids if _alive(p)]
