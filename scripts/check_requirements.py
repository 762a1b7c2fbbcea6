"""Resolve the pinned requirements the way a user's machine would: against the package index's own metadata, for every
platform the README sends people to, in seconds and without downloading a wheel.

    python scripts/check_requirements.py                       # requirements.txt and requirements-dev.txt, all targets
    python scripts/check_requirements.py --requirements my.txt  # another file (the tests feed it a broken one)
    python scripts/check_requirements.py --verbose              # also print each resolution's torch and triton

Why: the development machines install torch from a local CPU wheel (`2.13.0+cpu`) that declares no triton dependency,
so a `pip install -r requirements.txt` there succeeds where the index's Linux wheel, which pins its triton, cannot be
installed beside a different triton pin (that happened: triton==3.9.0 against torch 2.13.0's triton==3.7.1). Here
`uv pip compile` (a dev requirement) resolves each file for each target with the index's metadata, ignoring whatever
is installed or cached locally.

Targets (README, "Set-up"): Linux x86_64 with glibc 2.28 or newer (the GPU pod, the Docker image and a CPU-only box
all resolve the same index wheels) and macOS 14+ on Apple silicon (the CPU demo; torch 2.13.0 has macosx_14_0_arm64
wheels only), each for Python 3.11 (the Docker base image's) and 3.12.

Exit status: 0 when every file resolves for every target; 1 when one does not (the resolver's explanation is printed);
2 when the check could not run (uv missing, or the index unreachable).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ("requirements.txt", "requirements-dev.txt")
PYTHONS = ("3.11", "3.12")


@dataclass(frozen=True)
class Target:
    name: str
    platform: str  # uv's --python-platform
    macos_version: str | None = None  # MACOSX_DEPLOYMENT_TARGET: the oldest macOS whose wheels count


TARGETS = (
    Target("Linux x86_64 (GPU pod, Docker image, CPU-only box)", "x86_64-manylinux_2_28"),
    Target("macOS 14+ arm64 (CPU demo)", "aarch64-apple-darwin", "14.0"),
)

# uv's messages when it never reached the index (as opposed to reaching it and finding the pins unsatisfiable).
UNREACHABLE = re.compile(r"dns error|error sending request|Connect|timed out|Could not connect|network", re.I)


@dataclass
class Resolution:
    file: str
    target: Target
    python: str
    ok: bool
    output: str

    def pins(self, *names: str) -> dict[str, str]:
        """name -> version of the resolved packages among `names` (from uv's `name==version` lines)."""
        found = {}
        for line in self.output.splitlines():
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
            if match and match.group(1).lower() in names:
                found[match.group(1).lower()] = match.group(2)
        return found

    def explanation(self) -> str:
        """The resolver's reason, without uv's warnings about local indexes."""
        lines = [ln for ln in self.output.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        return "\n".join(lines[:12])


def find_uv() -> str | None:
    """uv beside this interpreter (the dev requirement in .venv), else on PATH."""
    here = shutil.which("uv", path=str(Path(sys.executable).parent))
    return here or shutil.which("uv")


def resolve(uv: str, requirements: Path, target: Target, python: str, timeout: float = 120) -> Resolution:
    cmd = [uv, "pip", "compile", str(requirements), "--no-config", "--no-header", "--quiet",
           "--python-platform", target.platform, "--python-version", python]
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")  # resolve for that version; never fetch an interpreter
    if target.macos_version:
        env["MACOSX_DEPLOYMENT_TARGET"] = target.macos_version
    proc = subprocess.run(cmd, cwd=requirements.parent, env=env, capture_output=True, text=True, timeout=timeout)
    return Resolution(requirements.name, target, python, proc.returncode == 0, proc.stdout + proc.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requirements", nargs="+", type=Path, default=[REPO / f for f in DEFAULT_FILES],
                   help="requirements files to resolve (default: requirements.txt and requirements-dev.txt)")
    p.add_argument("--python", nargs="+", default=list(PYTHONS), help="Python versions to resolve for")
    p.add_argument("--verbose", action="store_true", help="print the torch and triton each resolution picked")
    args = p.parse_args(argv)

    uv = find_uv()
    if uv is None:
        print("check_requirements: uv not found (it is in requirements-dev.txt: make install-dev, or pip install uv)",
              file=sys.stderr)
        return 2
    for path in args.requirements:
        if not path.is_file():
            print(f"check_requirements: {path} does not exist", file=sys.stderr)
            return 2

    failed = 0
    for path in args.requirements:
        for target in TARGETS:
            for python in args.python:
                r = resolve(uv, path.resolve(), target, python)
                where = f"{r.file} for {target.name}, Python {python}"
                if r.ok:
                    pins = r.pins("torch", "triton")
                    detail = ", ".join(f"{k} {v}" for k, v in sorted(pins.items())) if args.verbose else ""
                    print(f"ok      {where}" + (f": {detail}" if detail else ""))
                    continue
                if UNREACHABLE.search(r.output) and "unsatisfiable" not in r.output:
                    print(f"check_requirements: could not reach the package index while resolving {where}; run it "
                          f"where the index is reachable:\n{r.explanation()}", file=sys.stderr)
                    return 2
                failed += 1
                print(f"FAILED  {where}: a user's `pip install -r {r.file}` fails there:\n"
                      + "\n".join("        " + ln for ln in r.explanation().splitlines()))
    if failed:
        print(f"check_requirements: {failed} resolution(s) failed; fix the pins (a pin that a pinned package also "
              "pins, such as triton for torch, must equal its pin, under the same platform marker)")
        return 1
    print("check_requirements: every file resolves for every target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
