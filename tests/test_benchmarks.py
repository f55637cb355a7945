"""Every benchmark script runs in smoke mode and writes its Markdown table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Helpers beside the scripts start with an underscore.
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_there_are_benchmark_scripts() -> None:
    assert SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_smoke(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.md"
    proc = subprocess.run([sys.executable, str(script), "--smoke-test", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# ") and "|---" in text
    assert "nan" not in text.lower()
