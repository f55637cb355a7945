"""benchmarks/finals.py, the protocol's final-run command: it refuses what the protocol forbids
and keeps the ledger (its whole run is exercised by the benchmark smoke tests)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

from tests.conftest import load_benchmark_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "finals.py"


def _finals() -> ModuleType:
    return load_benchmark_script("finals")


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^\| (\d+) \|", text, flags=re.MULTILINE)]


def test_a_final_run_enters_its_row_once_and_fills_in_its_outcome(tmp_path: Path) -> None:
    finals = _finals()
    ledger = tmp_path / "ledger.md"
    shutil.copyfile(ROOT / "benchmarks" / "ledger.md", ledger)
    before = _numbers(ledger.read_text())
    key = finals._ledger_key(999, "shapes")  # a version with no row in the real ledger
    for _ in range(2):  # a resumed run does not add a second row
        finals.enter_ledger(ledger, key, "python benchmarks/finals.py --dataset shapes",
                             "config", "cpu")
    text = ledger.read_text()
    assert _numbers(text) == [*before, len(before) + 1]
    row = next(line for line in text.splitlines() if key in line)
    assert row.endswith("| started; not finished |")
    finals.finish_ledger(ledger, key, "**Target not met** (`x.md`)")
    row = next(line for line in ledger.read_text().splitlines() if key in line)
    assert row.endswith("| **Target not met** (`x.md`) |")
    assert "started" not in row
    # The text after the table (the compute spent choosing configurations) stays after it.
    assert ledger.read_text().rstrip().endswith(
        (ROOT / "benchmarks" / "ledger.md").read_text().rstrip().splitlines()[-1])


def test_no_final_run_on_a_draft_protocol(tmp_path: Path) -> None:
    protocol = yaml.safe_load((ROOT / "benchmarks" / "protocol.yaml").read_text())
    draft = tmp_path / "protocol.yaml"
    draft.write_text(yaml.safe_dump({**protocol, "status": "draft"}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "shapes", "--protocol",
                           str(draft), "--work", str(tmp_path / "work"), "--out",
                           str(tmp_path / "final.md")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "finals.py: protocol.yaml: status is 'draft'; a final run needs the protocol frozen "
        "and committed first"]
    assert not (tmp_path / "work").exists() and not (tmp_path / "final.md").exists()


def test_an_unknown_dataset_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "cifar", "--work",
                           str(tmp_path / "work")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "cifar" in proc.stderr
