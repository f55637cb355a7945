"""What both Ray engines share — the Ray engine (``ray_engine``: TPE and ASHA) and PBT
(``ray_pbt``): connecting to Ray, the experiment folder, the trainable that runs one trial on a
Ray worker, and the driver's ledger and callback that record every trial. Trials follow the
trial lifecycle (``policysearch.search.lifecycle``); records are written by ``ray_results``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune import Callback, Stopper

from policysearch.augment import Policy
from policysearch.config import Budget, SearchSpace
from policysearch.errors import SearchAborted, UserError
from policysearch.events import (
    EpochEnded,
    SearchListener,
    SearchStarted,
    TrialRetried,
    TrialStale,
    TrialStarted,
)
from policysearch.records import Metrics, MetricsInfo, StudyRecords, TrialRecord
from policysearch.search import ray_results as rr
from policysearch.search.lifecycle import (
    DATA_ERROR,
    UNEXPECTED,
    FailureRules,
    Scoring,
    TrialOutcome,
    TrialReporter,
    check_resume,
    definition,
    missing_references,
    run_training,
)
from policysearch.search.locks import exclusive
from policysearch.search.optuna_study import JOURNAL_NAME

if TYPE_CHECKING:
    from policysearch.data.base import MultiTaskDataset
    from policysearch.search.options import SearchOptions, SearchRun
    from policysearch.training import Reporter, TrialResult

METRIC = "delta_m"  # what ASHA, TPE and PBT compare: Δm% against the reference, every epoch
TASK_METRIC = "delta_task."  # + task name: one objective per task (objective: pareto)
TIME_ATTR = "epoch"  # epochs done (1-based); ASHA's rungs are counted in epochs
OUTCOME = "outcome"  # a trial's last report: its TrialOutcome as a dict
RETRIES = 1  # a trial whose worker dies is run again this many times, then marked failed
RUN_PREFIX = "tune-"  # Ray Tune's folder of each run of the command
LOCK_FILE = ".policysearch.owner"  # held (flock) by the driver running the experiment
CONNECT_TIMEOUT_S = 5.0
# Test-only hook (tests/test_ray_engine.py), a comma-separated list: "N" makes trial N's
# worker process exit (os._exit) at the start of every attempt, "N:FILE" only while FILE does
# not exist (it is created first), so that the retry runs. Never set in normal use.
TEST_EXIT_ENV = "POLICYSEARCH_RAY_TEST_EXIT"


# --- connecting to Ray ------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_ray() -> Iterator[None]:
    """Silence Ray's own console output (our progress printer reports) and let Ctrl-C reach
    us as KeyboardInterrupt instead of Ray Tune's graceful-stop handler."""
    env = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    loggers = [logging.getLogger(n) for n in ("ray", "ray.tune", "ray.train", "ray.data")]
    saved_levels = [lg.level for lg in loggers]
    os.environ.update(env)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)


