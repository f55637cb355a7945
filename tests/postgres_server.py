"""A real PostgreSQL server on loopback for the tests that share a study across processes.

Started once per test session from the Debian packages (``apt-get install -y postgresql``,
which ``.ci/run`` does); skipped where PostgreSQL is not installed, unless
``POLICYSEARCH_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Seconds each PostgreSQL command may take (pg_ctl -w itself waits at most 60 s by default).
COMMAND_TIMEOUT_S = 300
# Tries to start the server, each on a fresh port, in case another process took the port
# between _free_port and the server's own bind.
START_TRIES = 5


def _free_port() -> int:
    """A port the kernel chose as free (bound to port 0, read back); PostgreSQL needs a
    number, so the server binds it itself a moment later (a clash is retried)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its commands as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a fresh server: the URL form the
    README documents (policysearch picks the installed driver, ``optuna_study.database_url``)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.environ.get("POLICYSEARCH_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed")
    # Not under pytest's tmp_path: its parent is private to the user running the tests, and
    # the server runs as ``postgres``.
    root = Path(tempfile.mkdtemp(prefix="policysearch-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    log = root / "server.log"
    try:
        subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                                     "-U", "postgres"]),
                       check=True, capture_output=True, timeout=COMMAND_TIMEOUT_S)
        for _ in range(START_TRIES):
            log.unlink(missing_ok=True)
            port = _free_port()
            options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 "
                       "-c max_connections=200")
            started = subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data),
                                                   "-o", options, "-l", str(log), "-w",
                                                   "start"]),
                                     capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            if started.returncode == 0:
                break
            server_log = log.read_text(errors="replace") if log.exists() else ""
            if "could not bind" not in server_log:
                break  # not a port clash: reported below
        if started.returncode != 0:
            pytest.fail(f"PostgreSQL did not start: {started.stdout}{started.stderr}"
                        f"{server_log[-2000:]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        # Also after a start that failed or timed out: stop whatever runs on this data folder.
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                     "-w", "stop"]), capture_output=True,
                       timeout=COMMAND_TIMEOUT_S)
        shutil.rmtree(root, ignore_errors=True)
