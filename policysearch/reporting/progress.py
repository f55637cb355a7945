"""Search progress for people and machines: ``ProgressPrinter`` (a line per finished trial,
and on a terminal a live bar with the running trial's epoch, the best Δm% and the time left),
``JsonLogPrinter`` (one JSON object per event, ``--json-logs``) and ``QuietPrinter``
(``--quiet``). Each is a listener for ``policysearch.search(progress=...)``, called with each
event (``policysearch.events``); ``BenchmarkBar`` is the live bar of ``policysearch
benchmark``."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from policysearch.events import (
    BenchmarkEvent,
    CandidateScored,
    DatasetLoaded,
    DensityStarted,
    EpochEnded,
    FinalistsProgress,
    FinalistsStarted,
    FoldTrained,
    Interrupted,
    PruningOff,
    ReportFailed,
    RunEnded,
    RunEpochEnded,
    RunStarted,
    SearchEvent,
    SearchStarted,
    SpaceAdapted,
    TimedOut,
    TrackingFailed,
    TrialEnded,
    TrialExploited,
    TrialRetried,
    TrialStale,
    TrialStarted,
    WaitingForReference,
    WorkerDied,
    to_dict,
)


def finalists_line(event: FinalistsStarted) -> str:
    """What the finalists' race will train, said before it starts (its cost cap)."""
    trials = ", ".join(str(t) for t in event.trials)
    seeds = ", ".join(str(s) for s in event.seeds)
    left = event.runs - event.stored
    return (f"finalists: trials {trials} (the {len(event.trials)} best by Δm%) and the "
            f"reference, each with seeds {seeds}: {event.runs} runs of {event.epochs} epochs "
            f"= {event.runs * event.epochs} trial-epochs at most; {event.stored} stored, "
            f"{left} to train ({left * event.epochs} trial-epochs)")


def dataset_sizes(event: DatasetLoaded) -> str:
    """The sizes of the ``dataset`` line: ``train 100 (a subset of 400: stratified by shape,
    subset seed 0), val 200, test 500``."""
    parts = []
    for split, size in event.sizes.items():
        text = f"{split} {size}"
        if split == "train" and event.subset:
            subset = event.subset
            how = (f"stratified by {subset['stratified_by']}" if subset.get("stratified_by")
                   else "random")
            text += f" (a subset of {subset['of']}: {how}, subset seed {subset['seed']})"
        parts.append(text)
    return ", ".join(parts)