def _bootstrap_address(address: str) -> str | None:
    """``host:port`` of the cluster ``address`` names (``auto``: the running one, found as
    Ray finds it), or None when ``auto`` finds none."""
    if address.startswith("ray://"):
        raise UserError("Ray Client addresses (ray://) are not supported; run the search on a "
                        "node of the cluster with --ray-address auto or HOST:PORT",
                        field="--ray-address")
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as err:
        raise UserError(f"{address!r}: {err}".splitlines()[0], field="--ray-address") from None
    except ImportError:  # a Ray without this helper: let ray.init resolve it
        return address if address != "auto" else None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address no cluster answers at, in seconds (``ray.init`` would wait long)."""
    resolved = _bootstrap_address(address)
    if resolved is None:
        raise UserError("no running Ray cluster found (start one with `ray start --head`, set "
                        "RAY_ADDRESS, or leave --ray-address out to start a local instance)",
                        field="--ray-address")
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        where = resolved if resolved == address else f"{address} ({resolved})"
        raise UserError(f"cannot reach a Ray cluster at {where}: {reason}",
                        field="--ray-address") from None


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Connected to Ray for the block: a new local instance (``address`` None; ``num_cpus``
    default: every CPU) or the cluster at ``address`` (``auto``: the running one). An
    already connected process (library use) keeps its connection; what this started is shut
    down at the end."""
    if ray.is_initialized():
        yield
        return
    common: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
              "log_to_driver": False, "configure_logging": False}
    if address is None:
        kwargs: dict[str, Any] = {"address": "local", "num_cpus": num_cpus or os.cpu_count()}
    else:
        check_reachable(address)
        kwargs = {"address": address}
        common.pop("include_dashboard")
    # ray.init writes into this process's environment (RAY_AUTH_MODE=token, …); every later
    # process it starts would inherit that, and a driver started with it cannot schedule on a
    # cluster without tokens. The environment is put back as it was at the end.
    saved = dict(os.environ)
    try:
        ray.init(**kwargs, **common)
    except (ConnectionError, RuntimeError, ValueError) as err:
        _restore_environment(saved)
        hint = ("" if address is None else "; if the cluster uses token authentication, set "
                "RAY_AUTH_MODE=token (and its token) in this shell")
        raise UserError(f"cannot start or join Ray: {err}".splitlines()[0] + hint,
                        field="--ray-address") from None
    try:
        yield
    finally:
        ray.shutdown()
        _restore_environment(saved)


