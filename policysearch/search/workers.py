"""Several trial processes on one host (``--workers K`` with the Optuna engine).

The driver validates everything, opens the study and fails what a dead search left running;
then it starts K worker processes (``spawn``: a fresh interpreter each, so torch and its threads
are never forked). Each worker loads the dataset once and runs the same loop as a single search
(``optuna_engine.optimize``) on the shared storage, labelling its trials ``host:pid``; its
progress events (``policysearch.events``, pickled) reach the driver through a queue. When a
worker dies (killed, out of memory), the driver fails the trials it was running, enqueues their
parameters again and starts a replacement. A worker whose driver died stops itself, so a killed
search leaves no orphans.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from policysearch.errors import SearchAborted, UserError
from policysearch.events import (
    PruningOff,
    SearchEvent,
    SearchListener,
    SearchStarted,
    TrialEnded,
    TrialStale,
    WaitingForReference,
    WorkerDied,
)

if TYPE_CHECKING:
    from policysearch.records import StudyRecords
    from policysearch.search.options import SearchOptions

# A replacement worker is started at most this many times per worker slot.
MAX_RESTARTS_PER_WORKER = 3
_POLL_S = 0.5


def worker_label(pid: int | None = None) -> str:
    """How trials name the process that runs them: ``host:pid``."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


@dataclass
class WorkerJob:
    """What a worker process needs: the search options and its place among the workers."""

    options: SearchOptions
    index: int
    threads: int
    study_name: str
    out_dir: str
    parent_pid: int
    gpu: str | None = None  # this worker's CUDA device id (CUDA_VISIBLE_DEVICES), if any


def visible_gpus(device: str) -> list[str]:
    """The CUDA device ids that workers spread over: those in CUDA_VISIBLE_DEVICES (or all of
    this host's), none for ``--device cpu`` or a pinned ``cuda:N``."""
    if device not in ("auto", "cuda"):
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_for(index: int, gpus: list[str]) -> str | None:
    """Worker ``index`` trains on GPU ``index mod N``, so K workers spread over N GPUs."""
    return gpus[index % len(gpus)] if gpus else None


