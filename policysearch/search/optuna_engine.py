"""Optuna engine: studies in a journal file (default) or any Optuna storage URL.

The reference trial (a baseline policy) runs first; every later trial's objective is its Δm%
against it, or with ``objective: pareto`` one objective per task (that task's Δ%, maximised) in
a multi-objective study. Optuna cannot prune multi-objective trials: a pareto search runs
without a pruner whatever the space asks, and says so once (progress event ``pruning_off``).
Trials are driven with ask/tell so that the reference, failures and interruptions are recorded
exactly as they happened. Runs trained beside the study (re-evaluations with other seeds,
other references: policysearch.evaluation.reeval) are study user attributes
``rerun:<subject>:<seed>``, not trials, so they change neither trial counts nor the study's
definition.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from policysearch.augment import Policy, Weighting, get_baseline
from policysearch.config import SearchSpace
from policysearch.errors import SearchAborted, UserError
from policysearch.records import (
    Metrics,
    MetricsInfo,
    StudyRecords,
    TrialRecord,
    delta_m,
    task_deltas,
)
from policysearch.search.locks import exclusive
from policysearch.search.space import Param, parameters, policy_from_params
from policysearch.training import (
    TrialFailed,
    TrialPruned,
    TrialResult,
    non_finite,
    release_memory,
)

JOURNAL_NAME = "study.journal"
_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Consecutive trials failing with an unexpected exception before the search gives up, and
# consecutive failed trials of any kind (NaN, out of memory, …): failed trials do not count
# towards --trials, so a search whose every trial fails would otherwise never end.
MAX_CONSECUTIVE_ERRORS = 3
MAX_CONSECUTIVE_FAILURES = 10
RERUN_PREFIX = "rerun:"
# Database storages: how often a running trial's process beats, after how long without a
# beat its trial counts as dead, and how often one trial's parameters are retried.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 40
MAX_RETRY = 2
# How often a worker looks again while another worker runs the reference trial.
REFERENCE_POLL_S = 1.0
PRUNING_OFF = "pruning is off: Optuna cannot prune multi-objective trials"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_location(storage: str | None, out_dir: Path) -> str:
    """The storage URL or journal path a search uses (for messages and resume hints)."""
    return storage or str(out_dir / JOURNAL_NAME)


def open_storage(storage: str | None, out_dir: Path) -> tuple[BaseStorage | str, bool]:
    """An Optuna storage and whether it is a local file that only this driver writes.

    A database URL gets Optuna's heartbeat: a trial whose process stops beating for
    ``GRACE_PERIOD_S`` is failed by the next worker that looks, and re-enqueued with the same
    parameters (at most ``MAX_RETRY`` times).
    """
    if storage is None or storage.endswith(".journal"):
        path = Path(storage) if storage else out_dir / JOURNAL_NAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path))
        except OSError as err:
            raise UserError(f"cannot create the study storage: {err.strerror}",
                            source=str(path)) from None
        return JournalStorage(backend), True
    if "://" not in storage:
        raise UserError("expected a database URL (postgresql://…) or a *.journal file",
                        field="--storage", source=storage)
    for attempt in range(4):
        try:
            rdb = optuna.storages.RDBStorage(
                storage, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY))
            return rdb, False
        except Exception as err:  # unreachable server, bad URL, missing driver, …
            # Hosts starting at once race to create Optuna's tables: the loser tries again.
            if attempt == 3 or "already exists" not in str(err) and "duplicate key" not in str(err):
                raise UserError(f"cannot open the study storage: {err}".splitlines()[0],
                                source=storage, field="--storage") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def journal_lock(storage: str | None, out_dir: Path) -> Iterator[None]:
    """Hold the study's journal for this search alone (a second search on the same journal
    would fail this one's running trials as stale); a database storage needs no lock."""
    if storage is not None and not storage.endswith(".journal"):
        yield
        return
    journal = Path(storage_location(storage, out_dir))
    # (not ``<journal>.lock``: Optuna's journal backend locks that file for each write)
    with exclusive(journal.with_name(journal.name + ".owner"), what="study",
                   source=str(journal), hint="wait for it to end, or run one search with "
                   "--workers K"):
        yield


