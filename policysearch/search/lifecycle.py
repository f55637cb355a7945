"""One trial lifecycle for every engine: the Optuna engine (one process or ``--workers K``), the
Ray engine and PBT call these, so that a trial means the same thing wherever it runs.

The lifecycle decides what a trial is; an engine only schedules it:

* **which reference run comes next**: ``missing_references`` (one run, or one per task with
  ``single_task_reference``), and its policy, ``reference_run_policy``;
* **a search trial's policy** from its parameter values: ``search_trial_policy``;
* **running one training**: ``run_training`` turns whatever the training ended with (its
  result, a pruning, a fault of the trial, a data error, a bug) into a ``TrialOutcome``;
* **scoring** a finished trial against the reference: ``Scoring`` (Δm%, or each task's Δ% for
  a pareto search), per epoch for pruning and once at the end;
* **the failure rules**: ``FailureRules`` says when repeated failures end the search;
* **the record**: ``TrialOutcome.record`` builds the ``TrialRecord`` every reader works on, and
  ``TrialOutcome.end_event`` the ``TrialEnded`` progress event.

Resuming checks the stored definition with ``check_resume``. docs/architecture.md shows where
each engine calls in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from policysearch.augment import Policy, Weighting, get_baseline
from policysearch.augment.draws import SEEDING_VERSION
from policysearch.config import SearchSpace
from policysearch.errors import UserError
from policysearch.events import TrialEnded
from policysearch.records import (
    Metrics,
    MetricsInfo,
    TrialRecord,
    delta_m,
    stored_data_wait,
    task_deltas,
)
from policysearch.search.space import policy_from_params
from policysearch.training import (
    Reporter,
    TrialFailed,
    TrialPruned,
    TrialResult,
    non_finite,
    release_memory,
)

# Failed trials do not count towards --trials, so a search whose every trial fails would never
# end: it stops after this many failed trials in a row (any reason), or after this many in a row
# that failed with an unexpected exception (a bug or an environment problem).
MAX_CONSECUTIVE_FAILURES = 10
MAX_CONSECUTIVE_ERRORS = 3
UNDEFINED_DELTA = "Δm% is undefined: every reference metric is ~0"
# Why a trial failed (``TrialOutcome.kind``): a fault of the trial (TrialFailed, a non-finite
# metric), a data error (the search stops, exit status 2), or an unexpected exception.
FAULT, DATA_ERROR, UNEXPECTED = "trial", "user", "internal"


# --- resuming ----------------------------------------------------------------------------------


def definition(space: SearchSpace, seed: int) -> dict[str, Any]:
    """What a resume must match: the space (canonical form), the seed and the seeding version
    (how seeds became random numbers: ``augment.draws.SEEDING_VERSION``)."""
    return {"space": space.canonical(), "seed": seed, "seeding": SEEDING_VERSION}


def first_difference(old: Any, new: Any, path: str = "") -> str:
    """``key.path: old → new`` of the first difference between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{path}.{key}".lstrip("."))
    return f"{path}: {old!r} → {new!r}"


def check_resume(stored: Any, space: SearchSpace, seed: int, *, where: str,
                 study_name: str) -> None:
    """Refuse to resume a study whose stored definition (None: a new study) differs from
    this search's, naming the first difference."""
    wanted = definition(space, seed)
    if stored is not None and stored.get("seeding", 1) != SEEDING_VERSION:
        raise UserError(f"refusing to resume: the study was seeded under seeding version "
                        f"{stored.get('seeding', 1)}, and this policysearch draws its random "
                        f"numbers under version {SEEDING_VERSION}, so its trials would not "
                        "repeat or compare; start a new study (another --study or --out)",
                        source=where, field=f"study {study_name}")
    if stored is not None and stored != wanted:
        raise UserError("refusing to resume: the search space differs from the study's "
                        f"({first_difference(stored, wanted)}); use another --study or --out",
                        source=where, field=f"study {study_name}")


# --- what a trial trains -----------------------------------------------------------------------


def reference_policy(name: str, tasks: Mapping[str, str]) -> Policy:
    """The baseline ``name`` as a reference: its ops, every task's loss weighing 1."""
    policy = get_baseline(name, dict(tasks))
    return replace(policy, weighting=Weighting("static", {t: 1.0 for t in tasks}))


def missing_references(space: SearchSpace, tasks: Mapping[str, str],
                       covered: Collection[str | None]) -> list[str | None]:
    """The reference runs still to run, given those ``covered`` (complete, or running, by
    task; None is the multi-task reference): one per task without a run for a single-task
    reference (Maninis et al.: one network per task), else [None] until it has run."""
    if space.single_task_reference:
        return [t for t in tasks if t not in covered]
    return [] if None in covered else [None]


