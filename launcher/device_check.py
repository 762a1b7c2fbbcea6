"""Which device a run trains on, decided first thing in every rank: CUDA unless the CPU is asked for, never a silent
fallback.

Without this, a GPU pod whose NVIDIA driver is too old for the installed torch (PyPI's torch 2.13.0 is a CUDA 13.0
build: driver 580 or newer) reports `torch.cuda.is_available() == False`, DeepSpeed picks its CPU accelerator with one
warning line, and `deepspeed --num_gpus 8 launcher/train.py` trains the 699M model on 8 CPU processes: a day of pod
rent for nothing. So:

- the run asks for CUDA unless `--device cpu` is given or `DS_ACCELERATOR=cpu` is set (DeepSpeed's own switch, which
  the demo and the tests set): the CPU path exists for them, on purpose;
- asked for CUDA, the rank checks it before DeepSpeed is imported (importing DeepSpeed picks the accelerator) and
  before any config or data is read; when CUDA is unusable, local rank 0 of the node prints one message naming what it
  found (driver version, torch's CUDA build, what `torch.cuda.is_available()` said and why) and what to do, and every
  rank exits 1.

Driver floors are NVIDIA's minor-version-compatibility minimums (CUDA Toolkit release notes, "CUDA Toolkit and Minimum
Required Driver Version for CUDA Minor Version Compatibility"): CUDA 12.x needs a Linux driver >= 525.60.13, CUDA 13.x
>= 580.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

DEVICES = ("cuda", "cpu")
# Oldest Linux driver that runs each CUDA major version's builds (minor version compatibility).
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
CU126_INDEX = "https://download.pytorch.org/whl/cu126"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass
class CudaFacts:
    """What this machine says about CUDA, gathered without DeepSpeed."""

    torch_version: str
    torch_cuda: str | None  # torch.version.cuda: None for a CPU-only build
    available: bool  # torch.cuda.is_available()
    reason: str  # the warning torch gave while answering (e.g. "The NVIDIA driver on your system is too old")
    device_count: int
    driver: str | None  # NVIDIA kernel driver version, None when no driver is visible
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES, when set


def requested_device(argv: list[str] | None = None, environ: dict | None = None) -> str:
    """"cuda" or "cpu": `--device` if given, else "cpu" when DS_ACCELERATOR=cpu, else "cuda"."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    flag = None
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            flag = argv[i + 1]
        elif arg.startswith("--device="):
            flag = arg.split("=", 1)[1]
    if flag is not None:
        if flag not in DEVICES:
            raise SystemExit(f"error: --device must be one of {list(DEVICES)}, got {flag!r}")
        return flag
    accelerator = environ.get("DS_ACCELERATOR", "").strip().lower()
    if accelerator and accelerator not in DEVICES:
        raise SystemExit(f"error: DS_ACCELERATOR={environ['DS_ACCELERATOR']!r}: this trainer runs on 'cuda' or 'cpu' "
                         "only; unset it (CUDA) or set it to cpu")
    return "cpu" if accelerator == "cpu" else "cuda"


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version from /proc (no CUDA call), else from nvidia-smi; None when neither exists."""
    try:
        text = open("/proc/driver/nvidia/version").read()
        match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)", text) or re.search(
            r"\b(\d{3}\.\d+(?:\.\d+)?)\b", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=15)
            first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
            if out.returncode == 0 and re.fullmatch(r"\d+\.\d+(\.\d+)?", first.strip()):
                return first.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def gather_facts() -> CudaFacts:
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    reason = " ".join(str(w.message).strip() for w in caught if "cuda" in str(w.message).lower())
    return CudaFacts(torch_version=torch.__version__, torch_cuda=torch.version.cuda, available=available,
                     reason=reason, device_count=count, driver=driver_version(),
                     visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def cuda_problem(facts: CudaFacts) -> str | None:
    """None when CUDA is usable; else one message: what was found, then what to do."""
    if facts.available and facts.device_count > 0:
        return None
    found = (f"torch {facts.torch_version} (CUDA build: {facts.torch_cuda or 'none, a CPU-only build'}), "
             f"torch.cuda.is_available() = {facts.available}, NVIDIA driver: {facts.driver or 'not found'}"
             + (f", CUDA_VISIBLE_DEVICES={facts.visible_devices!r}" if facts.visible_devices is not None else ""))
    if facts.reason:
        found += f"; torch said: {facts.reason}"
    cpu = "to train on the CPU on purpose, pass --device cpu (or set DS_ACCELERATOR=cpu)"
    if facts.torch_cuda is None:
        todo = ("This torch cannot use a GPU. Install a CUDA build: `pip install torch==2.13.0` (CUDA 13.0, driver >= "
                f"{MIN_DRIVER[13]}) or `pip install torch==2.13.0 --index-url {CU126_INDEX}` (CUDA 12.6, driver >= "
                f"{MIN_DRIVER[12]}), or use the Docker image (docker/README.md).")
    elif facts.visible_devices is not None and facts.visible_devices.strip() in ("", "-1", "none", "void"):
        todo = "CUDA_VISIBLE_DEVICES hides every GPU: unset it, or list the GPUs this run may use."
    elif facts.driver is None:
        todo = ("No NVIDIA driver is visible (no /proc/driver/nvidia/version, no nvidia-smi): this machine or "
                "container has no GPU access. In Docker start the container with `--gpus all`; on RunPod use a GPU "
                "pod.")
    else:
        major = int(facts.torch_cuda.split(".")[0])
        needed = MIN_DRIVER.get(major)
        if needed and _version_tuple(facts.driver) < _version_tuple(needed):
            todo = (f"The driver {facts.driver} is older than this torch's CUDA {facts.torch_cuda} needs "
                    f"(>= {needed}). Install the CUDA 12.6 build instead, which runs on drivers >= {MIN_DRIVER[12]}: "
                    f"`pip install torch==2.13.0 --index-url {CU126_INDEX}` (then `pip install -r requirements.txt` "
                    "keeps it), or build the Docker image, whose base is CUDA 12.6 (docker/README.md); or rent a host "
                    f"with driver >= {needed} (RunPod: filter pods by CUDA version {major}.0 or newer).")
        elif facts.available:
            todo = "CUDA initialised but reports 0 GPUs: check `nvidia-smi` and CUDA_VISIBLE_DEVICES."
        else:
            todo = ("CUDA could not initialise although a driver is present: run `nvidia-smi` to see whether the GPUs "
                    "are healthy and visible to this container (`--gpus all`), and read torch's reason above.")
    host = socket.gethostname()
    return (f"error: this run asks for CUDA GPUs, but CUDA is unusable on {host}; stopping before anything is read.\n"
            f"  found: {found}\n  fix:   {todo}\n  or:    {cpu}")


def require_device(argv: list[str] | None = None) -> str:
    """Decide the device before DeepSpeed is imported; stop the rank (exit 1) when CUDA is asked for and unusable.

    With the CPU chosen, DS_ACCELERATOR=cpu is set for this process so that DeepSpeed agrees. Local rank 0 prints the
    message; the other ranks of the node wait a moment before exiting, so that the launcher, which kills the job when
    the first rank exits, does not cut rank 0 off before its message is out."""
    device = requested_device(argv)
    if any(a in ("-h", "--help") for a in (sys.argv[1:] if argv is None else argv)):
        return device  # --help prints the flags and exits in argparse: nothing is trained, so nothing to check
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
        return device
    problem = cuda_problem(gather_facts())
    if problem is None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda")  # DeepSpeed then takes CUDA, not another accelerator it finds
        return device
    if int(os.environ.get("LOCAL_RANK", "0") or 0) <= 0:
        print(problem, file=sys.stderr, flush=True)
    else:
        time.sleep(3.0)
    raise SystemExit(1)


def confirm_accelerator(device: str) -> None:
    """After DeepSpeed picked its accelerator: it must be the one asked for (DS_ACCELERATOR set by hand to something
    else, or a DeepSpeed that ignores it, would otherwise run elsewhere)."""
    from deepspeed.accelerator import get_accelerator

    picked = get_accelerator().device_name()
    if picked != device:
        raise SystemExit(f"error: DeepSpeed picked the '{picked}' accelerator, but this run asks for '{device}' "
                         f"(DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR')!r}); pass --device {picked} or fix "
                         "DS_ACCELERATOR")