def first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{path}.{key}".lstrip("."))
    return f"{path}: {old!r} → {new!r}"


def open_study(space: SearchSpace, *, storage: str | None, study_name: str, out_dir: Path,
               seed: int, metrics_info: MetricsInfo, tasks: Mapping[str, str],
               dataset: str, dataset_notes: Sequence[str] = ()) -> tuple[optuna.Study, bool]:
    """Create or resume the study; refuse a resume whose space (or seed) differs.

    A pareto space makes a study with one "maximize" direction per task, in ``tasks`` order.
    """
    store, is_file = open_storage(storage, out_dir)
    n_objectives = len(tasks) if space.objective == "pareto" else 1
    try:
        study = optuna.create_study(storage=store, study_name=study_name,
                                    directions=["maximize"] * n_objectives, load_if_exists=True)
    except Exception as err:  # unreachable database, bad URL, …
        raise UserError(f"cannot open the study storage: {err}".splitlines()[0],
                        source=storage_location(storage, out_dir), field="--storage") from None
    wanted = {"space": space.canonical(), "seed": seed}
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", wanted)
        study.set_user_attr("metrics_info", metrics_info)
        study.set_user_attr("tasks", dict(tasks))
        study.set_user_attr("reference", space.reference)
        study.set_user_attr("dataset", dataset)
    elif stored != wanted:
        raise UserError(
            "refusing to resume: the search space differs from the study's "
            f"({first_difference(stored, wanted)}); use another --study or --out",
            source=storage_location(storage, out_dir), field=f"study {study_name}")
    if study.user_attrs.get("dataset_notes") != list(dataset_notes):
        study.set_user_attr("dataset_notes", list(dataset_notes))
    return study, is_file


def _fail_and_retry(study: optuna.Study, trial: FrozenTrial, error: str) -> None:
    """Mark a trial whose process died failed and enqueue its parameters again (as Optuna's
    heartbeat does for database storages), at most ``MAX_RETRY`` times per trial."""
    study._storage.set_trial_user_attr(trial._trial_id, "error", error)
    try:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except Exception:  # another process finished it in the meantime
        return
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(
        study, study._storage.get_trial(trial._trial_id))


def fail_trials_of(study: optuna.Study, worker: str | None, error: str) -> list[int]:
    """Fail (and retry) the trials still running in ``worker`` (a ``host:pid`` label; None:
    every running trial)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker is None or trial.user_attrs.get("worker") == worker:
            _fail_and_retry(study, trial, error)
            failed.append(trial.number)
    return failed


def _reference_keys(study: optuna.Study, space: SearchSpace,
                    tasks: Mapping[str, str]) -> list[str | None]:
    """The reference runs still missing: one per task without a complete run (single-task
    reference), or [None] while the reference trial has not completed."""
    done = {t.user_attrs.get("reference_task")
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("role") == "reference"}
    if space.single_task_reference:
        return [t for t in tasks if t not in done]
    return [] if None in done else [None]


def _claim_reference(study: optuna.Study, space: SearchSpace,
                     tasks: Mapping[str, str]) -> Trial | None:
    """A reference trial for this worker to run, or None while other workers run every missing
    one. Reference trials are enqueued and claimed atomically (WAITING → RUNNING), so with
    several workers, or several hosts on one database, each reference runs once."""
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.user_attrs.get("role") == "reference"]
    for key in _reference_keys(study, space, tasks):
        mine = [t for t in trials if t.user_attrs.get("reference_task") == key]
        if any(t.state == TrialState.RUNNING for t in mine):
            continue
        waiting = [t for t in mine if t.state == TrialState.WAITING]
        if not waiting:
            attrs: dict[str, Any] = {"role": "reference"}
            if key is not None:
                attrs["reference_task"] = key
            study.enqueue_trial({}, user_attrs=attrs)
            # Read again: another worker may have enqueued and claimed its own meanwhile.
            mine = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get("role") == "reference"
                    and t.user_attrs.get("reference_task") == key]
            if any(t.state == TrialState.RUNNING for t in mine):
                continue
            waiting = [t for t in mine if t.state == TrialState.WAITING]
        # Only the lowest-numbered one: when two workers enqueue at the same moment, the one
        # that loses the claim must not go on to claim the other's copy (the reference would
        # run twice); the copy is failed once the reference completes.
        if not waiting:
            continue
        first = min(waiting, key=lambda t: t.number)
        try:
            if study._storage.set_trial_state_values(first._trial_id, state=TrialState.RUNNING):
                return Trial(study, first._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker claimed it first
    return None


def _drop_duplicate_references(study: optuna.Study, key: str | None) -> None:
    """Fail reference trials of ``key`` still waiting after one completed (two workers may
    enqueue the same reference at the same moment)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get("role") == "reference" and t.user_attrs.get("reference_task") == key:
            try:
                study._storage.set_trial_user_attr(t._trial_id, "error",
                                                   "duplicate reference: another worker ran it")
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


