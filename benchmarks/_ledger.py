"""benchmarks/ledger.md, the record of every run that scores a test split: a run enters its row
(outcome "started; not finished") before its first training and fills in its outcome when it
ends. Shared by the scripts that score test splits (finals.py, methods.py)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTED = "started; not finished"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def ledger_rows(ledger: Path) -> list[str]:
    return [line for line in ledger.read_text().splitlines() if line.startswith("| ")
            and line.split("|")[1].strip().isdigit()]


def enter_ledger(ledger: Path, key: str, command: str, configuration: str,
                 machine: str) -> None:
    """Add the run's row (outcome "started") unless a row names ``key`` already."""
    if any(key in row for row in ledger_rows(ledger)):
        return
    number = len(ledger_rows(ledger)) + 1
    commit = git("rev-parse", "--short", "HEAD")
    row = (f"| {number} | {datetime.date.today().isoformat()} | `{commit}` | `{command}` | "
           f"{key}: {configuration} | {machine} | {STARTED} |")
    lines = ledger.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line in ledger_rows(ledger))
    lines.insert(last + 1, row)
    ledger.write_text("\n".join(lines) + "\n")


def finish_ledger(ledger: Path, key: str, outcome: str) -> None:
    """Replace the outcome of ``key``'s started row with ``outcome``."""
    lines = ledger.read_text().splitlines()
    for i, line in enumerate(lines):
        if key in line and line.rstrip().endswith(f"| {STARTED} |"):
            lines[i] = line.rstrip()[: -len(f"{STARTED} |")] + outcome + " |"
    ledger.write_text("\n".join(lines) + "\n")