def reference_run_policy(space: SearchSpace, tasks: Mapping[str, str],
                         task: str | None) -> Policy:
    """The policy of the reference run for ``task`` (None: the multi-task reference)."""
    return reference_policy(space.reference,
                            dict(tasks) if task is None else {task: tasks[task]})


def search_trial_policy(space: SearchSpace, tasks: Mapping[str, str],
                        values: Mapping[str, Any]) -> Policy:
    """The policy a search trial's parameter values stand for."""
    return policy_from_params(space, tasks, values)


# --- scoring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scoring:
    """How a trial's metrics become the number(s) the search maximises."""

    metrics_info: MetricsInfo
    tasks: dict[str, str]  # name -> kind, in the study's order
    task_weights: dict[str, float]
    pareto: bool = False

    @classmethod
    def of(cls, space: SearchSpace, tasks: Mapping[str, str],
           metrics_info: MetricsInfo) -> Scoring:
        return cls(metrics_info=metrics_info, tasks=dict(tasks),
                   task_weights=dict(space.task_weights), pareto=space.objective == "pareto")

    def epoch_value(self, metrics: Metrics, reference: Metrics | None) -> float | None:
        """An epoch's Δm% against the reference, for pruning; None when there is no
        reference (a reference trial) or it is undefined."""
        if reference is None:
            return None
        value, _ = delta_m(metrics, reference, self.metrics_info, self.task_weights)
        return value if math.isfinite(value) else None

    def deltas(self, metrics: Metrics, reference: Metrics | None
               ) -> tuple[float, dict[str, float]]:
        """(Δm%, each task's Δ%) against ``reference``; a reference trial (None) scores 0.
        A task whose Δ% is undefined (every reference metric ~0) is 0, as Δm% leaves it out."""
        if reference is None:
            return 0.0, dict.fromkeys(self.tasks, 0.0)
        value, _ = delta_m(metrics, reference, self.metrics_info, self.task_weights)
        per_task, _ = task_deltas(metrics, reference, self.metrics_info)
        return value, {t: per_task.get(t, 0.0) for t in self.tasks}

    def finish(self, result: TrialResult, reference: Metrics | None) -> TrialOutcome:
        """The outcome of a training that ran to its end."""
        bad = non_finite(result.metrics)
        if bad:
            return TrialOutcome("failed", epochs=result.epochs, kind=FAULT,
                                error=f"non-finite metric: {', '.join(bad)}")
        value, per_task = self.deltas(result.metrics, reference)
        if not math.isfinite(value):
            return TrialOutcome("failed", epochs=result.epochs, kind=FAULT,
                                error=UNDEFINED_DELTA)
        weights = {t: float(w) for t, w in (result.weights or {}).items()}
        return TrialOutcome("complete", metrics=result.metrics, epochs=result.epochs,
                            value=value, task_deltas=per_task if self.pareto else None,
                            final_weights=weights or None, seconds=round(result.seconds, 3),
                            device=result.device, data_wait=stored_data_wait(result.data_wait),
                            loader_workers=result.loader_workers)

    def objectives(self, outcome: TrialOutcome) -> float | list[float]:
        """What the optimiser is told: Δm%, or each task's Δ% in task order (pareto)."""
        if self.pareto:
            return [(outcome.task_deltas or {}).get(t, 0.0) for t in self.tasks]
        return float(outcome.value or 0.0)


# --- one training ------------------------------------------------------------------------------


