"""Ray Tune engine (``--engine ray``): the Optuna engine's search space and training path, run
as Ray Tune trials on a local Ray instance or a cluster. The only module that imports ray
(besides the PBT scheduler, ``ray_pbt``, which reuses the pieces below).

How a search runs:

* ``ray_session`` starts a local Ray instance (``--ray-address`` left out) or joins a cluster
  (``auto`` or ``host:port``, checked for reachability first) and leaves it as it found it.
* One ``Tuner`` per run of the command, its Ray folder ``<experiment>/tune-NNN``. Its searcher,
  ``PolicySearcher``, suggests the reference trial first (one per task with
  ``single_task_reference``), waits until every reference run is complete, then hands out
  OptunaSearch's (TPE) suggestions — the same parameters and ``suggest`` as the Optuna engine —
  each carrying the reference metrics its Δm% is measured against. It stops suggesting once
  ``--trials`` trials are finished or could be with those running (so the count is never
  exceeded), at ``--timeout``, or after an error that ends the search.
* Each trial runs ``training.train_policy`` (one training path for both engines) in a reused Ray
  actor (torch is imported once per worker) with the dataset from Ray's object store
  (``tune.with_parameters``: put there once, not rebuilt per trial), and reports Δm% against
  the reference after every epoch; ASHA (``--scheduler asha``) stops trials that fall behind,
  recorded as "pruned". A trial's last report (its last epoch, or its failure) carries its
  final numbers, so a trial stopped at its last epoch loses nothing.
* ``RecordsCallback`` (on the driver) writes each trial's record (``ray_results``) when it
  starts and ends, and gives the progress events the Optuna engine gives.
* A trial whose worker dies is retried (``FailureConfig``), and marked failed when it keeps
  dying; the search goes on. An exception inside a trial fails that trial without a retry (a
  data error stops the search with exit status 2, as with the Optuna engine).
* Resume (the same command again, after Ctrl-C or a killed driver): the records are the truth;
  trials left "running" are marked failed, finished ones are kept and counted, TPE continues
  from its Optuna journal, and a new Tuner runs only what is missing.

Pieces meant for reuse (the PBT scheduler): ``quiet_ray``, ``ray_session``,
``check_reachable``, ``trial_resources``, ``check_resources``, ``open_experiment``,
``next_run_name``, ``Ledger``, ``RecordsCallback``, ``AbortStopper``, ``TuneReporter``,
``trial_outcome``; the record format is ``ray_results`` (``write_trial_record``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from policysearch.augment import Policy
from policysearch.config import Budget, SearchSpace
from policysearch.errors import UserError
from policysearch.records import (
    Metrics,
    MetricsInfo,
    StudyRecords,
    TrialRecord,
    delta_m,
    task_deltas,
)
from policysearch.search import ray_results as rr
from policysearch.search.locks import exclusive
from policysearch.search.optuna_engine import (
    JOURNAL_NAME,
    MAX_CONSECUTIVE_ERRORS,
    first_difference,
    make_sampler,
    reference_policy,
    suggest,
)
from policysearch.search.space import parameters, policy_from_params

if TYPE_CHECKING:
    from policysearch.data.base import MultiTaskDataset
    from policysearch.search.driver import SearchOptions
    from policysearch.training import TrialResult

Progress = Callable[[str, dict[str, Any]], None]

METRIC = "delta_m"  # what ASHA and TPE compare: Δm% against the reference, every epoch
TASK_METRIC = "delta_task."  # + task name: one objective per task (objective: pareto)
TIME_ATTR = "epoch"  # epochs done (1-based); ASHA's rungs are counted in epochs
ASHA_REDUCTION = 3  # keep the best third at each rung (Hyperband's η)
RETRIES = 1  # a trial whose worker dies is run again this many times, then marked failed
OPTUNA_JOURNAL = "optuna.journal"  # TPE's memory across resumes, in the experiment folder
RUN_PREFIX = "tune-"  # Ray Tune's folder of each run of the command
LOCK_FILE = ".policysearch.owner"  # held (flock) by the driver running the experiment
CONNECT_TIMEOUT_S = 5.0
UNDEFINED_DELTA = "Δm% is undefined: every reference metric is ~0"
PRUNING_OFF_PARETO = "pruning is off: ASHA cannot stop multi-objective trials"
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
    common = {"include_dashboard": False, "logging_level": logging.ERROR,
              "log_to_driver": False, "configure_logging": False}
    if address is None:
        kwargs: dict[str, Any] = {"address": "local", "num_cpus": num_cpus or os.cpu_count()}
    else:
        check_reachable(address)
        kwargs = {"address": address}
        common.pop("include_dashboard")
    try:
        ray.init(**kwargs, **common)
    except (ConnectionError, RuntimeError, ValueError) as err:
        hint = ("" if address is None else "; if the cluster uses token authentication, set "
                "RAY_AUTH_MODE=token (and its token) in this shell")
        raise UserError(f"cannot start or join Ray: {err}".splitlines()[0] + hint,
                        field="--ray-address") from None
    try:
        yield
    finally:
        ray.shutdown()


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


def trial_resources(options: SearchOptions, threads: int) -> tuple[float, float]:
    """(CPUs, GPUs) per trial: ``--cpus-per-trial`` (default ``threads``), ``--gpus-per-trial``
    (a fraction lets several trials share one GPU)."""
    cpus = float(options.cpus_per_trial if options.cpus_per_trial is not None else threads)
    gpus = float(options.gpus_per_trial or 0.0)
    if not cpus > 0:
        raise UserError(f"must be > 0, got {cpus:g}", field="--cpus-per-trial")
    if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
        raise UserError(f"must be a fraction of one GPU or a whole number, got {gpus:g}",
                        field="--gpus-per-trial")
    if options.device.startswith("cuda") and gpus == 0:
        raise UserError("--device cuda with --engine ray needs --gpus-per-trial > 0 (Ray "
                        "hides the GPUs from trials that did not ask for one)",
                        field="--gpus-per-trial")
    return cpus, gpus


# --- the experiment folder --------------------------------------------------------------------


def open_experiment(space: SearchSpace, *, out_dir: Path, ray_storage: str | None,
                    study_name: str, seed: int, metrics_info: MetricsInfo,
                    tasks: Mapping[str, str], dataset: str, dataset_notes: Sequence[str],
                    scheduler: str) -> Path:
    """Create or resume the experiment folder; refuse a resume whose space or seed differs
    (naming the first difference) or that switches to or from PBT."""
    experiment = rr.experiment_dir(Path(out_dir), ray_storage, study_name)
    if (experiment / JOURNAL_NAME).exists() and not (experiment / rr.EXPERIMENT_FILE).exists():
        raise UserError("holds an Optuna-engine study; use another --out for a Ray search",
                        source=str(experiment), field="--out")
    info = rr.read_experiment(experiment)
    wanted = {"space": space.canonical(), "seed": seed}
    where = str(experiment / rr.EXPERIMENT_FILE)
    if info is None:
        info = rr.experiment_info(study=study_name, space_canonical=wanted["space"], seed=seed,
                                  metrics_info=metrics_info, tasks=tasks,
                                  reference=space.reference, dataset=dataset,
                                  dataset_notes=dataset_notes, scheduler=scheduler)
    elif info.get("definition") != wanted:
        raise UserError("refusing to resume: the search space differs from the study's "
                        f"({first_difference(info.get('definition'), wanted)}); use another "
                        "--study or --out", source=where, field=f"study {study_name}")
    elif "pbt" in (info.get("scheduler"), scheduler) and info.get("scheduler") != scheduler:
        raise UserError(f"refusing to resume a --scheduler {info.get('scheduler')} search with "
                        f"--scheduler {scheduler}", source=where, field="--scheduler")
    info["dataset_notes"] = list(dataset_notes)
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


def optuna_study_for(space: SearchSpace, experiment: Path, study_name: str,
                     n_objectives: int) -> tuple[JournalStorage, int]:
    """The journal storage OptunaSearch suggests from (its trials left running by a killed
    driver marked failed) and how many trials it holds (to offset the sampler's seed)."""
    storage = JournalStorage(JournalFileBackend(str(experiment / OPTUNA_JOURNAL)))
    study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                directions=["maximize"] * n_objectives)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL, skip_if_finished=True)
    return storage, len(study.get_trials(deepcopy=False))


