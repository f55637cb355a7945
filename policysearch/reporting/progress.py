"""Search progress for people and machines: ``ProgressPrinter`` (a line per finished trial,
and on a terminal a live bar with the running trial's epoch, the best Δm% and the time left),
``JsonLogPrinter`` (one JSON object per event, ``--json-logs``) and ``QuietPrinter``
(``--quiet``). Each is a ``progress(event, data)`` callable for ``policysearch.search``;
``BenchmarkBar`` is the live bar of ``policysearch benchmark``."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn


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

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "epoch":
            self._update_bar(data.get("epoch"), data.get("trial"))
            return
        if event == "dataset":
            sizes = ", ".join(f"{k} {v}" for k, v in data["sizes"].items())
            self.console.print(f"dataset {data['name']}: {sizes}", highlight=False)
            for note in data["notes"]:
                self.console.print(f"  {note}", highlight=False)
        elif event == "start":
            self.finished, self.target = data["finished"], data["target"]
            self.workers = data.get("workers", 1)
            self.epochs = data.get("epochs", self.epochs)
            self._start_bar()
            resumed = f", resuming with {self.finished} finished" if self.finished else ""
            by = f", {self.workers} workers" if self.workers > 1 else ""
            self.console.print(f"study {data['study']}: target {self.target} finished "
                               f"trials{resumed}{by}", highlight=False)
        elif event == "exploit":
            self.console.print(f"  trial {data.get('trial')} continues from trial "
                               f"{data.get('from_trial')} at epoch {data.get('epoch')}: "
                               f"{data.get('policy') or '(no ops)'}", highlight=False,
                               style="dim")
        elif event == "trial_retry":
            self.console.print(f"  trial {data['trial']}: {data.get('error', 'failed')}; "
                               f"retry {data.get('retries', 1)}", highlight=False)
        elif event == "waiting_reference":
            self.console.print("waiting for the reference trial, which another worker runs",
                               highlight=False)
        elif event == "worker_died":
            self.console.print(f"worker {data['worker']} died ({data['why']}); its trials "
                               f"{data['trials'] or '-'} are marked failed and their parameters "
                               "run again", highlight=False)
        elif event == "pruning_off":
            self.console.print(data["message"], highlight=False)
        elif event == "stale":
            self.console.print(f"trial {data['trial']} was left running by an interrupted "
                               "search: marked failed, its parameters run again",
                               highlight=False)
        elif event == "trial_start":
            self.trial_started[data["trial"]] = time.monotonic()
            self._update_bar(None, data["trial"])
            what = "reference" if data["role"] == "reference" else "trial"
            if data.get("task"):
                what = f"reference (single task {data['task']})"
            self.console.print(f"  {what} {data['trial']}: {data['policy'] or '(no ops)'}",
                               highlight=False, style="dim")
        elif event == "trial_end":
            self._trial_end(data)
        elif event == "interrupted":
            states = data["states"]
            counts = ", ".join(f"{states.get(s, 0)} {s}" for s in ("complete", "pruned", "failed"))
            best = (f"; best Δm% {data['best'][0]:+.2f} (trial {data['best'][1]})"
                    if data.get("best") else "")
            self.console.print(f"interrupted: {counts}{best}; results so far in {data['out']}",
                               highlight=False)
        elif event == "tracking_failed":
            self.console.print(f"--log-to stopped logging: {data['error']}; the search goes on",
                               highlight=False)
        elif event == "timeout":
            self.console.print(f"timeout reached: stopping with {data['finished']} of "
                               f"{data['target']} trials finished; run the same command to "
                               "continue", highlight=False)

    def _trial_end(self, data: dict[str, Any]) -> None:
        took = time.monotonic() - self.trial_started.pop(data["trial"], time.monotonic())
        self.durations.append(took)
        state = data["state"]
        if state in ("complete", "pruned"):
            self.finished += 1
        value = data.get("delta_m")
        if state == "complete" and value is not None and (self.best is None
                                                          or value > self.best[0]):
            self.best = (value, data["trial"])
        eta = self._eta()
        delta = f"Δm% {value:+7.2f}" if value is not None else f"{'':12}"
        best = f"best {self.best[0]:+.2f} (#{self.best[1]})" if self.best else "best -"
        if data.get("role") == "reference":
            delta = "Δm%    0.00 (reference)"
        note = f"  {data['error']}" if data.get("error") else ""
        if data.get("task_deltas") and data.get("role") != "reference":
            note = "  Δ% " + ", ".join(f"{t} {v:+.2f}" for t, v in data["task_deltas"].items())
        self.console.print(
            f"[{self.finished}/{self.target}] trial {data['trial']:>3} {state:<8} {delta}  "
            f"{best}  {took:5.1f} s  elapsed {_fmt_time(time.monotonic() - self.started)}  "
            f"remaining ~{_fmt_time(eta)}{note}", highlight=False)
        self._update_bar()


class BenchmarkBar:
    """``benchmark`` on a terminal: a live bar below the printed lines with the run being
    trained (k of N, contender, seed), its epoch and the time left, estimated from the runs
    done so far. Takes the benchmark's events (``policysearch.evaluation.benchmark.Events``);
    a no-op when ``live`` is False (not a terminal). Use it as a context manager."""

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self._bar: Progress | None = None
        self._task: Any = None
        self.durations: list[float] = []
        self.run_started = time.monotonic()
        self.current: dict[str, Any] = {}

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

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "run_start":
            self.current, self.run_started = dict(data), time.monotonic()
            self._show(0)
        elif event == "epoch":
            self._show(int(data["epoch"]) + 1)
        elif event == "run_end":
            self.durations.append(float(data.get("seconds") or
                                        time.monotonic() - self.run_started))

    def _show(self, epochs_done: int) -> None:
        if not self.live or not self.current:
            return
        runs, run = int(self.current["runs"]), int(self.current["run"])
        epochs = int(self.current.get("epochs") or 1)
        eta = self.eta(runs - run + 1, epochs_done / epochs)
        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[status]}"), console=self.console,
                                 transient=True)
            self._task = self._bar.add_task("benchmark", total=runs, status="")
            self._bar.start()
        left = f"  ETA {_fmt_time(eta)}" if eta is not None else ""
        self._bar.update(self._task, completed=run - 1 + epochs_done / epochs, total=runs,
                         description=f"run {run} of {runs}: {self.current['contender']}, "
                                     f"seed {self.current['seed']}",
                         status=f"epoch {epochs_done}/{epochs}{left}")


class QuietPrinter:
    """``--quiet``: prints nothing while the search runs (errors still end the command)."""

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        return None

    def __enter__(self) -> QuietPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class JsonLogPrinter:
    """``--json-logs``: one JSON object per line and event — ``{"event": ..., "time": unix
    seconds, ...the event's data}`` — for log collectors. Events: dataset, start, trial_start,
    epoch (with the metrics), trial_end (state, Δm%, error), stale, worker_died, timeout,
    interrupted, and the end (``done``, with the files written)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def __call__(self, event: str, data: dict[str, Any]) -> None:
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
