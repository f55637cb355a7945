"""The reference trial runs once, however two processes' claims interleave.

Two study handles (two storage objects on one journal file, or on one PostgreSQL database: two
processes, as far as the storage can tell) each run what a worker does before its first
search trial: ``_claim_reference``, then, if it got the trial, tell it complete and fail the
other copies (``_drop_duplicate_references``). Each runs in a thread whose every storage call
waits for its turn, so the test chooses the order of the two handles' calls step by step. It
tries every order (a few hundred; the races it found before the fix needed one and four
switches), each on a fresh study: in every one exactly one handle runs the reference, and
afterwards neither finds one to run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from policysearch.config import SearchSpace
from policysearch.search.optuna_engine import _claim_reference, _drop_duplicate_references
from policysearch.search.optuna_study import open_storage
from tests.conftest import TINY_SPACE
from tests.postgres_server import postgres_url  # noqa: F401 — a fixture

TURN_TIMEOUT_S = 60  # a handle that never comes back to the gate: a hang, reported
TASKS = {"shape": "classification"}


class _Turns:
    """Lets one handle make one storage call at a time, in the order the test chooses."""

    def __init__(self, n: int):
        self.cond = threading.Condition()
        self.at_gate = [False] * n
        self.go = [False] * n
        self.done = [False] * n

    def _wait(self, condition: Callable[[], bool]) -> None:
        if not self.cond.wait_for(condition, timeout=TURN_TIMEOUT_S):
            raise TimeoutError("a handle did not come back to the gate")

    def gate(self, me: int) -> None:
        with self.cond:
            self.at_gate[me] = True
            self.cond.notify_all()
            self._wait(lambda: self.go[me])
            self.go[me] = self.at_gate[me] = False

    def finish(self, me: int) -> None:
        with self.cond:
            self.done[me] = True
            self.cond.notify_all()

    def enabled(self) -> list[int]:
        """The handles waiting at the gate, once every handle waits or has finished."""
        with self.cond:
            self._wait(lambda: all(g or d for g, d in zip(self.at_gate, self.done, strict=True)))
            return [i for i, g in enumerate(self.at_gate) if g]

    def step(self, me: int) -> None:
        """Let ``me`` make its next call; return once it waits again or has finished."""
        with self.cond:
            self.go[me] = True
            self.cond.notify_all()
            self._wait(lambda: not self.go[me] and (self.at_gate[me] or self.done[me]))


class _Gated:
    """A storage whose every call first waits for the handle's turn."""

    def __init__(self, storage: Any, turns: _Turns, me: int):
        self._storage, self._turns, self._me = storage, turns, me

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._storage, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._turns.gate(self._me)
            return attr(*args, **kwargs)
        return call


def _worker_start(study: optuna.Study, space: SearchSpace, claimed: list[int]) -> None:
    """What a worker does with the reference: claim it, and if it got it, run it (here: tell
    it complete at once) and fail the copies another worker enqueued."""
    trial = _claim_reference(study, space, TASKS)
    if trial is not None:
        claimed.append(trial.number)
        study.tell(trial, 0.0)
        _drop_duplicate_references(study, None)


def _run(handles: list[optuna.Study], space: SearchSpace, prefix: list[int]
         ) -> tuple[list[tuple[int, list[int]]], list[list[int]]]:
    """Run both handles, choosing who goes next by ``prefix``, then by going on with the
    same handle while it can. Returns each step's (choice, enabled) and what each claimed."""
    turns = _Turns(len(handles))
    real = [study._storage for study in handles]
    claimed: list[list[int]] = [[] for _ in handles]
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            _worker_start(handles[i], space, claimed[i])
        except BaseException as err:  # noqa: BLE001 — re-raised in the test's thread
            errors.append(err)
        finally:
            turns.finish(i)

    for i, study in enumerate(handles):
        study._storage = _Gated(real[i], turns, i)  # type: ignore[assignment]
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(2)]
    steps: list[tuple[int, list[int]]] = []
    try:
        for thread in threads:
            thread.start()
        current = None
        while enabled := turns.enabled():
            if len(steps) < len(prefix):
                choice = prefix[len(steps)]
            else:
                choice = current if current in enabled else enabled[0]
            assert choice in enabled, (prefix, steps)
            steps.append((choice, enabled))
            current = choice
            turns.step(choice)
        for thread in threads:
            thread.join(timeout=TURN_TIMEOUT_S)
    finally:
        for i, study in enumerate(handles):
            study._storage = real[i]
    if errors:
        raise errors[0]
    return steps, claimed


