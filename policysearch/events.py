"""The progress events of a search and of a benchmark: one frozen dataclass per event.

Every engine, the driver, the worker processes, the trackers and the benchmark build these;
every listener (the terminal printers, ``--json-logs``, the trackers, a callable given to
``policysearch.search(progress=...)`` or ``policysearch.benchmark(events=...)``) receives them
and tells them apart by type, e.g.::

    def progress(event: SearchEvent) -> None:
        match event:
            case TrialEnded(trial=number, state=state):
                print(f"trial {number}: {state}")
            case TimedOut():
                print("stopped at --timeout")

Each class has ``kind``, the event's name in ``--json-logs`` (``{"event": kind, ...fields}``,
``to_dict``). A field whose default is None is an optional key: left out of ``to_dict`` while
None (``trial_end`` has ``error`` only when the trial failed, ``delta_m`` and ``seconds`` only
when it completed). Events pickle: ``--workers`` processes send them through a queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from policysearch.records import Metrics


@dataclass(frozen=True)
class Event:
    """What every event has: its ``kind`` (the name in JSON logs)."""

    kind: ClassVar[str]


# --- a search ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetLoaded(Event):
    """The dataset is loaded: its name, notes (how splits were made, skipped samples) and the
    size of each split; ``subset`` (``{n, seed, of, stratified_by}``) when the search trains
    on a subset of the training split (``sizes["train"]`` is then ``n``, ``of`` the whole
    split's size)."""

    kind: ClassVar[str] = "dataset"
    name: str
    notes: list[str]
    sizes: dict[str, int]
    subset: dict[str, Any] | None = None


@dataclass(frozen=True)
class SpaceAdapted(Event):
    """The search space ``space`` was resolved against the dataset ``dataset``: what changed
    (``changes``: ops left out, the reference replaced, the per-task views a rule chose) and
    ``warnings`` (unsafe ops a space without ``adapt`` keeps as written). Sent only when there
    is something to say (``policysearch.space_adapt``)."""

    kind: ClassVar[str] = "space_adapted"
    space: str
    dataset: str
    changes: list[str]
    warnings: list[str]

    def lines(self) -> list[str]:
        """What a person reads: the changes on one line, then one line per warning."""
        head = [f"space {self.space} adapted to {self.dataset}: {'; '.join(self.changes)}"]
        return (head if self.changes else []) + [f"warning: {w}" for w in self.warnings]


@dataclass(frozen=True)
class SearchStarted(Event):
    """The study is open: ``finished`` of ``target`` trials done; ``workers`` when several
    processes (or Ray trials at once) share it."""

    kind: ClassVar[str] = "start"
    study: str
    target: int
    epochs: int
    finished: int
    workers: int | None = None


@dataclass(frozen=True)
class TrialStale(Event):
    """A trial an interrupted search left running was marked failed; its parameters run
    again."""

    kind: ClassVar[str] = "stale"
    trial: int


@dataclass(frozen=True)
class PruningOff(Event):
    """The space asks for a pruner that this search cannot use (a pareto search)."""

    kind: ClassVar[str] = "pruning_off"
    message: str


@dataclass(frozen=True)
class WaitingForReference(Event):
    """Another worker runs the reference trial; this one waits for it."""

    kind: ClassVar[str] = "waiting_reference"


@dataclass(frozen=True)
class TrialStarted(Event):
    """A trial starts: its role (reference or search), its policy as one line, the trials
    finished so far of ``target``; ``task``: the task of a single-task reference run."""

    kind: ClassVar[str] = "trial_start"
    trial: int
    role: str
    policy: str
    finished: int
    target: int
    task: str | None


@dataclass(frozen=True)
class EpochEnded(Event):
    """A trial finished an epoch (0-based) with these validation metrics."""

    kind: ClassVar[str] = "epoch"
    trial: int
    epoch: int
    metrics: Metrics


@dataclass(frozen=True)
class TrialEnded(Event):
    """A trial ended (complete, pruned or failed): ``error`` when it failed; ``delta_m`` (0 for
    a reference) and ``seconds`` when it completed; ``task_deltas`` for a pareto search."""

    kind: ClassVar[str] = "trial_end"
    trial: int
    state: str
    role: str
    error: str | None = None
    delta_m: float | None = None
    seconds: float | None = None
    task_deltas: dict[str, float] | None = None


@dataclass(frozen=True)
class TrialRetried(Event):
    """A Ray trial whose worker died runs again (``retries`` so far)."""

    kind: ClassVar[str] = "trial_retry"
    trial: int
    retries: int
    error: str


@dataclass(frozen=True)
class TrialExploited(Event):
    """PBT: ``trial`` continues from ``from_trial``'s checkpoint at ``epoch`` with this
    policy."""

    kind: ClassVar[str] = "exploit"
    trial: int
    from_trial: int
    epoch: int
    policy: str


@dataclass(frozen=True)
class TimedOut(Event):
    """``--timeout`` reached with ``finished`` of ``target`` trials."""

    kind: ClassVar[str] = "timeout"
    finished: int
    target: int


@dataclass(frozen=True)
class WorkerDied(Event):
    """A ``--workers`` process died; its running ``trials`` were marked failed."""

    kind: ClassVar[str] = "worker_died"
    worker: str
    why: str
    trials: list[int]


@dataclass(frozen=True)
class Interrupted(Event):
    """Ctrl-C: the trials by state, the best (Δm%, trial) so far, the output folder."""

    kind: ClassVar[str] = "interrupted"
    states: dict[str, int]
    best: tuple[float, int] | None
    out: str


@dataclass(frozen=True)
class TrackingFailed(Event):
    """``--log-to`` stopped logging (why); the search goes on."""

    kind: ClassVar[str] = "tracking_failed"
    error: str


@dataclass(frozen=True)
class ReportFailed(Event):
    """The report could not be written at the end of the search (why, where); every result
    stands, and ``policysearch report`` rebuilds it."""

    kind: ClassVar[str] = "report_failed"
    error: str
    out: str


@dataclass(frozen=True)
class FinalistsStarted(Event):
    """``--finalists``: the search trials ``trials`` (best first) and the reference are
    trained again with each of ``seeds``: ``runs`` runs of ``epochs`` epochs, of which
    ``stored`` are stored already (reused, not trained)."""

    kind: ClassVar[str] = "finalists"
    trials: list[int]
    seeds: list[int]
    runs: int
    stored: int
    epochs: int


@dataclass(frozen=True)
class FinalistsProgress(Event):
    """A line of the finalists' re-evaluation: a run trained (with its Δm%), or the total."""

    kind: ClassVar[str] = "finalists_progress"
    message: str


@dataclass(frozen=True)
class DensityStarted(Event):
    """``--method density``: ``folds`` fold models, each trained under the ``reference`` on
    ``train`` samples and scoring ``candidates`` candidate policies on its ``heldout``
    samples, ``copies`` augmented copies each; ``stored``: fold models read back, not trained;
    ``scored``: candidates scored already; ``weighting``: the loss weights that train the folds
    and combine the tasks' losses (density matching does not search them)."""

    kind: ClassVar[str] = "density"
    folds: int
    train: int
    heldout: int
    candidates: int
    copies: int
    reference: str
    weighting: str
    stored: int = 0
    scored: int = 0


@dataclass(frozen=True)
class FoldTrained(Event):
    """Density matching: fold ``fold`` (from 0) has its model, trained now in ``seconds`` or
    read back (``reused``); ``metrics``: its held-out part's metrics (un-augmented)."""

    kind: ClassVar[str] = "fold_trained"
    fold: int
    folds: int
    seconds: float
    reused: bool
    metrics: Metrics


@dataclass(frozen=True)
class CandidateScored(Event):
    """Density matching: candidate ``number`` (from 0) of fold ``fold`` scored: its ``loss``
    (lower is better), the fold's ``best`` so far, and ``rate``, the candidates per second of
    this fold's scoring so far."""

    kind: ClassVar[str] = "candidate_scored"
    fold: int
    folds: int
    number: int
    candidates: int
    loss: float
    best: float
    rate: float
    policy: str


SearchEvent: TypeAlias = (DatasetLoaded | SpaceAdapted | SearchStarted | TrialStale
                          | PruningOff | WaitingForReference | TrialStarted | EpochEnded
                          | TrialEnded | TrialRetried | TrialExploited | TimedOut | WorkerDied
                          | Interrupted | TrackingFailed | ReportFailed | FinalistsStarted
                          | FinalistsProgress | DensityStarted | FoldTrained | CandidateScored)
SearchListener: TypeAlias = Callable[[SearchEvent], None]
"""What ``policysearch.search(progress=...)`` takes: called with each event of the search."""


# --- a benchmark ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted(Event):
    """Benchmark run ``run`` of ``runs`` starts: a contender trained with ``seed``."""

    kind: ClassVar[str] = "run_start"
    run: int
    runs: int
    contender: str
    seed: int
    epochs: int


@dataclass(frozen=True)
class RunEpochEnded(Event):
    """Benchmark run ``run`` finished an epoch (0-based) with these test metrics."""

    kind: ClassVar[str] = "epoch"
    run: int
    epoch: int
    metrics: Metrics


@dataclass(frozen=True)
class RunEnded(Event):
    """Benchmark run ``run`` of ``runs`` ended after ``seconds`` of training."""

    kind: ClassVar[str] = "run_end"
    run: int
    runs: int
    contender: str
    seed: int
    seconds: float


BenchmarkEvent: TypeAlias = RunStarted | RunEpochEnded | RunEnded
BenchmarkListener: TypeAlias = Callable[[BenchmarkEvent], None]
"""What ``policysearch.benchmark(events=...)`` takes: called with each run's events."""

SEARCH_EVENTS: tuple[type[Event], ...] = (
    DatasetLoaded, SpaceAdapted, SearchStarted, TrialStale, PruningOff, WaitingForReference,
    TrialStarted, EpochEnded, TrialEnded, TrialRetried, TrialExploited, TimedOut, WorkerDied,
    Interrupted, TrackingFailed, ReportFailed, FinalistsStarted, FinalistsProgress,
    DensityStarted, FoldTrained, CandidateScored)
BENCHMARK_EVENTS: tuple[type[Event], ...] = (RunStarted, RunEpochEnded, RunEnded)


def fields_of(event: Event) -> dict[str, Any]:
    """The event's fields by name, in declaration order, optional ones left out while None."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if value is None and f.default is None:
            continue
        out[f.name] = value
    return out


def to_dict(event: Event) -> dict[str, Any]:
    """The event as JSON-ready data: ``{"event": kind, **fields}``."""
    return {"event": event.kind, **fields_of(event)}
