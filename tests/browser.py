"""A real headless Chromium (Debian's ``chromium`` package, which ``.ci/run`` installs) driven
by Playwright, for tests that look at the HTML report as a user would.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``. Skipped where
Chromium is missing, unless ``POLICYSEARCH_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes
that a failure. Also used by ``scripts/report_screenshot.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRE_ENV = "POLICYSEARCH_REQUIRE_BROWSER"
# As root in CI: no sandbox. No background networking: on a closed network Chromium's own
# connections (updates, sync, safe browsing) would be refused, and they are not the page's.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The browser's path; skips the test (or fails it with POLICYSEARCH_REQUIRE_BROWSER=1)
    when there is none."""
    import pytest

    path = chromium_path()
    if path is None:
        reason = "Chromium is not installed (apt-get install -y chromium)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class PageLog:
    """What a page did while it loaded: every request's URL, console errors, page errors."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@contextmanager
def open_page(path: Path, *, executable: str, width: int = 1280,
              height: int = 900) -> Iterator[tuple[Any, PageLog]]:
    """Load ``path`` (a local file) in headless Chromium; yields the Playwright page (loaded,
    scripts run) and its log."""
    from playwright.sync_api import sync_playwright

    log = PageLog()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("request", lambda request: log.requests.append(request.url))
            page.on("console", lambda msg: log.console_errors.append(msg.text)
                    if msg.type == "error" else None)
            page.on("pageerror", lambda err: log.page_errors.append(str(err)))
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            yield page, log
        finally:
            browser.close()