def dataset_notes_shown(event: DatasetLoaded) -> list[str]:
    """The notes printed under the ``dataset`` line: all but the subset's, which that line
    says already."""
    if not event.subset:
        return list(event.notes)
    from policysearch.data.subset import describe

    return [note for note in event.notes if note != describe(event.subset)]


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressPrinter:
    """Prints one line per finished trial: k of N, Δm%, best so far, elapsed, remaining. With
    ``live`` (the default on a terminal) a bar below the lines follows the running trial
    epoch by epoch: trial k of N, epoch e of E, best Δm% so far, time left. Use it as a context
    manager, so that the bar goes away when the search ends."""

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.epochs: int | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        self.started = time.monotonic()
        self.durations: list[float] = []
        self.best: tuple[float, int] | None = None
        self.finished = 0
        self.target = 0
        self.trial_started: dict[int, float] = {}
        self.workers = 1

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _start_bar(self) -> None:
        if not self.live or self._bar is not None:
            return
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.fields[status]}"), console=self.console,
                             transient=True)
        self._task = self._bar.add_task("search", total=max(1, self.target), status="")
        self._bar.start()

    def _update_bar(self, epoch: int | None = None, trial: int | None = None) -> None:
        if self._bar is None:
            return
        eta = self._eta()
        best = f"best Δm% {self.best[0]:+.2f} (#{self.best[1]})" if self.best else "best -"
        running = ""
        if trial is not None:
            of = f"/{self.epochs}" if self.epochs else ""
            running = f"trial {trial}: epoch {epoch + 1 if epoch is not None else 0}{of}  "
        self._bar.update(self._task, completed=self.finished, total=max(1, self.target),
                         description=f"trial {min(self.finished + 1, self.target)} of "
                                     f"{self.target}",
                         status=f"{running}{best}  ETA {_fmt_time(eta)}")

    def _eta(self) -> float:
        remaining = max(0, self.target - self.finished)
        mean = sum(self.durations) / len(self.durations) if self.durations else 0.0
        return remaining * mean / max(1, self.workers)

    def __call__(self, event: SearchEvent) -> None:
        say = self.console.print
        match event:
            case EpochEnded():
                self._update_bar(event.epoch, event.trial)
                return
            case DatasetLoaded():
                say(f"dataset {event.name}: {dataset_sizes(event)}", highlight=False)
                for note in dataset_notes_shown(event):
                    say(f"  {note}", highlight=False)
            case SpaceAdapted():
                for line in event.lines():
                    say(line, highlight=False, markup=False)
            case SearchStarted():
                self.finished, self.target = event.finished, event.target
                self.workers = event.workers if event.workers is not None else 1
                self.epochs = event.epochs
                self._start_bar()
                resumed = f", resuming with {self.finished} finished" if self.finished else ""
                by = f", {self.workers} workers" if self.workers > 1 else ""
                say(f"study {event.study}: target {self.target} finished trials{resumed}{by}",
                    highlight=False)
            case TrialExploited():
                say(f"  trial {event.trial} continues from trial {event.from_trial} at epoch "
                    f"{event.epoch}: {event.policy or '(no ops)'}", highlight=False, style="dim")
            case TrialRetried():
                say(f"  trial {event.trial}: {event.error}; retry {event.retries}",
                    highlight=False)
            case WaitingForReference():
                say("waiting for the reference trial, which another worker runs",
                    highlight=False)
            case WorkerDied():
                say(f"worker {event.worker} died ({event.why}); its trials "
                    f"{event.trials or '-'} are marked failed and their parameters run again",
                    highlight=False)
            case PruningOff():
                say(event.message, highlight=False)
            case TrialStale():
                say(f"trial {event.trial} was left running by an interrupted search: marked "
                    "failed, its parameters run again", highlight=False)
            case TrialStarted():
                self.trial_started[event.trial] = time.monotonic()
                self._update_bar(None, event.trial)
                what = "reference" if event.role == "reference" else "trial"
                if event.task:
                    what = f"reference (single task {event.task})"
                say(f"  {what} {event.trial}: {event.policy or '(no ops)'}", highlight=False,
                    style="dim")
            case TrialEnded():
                self._trial_end(event)
            case Interrupted():
                states = event.states
                counts = ", ".join(f"{states.get(s, 0)} {s}"
                                   for s in ("complete", "pruned", "failed"))
                best = (f"; best Δm% {event.best[0]:+.2f} (trial {event.best[1]})"
                        if event.best else "")
                say(f"interrupted: {counts}{best}; results so far in {event.out}",
                    highlight=False)
            case TrackingFailed():
                say(f"--log-to stopped logging: {event.error}; the search goes on",
                    highlight=False)
            case ReportFailed():
                say(f"the report could not be written: {event.error}; every result stands, "
                    f"and `policysearch report --out {event.out}` writes it again",
                    highlight=False)
            case FinalistsStarted():
                say(finalists_line(event), highlight=False)
            case FinalistsProgress():
                say(f"  {event.message}", highlight=False)
            case DensityStarted():
                stored = (f"; {event.stored} fold model(s) and {event.scored} candidate(s) "
                          "stored" if event.stored or event.scored else "")
                say(f"density matching: {event.folds} folds, each trained under "
                    f"{event.reference} on {event.train} samples and scoring "
                    f"{event.candidates} candidates on {event.heldout} held-out samples × "
                    f"{event.copies} copies; loss weights: {event.weighting}{stored}",
                    highlight=False)
            case FoldTrained():
                how = "stored" if event.reused else f"trained in {_fmt_time(event.seconds)}"
                say(f"  fold {event.fold + 1}/{event.folds}: model {how}", highlight=False)
            case CandidateScored():
                say(f"  fold {event.fold + 1}/{event.folds} candidate {event.number + 1}/"
                    f"{event.candidates}: loss {event.loss:.4f}  best {event.best:.4f}  "
                    f"{event.rate:.2f} candidates/s  {event.policy}", highlight=False,
                    markup=False)
            case TimedOut():
                say(f"timeout reached: stopping with {event.finished} of {event.target} trials "
                    "finished; run the same command to continue", highlight=False)

    def _trial_end(self, event: TrialEnded) -> None:
        took = time.monotonic() - self.trial_started.pop(event.trial, time.monotonic())
        self.durations.append(took)
        state = event.state
        if state in ("complete", "pruned"):
            self.finished += 1
        value = event.delta_m
        if state == "complete" and value is not None and (self.best is None
                                                          or value > self.best[0]):
            self.best = (value, event.trial)
        eta = self._eta()
        delta = f"Δm% {value:+7.2f}" if value is not None else f"{'':12}"
        best = f"best {self.best[0]:+.2f} (#{self.best[1]})" if self.best else "best -"
        if event.role == "reference":
            delta = "Δm%    0.00 (reference)"
        note = f"  {event.error}" if event.error else ""
        if event.task_deltas and event.role != "reference":
            note = "  Δ% " + ", ".join(f"{t} {v:+.2f}" for t, v in event.task_deltas.items())
        self.console.print(
            f"[{self.finished}/{self.target}] trial {event.trial:>3} {state:<8} {delta}  "
            f"{best}  {took:5.1f} s  elapsed {_fmt_time(time.monotonic() - self.started)}  "
            f"remaining ~{_fmt_time(eta)}{note}", highlight=False)
        self._update_bar()