def _watch_parent(parent_pid: int) -> None:
    """Exit this worker when its driver is gone (kill -9 of the driver): its running trial
    stays "running" in the journal, and the next search fails and re-runs it."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_POLL_S)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def worker_main(job: WorkerJob, events: Any) -> None:
    """The body of one worker process."""
    from pathlib import Path

    from policysearch.search.options import load_run, resolve_space
    from policysearch.search.optuna_engine import optimize
    from policysearch.training import resolve_device

    if job.gpu is not None:  # before this process first touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu
    _watch_parent(job.parent_pid)
    # Ctrl-C reaches the whole process group; the driver decides and sends SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    def send(event: SearchEvent) -> None:
        events.put(("event", job.index, event))

    try:
        options = job.options
        run = load_run(options, resolve_space(options), study_name=job.study_name,
                       out_dir=Path(job.out_dir), threads=job.threads)
        optimize(run.space, tasks=run.tasks, metrics_info=run.metrics_info,
                 dataset_name=run.dataset.name, dataset_notes=run.dataset_notes,
                 runner=run.runner(), n_trials=options.trials, out_dir=run.out_dir,
                 storage=options.storage, study_name=job.study_name, seed=options.seed,
                 timeout=options.timeout, progress=send, fail_stale=False,
                 worker=worker_label(), sampler_salt=job.index + 1,
                 device=resolve_device(options.device).type, dataset_subset=run.subset)
    except UserError as err:
        events.put(("user_error", job.index, err.message, err.source, err.field))
        sys.exit(2)
    except SearchAborted as err:  # too many failed trials in a row: the search stops
        events.put(("aborted", job.index, str(err)))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as err:  # noqa: BLE001 — reported to the driver, which stops
        events.put(("crash", job.index, f"{type(err).__name__}: {err}".splitlines()[0]))
        sys.exit(1)


class _WorkerPool:
    """The driver's side of K worker processes: start, watch, replace, stop."""

    def __init__(self, options: SearchOptions, *, threads: int, study_name: str,
                 out_dir: Any, study: Any, emit: SearchListener):
        self.options, self.threads, self.study_name = options, threads, study_name
        self.out_dir, self.study, self.emit = out_dir, study, emit
        self.ctx = multiprocessing.get_context("spawn")
        self.events = self.ctx.Queue()
        self.procs: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self.gpus = visible_gpus(options.device)

    def start(self, index: int) -> None:
        job = WorkerJob(options=self.options, index=index, threads=self.threads,
                        study_name=self.study_name, out_dir=str(self.out_dir),
                        parent_pid=os.getpid(), gpu=gpu_for(index, self.gpus))
        proc = self.ctx.Process(target=worker_main, args=(job, self.events), daemon=False,
                                name=f"policysearch-worker-{index}")
        proc.start()
        self.procs[index] = proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def next_message(self) -> tuple[Any, ...] | None:
        try:
            return self.events.get(timeout=_POLL_S)
        except queue_module.Empty:
            return None

    def replace_dead(self) -> None:
        """Fail the trials of each worker that died (not by its own choice) and start a
        replacement while trials are missing."""
        from policysearch.search.optuna_study import FINISHED, fail_trials_of

        for index, proc in list(self.procs.items()):
            if proc.is_alive():
                continue
            del self.procs[index]
            code = proc.exitcode
            if code in (0, 2, 130):  # done, stopped on a user error, or told to stop
                continue
            label = worker_label(proc.pid)
            why = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
            failed = fail_trials_of(self.study, label, f"its worker process died ({why})")
            self.emit(WorkerDied(worker=label, why=why, trials=failed))
            finished = len(self.study.get_trials(deepcopy=False, states=FINISHED))
            restarts = self.restarts.get(index, 0)
            if finished < self.options.trials and restarts < MAX_RESTARTS_PER_WORKER:
                self.restarts[index] = restarts + 1
                self.start(index)


def run_workers(options: SearchOptions, *, n_workers: int, threads: int, study_name: str,
                out_dir: Any, study: Any, progress: SearchListener | None,
                on_trial_end: Callable[[StudyRecords], None] | None) -> StudyRecords:
    """Run ``n_workers`` worker processes on ``study`` until its target is reached."""
    from policysearch.search.optuna_study import study_records

    emit: SearchListener = progress or (lambda event: None)
    pool = _WorkerPool(options, threads=threads, study_name=study_name, out_dir=out_dir,
                       study=study, emit=emit)
    waiting_said = False
    failure: tuple[Any, ...] | None = None
    for index in range(n_workers):
        pool.start(index)
    try:
        while pool.procs:
            message = pool.next_message()
            if message is None:
                if failure is None:
                    pool.replace_dead()
                else:
                    pool.procs = {i: p for i, p in pool.procs.items() if p.is_alive()}
                continue
            if message[0] != "event":
                if failure is None:  # the first error stops the search
                    failure = message
                    pool.stop_all()
                continue
            event: SearchEvent = message[2]
            match event:
                case SearchStarted() | PruningOff() | TrialStale():
                    continue  # every worker sends these; the driver said them once, itself
                case WaitingForReference() if waiting_said:
                    continue
                case WaitingForReference():
                    waiting_said = True
            emit(event)
            if isinstance(event, TrialEnded) and on_trial_end is not None:
                on_trial_end(study_records(study))
    except KeyboardInterrupt:
        pool.stop_all()
        raise
    if failure is not None:
        _raise(failure)
    return study_records(study)


def _raise(failure: tuple[Any, ...]) -> None:
    """Raise in the driver what stopped a worker."""
    if failure[0] == "user_error":
        _, _, msg, source, field = failure
        raise UserError(msg, source=source, field=field)
    if failure[0] == "aborted":
        raise SearchAborted(failure[2])
    raise RuntimeError(f"a worker failed: {failure[2]}")
