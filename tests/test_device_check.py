"""No silent CPU fallback: a run that asks for CUDA (the default) where CUDA is unusable stops at once, before reading
any input, with one message naming what it found and what to do (launcher/device_check.py); the CPU stays available
when asked for (--device cpu, DS_ACCELERATOR=cpu). The launches hide CUDA (CUDA_VISIBLE_DEVICES="") and drop the
suite's DS_ACCELERATOR=cpu (conftest.py), so they are what a user's `deepspeed --num_gpus 8 ...` meets on a pod
whose CUDA cannot initialise."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from launcher.device_check import CudaFacts, cuda_problem, requested_device
from tests.process_group import run

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
MISSING_DATA = "/nonexistent/ragllm-test-data"  # read before anything else, were the device check not first


def facts(**overrides) -> CudaFacts:
    base = dict(torch_version="2.13.0", torch_cuda="13.0", available=False, reason="", device_count=0,
                driver="535.129.03", visible_devices=None)
    return CudaFacts(**{**base, **overrides})


def test_usable_cuda_is_no_problem():
    assert cuda_problem(facts(available=True, device_count=8)) is None


def test_driver_too_old_for_the_cuda13_wheel_names_both_versions_and_the_cu126_way_out():
    message = cuda_problem(facts(reason="The NVIDIA driver on your system is too old (found version 12020)."))
    assert "535.129.03" in message and "CUDA 13.0" in message and ">= 580.65.06" in message
    assert "torch.cuda.is_available() = False" in message and "too old (found version 12020)" in message
    assert "download.pytorch.org/whl/cu126" in message and "--device cpu" in message


def test_a_driver_new_enough_is_not_blamed():
    message = cuda_problem(facts(driver="580.95.05", reason="CUDA unknown error"))
    assert "older than" not in message and "nvidia-smi" in message and "CUDA unknown error" in message
    # A CUDA 12.6 build on a 535 driver is within its minor-version compatibility: not the driver's fault either.
    assert "older than" not in cuda_problem(facts(torch_cuda="12.6", driver="535.129.03"))
    assert "older than" in cuda_problem(facts(torch_cuda="12.6", driver="520.61.05"))


def test_cpu_build_no_driver_and_hidden_gpus_each_get_their_own_fix():
    cpu_build = cuda_problem(facts(torch_cuda=None, driver=None, torch_version="2.13.0+cpu"))
    assert "CPU-only build" in cpu_build and "Install a CUDA build" in cpu_build
    no_driver = cuda_problem(facts(driver=None))
    assert "NVIDIA driver: not found" in no_driver and "--gpus all" in no_driver
    hidden = cuda_problem(facts(driver="580.95.05", visible_devices=""))
    assert "CUDA_VISIBLE_DEVICES hides every GPU" in hidden


def test_requested_device_flag_then_deepspeed_switch_then_cuda():
    assert requested_device([], {}) == "cuda"
    assert requested_device([], {"DS_ACCELERATOR": "cpu"}) == "cpu"
    assert requested_device(["--device", "cpu"], {}) == "cpu"
    assert requested_device(["--device=cuda"], {"DS_ACCELERATOR": "cpu"}) == "cuda"
    with pytest.raises(SystemExit, match="--device must be one of"):
        requested_device(["--device", "gpu"], {})
    with pytest.raises(SystemExit, match="DS_ACCELERATOR='xpu'"):
        requested_device([], {"DS_ACCELERATOR": "xpu"})


def _env_without_cuda(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "RAGLLM_WORKSPACE")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


def _train_args(*extra: str) -> list[str]:
    return ["launcher/train.py", "--config_file", "configs/tiny/test_cpu.json", "--model_name", "device_check",
            "--resume", "none", "--dataset_dir", MISSING_DATA, *extra]


def test_plain_launch_without_cuda_stops_before_reading_anything():
    t0 = time.perf_counter()
    proc = run([PYTHON, *_train_args()], cwd=REPO, env=_env_without_cuda(), timeout=120)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert out.count("CUDA is unusable") == 1, out
    assert "torch.cuda.is_available() = False" in out and "CUDA build:" in out and "NVIDIA driver:" in out
    assert "CUDA_VISIBLE_DEVICES=''" in out
    # Stopped before the config's data was opened and before DeepSpeed was imported (it prints on import).
    assert "does not exist" not in out and "Setting accelerator" not in out and "Traceback" not in out, out
    print(f"refused in {seconds:.1f} s")


def test_help_is_shown_without_a_gpu():
    proc = run([PYTHON, "launcher/train.py", "--help"], cwd=REPO, env=_env_without_cuda(), timeout=120)
    assert proc.returncode == 0 and "--device" in proc.stdout and "CUDA is unusable" not in proc.stderr


def test_cpu_on_purpose_passes_the_check_and_reaches_the_inputs():
    for extra, env in ((["--device", "cpu"], {}), ([], {"DS_ACCELERATOR": "cpu"})):
        proc = run([PYTHON, *_train_args(*extra)], cwd=REPO, env=_env_without_cuda(**env), timeout=180)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "CUDA is unusable" not in out, out
        assert f"token directory {MISSING_DATA} does not exist" in out, out  # the next check, on the inputs


@pytest.mark.multirank
def test_deepspeed_launch_as_on_a_pod_stops_every_rank_with_one_message():
    """`deepspeed --num_gpus 2 launcher/train.py ...`, as the README says for a pod, where CUDA is unusable."""
    if not Path(DEEPSPEED).exists():
        DEEPSPEED_ON_PATH = shutil.which("deepspeed")
        assert DEEPSPEED_ON_PATH, "the deepspeed launcher is not installed"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(29400 + os.getpid() % 1000), *_train_args()]
    proc = run(cmd, cwd=REPO, env=_env_without_cuda(), timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert out.count("CUDA is unusable") == 1, out  # local rank 0 speaks; rank 1 only exits
    assert "Traceback" not in out and "does not exist" not in out and "run plan" not in out, out