def _schedules(explore: Callable[[list[int]], list[tuple[int, list[int]]]]) -> Iterator[int]:
    """Depth-first over every order: ``explore`` runs one order from its prefix (then goes on
    with the same handle while it can) and returns its steps; each step where the other
    handle could have gone instead is a new prefix. Yields the number of steps of each."""
    stack: list[list[int]] = [[0], [1]]
    while stack:
        prefix = stack.pop()
        steps = explore(prefix)
        yield len(steps)
        for j in range(len(prefix), len(steps)):
            choice, enabled = steps[j]
            stack.extend([c for c, _ in steps[:j]] + [other]
                         for other in enabled if other != choice)


@pytest.fixture(params=["journal", pytest.param("postgres", marks=[pytest.mark.postgres,
                                                              pytest.mark.slow])])
def new_handles(request: pytest.FixtureRequest, tmp_path: Path
                ) -> Callable[[int], list[optuna.Study]]:
    """A function giving two handles on a fresh study each time it is called."""
    def journal(n: int) -> list[optuna.Study]:
        path = str(tmp_path / f"claim{n}.journal")
        optuna.create_study(storage=JournalStorage(JournalFileBackend(path)), study_name="s")
        return [optuna.load_study(study_name="s",
                                  storage=JournalStorage(JournalFileBackend(path)))
                for _ in range(2)]

    if request.param == "journal":
        return journal
    url = request.getfixturevalue("postgres_url")
    # Two storages, one per handle, each with its own connections (opened once: a fresh study
    # per order is enough, and opening a database storage is slow).
    storages = [open_storage(url, tmp_path)[0] for _ in range(2)]

    def postgres(n: int) -> list[optuna.Study]:
        name = f"claim-{tmp_path.name}-{n}"
        optuna.create_study(storage=storages[0], study_name=name)
        return [optuna.load_study(study_name=name, storage=storage) for storage in storages]
    return postgres


def test_two_interleaved_claims_run_the_reference_once(
        new_handles: Callable[[int], list[optuna.Study]]) -> None:
    space = SearchSpace(**TINY_SPACE)
    outcomes: list[str] = []

    def explore(prefix: list[int]) -> list[tuple[int, list[int]]]:
        handles = new_handles(len(outcomes))
        steps, claimed = _run(handles, space, prefix)
        order = "".join("AB"[c] for c, _ in steps)  # who made each storage call
        # exactly one handle ran the reference, once
        assert sorted(len(c) for c in claimed) == [0, 1], (order, claimed)
        trials = handles[0].get_trials(deepcopy=False)
        references = [t for t in trials if t.user_attrs.get("role") == "reference"]
        complete = [t.number for t in references if t.state == TrialState.COMPLETE]
        assert complete == [n for c in claimed for n in c], (order, claimed, references)
        assert not [t for t in trials if t.state == TrialState.RUNNING], order
        # and afterwards neither handle finds a reference to run
        for study in handles:
            assert _claim_reference(study, space, TASKS) is None, order
        outcomes.append(order)
        return steps

    lengths = list(_schedules(explore))
    assert len(outcomes) == len(lengths) > 2
    assert len(set(outcomes)) == len(outcomes)  # no order tried twice