class _Heartbeat:
    """Records a database trial's heartbeat in a thread while the trial trains (Optuna does
    this only inside ``Study.optimize``; policysearch drives trials with ask/tell)."""

    def __init__(self, study: optuna.Study, trial: Trial):
        import threading

        storage = study._storage
        self._beat = getattr(storage, "record_heartbeat", None)
        interval = storage.get_heartbeat_interval() if self._beat else None
        self._stop = threading.Event()
        self._thread = None
        if interval:
            self._thread = threading.Thread(target=self._run, args=(trial._trial_id, interval),
                                            daemon=True)

    def _run(self, trial_id: int, interval: int) -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost connection: the next beat retries
                self._beat(trial_id)
            if self._stop.wait(interval):
                return

    def __enter__(self) -> _Heartbeat:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def make_sampler(space: SearchSpace, seed: int, n_existing: int,
             salt: int = 0) -> optuna.samplers.BaseSampler:
    # Offsetting the seed by the trials already present keeps a resumed search from replaying
    # the random start-up suggestions it already tried; ``salt`` keeps concurrent workers that
    # see the same trials from suggesting the same values.
    sampler_seed = (seed * 100_003 + n_existing + salt * 7_919) % 2**32
    if space.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=sampler_seed)
    if space.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=sampler_seed,
                                             population_size=space.sampler.population_size)
    return optuna.samplers.TPESampler(seed=sampler_seed,
                                      n_startup_trials=space.sampler.n_startup_trials)


def _pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The space's pruner. Its steps are the epochs that ``OptunaReporter`` reports (from 0);
    Hyperband's ``max_resource: auto`` is the budget's epochs, the number of steps a full
    trial reports (Optuna's own ``auto`` counts the same, but only once a search trial has
    finished: the reference trial reports no steps)."""
    pruner = space.pruner
    if pruner.name == "none":
        return optuna.pruners.NopPruner()
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=pruner.min_early_stopping_rate)
    if pruner.name == "hyperband":
        max_resource = (space.budget.epochs if pruner.max_resource == "auto"
                        else pruner.max_resource)
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max(max_resource, pruner.min_resource),
            reduction_factor=pruner.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials,
                                       n_warmup_steps=pruner.n_warmup_steps)


def suggest(trial: Trial, params: Sequence[Param]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for p in params:
        if p.when is not None and values.get(p.when[0]) != p.when[1]:
            continue  # belongs to a weighting method this trial did not pick
        if p.kind == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


class OptunaReporter:
    """Feeds each epoch's Δm% (against the reference's final metrics) to Optuna's pruner;
    with ``prune`` False (multi-objective studies) it only records the epochs."""

    def __init__(self, trial: Trial, reference: Metrics | None, info: MetricsInfo,
                 on_epoch: Callable[[int, Metrics], None] | None = None,
                 task_weights: Mapping[str, float] | None = None, prune: bool = True):
        self.trial = trial
        self.reference = reference if prune else None
        self.info = info
        self.task_weights = dict(task_weights or {})
        self.on_epoch = on_epoch
        self.last: Metrics | None = None
        self.epochs = 0

    def report(self, epoch: int, metrics: Metrics) -> None:
        self.last = metrics
        self.epochs = epoch + 1
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        if self.reference is None:
            return
        value, _ = delta_m(metrics, self.reference, self.info, self.task_weights)
        if math.isfinite(value):
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                raise TrialPruned(f"pruned after epoch {epoch + 1}")


def to_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    started = trial.datetime_start.timestamp() if trial.datetime_start is not None else None
    return TrialRecord(
        number=trial.number,
        state=_STATES.get(trial.state, trial.state.name.lower()),
        role=attrs.get("role", "search"),
        metrics=attrs.get("metrics"),
        policy=attrs.get("policy"),
        duration_s=duration,
        epochs=attrs.get("epochs"),
        error=attrs.get("error"),
        reference_task=attrs.get("reference_task"),
        final_weights=attrs.get("final_weights"),
        started_at=started,
        device=attrs.get("device"),
        params=dict(trial.params) or None,
    )


def rerun_key(subject: str, seed: int) -> str:
    """The study user attribute holding one run trained beside the study."""
    return f"{RERUN_PREFIX}{subject}:{seed}"


def stored_reruns(attrs: Mapping[str, Any]) -> dict[str, dict[int, Metrics]]:
    """``{subject: {seed: metrics}}`` from a study's user attributes."""
    runs: dict[str, dict[int, Metrics]] = {}
    for key, value in attrs.items():
        if not key.startswith(RERUN_PREFIX) or not isinstance(value, dict):
            continue
        subject, _, seed = key.removeprefix(RERUN_PREFIX).rpartition(":")
        if subject and seed.lstrip("-").isdigit() and value.get("metrics"):
            runs.setdefault(subject, {})[int(seed)] = value["metrics"]
    return runs


