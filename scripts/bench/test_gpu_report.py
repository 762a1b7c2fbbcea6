"""scripts/bench/gpu_report.py survives its first run on a GPU: no section ends the report (SystemExit included), the
report file is rewritten after every section, sections that do not fit the budget are skipped and say so, every
launch is killed at its timeout with its whole process tree, and the throughput run works on a bare machine with
synthetic token directories. Checked on the CPU through --dry_run, with cheap stand-ins for the slow sections.

These test the measurement harness, so they live beside it: the product's tests (tests/) never import scripts/bench
(docs/DESIGN.md, "Layout"). `make test` runs both."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from scripts.bench import gpu_report, harness

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cheap_sections(monkeypatch):
    """Every section but `environment` replaced by a stand-in that records the report as it stood when it ran."""
    seen: dict[str, str] = {}

    def stand_in(name):
        def section(args):
            reports = list(Path(args.out).glob("gpu_report_*.md"))
            seen[name] = reports[0].read_text() if reports else ""
            return f"{name} body"
        return section

    for name in gpu_report.SECTIONS[1:]:
        monkeypatch.setattr(gpu_report, f"section_{name}", stand_in(name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return seen


def _report(out: Path) -> str:
    (path,) = out.glob("gpu_report_*.md")
    return path.read_text()


def test_a_section_that_raises_systemexit_is_reported_and_the_rest_still_run(cheap_sections, monkeypatch, tmp_path):
    def dies(args):
        raise SystemExit("launcher/train.py failed: out of memory")

    monkeypatch.setattr(gpu_report, "section_kernels", dies)
    assert gpu_report.main(["--dry_run", "--out", str(tmp_path)]) == 1
    text = _report(tmp_path)
    assert "## kernels" in text and "**FAILED**: launcher/train.py failed: out of memory" in text
    for later in ("throughput_eager", "memory", "throughput_compiled"):
        assert f"{later} body" in text
    assert "FAILED: ['kernels']" in text


def test_the_report_is_on_disk_after_every_section(cheap_sections, tmp_path):
    assert gpu_report.main(["--dry_run", "--out", str(tmp_path)]) == 0
    # Each stand-in saw the bodies of the sections before it already written to the file.
    assert "torch 2.13" in cheap_sections["gpu_tests"]  # environment's body
    assert "gpu_tests body" in cheap_sections["selfcheck"]
    assert "throughput_eager body" in cheap_sections["memory"]
    assert "memory body" in cheap_sections["throughput_compiled"]


def test_sections_that_do_not_fit_the_budget_are_skipped_in_order_of_value(cheap_sections, monkeypatch, tmp_path,
                                                                          capsys):
    estimates = {name: (1, 1) for name in gpu_report.SECTIONS}
    estimates["throughput_eager"] = (1, 500)
    monkeypatch.setattr(gpu_report, "ESTIMATE_S", estimates)
    assert gpu_report.main(["--dry_run", "--out", str(tmp_path), "--budget-s", "60"]) == 0
    text = _report(tmp_path)
    assert "## throughput_eager\n\nskipped: its estimate (500 s) exceeds" in text
    assert "memory body" in text and "throughput_compiled body" in text  # what fits still runs
    assert "skipped for the budget: ['throughput_eager']" in text
    out = capsys.readouterr().out
    assert "[5/9] throughput_eager: skipped" in out and "[6/9] attention: estimate 1 s" in out


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of ours counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_a_launch_past_its_timeout_is_killed_with_its_whole_tree(tmp_path):
    """launch() on a stand-in launcher/train.py that starts a grandchild and hangs: LaunchError (not SystemExit), and
    the grandchild is gone too."""
    (tmp_path / "launcher").mkdir()
    pid_file = tmp_path / "grandchild.pid"
    (tmp_path / "launcher" / "train.py").write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """))
    t0 = time.monotonic()
    with pytest.raises(harness.LaunchError, match="ran past its 3 s timeout"):
        harness.launch(tmp_path / "cfg.json", "x", 1, [], cwd=tmp_path, device="cpu", timeout=3)
    assert time.monotonic() - t0 < 30
    assert _wait_gone(int(pid_file.read_text())), "the launch's grandchild outlived the timeout"


def test_a_failed_launch_is_a_launch_error_not_systemexit(tmp_path):
    (tmp_path / "launcher").mkdir()
    (tmp_path / "launcher" / "train.py").write_text("import sys; print('no data'); sys.exit(3)\n")
    with pytest.raises(harness.LaunchError, match=r"failed \(exit 3\)"):
        harness.launch(tmp_path / "cfg.json", "x", 1, [], cwd=tmp_path, device="cpu", timeout=60)


def test_run_kills_a_hanging_command_with_its_children(monkeypatch):
    monkeypatch.setattr(gpu_report, "REPO", REPO)
    script = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(120)']); print(c.pid, flush=True); time.sleep(120)")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="ran past its 3 s") as info:
        gpu_report._run([sys.executable, "-c", script], timeout=3)
    assert time.monotonic() - t0 < 30  # not left waiting on the grandchild's end of the pipe
    grandchild = int(str(info.value).split("```\n", 1)[1].split()[0])
    assert _wait_gone(grandchild)


def test_dry_run_throughput_on_a_bare_machine_synthesises_its_data(tmp_path):
    """The real throughput section (launcher/train.py, 4 steps of the demo config) with every token directory
    missing: it synthesises them, trains, and reports tokens/s and the checkpoint save of the last step."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["RAGLLM_WORKSPACE"] = str(tmp_path / "bare")  # no data/ there: every input is missing
    others = [s for s in gpu_report.SECTIONS if s != "throughput_eager"]
    proc = subprocess.run([sys.executable, "scripts/bench/gpu_report.py", "--dry_run", "--out", str(tmp_path / "r"),
                           "--skip", *others], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = _report(tmp_path / "r")
    assert "synthetic token directories for phase circuit, phase balanced, val, eval general" in text, text
    row = next(line for line in text.splitlines() if line.startswith("| eager | 1 |"))
    tokens_per_s, save = float(row.split("|")[3].replace(",", "")), row.split("|")[7].strip()
    assert tokens_per_s > 0 and save.endswith(" s"), row


def test_kernel_ab_run_uses_torchs_adamw_and_builds_no_deepspeed_op(tmp_path):
    """kernels.py's fused-vs-reference A/B (the report's kernels section) under a real ZeRO-2 engine on the CPU:
    DeepSpeed's AdamW without `torch_adam` JIT-builds an op with ninja (FusedAdam with nvcc on a GPU, minutes or a
    failure without CUDA_HOME; cpu_adam here), so nothing may appear in the extensions folder."""
    extensions = tmp_path / "torch_extensions"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(TORCH_EXTENSIONS_DIR=str(extensions), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    code = ("from scripts.bench.kernels import ab_losses; fused, ref = ab_losses(2, 'cpu'); "
            "import math; assert all(math.isfinite(v) for v in fused + ref); print('losses', fused, ref)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "losses" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    built = [p.name for p in extensions.rglob("*")] if extensions.exists() else []
    assert not built, f"DeepSpeed JIT-built an op: {built}"


def test_gpu_report_without_a_gpu_says_so_and_exits_0(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_report.main(["--out", str(tmp_path)]) == 0
    assert "no GPU" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # measured nothing, wrote nothing
