"""Where relative paths of configs and command lines point: the workspace root.

Relative paths (`data/unified_6B`, `checkpoints`, `runs`, `logs/train`, ...) resolve against `$RAGLLM_WORKSPACE`
when it is set (the Docker image sets `/workspace`, RunPod's volume), else against the current directory (the
repository root in every README command). Absolute paths are used as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_ENV = "RAGLLM_WORKSPACE"


def workspace_root() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or ".")


def resolve(path: str | os.PathLike) -> Path:
    """`path` itself if absolute, else `path` under the workspace root."""
    path = Path(path)
    return path if path.is_absolute() else workspace_root() / path