def _restore_environment(saved: Mapping[str, str]) -> None:
    """``os.environ`` as ``saved``: keys added since removed, changed ones put back."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def check_resources(cpus: float, gpus: float) -> None:
    """Refuse a per-trial request no node of the cluster can ever grant (Ray would leave the
    trials pending forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    if gpus > 0 and total_gpus == 0:
        raise UserError(f"asks for {gpus:g} GPU per trial but the Ray cluster has no GPU",
                        field="--gpus-per-trial")
    if gpus > max((n.get("GPU", 0.0) for n in nodes), default=0.0):
        raise UserError(f"asks for {gpus:g} GPUs per trial; the largest node has "
                        f"{max(n.get('GPU', 0.0) for n in nodes):g}", field="--gpus-per-trial")
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if cpus > most_cpus:
        raise UserError(f"asks for {cpus:g} CPUs per trial; the largest node has "
                        f"{most_cpus:g}", field="--cpus-per-trial")


@contextlib.contextmanager
def ray_connected(options: SearchOptions) -> Iterator[dict[str, float]]:
    """Connected to Ray for the block (``ray_session``, its console quiet), the per-trial
    resources (``SearchOptions.ray_resources``) checked against the cluster and yielded."""
    resources = options.ray_resources()
    with quiet_ray(), ray_session(options.ray_address):
        check_resources(resources["cpu"], resources["gpu"])
        yield resources


# --- the experiment folder --------------------------------------------------------------------


def check_not_optuna(experiment: Path) -> None:
    """Refuse an experiment folder that holds an Optuna-engine study (before anything, a lock
    file included, is written there)."""
    if (experiment / JOURNAL_NAME).exists() and not (experiment / rr.EXPERIMENT_FILE).exists():
        raise UserError("holds an Optuna-engine study; use another --out for a Ray search",
                        source=str(experiment), field="--out")


def open_experiment(space: SearchSpace, *, out_dir: Path, ray_storage: str | None,
                    study_name: str, seed: int, metrics_info: MetricsInfo,
                    tasks: Mapping[str, str], dataset: str, dataset_notes: Sequence[str],
                    scheduler: str, subset: Mapping[str, Any] | None = None) -> Path:
    """Create or resume the experiment folder; refuse a resume whose space or seed differs
    (naming the first difference) or that switches to or from PBT. ``subset``: the training
    subset the trials train on, kept as the experiment's ``subset`` (None: the whole
    training split)."""
    experiment = rr.experiment_dir(Path(out_dir), ray_storage, study_name)
    check_not_optuna(experiment)
    info = rr.read_experiment(experiment)
    where = str(experiment / rr.EXPERIMENT_FILE)
    check_resume(None if info is None else info.get("definition"), space, seed, where=where,
                 study_name=study_name)
    if info is None:
        info = rr.experiment_info(study=study_name, definition=definition(space, seed),
                                  metrics_info=metrics_info, tasks=tasks,
                                  reference=space.reference, dataset=dataset,
                                  dataset_notes=dataset_notes, scheduler=scheduler)
    elif "pbt" in (info.get("scheduler"), scheduler) and info.get("scheduler") != scheduler:
        raise UserError(f"refusing to resume a --scheduler {info.get('scheduler')} search with "
                        f"--scheduler {scheduler}", source=where, field="--scheduler")
    info["dataset_notes"] = list(dataset_notes)
    if subset is not None:
        info["subset"] = dict(subset)
    try:
        rr.write_experiment(experiment, info)
        rr.write_pointer(Path(out_dir), experiment)
    except OSError as err:
        raise UserError(f"cannot write the experiment: {err.strerror or err}",
                        source=str(experiment), field="--ray-storage") from None
    return experiment


@contextlib.contextmanager
def experiment_lock(experiment: Path) -> Iterator[None]:
    """Hold the experiment for this search alone (a second driver would mark this one's
    running trials stale and number its trials over them). The OS releases the lock of a
    killed driver."""
    with exclusive(experiment / LOCK_FILE, what="experiment", source=str(experiment),
                   hint="wait for it to end, or give it more --workers"):
        yield


def next_run_name(experiment: Path) -> str:
    """``tune-NNN``: Ray Tune's folder for this run of the command."""
    taken = [p.name for p in experiment.glob(f"{RUN_PREFIX}*")]
    numbers = [int(n.removeprefix(RUN_PREFIX)) for n in taken
               if n.removeprefix(RUN_PREFIX).isdigit()]
    return f"{RUN_PREFIX}{max(numbers, default=-1) + 1:03d}"


# --- inside a trial (a Ray worker) ------------------------------------------------------------


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares (sent once through Ray's object store)."""

    budget: Budget
    seed: int
    device: str  # auto | cpu | cuda…
    threads: int
    scoring: Scoring

    @property
    def tasks(self) -> dict[str, str]:
        return self.scoring.tasks


class TuneReporter(TrialReporter):
    """run_trial's reporter under Ray Tune: one ``tune.report`` per epoch with Δm% against the
    reference (and each task's Δ% for a pareto search), for ASHA and TPE. The last epoch's
    report is held back: ``finish`` sends it with the trial's outcome. A reference trial (no
    reference to compare with yet) reports only then."""

    def __init__(self, setup: TrialSetup, reference: Metrics | None):
        super().__init__(setup.scoring, reference)
        self.budget_epochs = setup.budget.epochs

    def payload(self, state: str, metrics: Metrics | None) -> dict[str, Any]:
        """A report after ``self.epochs`` epochs, scored from ``metrics``."""
        value: float = math.nan
        per_task: dict[str, float] = {}
        if metrics is not None:
            value, per_task = self.scoring.deltas(metrics, self.reference)
        data: dict[str, Any] = {TIME_ATTR: self.epochs, METRIC: value, "state": state,
                                "metrics": metrics}
        if self.scoring.pareto:
            data.update({f"{TASK_METRIC}{t}": per_task.get(t, 0.0) for t in self.scoring.tasks})
        return data

    def after_epoch(self, epoch: int, metrics: Metrics) -> None:
        if self.reference is not None and self.epochs < self.budget_epochs:
            tune.report(self.payload("running", metrics))

    def finish(self, outcome: TrialOutcome) -> None:
        """The trial's last report: its outcome (``trial_outcome`` reads it on the driver)."""
        if outcome.epochs is not None:
            self.epochs = outcome.epochs
        data = self.payload(outcome.state, outcome.metrics if outcome.state == "complete"
                            else None)
        tune.report({**data, OUTCOME: outcome.to_dict()})


def _test_exit_hook(number: int) -> None:
    """See TEST_EXIT_ENV."""
    for spec in os.environ.get(TEST_EXIT_ENV, "").split(","):
        wanted, _, marker = spec.partition(":")
        if not wanted.strip().isdigit() or int(wanted) != number:
            continue
        if marker:
            if Path(marker).exists():
                continue
            Path(marker).touch()
        os._exit(1)


def trial_device(device: str) -> str:
    if device.startswith("cuda"):
        return "cuda"  # Ray makes the trial's GPU(s) the visible ones
    if device == "auto":
        return "cuda" if ray.get_gpu_ids() else "cpu"
    return device


def run_ray_trial(config: dict[str, Any], dataset: MultiTaskDataset | None = None,
                  setup: TrialSetup | None = None) -> None:
    """The Ray Tune trainable: train ``config["policy"]`` (``training.train_policy``, the one
    training path of every engine) and report every epoch, then the outcome."""
    from policysearch.training import train_policy

    assert dataset is not None and setup is not None
    _test_exit_hook(int(config["number"]))
    reporter = TuneReporter(setup, config.get("reference"))

    def train(rep: Reporter) -> TrialResult:
        policy = Policy.from_dict(config["policy"])
        return train_policy(policy, dataset, setup.budget, seed=setup.seed,
                            device=trial_device(setup.device), threads=setup.threads,
                            reporter=rep)

    outcome, _ = run_training(train, reporter)  # a data error: the driver stops the search
    reporter.finish(outcome)


# --- on the driver ----------------------------------------------------------------------------


def trial_outcome(result: Mapping[str, Any] | None, epochs: int,
                  stopped_by: str = "ASHA") -> TrialOutcome:
    """How a trial ended whose last report was ``result`` (None: it never reported): the
    outcome it sent, or "pruned" when ``stopped_by`` (a scheduler) stopped it early."""
    if not result or "state" not in result:
        return TrialOutcome("failed", error="stopped before its first report")
    if OUTCOME in result:
        return TrialOutcome.from_dict(result[OUTCOME])
    done = int(result.get(TIME_ATTR, 0))
    return TrialOutcome("pruned", metrics=result.get("metrics"), epochs=done,
                        error=f"stopped by {stopped_by} after epoch {done} of {epochs}")


@dataclass
class Ledger:
    """The search's state on the driver, shared by the searcher and the callback: every
    record, the trials in flight, and why the search must stop."""

    experiment: Path
    info: dict[str, Any]  # the experiment file's content
    space: SearchSpace
    tasks: dict[str, str]
    target: int
    deadline: float | None = None
    records: dict[int, TrialRecord] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)  # Ray trial id -> number
    live_references: dict[int, str | None] = field(default_factory=dict)  # number -> task
    extras: dict[int, dict[str, Any]] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    rules: FailureRules = field(default_factory=FailureRules)
    abort: UserError | None = None  # a data error: stop, exit status 2
    fatal: str | None = None  # too many errors in a row: stop, exit status 1
    timed_out: bool = False

    @classmethod
    def load(cls, experiment: Path, **kwargs: Any) -> Ledger:
        """The ledger of ``experiment`` with the records already there."""
        ledger = cls(experiment=experiment, info=rr.read_experiment(experiment) or {},
                     **kwargs)
        ledger.records = {r.number: r for r in rr.read_trial_records(experiment)}
        return ledger

    def finished(self) -> int:
        return sum(r.state in rr.FINISHED_STATES for r in self.records.values())

    def study(self) -> StudyRecords:
        return rr.study_records_from(self.info, list(self.records.values()))

    def missing_references(self, *, running: bool = True) -> list[str | None]:
        """The reference runs still to start (``running``: those in flight count as
        started)."""
        covered = {r.reference_task for r in self.records.values()
                   if r.role == "reference" and r.state == "complete"}
        if running:
            covered |= set(self.live_references.values())
        return missing_references(self.space, self.tasks, covered)

    def end(self, outcome: TrialOutcome) -> None:
        """Apply the failure rules to a trial that ended: a data error stops the search
        (exit status 2), too many failures in a row too (exit status 1)."""
        if outcome.kind == DATA_ERROR and self.abort is None:
            self.abort = UserError(str(outcome.error))
        stop = self.rules.count(outcome)
        if stop is not None and self.fatal is None:
            self.fatal = stop

    def raise_stop(self) -> None:
        """After a Tuner run: raise why the search stopped, if it stopped on an error."""
        if self.abort is not None:
            raise self.abort
        if self.fatal is not None:
            raise SearchAborted(self.fatal)

    def stop_reason(self) -> str | None:
        """Why no trial may start any more (None: they may)."""
        if self.abort is not None or self.fatal is not None:
            return "error"
        if self.finished() >= self.target:
            return "done"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            return "timeout"
        return None

    def allocate(self, trial_id: str, *, reference: bool = False,
                 task: str | None = None) -> int:
        """The number of a new trial (the next after every record and trial in flight)."""
        number = max([*self.records, *self.live.values()], default=-1) + 1
        self.live[trial_id] = number
        if reference:
            self.live_references[number] = task
        return number

    def release(self, trial_id: str) -> None:
        number = self.live.pop(trial_id, None)
        self.live_references.pop(number, None)  # type: ignore[arg-type]

    def write(self, record: TrialRecord, **extra: Any) -> None:
        """Keep and write ``record`` (``extra``: engine details, merged with earlier ones)."""
        self.records[record.number] = record
        self.extras.setdefault(record.number, {}).update(
            {k: v for k, v in extra.items() if v is not None})
        rr.write_trial_record(self.experiment, record, **self.extras[record.number])


class Detached:
    """What a driver-side object pickles to (see ``PolicySearcher.__reduce__``)."""


class AbortStopper(Stopper):
    """Stops every trial once the search must end on an error."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.ledger.abort is not None or self.ledger.fatal is not None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Detached, ())


def error_line(trial: Any) -> str:
    """One line saying why a Ray trial errored (its worker died, …), from the error text Ray
    keeps beside the trial on the driver (error.txt: read as text; Ray's pickled copy of the
    exception is never unpickled)."""
    with contextlib.suppress(Exception):
        text = Path(trial.error_file).read_text()
        if any(sign in text for sign in ("ActorDiedError", "RayActorError",
                                         "The actor is dead")):
            return f"its worker process died ({RETRIES + 1} times)"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "the trial failed in Ray"


class RecordsCallback(Callback):
    """Writes each trial's record as it starts and ends, and emits the progress events of the
    Optuna engine (``trial_start``, ``epoch``, ``trial_end``) on the driver."""

    def __init__(self, ledger: Ledger, *, run_name: str, emit: SearchListener,
                 on_trial_end: Callable[[StudyRecords], None] | None = None):
        self.ledger = ledger
        self.run_name = run_name
        self.emit = emit
        self.on_trial_end = on_trial_end

    def _number(self, trial: Any) -> int:
        return int(trial.config["number"])

    def _running_record(self, trial: Any) -> TrialRecord:
        config = trial.config
        return TrialRecord(number=self._number(trial), state="running", role=config["role"],
                           policy=config["policy"], reference_task=config.get("reference_task"),
                           params=config.get("params"))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = self._number(trial)
        started = self.ledger.started.setdefault(number, time.time())
        self.ledger.write(self._running_record(trial), ray_trial_id=trial.trial_id,
                          run=self.run_name, started_at=started)
        policy = Policy.from_dict(trial.config["policy"])
        self.emit(TrialStarted(trial=number, role=trial.config["role"],
                               policy=policy.summary(), finished=self.ledger.finished(),
                               target=self.ledger.target,
                               task=trial.config.get("reference_task")))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get("state") == "running" and result.get("metrics"):
            self.emit(EpochEnded(trial=self._number(trial), epoch=int(result[TIME_ATTR]) - 1,
                                 metrics=result["metrics"]))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = self._number(trial)
        retries = self.ledger.extras.get(number, {}).get("retries", 0) + 1
        self.ledger.extras.setdefault(number, {})["retries"] = retries
        self.emit(TrialRetried(trial=number, retries=retries, error="its worker process died"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = trial_outcome(trial.last_result or None, self.ledger.space.budget.epochs)
        if outcome.state == "pruned" and (self.ledger.abort or self.ledger.fatal):
            outcome = replace(outcome, state="failed",
                              error="stopped: the search ended on an error")
        self._end(trial, outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._end(trial, TrialOutcome("failed", error=error_line(trial), kind=UNEXPECTED,
                                      epochs=last.get(TIME_ATTR)))

    def _end(self, trial: Any, outcome: TrialOutcome) -> None:
        ledger = self.ledger
        number = self._number(trial)
        ledger.release(trial.trial_id)
        config = trial.config
        started = ledger.started.get(number)
        result = trial.last_result or {}
        record = outcome.record(
            number, role=config["role"], policy=config["policy"],
            reference_task=config.get("reference_task"), params=config.get("params"),
            started_at=started, duration_s=outcome.seconds or (
                round(time.time() - started, 3) if started else None))
        worker = f"{result['hostname']}:{result['pid']}" if "pid" in result else None
        ledger.write(record, worker=worker, ray_trial_id=trial.trial_id, ended_at=time.time())
        ledger.end(outcome)
        self.emit(outcome.end_event(number, config["role"]))
        if self.on_trial_end is not None:
            self.on_trial_end(ledger.study())

    def interrupted(self, why: str) -> None:
        """Mark the trials still in flight failed (Ctrl-C, or the driver's own error)."""
        for trial_id, number in list(self.ledger.live.items()):
            record = self.ledger.records.get(number)
            if record is not None and record.state == "running":
                record.state, record.error = "failed", why
                self.ledger.write(record)
            self.ledger.release(trial_id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Detached, ())




def open_ledger(run: SearchRun, deadline: float | None = None) -> Ledger:
    """Create or resume the experiment (``open_experiment``), mark the trials a killed driver
    left running failed (``stale``), and say ``start``: the ledger of the search."""
    options = run.options  # (--storage with --engine ray: refused by driver.check_options)
    experiment = open_experiment(run.space, out_dir=run.out_dir,
                                 ray_storage=options.ray_storage, study_name=run.study_name,
                                 seed=options.seed, metrics_info=run.metrics_info,
                                 tasks=run.tasks, dataset=run.dataset.name,
                                 dataset_notes=run.dataset_notes, scheduler=options.scheduler,
                                 subset=run.subset)
    for number in rr.mark_stale(experiment):
        run.emit(TrialStale(trial=number))
    ledger = Ledger.load(experiment, space=run.space, tasks=dict(run.tasks),
                         target=options.trials, deadline=deadline)
    run.emit(SearchStarted(study=run.study_name, target=options.trials,
                           epochs=run.space.budget.epochs, finished=ledger.finished(),
                           workers=options.workers))
    return ledger


def fit(tuner: tune.Tuner, callback: Any) -> None:
    """Run ``tuner``; trials in flight when it stops on an interrupt or an error are marked
    failed by ``callback`` (it has ``ledger`` and ``interrupted``); raise why the search
    stopped on an error (``Ledger.raise_stop``)."""
    try:
        tuner.fit()
    except KeyboardInterrupt:
        callback.interrupted("interrupted")
        raise
    except BaseException:
        callback.interrupted("the search stopped on an error")
        raise
    callback.ledger.raise_stop()
