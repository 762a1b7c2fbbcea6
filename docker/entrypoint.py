#!/usr/bin/env python3
"""Container entrypoint: run any command, and deliver a pod stop to every training rank.

Usage (as the image's ENTRYPOINT; the command is whatever follows the image name):
    docker run IMAGE deepspeed --num_gpus 8 launcher/train.py --config_file ... --model_name ...
    docker run IMAGE tensorboard --logdir runs --bind_all
    python docker/entrypoint.py deepspeed --num_gpus 2 launcher/train.py ...     # the same outside Docker

Why this exists (measured with deepspeed 0.19.8, see docs/DESIGN.md "Stopping on a signal"): RunPod and
`docker stop` send SIGTERM to PID 1 only, and everything dies when PID 1 exits. The `deepspeed` runner forwards
nothing on one node (it dies and orphans `deepspeed.launcher.launch` and the ranks), and `launch` stops ranks one at
a time. So this process:
  1. starts the command in its own process group (a new session);
  2. on SIGTERM/SIGINT/SIGHUP sends the signal to that whole group, so every rank hears it at once (the trainer
     then agrees on a step, saves a checkpoint together and exits 0);
  3. is a child subreaper, so ranks orphaned by a dying runner are re-parented here and reaped;
  4. exits only when every process of the group is gone (or `RAGLLM_STOP_TIMEOUT` seconds after the signal, then
     SIGKILLs what is left), so PID 1 does not take the ranks down in the middle of a save.
Exit code: the command's own exit code; after a forwarded stop signal, 0 if the group drained in time, else 1.

Environment (all optional):
  RAGLLM_WORKSPACE      root for relative data/, logs/, runs/, checkpoints/, exports/, reports/ paths
                        (Docker: /workspace); the folders are created there and linked into the code directory so
                        that `tensorboard --logdir runs` works from it.
  RAGLLM_USER           run the command as this user (the image sets `trainer`); skipped when not root.
  RAGLLM_START_SSHD=1   start sshd first (multi-node DeepSpeed launches over pdsh/ssh).
  RAGLLM_STOP_TIMEOUT   seconds to wait for the group after a stop signal (default 300).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
WORKSPACE_DIRS = ("data", "logs", "runs", "checkpoints", "exports", "reports")
CODE_DIR = Path(__file__).resolve().parents[1]


def become_subreaper() -> None:
    """Orphaned descendants get re-parented to us instead of init, so we can wait for them (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: we still forward signals, but cannot wait for orphans


def prepare_workspace(user: str | None) -> None:
    workspace = os.environ.get("RAGLLM_WORKSPACE")
    if not workspace:
        return
    root = Path(workspace)
    for name in WORKSPACE_DIRS:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        if user and os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            os.chown(target, entry.pw_uid, entry.pw_gid)
    # `tensorboard --logdir runs` and the like, typed in the code directory, see the volume's folders. data/ holds
    # code, so only its built outputs live in the volume: the launcher resolves relative paths against RAGLLM_WORKSPACE.
    for name in ("logs", "runs", "checkpoints", "exports", "reports"):
        link = CODE_DIR / name
        if not link.exists() and not link.is_symlink():
            try:
                link.symlink_to(root / name)
            except OSError:
                pass  # read-only code directory: absolute paths still work


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    user = os.environ.get("RAGLLM_USER") or None
    if user and os.geteuid() != 0:
        user = None  # already unprivileged (e.g. `docker run --user`): run as we are
    prepare_workspace(user)
    if os.environ.get("RAGLLM_START_SSHD") == "1" and os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
        subprocess.run(["/usr/sbin/sshd"], check=False)
    become_subreaper()

    popen_kwargs: dict = {"start_new_session": True}
    if user:
        entry = pwd.getpwnam(user)
        popen_kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        os.environ["HOME"] = entry.pw_dir
    try:
        child = subprocess.Popen(argv, **popen_kwargs)
    except FileNotFoundError:
        print(f"entrypoint: command not found: {argv[0]}", file=sys.stderr)
        return 127
    group = child.pid  # start_new_session: the child leads a new session and process group

    stop_requested_at: list[float] = []

    def forward(signum, _frame):
        if not stop_requested_at:
            stop_requested_at.append(time.monotonic())
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    timeout = float(os.environ.get("RAGLLM_STOP_TIMEOUT", "300"))
    child_code: int | None = None
    killed = False
    while True:
        try:
            # Reaps the command and every orphan re-parented to us; polling keeps the stop timeout enforceable.
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no descendants left: as a subreaper, the whole group is gone
        if pid:
            if pid == child.pid:
                child_code = os.waitstatus_to_exitcode(status)
            continue
        if stop_requested_at and not killed and time.monotonic() - stop_requested_at[0] > timeout:
            print(f"entrypoint: processes still running {timeout:.0f} s after the stop signal; killing them",
                  file=sys.stderr)
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed = True
        time.sleep(0.2)
    if stop_requested_at:
        return 1 if killed else 0
    return child_code if child_code is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