class BenchmarkBar:
    """``benchmark`` on a terminal: a live bar below the printed lines with the run being
    trained (k of N, contender, seed), its epoch and the time left, estimated from the runs
    done so far. Takes the benchmark's events (``policysearch.events.BenchmarkEvent``);
    a no-op when ``live`` is False (not a terminal). Use it as a context manager."""

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self._bar: Progress | None = None
        self._task: Any = None
        self.durations: list[float] = []
        self.run_started = time.monotonic()
        self.current: RunStarted | None = None

    def __enter__(self) -> BenchmarkBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def eta(self, runs_left: int, epoch_fraction: float = 0.0) -> float | None:
        """Seconds left: the mean run time × the runs not finished (the running one counted
        by the share of its epochs still to come); None before any run finished."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        return max(0.0, mean * (runs_left - epoch_fraction))

    def __call__(self, event: BenchmarkEvent) -> None:
        match event:
            case RunStarted():
                self.current, self.run_started = event, time.monotonic()
                self._show(0)
            case RunEpochEnded():
                self._show(event.epoch + 1)
            case RunEnded():
                self.durations.append(float(event.seconds or
                                            time.monotonic() - self.run_started))

    def _show(self, epochs_done: int) -> None:
        if not self.live or self.current is None:
            return
        runs, run = self.current.runs, self.current.run
        epochs = self.current.epochs or 1
        eta = self.eta(runs - run + 1, epochs_done / epochs)
        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[status]}"), console=self.console,
                                 transient=True)
            self._task = self._bar.add_task("benchmark", total=runs, status="")
            self._bar.start()
        left = f"  ETA {_fmt_time(eta)}" if eta is not None else ""
        self._bar.update(self._task, completed=run - 1 + epochs_done / epochs, total=runs,
                         description=f"run {run} of {runs}: {self.current.contender}, "
                                     f"seed {self.current.seed}",
                         status=f"epoch {epochs_done}/{epochs}{left}")


class QuietPrinter:
    """``--quiet``: prints nothing while the search runs (errors still end the command)."""

    def __call__(self, event: SearchEvent | BenchmarkEvent) -> None:
        return None

    def __enter__(self) -> QuietPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class JsonLogPrinter:
    """``--json-logs``: one JSON object per line and event — ``{"event": kind, "time": unix
    seconds, ...the event's fields}`` (``policysearch.events.to_dict``) — for log collectors.
    Events: those of a search (dataset, space_adapted, start, trial_start, epoch with the
    metrics, trial_end with the state, Δm% or error, stale, worker_died, timeout, interrupted,
    ...) or of a benchmark (run_start, epoch, run_end); the command writes its own lines with
    ``write`` (the end, ``done``, with the files written)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def __call__(self, event: SearchEvent | BenchmarkEvent) -> None:
        data = to_dict(event)
        self.write(data.pop("event"), data)

    def write(self, event: str, data: dict[str, Any]) -> None:
        """One line: ``{"event": event, "time": ..., **data}``."""
        stream = self.stream or sys.stdout
        record = _finite({"event": event, "time": round(time.time(), 3), **data})
        stream.write(json.dumps(record, default=str, allow_nan=False) + "\n")
        stream.flush()

    def __enter__(self) -> JsonLogPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: strict JSON for any log collector."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