def save_rerun(study: optuna.Study, subject: str, seed: int, result: TrialResult) -> None:
    """Store one run beside the study: one attribute per run, so that concurrent writers
    never overwrite each other's runs."""
    study.set_user_attr(rerun_key(subject, seed), {
        "metrics": result.metrics, "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "final_weights": {t: float(w) for t, w in (getattr(result, "weights", None)
                                                   or {}).items()} or None})


def reference_policy(name: str, tasks: Mapping[str, str]) -> Policy:
    """The baseline ``name`` as a reference: its ops, every task's loss weighing 1."""
    policy = get_baseline(name, dict(tasks))
    return replace(policy, weighting=Weighting("static", {t: 1.0 for t in tasks}))


def study_records(study: optuna.Study) -> StudyRecords:
    attrs = study.user_attrs
    if "metrics_info" not in attrs:
        raise UserError("not a policysearch study (no metrics recorded)",
                        field=f"study {study.study_name}")
    definition = attrs.get("definition") or {}
    space = definition.get("space", {})
    return StudyRecords(
        name=study.study_name,
        metrics_info=attrs["metrics_info"],
        records=[to_record(t) for t in study.get_trials(deepcopy=False)],
        reference_name=attrs.get("reference", "flipcrop"),
        dataset=attrs.get("dataset", ""),
        dataset_notes=list(attrs.get("dataset_notes", [])),
        image_size=space.get("budget", {}).get("image_size"),
        budget_epochs=space.get("budget", {}).get("epochs"),
        space=dict(space),
        single_task_reference=bool(space.get("single_task_reference", False)),
        task_weights=dict(space.get("task_weights") or {}),
        objective=space.get("objective", "delta_m"),
        seed=int(definition.get("seed", 0)),
        reruns=stored_reruns(attrs),
    )


def load_records(*, out_dir: Path | None, storage: str | None,
                 study_name: str | None) -> StudyRecords:
    """Read a finished or running study from ``--out`` or ``--storage/--study``."""
    return study_records(load_study(out_dir=out_dir, storage=storage, study_name=study_name))


def load_study(*, out_dir: Path | None, storage: str | None,
               study_name: str | None) -> optuna.Study:
    """Open an existing study from ``--out`` or ``--storage/--study``."""
    if storage is None:
        if out_dir is None:
            raise UserError("give --out DIR or --storage URL --study NAME", field="--out")
        path = out_dir / JOURNAL_NAME
        if not path.exists():
            raise UserError("no study here (study.journal not found)", source=str(out_dir),
                            field="--out")
        storage = str(path)
    store, _ = open_storage(storage, out_dir or Path("."))
    try:
        names = optuna.get_all_study_names(storage=store)
    except Exception as err:
        raise UserError(f"cannot open the study storage: {err}".splitlines()[0],
                        source=storage, field="--storage") from None
    if study_name is None:
        if len(names) != 1:
            raise UserError(f"name the study with --study (found: {', '.join(names) or 'none'})",
                            source=storage, field="--study")
        study_name = names[0]
    elif study_name not in names:
        raise UserError(f"no study named {study_name!r} (found: {', '.join(names) or 'none'})",
                        source=storage, field="--study")
    return optuna.load_study(study_name=study_name, storage=store)


