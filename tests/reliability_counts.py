"""The counts at the end of ``docs/reliability.md``, taken by the tests themselves while they run:
faults injected, bad inputs tried, trials run under faults and trials lost.

A fault test asks for the ``reliability`` fixture and reports what it did, with what it measured:
``reliability.fault("kill -9", trials=6, lost=lost_trials(before, after))``; a bad-input test
reports each input it tried: ``reliability.bad_input()``. The tests still assert their own
outcome (a lost trial fails its test); the counts say how much the suite tried. At the end of a
run pytest's summary prints one line with the totals, and with ``POLICYSEARCH_RELIABILITY_COUNTS``
set writes them to that JSON file (``.ci/run`` prints the line)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import pytest

COUNTS_FILE_ENV = "POLICYSEARCH_RELIABILITY_COUNTS"


@dataclass
class Counts:
    faults: int = 0  # faults injected
    fault_tests: set[str] = field(default_factory=set)  # the tests that injected them
    bad_inputs: int = 0  # bad inputs tried (each one refused with exit 2 and one line)
    bad_input_tests: set[str] = field(default_factory=set)
    trials: int = 0  # trials run by searches that a fault hit
    lost: int = 0  # finished trials missing or changed after a fault

    def line(self) -> str:
        return (f"reliability counts: {self.faults} faults injected by "
                f"{len(self.fault_tests)} tests, {self.bad_inputs} bad inputs tried by "
                f"{len(self.bad_input_tests)} tests, {self.trials} trials run under faults, "
                f"{self.lost} trials lost")

    def as_json(self) -> dict[str, int]:
        data = asdict(self)
        data["fault_tests"] = len(self.fault_tests)
        data["bad_input_tests"] = len(self.bad_input_tests)
        return data


COUNTS = pytest.StashKey[Counts]()


class Recorder:
    """What one test reports; adds to the session's ``Counts``."""

    def __init__(self, counts: Counts, test: str):
        self.counts, self.test = counts, test

    def fault(self, what: str, *, trials: int = 0, lost: int = 0, n: int = 1) -> None:
        """``n`` faults (``what``) injected into searches that ran ``trials`` trials in all, of
        which ``lost`` finished trials were not found again, unchanged, afterwards."""
        assert what and n >= 1 and trials >= 0 and lost >= 0
        self.counts.faults += n
        self.counts.fault_tests.add(self.test)
        self.counts.trials += trials
        self.counts.lost += lost

    def bad_input(self, n: int = 1) -> None:
        self.counts.bad_inputs += n
        self.counts.bad_input_tests.add(self.test)


def lost_trials(before: Mapping[int, object], after: Mapping[int, object]) -> int:
    """How many of the trials finished before a fault (number → value) are missing afterwards,
    or came back with another value."""
    return sum(1 for number, value in before.items()
               if number not in after or after[number] != value)


def finished_trials(out: object = None, *, storage: str | None = None,
             study: str | None = None) -> dict[int, object]:
    """The finished trials of a study (``policysearch.records``' arguments): number → metrics."""
    import policysearch as ps

    return {r.number: r.metrics for r in ps.records(out, storage=storage, study=study).records
            if r.state == "complete"}


def all_trials(out: object = None, *, storage: str | None = None,
               study: str | None = None) -> int:
    """How many trials the study holds, in any state."""
    import policysearch as ps

    return len(ps.records(out, storage=storage, study=study).records)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[COUNTS] = Counts()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Recorder:
    return Recorder(request.config.stash[COUNTS], request.node.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    counts = config.stash.get(COUNTS, None)
    if counts is None or not (counts.faults or counts.bad_inputs):
        return
    terminalreporter.write_line(counts.line())
    path = os.environ.get(COUNTS_FILE_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(counts.as_json(), handle, indent=1)