@dataclass
class TrialOutcome:
    """How one trial ended, engine-neutral: what an engine stores, tells its optimiser, counts
    and reports. ``kind`` says why a failed trial failed (``FAULT``, ``DATA_ERROR``,
    ``UNEXPECTED``)."""

    state: str  # complete | pruned | failed
    metrics: Metrics | None = None
    epochs: int | None = None
    error: str | None = None
    kind: str | None = None
    value: float | None = None  # Δm% (0 for a reference trial)
    task_deltas: dict[str, float] | None = None  # pareto searches: each task's Δ%
    final_weights: dict[str, float] | None = None
    seconds: float | None = None
    device: str | None = None
    # Per trained epoch: the share of its wall time the training step waited for its next
    # batch (training.TrialResult.data_wait); kept for complete trials only.
    data_wait: list[float] | None = None
    loader_workers: int | None = None  # DataLoader worker processes that prepared the batches

    def to_dict(self) -> dict[str, Any]:
        """The outcome as plain data (a Ray worker sends it to the driver this way)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialOutcome:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def record(self, number: int, *, role: str, policy: dict[str, Any] | None,
               reference_task: str | None = None, params: dict[str, Any] | None = None,
               started_at: float | None = None, duration_s: float | None = None,
               device: str | None = None) -> TrialRecord:
        """The trial's stored record. ``duration_s`` (the engine's clock) defaults to the
        training's own seconds; ``device`` to where it trained."""
        return TrialRecord(
            number=number, state=self.state, role=role, metrics=self.metrics, policy=policy,
            duration_s=duration_s if duration_s is not None else self.seconds,
            epochs=self.epochs, error=self.error, reference_task=reference_task,
            final_weights=self.final_weights, started_at=started_at,
            device=device or self.device, params=params, data_wait=self.data_wait,
            loader_workers=self.loader_workers)

    def end_event(self, number: int, role: str) -> TrialEnded:
        """The ``trial_end`` progress event: the error of a failed trial; Δm% (0 for a
        reference) and the training's seconds of a complete one."""
        complete = self.state == "complete"
        return TrialEnded(
            trial=number, state=self.state, role=role,
            error=self.error if self.state == "failed" else None,
            delta_m=(self.value if role == "search" else 0.0) if complete else None,
            seconds=self.seconds if complete else None,
            task_deltas=dict(self.task_deltas) if complete and self.task_deltas is not None
            else None)


class TrialReporter:
    """The reporter ``run_trial`` calls after every epoch: keeps the last metrics and the
    epochs done, passes them to ``on_epoch`` (progress) and to ``after_epoch``, the hook in
    which an engine scores the epoch and may prune (raise ``TrialPruned``)."""

    def __init__(self, scoring: Scoring, reference: Metrics | None,
                 on_epoch: Callable[[int, Metrics], None] | None = None):
        self.scoring = scoring
        self.reference = reference
        self.on_epoch = on_epoch
        self.last: Metrics | None = None
        self.epochs = 0

    def report(self, epoch: int, metrics: Metrics) -> None:
        self.last, self.epochs = metrics, epoch + 1
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        self.after_epoch(epoch, metrics)

    def after_epoch(self, epoch: int, metrics: Metrics) -> None:
        """Engine hook; nothing by default."""


def run_training(train: Callable[[Reporter], TrialResult], reporter: TrialReporter
                 ) -> tuple[TrialOutcome, UserError | None]:
    """Run one training and say how it ended; a data error is returned with the outcome so
    that the engine can record the trial before it stops the search. KeyboardInterrupt goes
    through."""
    user_error: UserError | None = None
    try:
        result = train(reporter)
    except TrialPruned as pruned:
        last = reporter.last
        outcome = TrialOutcome("pruned", epochs=reporter.epochs, error=str(pruned),
                               metrics=last if last is not None and not non_finite(last)
                               else None)
    except TrialFailed as failed:
        outcome = TrialOutcome("failed", epochs=reporter.epochs, error=str(failed), kind=FAULT)
    except UserError as err:  # a data file found broken inside the trial
        err.__traceback__ = None  # (its frames hold the trial's tensors)
        user_error = err
        outcome = TrialOutcome("failed", epochs=reporter.epochs, error=str(err),
                               kind=DATA_ERROR)
    except Exception as err:  # a bug or an environment problem inside one trial
        outcome = TrialOutcome("failed", epochs=reporter.epochs, kind=UNEXPECTED,
                               error=f"{type(err).__name__}: {err}".splitlines()[0])
    else:
        outcome = reporter.scoring.finish(result, reporter.reference)
    if outcome.state == "failed":
        release_memory()  # outside the except blocks: their tracebacks held the tensors
    return outcome, user_error


# --- the failure rules -------------------------------------------------------------------------


@dataclass
class FailureRules:
    """Counts failed trials in a row; ``count`` says when the search must stop."""

    failures: int = 0
    errors: int = 0

    def count(self, outcome: TrialOutcome) -> str | None:
        """Count one ended trial; the one line why the search must stop now, or None."""
        if outcome.state != "failed":
            self.failures = self.errors = 0
            return None
        self.failures += 1
        self.errors = self.errors + 1 if outcome.kind == UNEXPECTED else 0
        if self.errors >= MAX_CONSECUTIVE_ERRORS:
            return (f"{self.errors} trials in a row failed with an unexpected error; last: "
                    f"{outcome.error}")
        if self.failures >= MAX_CONSECUTIVE_FAILURES:
            return f"{self.failures} trials in a row failed; the last said: {outcome.error}"
        return None
