"""One search at a time per study file or experiment folder: an advisory lock (flock) that the
kernel drops when its process dies, so a killed search never leaves a stale lock behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from policysearch.errors import UserError


@contextlib.contextmanager
def exclusive(lock_file: Path, *, what: str, hint: str, source: str) -> Iterator[None]:
    """Hold ``lock_file`` for the block, or refuse with a UserError naming its holder:
    ``another search is running on this {what} (pid N on HOST); {hint}``."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"another search is running on this {what} ({holder}); {hint}",
                            source=source) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
