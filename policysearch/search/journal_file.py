"""A study's journal file when a write was cut off (the disk filled, the process died mid-line).

Optuna's journal is one JSON record per line, appended under a lock. A cut-off write leaves the
last line without its newline: Optuna reads past it, but the next record appended would be glued
to it and make a line that no reader can parse, so the study could never be read again.
``repair_partial_tail`` cuts such a line off (keeping it beside the journal) before anything is
appended; ``first_bad_line`` finds the line that makes an already damaged journal unreadable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol


class FileLock(Protocol):
    """What Optuna's journal file locks offer (``JournalFileSymlinkLock``, ...)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


PARTIAL_SUFFIX = ".partial"
_CHUNK = 1 << 16


def _last_line_start(f, size: int) -> int:  # noqa: ANN001 (a binary file)
    """The offset just after the last newline before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def repair_partial_tail(path: Path, lock: FileLock) -> str | None:
    """Cut off the journal's last line if a write left it without its newline, under the
    journal's own lock (so no writer is mid-line), appending it to ``<journal>.partial``.
    Every complete record is kept: the cut line is the record that was being written (a trial
    whose end it recorded is then a trial left running, which a resumed search fails and
    re-runs). Returns a one-line note saying what was done, or None when nothing was cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock.acquire()
    try:
        with path.open("rb+") as f:
            size = f.seek(0, 2)
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return None
            start = _last_line_start(f, size)
            f.seek(start)
            tail = f.read()
            partial = path.with_name(path.name + PARTIAL_SUFFIX)
            with partial.open("ab") as kept:
                kept.write(tail + b"\n")
            f.truncate(start)
    finally:
        lock.release()
    return (f"{path}: its last line was cut off mid-write ({len(tail)} bytes, no newline); "
            f"moved to {partial.name}, every complete record kept")


def first_bad_line(path: Path) -> int | None:
    """The number (from 1) of the first line that is not a complete JSON record, the last line
    excepted when it merely lacks its newline (Optuna skips that one); None if every line is
    sound."""
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    last = len(lines) - 1  # the part after the final newline: empty, or a cut-off line
    for number, line in enumerate(lines[:last], start=1):
        try:
            json.loads(line)
        except ValueError:
            return number
    return None