TrialRunner = Callable[[Policy, OptunaReporter], TrialResult]
Progress = Callable[[str, dict[str, Any]], None]


def optimize(
    space: SearchSpace,
    *,
    tasks: Mapping[str, str],
    metrics_info: MetricsInfo,
    dataset_name: str,
    runner: TrialRunner,
    dataset_notes: Sequence[str] = (),
    n_trials: int,
    out_dir: Path,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    timeout: float | None = None,
    progress: Progress | None = None,
    on_trial_end: Callable[[StudyRecords], None] | None = None,
    fail_stale: bool = True,
    worker: str | None = None,
    sampler_salt: int = 0,
    device: str | None = None,
) -> StudyRecords:
    """Run trials until ``n_trials`` are finished (complete or pruned, reference included).

    Several processes may run this on one study at once (``policysearch.search.workers`` on
    one host, or one per host on a database): each reference trial runs once while the others
    wait for it; the count may overshoot by at most one trial per extra process. ``worker``
    labels the trials this process runs (``host:pid``), so a driver can fail the trials of a
    worker that died; ``fail_stale`` (a local journal only): first fail the trials that a
    dead search left running and enqueue their parameters again; leave it to the driver when
    it owns several workers. ``device`` (cpu, cuda) is stored with each trial for the
    study's device-seconds.
    """
    study_name = study_name or space.name
    study, is_file = open_study(space, storage=storage, study_name=study_name, out_dir=out_dir,
                                seed=seed, metrics_info=metrics_info, tasks=tasks,
                                dataset=dataset_name, dataset_notes=dataset_notes)
    emit = progress or (lambda event, data: None)
    if is_file and fail_stale:
        # Only this driver writes a local journal: trials still "running" were left by a
        # driver that died; they fail, and their parameters run again.
        for number in fail_trials_of(study, None, "left running by an interrupted search"):
            emit("stale", {"trial": number})
    params = parameters(space, list(tasks))
    pareto = space.objective == "pareto"
    if pareto and space.pruner.name != "none":
        emit("pruning_off", {"message": PRUNING_OFF})
    deadline = time.monotonic() + timeout if timeout else None
    consecutive_errors = consecutive_failures = 0

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=FINISHED))

    def reference_metrics() -> Metrics | None:
        return study_records(study).reference_metrics()

    emit("start", {"study": study_name, "finished": finished(), "target": n_trials,
                   "epochs": space.budget.epochs})
    said_waiting = False
    while finished() < n_trials:
        if deadline is not None and time.monotonic() >= deadline:
            emit("timeout", {"finished": finished(), "target": n_trials})
            break
        with warnings.catch_warnings():  # "fail_stale_trials is experimental"
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)  # database storages: dead hosts' trials
        reference = reference_metrics()
        study.sampler = make_sampler(space, seed, len(study.get_trials(deepcopy=False)),
                                 sampler_salt)
        study.pruner = optuna.pruners.NopPruner() if pareto else _pruner(space)
        if reference is None:
            claimed = _claim_reference(study, space, tasks)
            if claimed is None:  # another worker runs it: wait, then look again
                if not said_waiting:
                    emit("waiting_reference", {})
                    said_waiting = True
                time.sleep(REFERENCE_POLL_S)
                continue
            trial = claimed
            ref_tasks = dict(tasks)
            task = trial.user_attrs.get("reference_task")
            if task is not None:  # one network per task (Maninis et al.)
                ref_tasks = {task: tasks[task]}
            policy = reference_policy(space.reference, ref_tasks)
        else:
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
                warnings.simplefilter("ignore")
                trial = study.ask()
            if trial.user_attrs.get("role") == "reference":  # a leftover duplicate
                trial.set_user_attr("reference_task", None)
            trial.set_user_attr("role", "search")
            policy = policy_from_params(space, tasks, suggest(trial, params))
        if worker is not None:
            trial.set_user_attr("worker", worker)
        if device is not None:
            trial.set_user_attr("device", device)
        trial.set_user_attr("policy", policy.to_dict())
        role = trial.user_attrs["role"]
        emit("trial_start", {"trial": trial.number, "role": role, "policy": policy.summary(),
                             "finished": finished(), "target": n_trials,
                             "task": trial.user_attrs.get("reference_task")})
        reporter = OptunaReporter(trial, reference, metrics_info,
                                  on_epoch=lambda e, m, n=trial.number: emit(
                                      "epoch", {"trial": n, "epoch": e, "metrics": m}),
                                  task_weights=space.task_weights, prune=not pareto)
        try:
            with _Heartbeat(study, trial):
                result = runner(policy, reporter)
        except TrialPruned as pruned:
            consecutive_failures = 0
            if reporter.last is not None and not non_finite(reporter.last):
                trial.set_user_attr("metrics", reporter.last)
            trial.set_user_attr("epochs", reporter.epochs)
            trial.set_user_attr("error", str(pruned))
            study.tell(trial, state=TrialState.PRUNED)
            emit("trial_end", {"trial": trial.number, "state": "pruned", "role": role})
        except TrialFailed as failed:
            trial.set_user_attr("epochs", reporter.epochs)  # spent, for the search cost
            trial.set_user_attr("error", str(failed))
            study.tell(trial, state=TrialState.FAIL)
            emit("trial_end", {"trial": trial.number, "state": "failed", "error": str(failed)})
            consecutive_failures += 1
        except (KeyboardInterrupt, UserError) as stop:
            trial.set_user_attr("error", "interrupted" if isinstance(stop, KeyboardInterrupt)
                                else str(stop))
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as err:  # a bug or an environment problem inside one trial
            consecutive_errors += 1
            consecutive_failures += 1
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            trial.set_user_attr("epochs", reporter.epochs)
            trial.set_user_attr("error", message)
            study.tell(trial, state=TrialState.FAIL)
            emit("trial_end", {"trial": trial.number, "state": "failed", "error": message})
            if consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                raise SearchAborted(f"{consecutive_errors} trials in a row failed with an "
                                    f"unexpected error; last: {message}") from err
        else:
            consecutive_errors = 0
            value, per_task = 0.0, {t: 0.0 for t in tasks}
            bad = non_finite(result.metrics)
            if not bad and reference is not None:
                value, _ = delta_m(result.metrics, reference, metrics_info, space.task_weights)
                per_task, _ = task_deltas(result.metrics, reference, metrics_info)
            trial.set_user_attr("epochs", result.epochs)
            if bad or not math.isfinite(value):
                error = (f"non-finite metric: {', '.join(bad)}" if bad
                         else "Δm% is undefined: every reference metric is ~0")
                trial.set_user_attr("error", error)
                study.tell(trial, state=TrialState.FAIL)
                emit("trial_end", {"trial": trial.number, "state": "failed", "error": error})
                consecutive_failures += 1
            else:
                consecutive_failures = 0
                trial.set_user_attr("metrics", result.metrics)
                final_weights = getattr(result, "weights", None)
                if final_weights:
                    trial.set_user_attr("final_weights",
                                        {t: float(w) for t, w in final_weights.items()})
                # A task whose Δ% is undefined (every reference metric ~0) is 0 for every
                # trial, as Δm% leaves it out.
                values = [per_task.get(t, 0.0) for t in tasks]
                study.tell(trial, values if pareto else value)
                if role == "reference":
                    _drop_duplicate_references(study, trial.user_attrs.get("reference_task"))
                emit("trial_end", {"trial": trial.number, "state": "complete", "role": role,
                                   "delta_m": value, "seconds": result.seconds,
                                   **({"task_deltas": dict(zip(tasks, values, strict=True))}
                                      if pareto else {})})
        if consecutive_failures:
            release_memory()  # after the except blocks: their tracebacks held the tensors
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise SearchAborted(f"{consecutive_failures} trials in a row failed; the last "
                                f"said: {trial.user_attrs.get('error')}")
        if on_trial_end is not None:
            on_trial_end(study_records(study))
    return study_records(study)
