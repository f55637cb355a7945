"""Every benchmark script runs in smoke mode and writes its Markdown table.

The exceptions: the GPU scripts (``gpu.py``, ``finals_gpu.py``) on a machine without CUDA
print one line saying no GPU is available, write nothing and exit 0. Their logic is still run
here, on the CPU, by their dry runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Helpers beside the scripts start with an underscore.
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
GPU_SCRIPT = ROOT / "benchmarks" / "gpu.py"
NO_GPU_LINE = ("gpu.py: no GPU available (torch.cuda.is_available() is false): nothing "
               "measured, nothing written")
FINALS_GPU = ROOT / "benchmarks" / "finals_gpu.py"
NO_GPU_LINES = {GPU_SCRIPT: NO_GPU_LINE,
                FINALS_GPU: "finals_gpu.py: no GPU available (torch.cuda.is_available() is "
                            "false): nothing run, nothing written"}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# A bound well above the slowest smoke run (about 3 minutes), so that a hung script fails.
RUN_TIMEOUT_S = 1200
# The dry runs' own time limit (--time-limit; 480 s by default): above what the slowest takes
# on a busy machine, so that no part is skipped or stopped at the limit, and below
# RUN_TIMEOUT_S, so that the script stops itself first.
DRY_RUN_TIME_LIMIT = "1000"


def _run(script: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=RUN_TIMEOUT_S)


def _assert_table(path: Path) -> str:
    text = path.read_text()
    assert text.startswith("# ") and "|---" in text
    assert "nan" not in text.lower()
    return text


def _assert_no_gpu_answer(proc: subprocess.CompletedProcess[str], out: Path,
                          script: Path = GPU_SCRIPT) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [NO_GPU_LINES[script]]
    assert not out.exists()


def test_there_are_benchmark_scripts() -> None:
    assert SCRIPTS
    assert set(NO_GPU_LINES) <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_smoke(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.md"
    proc = _run(script, "--smoke-test", "--out", str(out))
    if script in NO_GPU_LINES and not _cuda_available():
        _assert_no_gpu_answer(proc, out, script)
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_table(out)


@pytest.mark.parametrize("script", sorted(NO_GPU_LINES), ids=lambda p: p.name)
@pytest.mark.parametrize("smoke", [True, False], ids=["smoke", "full"])
def test_gpu_script_without_gpu(script: Path, smoke: bool, tmp_path: Path) -> None:
    # With no visible CUDA device (also on a GPU machine) the script measures nothing.
    out = tmp_path / "gpu.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = _run(script, *(["--smoke-test"] if smoke else []), "--out", str(out), env=env)
    _assert_no_gpu_answer(proc, out, script)


@pytest.mark.slow
def test_gpu_finals_dry_run_on_cpu(tmp_path: Path) -> None:
    # The GPU final run's steps on the CPU at smoke sizes: the search, one benchmark process
    # per seed two at a time, the call that reuses their runs and writes the table. A smoke
    # test enters no ledger row.
    out, work = tmp_path / "final.md", tmp_path / "work"
    ledger = (ROOT / "benchmarks" / "ledger.md").read_text()
    proc = _run(FINALS_GPU, "--smoke-test", "--device", "cpu", "--parallel", "2",
                "--time-limit", DRY_RUN_TIME_LIMIT, "--out", str(out), "--work", str(work))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = _assert_table(out)
    assert "smoke test" in text and "Target" in text.split("\n")[2]
    assert proc.stdout.count("--seeds 1 --seed ") == 2  # one process per seed
    assert re.search(r"reusing (\d+) stored runs", proc.stdout)
    assert (ROOT / "benchmarks" / "ledger.md").read_text() == ledger


def test_gpu_finals_stop_at_the_time_limit(tmp_path: Path) -> None:
    # With no time left the call stops its first step, says how to continue, writes no table.
    out, work = tmp_path / "final.md", tmp_path / "work"
    proc = _run(FINALS_GPU, "--smoke-test", "--device", "cpu", "--time-limit", "0", "--out",
                str(out), "--work", str(work))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped at the time limit" in proc.stdout and "run the same command again" in \
        proc.stdout
    assert not out.exists() and (work / "space.yaml").is_file()


def test_gpu_finals_refuse_the_cpu_outside_a_smoke_test(tmp_path: Path) -> None:
    proc = _run(FINALS_GPU, "--device", "cpu", "--out", str(tmp_path / "x.md"))
    assert proc.returncode == 2
    assert "--device cpu: only with --smoke-test" in proc.stderr


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path: Path) -> None:
    # The GPU script's measurements, on the CPU and at smoke sizes, one trial process: its
    # logic runs even where there is no GPU, and says that its numbers are not GPU numbers.
    out = tmp_path / "gpu.md"
    proc = _run(GPU_SCRIPT, "--smoke-test", "--device", "cpu", "--concurrency", "1",
                "--time-limit", DRY_RUN_TIME_LIMIT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = _assert_table(out)
    assert "not GPU numbers" in text
    assert "| flipcrop | on |" in text and "| 1 | " in text
    # Every part ran: the step alone and the feed per policy (searched: 3 views), the trials,
    # the small encoder's rows (none with mixed precision is its last), the targets.
    assert "## Targets" in text and "| searched | 3 |" in text and "| none | on |" in text
    assert "**skipped**" not in text and "**failed**" not in text and "whole run:" in text


@pytest.mark.slow
def test_gpu_script_dry_run_skips_what_the_time_limit_leaves_no_room_for(tmp_path: Path
                                                                         ) -> None:
    # With no time left every measurement is skipped, and the Markdown says so.
    out = tmp_path / "gpu.md"
    proc = _run(GPU_SCRIPT, "--smoke-test", "--device", "cpu", "--concurrency", "1",
                "--time-limit", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = _assert_table(out)
    assert "not GPU numbers" in text and "**skipped**" in text
    assert re.search(r"\| flipcrop \| on \| \d+ \| not measured \|", text)
    assert "training images/s" in text and "whole run:" in text