# --- inside a trial (a Ray worker) ------------------------------------------------------------


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares (sent once through Ray's object store)."""

    budget: Budget
    seed: int
    device: str  # auto | cpu | cuda…
    threads: int
    metrics_info: MetricsInfo
    task_weights: dict[str, float]
    tasks: dict[str, str]
    pareto: bool


class TuneReporter:
    """run_trial's reporter under Ray Tune: one ``tune.report`` per epoch with Δm% against the
    reference (and each task's Δ% for a pareto search). The last epoch's report is held back
    and sent by ``finish`` with the trial's final numbers; a reference trial (no reference to
    compare with yet) reports only then."""

    def __init__(self, setup: TrialSetup, reference: Metrics | None):
        self.setup = setup
        self.reference = reference
        self.last: Metrics | None = None
        self.epochs = 0

    def payload(self, state: str) -> dict[str, Any]:
        """The report after ``self.epochs`` epochs."""
        tasks = self.setup.tasks
        value, per_task = (0.0, {t: 0.0 for t in tasks}) if self.reference is None \
            else (math.nan, {})
        if self.reference is not None and self.last is not None:
            value, _ = delta_m(self.last, self.reference, self.setup.metrics_info,
                               self.setup.task_weights)
            per_task, _ = task_deltas(self.last, self.reference, self.setup.metrics_info)
        data: dict[str, Any] = {TIME_ATTR: self.epochs, METRIC: value, "state": state,
                                "metrics": self.last}
        if self.setup.pareto:
            data.update({f"{TASK_METRIC}{t}": per_task.get(t, 0.0) for t in tasks})
        return data

    def report(self, epoch: int, metrics: Metrics) -> None:
        self.last, self.epochs = metrics, epoch + 1
        if self.reference is not None and self.epochs < self.setup.budget.epochs:
            tune.report(self.payload("running"))

    def finish(self, result: TrialResult) -> None:
        self.last, self.epochs = result.metrics, result.epochs
        weights = {t: float(w) for t, w in (getattr(result, "weights", None) or {}).items()}
        data = {**self.payload("complete"), "final_weights": weights or None,
                "duration_s": round(result.seconds, 3), "device": result.device}
        if not math.isfinite(data[METRIC]):  # as the Optuna engine: a failed trial
            data.update(state="failed", error=UNDEFINED_DELTA, error_kind="trial")
        tune.report(data)

    def fail(self, message: str, *, kind: str) -> None:
        """``kind``: ``trial`` (TrialFailed), ``user`` (a data error: the search stops) or
        ``internal`` (an unexpected exception: counts towards giving up)."""
        tune.report({**self.payload("failed"), "error": message, "error_kind": kind})


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
    """The Ray Tune trainable: train ``config["policy"]`` and report every epoch."""
    from policysearch.training import TrialFailed, train_policy

    assert dataset is not None and setup is not None
    _test_exit_hook(int(config["number"]))
    reporter = TuneReporter(setup, config.get("reference"))
    try:
        policy = Policy.from_dict(config["policy"])
        result = train_policy(policy, dataset, setup.budget, seed=setup.seed,
                              device=trial_device(setup.device), threads=setup.threads,
                              reporter=reporter)
    except TrialFailed as err:
        reporter.fail(str(err), kind="trial")
    except UserError as err:
        reporter.fail(str(err), kind="user")
    except Exception as err:  # a bug or an environment problem: fail this trial, no retry
        reporter.fail(f"{type(err).__name__}: {err}".splitlines()[0], kind="internal")
    else:
        reporter.finish(result)


# --- on the driver ----------------------------------------------------------------------------


def trial_outcome(result: Mapping[str, Any] | None, epochs: int) -> tuple[str, str | None]:
    """(state, error) of a trial that ended with ``result`` as its last report (None: it
    never reported): what it said it was, or "pruned" when a scheduler stopped it early."""
    if not result or "state" not in result:
        return "failed", "stopped before its first report"
    state = result["state"]
    if state in ("complete", "failed"):
        return state, result.get("error")
    done = int(result.get(TIME_ATTR, 0))
    return "pruned", f"stopped by ASHA after epoch {done} of {epochs}"


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
    consecutive_errors: int = 0
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

    def pending_reference(self) -> tuple[bool, str | None]:
        """(whether a reference run is still to be started, its task or None)."""
        covered = {r.reference_task for r in self.records.values()
                   if r.role == "reference" and r.state == "complete"}
        covered |= set(self.live_references.values())
        if self.space.single_task_reference:
            missing = [t for t in self.tasks if t not in covered]
            return (True, missing[0]) if missing else (False, None)
        return (None not in covered, None)

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


class PolicySearcher(Searcher):
    """References first, then OptunaSearch's suggestions; the Ray config of a trial is
    ``{"number", "role", "reference_task", "policy", "reference", "params"}``."""

    def __init__(self, ledger: Ledger, optuna_search: OptunaSearch, metric: str | list[str]):
        super().__init__()
        self._metric, self._mode = metric, ("max" if isinstance(metric, str)
                                            else ["max"] * len(metric))
        self.ledger = ledger
        self._optuna = optuna_search  # not ".searcher": Ray would try to save it as a wrapper
        self._search_ids: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # our metric and mode are fixed; the space is define-by-run

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        ledger = self.ledger
        if ledger.stop_reason() is not None:
            return Searcher.FINISHED
        if ledger.finished() + len(ledger.live) >= ledger.target:
            return None  # every missing trial is running; one may still fail
        pending, task = ledger.pending_reference()
        if pending:
            ref_tasks = {task: ledger.tasks[task]} if task is not None else ledger.tasks
            policy = reference_policy(ledger.space.reference, ref_tasks)
            number = ledger.allocate(trial_id, reference=True, task=task)
            return {"number": number, "role": "reference",
                    "reference_task": task, "policy": policy.to_dict(), "reference": None}
        reference = ledger.study().reference_metrics()
        if reference is None:
            return None  # wait for the reference runs in flight
        values = self._optuna.suggest(trial_id)
        if values is None:
            return None
        self._search_ids.add(trial_id)
        policy = policy_from_params(ledger.space, ledger.tasks, values)
        return {"number": ledger.allocate(trial_id), "role": "search", "reference_task": None,
                "policy": policy.to_dict(), "reference": reference, "params": dict(values)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._search_ids and result.get("state") == "running":
            self._optuna.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._search_ids:
            return
        state, _ = ("failed", None) if error else trial_outcome(
            result, self.ledger.space.budget.epochs)
        values = [result.get(m) for m in ([self._metric] if isinstance(self._metric, str)
                                          else self._metric)] if result else []
        if state == "complete" and all(isinstance(v, float) and math.isfinite(v)
                                       for v in values):
            self._optuna.on_trial_complete(trial_id, result)
        else:  # Optuna: pruned trials keep their intermediate values, failed ones count not
            self._optuna.on_trial_complete(trial_id, None, error=state != "pruned")

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: resume reads the records and the Optuna journal."""

    def restore(self, checkpoint_path: str) -> None:
        """See ``save``."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles its Tuner (tuner.pkl) for its own resume, which we do not use.
        return (Detached, ())


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
        if "ActorDiedError" in text or "RayActorError" in text:
            return f"its worker process died ({RETRIES + 1} times)"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "the trial failed in Ray"


class RecordsCallback(Callback):
    """Writes each trial's record as it starts and ends, and emits the progress events of the
    Optuna engine (``trial_start``, ``epoch``, ``trial_end``) on the driver."""

    def __init__(self, ledger: Ledger, *, run_name: str, emit: Progress,
                 on_trial_end: Callable[[StudyRecords], None] | None = None):
        self.ledger = ledger
        self.run_name = run_name
        self.emit = emit
        self.on_trial_end = on_trial_end

    def _number(self, trial: Any) -> int:
        return int(trial.config["number"])

    def _policy_record(self, trial: Any, state: str) -> TrialRecord:
        config = trial.config
        return TrialRecord(number=self._number(trial), state=state, role=config["role"],
                           policy=config["policy"], reference_task=config.get("reference_task"),
                           params=config.get("params"))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = self._number(trial)
        started = self.ledger.started.setdefault(number, time.time())
        self.ledger.write(self._policy_record(trial, "running"), ray_trial_id=trial.trial_id,
                          run=self.run_name, started_at=started)
        policy = Policy.from_dict(trial.config["policy"])
        self.emit("trial_start", {"trial": number, "role": trial.config["role"],
                                  "policy": policy.summary(), "finished":
                                  self.ledger.finished(), "target": self.ledger.target,
                                  "task": trial.config.get("reference_task")})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get("state") == "running" and result.get("metrics"):
            self.emit("epoch", {"trial": self._number(trial),
                                "epoch": int(result[TIME_ATTR]) - 1,
                                "metrics": result["metrics"]})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = self._number(trial)
        retries = self.ledger.extras.get(number, {}).get("retries", 0) + 1
        self.ledger.extras.setdefault(number, {})["retries"] = retries
        self.emit("trial_retry", {"trial": number, "retries": retries,
                                  "error": "its worker process died"})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or None
        if self.ledger.abort is not None or self.ledger.fatal is not None:
            state, error = trial_outcome(result, self.ledger.space.budget.epochs)
            if state == "pruned":
                state, error = "failed", "stopped: the search ended on an error"
        else:
            state, error = trial_outcome(result, self.ledger.space.budget.epochs)
        self._end(trial, state, error, result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed", error_line(trial), trial.last_result or None,
                  counts_as_error=True)

    def _end(self, trial: Any, state: str, error: str | None, result: Mapping | None,
             counts_as_error: bool = False) -> None:
        ledger = self.ledger
        number = self._number(trial)
        ledger.release(trial.trial_id)
        record = self._policy_record(trial, state)
        result = result or {}
        record.metrics = result.get("metrics")
        record.epochs = int(result[TIME_ATTR]) if TIME_ATTR in result else None
        record.error = error
        record.final_weights = result.get("final_weights")
        started = ledger.started.get(number)
        record.duration_s = result.get("duration_s") or (
            round(time.time() - started, 3) if started else None)
        record.started_at = started
        record.device = result.get("device")
        worker = f"{result['hostname']}:{result['pid']}" if "pid" in result else None
        ledger.write(record, worker=worker, ray_trial_id=trial.trial_id, ended_at=time.time())
        self._count_errors(result, state, counts_as_error, error)
        self.emit("trial_end", self._end_event(record, result))
        if self.on_trial_end is not None:
            self.on_trial_end(ledger.study())

    def _count_errors(self, result: Mapping, state: str, counts: bool,
                      error: str | None) -> None:
        ledger = self.ledger
        kind = result.get("error_kind")
        if kind == "user" and ledger.abort is None:
            ledger.abort = UserError(str(error))
        if state in rr.FINISHED_STATES:
            ledger.consecutive_errors = 0
        elif counts or kind == "internal":
            ledger.consecutive_errors += 1
            if ledger.consecutive_errors >= MAX_CONSECUTIVE_ERRORS and ledger.fatal is None:
                ledger.fatal = (f"{ledger.consecutive_errors} trials in a row failed; last: "
                                f"{error}")

    def _end_event(self, record: TrialRecord, result: Mapping) -> dict[str, Any]:
        data: dict[str, Any] = {"trial": record.number, "state": record.state,
                                "role": record.role}
        if record.state == "failed":
            data["error"] = record.error
        if record.state == "complete":
            value = result.get(METRIC)
            data["delta_m"] = value if record.role == "search" else 0.0
            data["seconds"] = record.duration_s
            deltas = {t: result[f"{TASK_METRIC}{t}"] for t in self.ledger.tasks
                      if f"{TASK_METRIC}{t}" in result}
            if deltas:
                data["task_deltas"] = deltas
        return data

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


# --- the search -------------------------------------------------------------------------------


def asha_grace(space: SearchSpace) -> int:
    """ASHA's first rung, in epochs: where the space's pruner decides first — after
    ``n_warmup_steps`` epochs for the median pruner (as Optuna counts them), at step
    ``min_resource × reduction_factor ** min_early_stopping_rate`` (that many epochs + 1)
    for successive halving and Hyperband."""
    pruner = space.pruner
    if pruner.name in ("successive_halving", "hyperband"):
        first = (pruner.min_resource or 1) * asha_reduction(space) ** (
            pruner.min_early_stopping_rate or 0)
    else:
        first = pruner.n_warmup_steps
    return max(1, min(first + 1, space.budget.epochs))


def asha_reduction(space: SearchSpace) -> int:
    """ASHA keeps the best 1/this at each rung: the space pruner's ``reduction_factor`` when
    it has one, else 3."""
    return space.pruner.reduction_factor or ASHA_REDUCTION


def asha_rungs(space: SearchSpace) -> list[int]:
    """The epochs after which ASHA compares trials (and keeps the best 1/reduction)."""
    grace, epochs, eta = asha_grace(space), space.budget.epochs, asha_reduction(space)
    return [grace * eta ** k for k in range(epochs) if grace * eta ** k < epochs]


class SearchTrialsASHA(ASHAScheduler):
    """ASHA that leaves the reference trials alone: they report once, at the end, a Δm% of 0
    by definition, which ASHA would otherwise record at a rung and compare the search trials'
    early (much lower) Δm% with."""

    @staticmethod
    def _is_reference(trial: Any) -> bool:
        return trial.config.get("role") == "reference"

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self._is_reference(trial):
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if self._is_reference(trial):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def asha_scheduler(space: SearchSpace) -> ASHAScheduler:
    """ASHA in epochs (``asha_rungs``), on Δm% against the reference, for search trials."""
    return SearchTrialsASHA(time_attr=TIME_ATTR, metric=METRIC, mode="max",
                            max_t=space.budget.epochs, grace_period=asha_grace(space),
                            reduction_factor=asha_reduction(space))


def _pbt(space: SearchSpace, **kwargs: Any) -> StudyRecords:
    try:
        from policysearch.search.ray_pbt import optimize_pbt
    except ModuleNotFoundError as err:
        if err.name != "policysearch.search.ray_pbt":
            raise
        raise UserError("PBT is not available in this version (available: asha, none)",
                        field="--scheduler") from None
    return optimize_pbt(space, **kwargs)


def optimize_ray(
    space: SearchSpace,
    *,
    options: SearchOptions,
    dataset: MultiTaskDataset,
    tasks: Mapping[str, str],
    metrics_info: MetricsInfo,
    dataset_notes: Sequence[str] = (),
    out_dir: Path,
    study_name: str,
    threads: int,
    progress: Progress | None = None,
    on_trial_end: Callable[[StudyRecords], None] | None = None,
) -> StudyRecords:
    """Run (or resume) a search with Ray Tune until ``options.trials`` trials are finished
    (complete or pruned, the reference included), and return every trial's record."""
    if options.scheduler == "pbt":
        return _pbt(space, options=options, dataset=dataset, tasks=tasks,
                    metrics_info=metrics_info, dataset_notes=dataset_notes, out_dir=out_dir,
                    study_name=study_name, threads=threads, progress=progress,
                    on_trial_end=on_trial_end)
    emit = progress or (lambda event, data: None)
    if options.storage is not None:
        raise UserError("is the Optuna engine's storage; with --engine ray, results go to "
                        "--out or --ray-storage (a folder every node sees)", field="--storage")
    cpus, gpus = trial_resources(options, threads)
    if options.ray_address is not None:
        check_reachable(options.ray_address)  # before anything is written
    experiment = rr.experiment_dir(Path(out_dir), options.ray_storage, study_name)
    with experiment_lock(experiment):
        open_experiment(space, out_dir=out_dir, ray_storage=options.ray_storage,
                        study_name=study_name, seed=options.seed, metrics_info=metrics_info,
                        tasks=tasks, dataset=dataset.name, dataset_notes=dataset_notes,
                        scheduler=options.scheduler)
        for number in rr.mark_stale(experiment):
            emit("stale", {"trial": number})
        deadline = time.monotonic() + options.timeout if options.timeout else None
        ledger = Ledger.load(experiment, space=space, tasks=dict(tasks),
                             target=options.trials, deadline=deadline)
        emit("start", {"study": study_name, "finished": ledger.finished(),
                       "target": options.trials})
        if ledger.finished() < options.trials:
            _run_missing(space, ledger, options=options, dataset=dataset, tasks=tasks,
                         metrics_info=metrics_info, study_name=study_name,
                         resources={"cpu": cpus, "gpu": gpus}, emit=emit,
                         on_trial_end=on_trial_end)
        return ledger.study()


def _run_missing(space: SearchSpace, ledger: Ledger, *, options: SearchOptions,
                 dataset: MultiTaskDataset, tasks: Mapping[str, str], metrics_info: MetricsInfo,
                 study_name: str, resources: dict[str, float], emit: Progress,
                 on_trial_end: Callable[[StudyRecords], None] | None) -> None:
    """Connect to Ray and run the trials still missing."""
    pareto = space.objective == "pareto"
    if pareto and options.scheduler == "asha" and space.pruner.name != "none":
        emit("pruning_off", {"message": PRUNING_OFF_PARETO})
    setup = TrialSetup(budget=space.budget, seed=options.seed, device=options.device,
                       threads=max(1, int(resources["cpu"])), metrics_info=metrics_info,
                       task_weights=dict(space.task_weights), tasks=dict(tasks), pareto=pareto)
    with quiet_ray(), ray_session(options.ray_address):
        check_resources(resources["cpu"], resources["gpu"])
        _fit(space, ledger, setup, dataset=dataset, experiment=ledger.experiment,
             study_name=study_name, options=options, resources=resources, emit=emit,
             on_trial_end=on_trial_end)


def _fit(space: SearchSpace, ledger: Ledger, setup: TrialSetup, *, dataset: MultiTaskDataset,
         experiment: Path, study_name: str, options: SearchOptions,
         resources: dict[str, float], emit: Progress,
         on_trial_end: Callable[[StudyRecords], None] | None) -> None:
    """One Tuner run: the trials still missing."""
    metric: str | list[str] = ([f"{TASK_METRIC}{t}" for t in setup.tasks] if setup.pareto
                               else METRIC)
    storage, n_existing = optuna_study_for(space, experiment, study_name,
                                           len(setup.tasks) if setup.pareto else 1)
    params = parameters(space, list(setup.tasks))
    optuna_search = OptunaSearch(space=lambda trial: suggest(trial, params), metric=metric,
                                 mode="max" if isinstance(metric, str) else ["max"] * len(metric),
                                 sampler=make_sampler(space, options.seed, n_existing),
                                 storage=storage, study_name=study_name)
    searcher = PolicySearcher(ledger, optuna_search, metric)
    run_name = next_run_name(experiment)
    callback = RecordsCallback(ledger, run_name=run_name, emit=emit, on_trial_end=on_trial_end)
    use_asha = options.scheduler == "asha" and space.pruner.name != "none" and not setup.pareto
    trainable = tune.with_resources(
        tune.with_parameters(run_ray_trial, dataset=dataset, setup=setup), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=asha_scheduler(space) if use_asha else None,
            num_samples=-1, max_concurrent_trials=options.workers, reuse_actors=True,
            trial_name_creator=lambda t: f"trial-{t.config['number']:05d}",
            trial_dirname_creator=lambda t: f"trial-{t.config['number']:05d}"),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(experiment), verbose=0,
            callbacks=[callback], stop=AbortStopper(ledger),
            failure_config=tune.FailureConfig(max_failures=RETRIES)),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        callback.interrupted("interrupted")
        raise
    except BaseException:
        callback.interrupted("the search stopped on an error")
        raise
    if ledger.abort is not None:
        raise ledger.abort
    if ledger.fatal is not None:
        raise RuntimeError(ledger.fatal)
    if ledger.timed_out and ledger.finished() < ledger.target:
        emit("timeout", {"finished": ledger.finished(), "target": ledger.target})
