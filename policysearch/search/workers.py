"""Several trial processes on one host (``--workers K`` with the Optuna engine).

The driver validates everything, opens the study and fails what a dead search left running;
then it starts K worker processes (``spawn``: a fresh interpreter each, so torch and its threads
are never forked). Each worker loads the dataset once and runs the same loop as a single search
(``optuna_engine.optimize``) on the shared storage, labelling its trials ``host:pid``; its
progress reaches the driver through a queue. When a worker dies (killed, out of memory), the
driver fails the trials it was running, enqueues their parameters again and starts a
replacement. A worker whose driver died stops itself, so a killed search leaves no orphans.
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

from policysearch.errors import UserError

if TYPE_CHECKING:
    from policysearch.records import StudyRecords
    from policysearch.search.driver import SearchOptions

Progress = Callable[[str, dict[str, Any]], None]
# Events every worker sends that the driver reports once, itself.
_DRIVER_EVENTS = ("start", "pruning_off", "stale")
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

    from policysearch.data.loading import dataset_notes, load_dataset
    from policysearch.search.driver import make_runner, resolve_space
    from policysearch.search.optuna_engine import optimize
    from policysearch.tasks import task_setup
    from policysearch.training import resolve_device

    if job.gpu is not None:  # before this process first touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu
    _watch_parent(job.parent_pid)
    # Ctrl-C reaches the whole process group; the driver decides and sends SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    def send(event: str, data: dict[str, Any]) -> None:
        events.put(("event", job.index, event, data))

    try:
        options = job.options
        space = resolve_space(options)
        dataset = load_dataset(space)
        tasks, info = task_setup(dataset)
        optimize(space, tasks=tasks, metrics_info=info, dataset_name=dataset.name,
                 dataset_notes=dataset_notes(dataset),
                 runner=make_runner(dataset, space, options, job.threads),
                 n_trials=options.trials, out_dir=Path(job.out_dir), storage=options.storage,
                 study_name=job.study_name, seed=options.seed, timeout=options.timeout,
                 progress=send, fail_stale=False, worker=worker_label(),
                 sampler_salt=job.index + 1,
                 device=resolve_device(options.device).type)
    except UserError as err:
        events.put(("user_error", job.index, err.message, err.source, err.field))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as err:  # noqa: BLE001 — reported to the driver, which stops
        events.put(("crash", job.index, f"{type(err).__name__}: {err}".splitlines()[0]))
        sys.exit(1)


def run_workers(options: SearchOptions, *, n_workers: int, threads: int, study_name: str,
                out_dir: Any, study: Any, progress: Progress | None,
                on_trial_end: Callable[[StudyRecords], None] | None) -> StudyRecords:
    """Run ``n_workers`` worker processes on ``study`` until its target is reached."""
    from policysearch.search.optuna_engine import FINISHED, fail_trials_of, study_records

    emit = progress or (lambda event, data: None)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    procs: dict[int, Any] = {}
    restarts = dict.fromkeys(range(n_workers), 0)
    said: set[str] = set()
    gpus = visible_gpus(options.device)

    def start(index: int) -> None:
        job = WorkerJob(options=options, index=index, threads=threads, study_name=study_name,
                        out_dir=str(out_dir), parent_pid=os.getpid(),
                        gpu=gpu_for(index, gpus))
        proc = ctx.Process(target=worker_main, args=(job, events), daemon=False,
                           name=f"policysearch-worker-{index}")
        proc.start()
        procs[index] = proc

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=FINISHED))

    def stop_all() -> None:
        for proc in procs.values():
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()

    failure: tuple[str, ...] | None = None
    for index in range(n_workers):
        start(index)
    try:
        while procs:
            try:
                message = events.get(timeout=_POLL_S)
            except queue_module.Empty:
                message = None
            if message is not None:
                kind = message[0]
                if kind == "event":
                    _, _, event, data = message
                    if event in _DRIVER_EVENTS:
                        continue
                    if event == "waiting_reference":
                        if event in said:
                            continue
                        said.add(event)
                    emit(event, data)
                    if event == "trial_end" and on_trial_end is not None:
                        on_trial_end(study_records(study))
                elif failure is None:  # the first error stops the search
                    failure = message
                    stop_all()
                continue
            for index, proc in list(procs.items()):
                if proc.is_alive():
                    continue
                del procs[index]
                code = proc.exitcode
                if code in (0, 2, 130) or failure is not None:
                    continue
                label = worker_label(proc.pid)
                why = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
                failed = fail_trials_of(study, label, f"its worker process died ({why})")
                emit("worker_died", {"worker": label, "why": why, "trials": failed})
                if finished() < options.trials and restarts[index] < MAX_RESTARTS_PER_WORKER:
                    restarts[index] += 1
                    start(index)
    except KeyboardInterrupt:
        stop_all()
        raise
    if failure is not None:
        if failure[0] == "user_error":
            _, _, msg, source, field = failure
            raise UserError(msg, source=source, field=field)
        raise RuntimeError(f"a worker failed: {failure[2]}")
    return study_records(study)
