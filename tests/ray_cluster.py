"""A real Ray head on loopback for tests (``ray_head`` fixture), stopped by ending its own
process group, never by ``ray stop`` (which would end every Ray process of the machine).

    from tests.ray_cluster import ray_head  # noqa: F401  (pytest finds the fixture)

    def test_x(ray_head, monkeypatch):
        ray_head.address        # "127.0.0.1:PORT"
        ray_head.env            # for a subprocess: RAY_ADDRESS set, so that
                                # --ray-address auto finds this head
        ray_head.join(monkeypatch)  # the same for ray.init in the test's own process

The head runs without Ray's token authentication (RAY_AUTH_MODE=disabled for the head only):
a client that names an address never sends a token unless RAY_AUTH_MODE=token is set before
ray is imported, which a test process cannot promise. Its processes live in their own process
group and temp dir, so that other Ray instances of the machine are never touched.

Without Ray (not installed, or the head does not start) the tests using it are skipped, unless
``POLICYSEARCH_REQUIRE_RAY=1``, which makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "POLICYSEARCH_REQUIRE_RAY"
START_TIMEOUT_S = 90.0
# Ray puts Unix sockets under its temp dir; their paths must stay below ~107 characters.
MAX_TEMP_DIR_LEN = 48
# What `ray start --head` prints once its GCS listens (other Ray tools parse this line too).
ADDRESS_LINE = re.compile(r"ray start --address='([^']+)'")


def ray_unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when POLICYSEARCH_REQUIRE_RAY=1."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"Ray is required ({REQUIRE_ENV}=1) but {reason}")
    pytest.skip(reason)


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port that refuses connections for the block: bound here (to port 0, the
    kernel's pick) but not listening, so that no other process can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def ray_executable() -> str | None:
    """The ``ray`` command of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray")


@dataclass
class RayHead:
    """A running head: its address, temp dir and process."""

    address: str
    temp_dir: Path
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment for a subprocess that should join this head with ``auto``."""
        return {**os.environ, "RAY_ADDRESS": self.address}

    def join(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Let this process join the head (``auto`` or its address) for one test."""
        monkeypatch.setenv("RAY_ADDRESS", self.address)


def _pump(stream, lines: list[str], found: dict[str, str], ready: threading.Event) -> None:
    for line in stream:
        lines.append(line.rstrip())
        match = ADDRESS_LINE.search(line)
        if match and not ready.is_set():
            found["address"] = match.group(1)
            ready.set()
    ready.set()  # the process ended (start-up failed)


def start_head(temp_root: Path, num_cpus: int = 2) -> RayHead:
    """Start ``ray start --head --block`` in its own process group; wait until it runs."""
    exe = ray_executable()
    if exe is None:
        ray_unavailable("the `ray` command is not installed")
    temp_dir = Path(temp_root)
    # --port 0: the GCS binds a port the kernel picks and Ray prints it (no port guessed here,
    # none taken by another process between choosing and binding it).
    cmd = [exe, "start", "--head", "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--port", "0", "--include-dashboard=false",
           "--disable-usage-stats", "--temp-dir", str(temp_dir), "--block"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    head = RayHead(address="", temp_dir=temp_dir, process=proc)
    found: dict[str, str] = {}
    ready = threading.Event()
    threading.Thread(target=_pump, args=(proc.stdout, head.output, found, ready),
                     daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or proc.poll() is not None or "address" not in found:
        stop_head(head)
        ray_unavailable("`ray start --head` did not start: " + " | ".join(head.output[-5:]))
    # The GCS listens on every interface; the tests reach it on loopback.
    head.address = f"127.0.0.1:{found['address'].rpartition(':')[2]}"
    return head


def stop_head(head: RayHead, timeout: float = 3.0) -> None:
    """End the head's process group (SIGTERM, then SIGKILL) — only the processes it started."""
    try:
        pgid = os.getpgid(head.process.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _running_in_group(pgid):
                head.process.wait(timeout=5)
                return
            time.sleep(0.2)
    head.process.wait(timeout=5)


def _running_in_group(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which only wait for their
    parent to collect them, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def short_temp_dir(candidate: Path) -> tuple[Path, bool]:
    """``candidate`` when short enough for Ray's socket paths, else a new folder under /tmp
    (and True: the caller removes it)."""
    if len(str(candidate)) <= MAX_TEMP_DIR_LEN:
        return candidate, False
    return Path(tempfile.mkdtemp(prefix="psray-", dir="/tmp")), True


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A Ray head with 2 CPUs on 127.0.0.1, for the tests of one module."""
    try:
        import ray  # noqa: F401
    except ImportError:
        ray_unavailable("ray is not installed (pip install 'policysearch[ray]')")
    temp_dir, remove = short_temp_dir(tmp_path_factory.mktemp("ray"))
    head = start_head(temp_dir)
    try:
        yield head
    finally:
        stop_head(head)
        if remove:
            shutil.rmtree(temp_dir, ignore_errors=True)
