"""Session-wide settings of the CPU test suite (tests/ and the benchmark harness tests in scripts/bench/).

The trainer refuses to run on the CPU unless asked (launcher/device_check.py: a GPU launch never falls back to the CPU
silently). This suite trains on the CPU on purpose, so on a machine without CUDA it asks the way the demo does, with
DeepSpeed's own switch, DS_ACCELERATOR=cpu, which every process the tests start inherits. On a machine with CUDA it
is left unset, and the `gpu` tests use the GPU. tests/test_device_check.py removes it where it checks the refusal.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
