"""Shared fixtures: a per-session dataset cache and a tiny search space that trains in seconds;
and the CI rule that a skipped test fails the run unless it is marked gpu."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import sys
from collections.abc import Generator
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from hypothesis import settings

# The counts at the end of docs/reliability.md (the `reliability` fixture).
pytest_plugins = ["tests.reliability_counts"]

IN_CI = os.environ.get("CI", "").lower() == "true"

# CI (CI=true) draws the same examples on every run (Hypothesis' derandomize), so that a red CI
# means a change broke something; a developer's run ("dev") explores new examples each time.
# Both print a failure's blob (@reproduce_failure) to replay it exactly; no deadline in CI,
# where a shared runner's pauses are no failure (the tests set their own max_examples).
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None,
                          max_examples=100)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if IN_CI else "dev")


# --- in CI, a skip is a failure (but for tests marked gpu) --------------------------------------
# CI has every extra and server installed (.ci/run, scripts/setup.sh): a test that skips there
# has not run, and a green CI would say it passed. Only a test marked `gpu` may skip (CI has no
# GPU). A module that skips while it is imported (pytest.importorskip at its top) fails too.

SKIP_IN_CI = ("skipped in CI (CI=true), where only tests marked gpu may skip: {reason} — "
              "install what the test needs, or mark it gpu if it needs a CUDA GPU")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.longrepr = SKIP_IN_CI.format(reason=_skip_reason(report))
    report.outcome = "failed"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # An expected failure (xfail) also reports as skipped; it is no skip.
    if (IN_CI and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is None):
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector
                               ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if IN_CI and report.skipped and collector.get_closest_marker("gpu") is None:
        _fail_skip(report)
    return report


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Keep generated datasets out of ~/.cache, but share them between the tests of a session.
    os.environ["POLICYSEARCH_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))


TINY_SPACE = {
    "name": "tiny",
    "dataset": "shapes",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "brightness"]},
    "per_task": {"tasks": ["shape"], "slots": 1, "ops": ["identity", "contrast"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "tpe", "n_startup_trials": 2},
    "pruner": {"name": "none"},
}


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    """A search-space file whose trials take about a second on one CPU core."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    return path


# Known warnings a command may write to stderr whatever it promises about its own output:
# Python's warnings ("path:line: SomeWarning: message", then the quoted source line, indented),
# and the warnings of Ray's core (C++: "[2025-01-01 12:00:00,123 W pid tid] file.cc:12: ..."),
# which a busy machine can bring (a slow heartbeat, a slow RPC). Errors are none of these.
KNOWN_WARNINGS = (
    re.compile(r"^\S.*:\d+: \w*Warning: "),
    re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ W \d+ \d+\] "),
)


def unexpected_stderr(text: str) -> list[str]:
    """The lines of ``text`` (a command's stderr) that are not known warnings; blank lines
    aside. A test asserts this is empty where it would have asserted an empty stderr."""
    unexpected: list[str] = []
    in_warning = False
    for line in text.splitlines():
        if not line.strip():
            continue
        if any(pattern.match(line) for pattern in KNOWN_WARNINGS):
            in_warning = True
        elif not (in_warning and line[:1].isspace()):  # not the source line a warning quotes
            in_warning = False
            unexpected.append(line)
    return unexpected


def random_param_values(space, task_names, seed: int = 0) -> dict:
    """One random value per parameter of ``space`` (as an engine would suggest them)."""
    from policysearch.search.space import parameters

    rng = random.Random(seed)
    values = {}
    for p in parameters(space, list(task_names)):
        if p.kind == "categorical":
            values[p.name] = rng.choice(p.choices)
        elif p.kind == "int":
            values[p.name] = rng.randint(int(p.low), int(p.high))
        else:
            values[p.name] = rng.uniform(p.low, p.high)
    return values


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (its own folder on the path while it loads, for
    its helpers beside it)."""
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in the script looks its module up there
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
