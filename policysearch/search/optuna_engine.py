"""Optuna engine: trials driven with ask/tell on a study (``optuna_study``), so that the
reference, failures and interruptions are recorded exactly as they happened.

The reference trial (a baseline policy) runs first; every later trial's objective is its Δm%
against it, or with ``objective: pareto`` one objective per task (that task's Δ%, maximised) in
a multi-objective study. Optuna cannot prune multi-objective trials: a pareto search runs
without a pruner whatever the space asks, and says so once (progress event ``pruning_off``).
What a trial is (its policy, how it is scored, when failures end the search, its record) is
the trial lifecycle's (``policysearch.search.lifecycle``); this module only schedules trials.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from policysearch.augment import Policy
from policysearch.config import SearchSpace
from policysearch.errors import SearchAborted
from policysearch.events import (
    EpochEnded,
    PruningOff,
    SearchEvent,
    SearchListener,
    SearchStarted,
    TimedOut,
    TrialStale,
    TrialStarted,
    WaitingForReference,
)
from policysearch.records import Metrics, MetricsInfo, StudyRecords
from policysearch.search.lifecycle import (
    FailureRules,
    Scoring,
    TrialOutcome,
    TrialReporter,
    missing_references,
    reference_run_policy,
    run_training,
    search_trial_policy,
)
from policysearch.search.optuna_study import (
    FINISHED,
    fail_trials_of,
    open_study,
    study_records,
)
from policysearch.search.sampling import make_pruner, make_sampler, suggest
from policysearch.search.space import parameters
from policysearch.training import Reporter, TrialPruned, TrialResult

# How often a worker looks again while another worker runs the reference trial.
REFERENCE_POLL_S = 1.0
PRUNING_OFF = "pruning is off: Optuna cannot prune multi-objective trials"
STALE_ERROR = "left running by an interrupted search"

TrialRunner = Callable[[Policy, Reporter], TrialResult]


def _ignore(event: SearchEvent) -> None:
    """A progress listener that drops every event."""


def _claim_reference(study: optuna.Study, space: SearchSpace,
                     tasks: Mapping[str, str]) -> Trial | None:
    """A reference trial for this worker to run, or None while other workers run every missing
    one. Reference trials are enqueued and claimed atomically (WAITING → RUNNING), so with
    several workers, or several hosts on one database, each reference runs once
    (``tests/test_reference_claim.py`` runs two claims interleaved step by step)."""
    # One snapshot: what is done and what is running or waiting are read together.
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.user_attrs.get("role") == "reference"]
    done = {t.user_attrs.get("reference_task") for t in trials
            if t.state == TrialState.COMPLETE}
    for key in missing_references(space, tasks, done):
        mine = [t for t in trials if t.user_attrs.get("reference_task") == key]
        if any(t.state == TrialState.RUNNING for t in mine):
            continue
        waiting = [t for t in mine if t.state == TrialState.WAITING]
        if not waiting:
            attrs: dict[str, Any] = {"role": "reference"}
            if key is not None:
                attrs["reference_task"] = key
            study.enqueue_trial({}, user_attrs=attrs)
            # Read again: another worker may have enqueued and claimed its own meanwhile, or
            # even run it to the end since the snapshot above (this copy is then left
            # waiting, and a later ``ask`` turns it into a search trial).
            mine = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get("role") == "reference"
                    and t.user_attrs.get("reference_task") == key]
            if any(t.state in (TrialState.RUNNING, TrialState.COMPLETE) for t in mine):
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


def _first_beat(study: optuna.Study, trial: Trial) -> None:
    """Record a database trial's first heartbeat as soon as it is claimed: Optuna never
    counts a running trial without any heartbeat as stale, so a process killed between the
    claim and the heartbeat thread's start (sampling, attributes) would leave its trial
    running for ever; this narrows that gap to one database round trip."""
    storage: Any = study._storage
    beat = getattr(storage, "record_heartbeat", None)
    if beat is not None and storage.get_heartbeat_interval():
        with contextlib.suppress(Exception):  # a lost connection: the thread beats again
            beat(trial._trial_id)


class _Heartbeat:
    """Records a database trial's heartbeat in a thread while the trial trains (Optuna does
    this only inside ``Study.optimize``; policysearch drives trials with ask/tell)."""

    def __init__(self, study: optuna.Study, trial: Trial):
        import threading

        storage: Any = study._storage
        self._beat: Any = getattr(storage, "record_heartbeat", None)
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


class OptunaReporter(TrialReporter):
    """Feeds each epoch's Δm% (against the reference's final metrics) to Optuna's pruner;
    with ``prune`` False (multi-objective studies) it only records the epochs."""

    def __init__(self, trial: Trial, scoring: Scoring, reference: Metrics | None,
                 on_epoch: Callable[[int, Metrics], None] | None = None, prune: bool = True):
        super().__init__(scoring, reference, on_epoch)
        self.trial = trial
        self.prune = prune

    def after_epoch(self, epoch: int, metrics: Metrics) -> None:
        value = self.scoring.epoch_value(metrics, self.reference) if self.prune else None
        if value is None:
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise TrialPruned(f"pruned after epoch {epoch + 1}")


def prepare_study(space: SearchSpace, *, tasks: Mapping[str, str], metrics_info: MetricsInfo,
                  dataset_name: str, dataset_notes: Sequence[str], out_dir: Path,
                  storage: str | None, study_name: str, seed: int, target: int,
                  emit: SearchListener, fail_stale: bool = True,
                  workers: int | None = None,
                  dataset_subset: Mapping[str, Any] | None = None) -> optuna.Study:
    """Open (or resume) the study for a search and say so: trials a dead search left running
    failed and enqueued again (a local journal only, ``fail_stale``: only one driver writes
    it), ``pruning_off`` for a pareto space that asks for a pruner, then ``start`` (with
    ``workers`` when several processes share the study)."""
    study, is_file = open_study(space, storage=storage, study_name=study_name, out_dir=out_dir,
                                seed=seed, metrics_info=metrics_info, tasks=tasks,
                                dataset=dataset_name, dataset_notes=dataset_notes,
                                subset=dataset_subset)
    if is_file and fail_stale:
        for number in fail_trials_of(study, None, STALE_ERROR):
            emit(TrialStale(trial=number))
    if space.objective == "pareto" and space.pruner.name != "none":
        emit(PruningOff(message=PRUNING_OFF))
    emit(SearchStarted(study=study_name, target=target, epochs=space.budget.epochs,
                       finished=len(study.get_trials(deepcopy=False, states=FINISHED)),
                       workers=workers))
    return study


class _Trials:
    """The trials of one process on a study: what runs next, and running it."""

    def __init__(self, study: optuna.Study, space: SearchSpace, tasks: Mapping[str, str],
                 scoring: Scoring, *, runner: TrialRunner, emit: SearchListener, seed: int,
                 target: int, worker: str | None, device: str | None, salt: int):
        self.study, self.space, self.tasks, self.scoring = study, space, dict(tasks), scoring
        self.runner, self.emit, self.seed, self.target = runner, emit, seed, target
        self.worker, self.device, self.salt = worker, device, salt
        self.params = parameters(space, list(tasks))

    def finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def next_trial(self) -> tuple[Trial, Policy, Metrics | None] | None:
        """The next trial with its policy and reference metrics: a missing reference run,
        else a search trial; None while other workers run every missing reference."""
        study, space = self.study, self.space
        with warnings.catch_warnings():  # "fail_stale_trials is experimental"
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)  # database storages: dead hosts' trials
        reference = study_records(study).reference_metrics()
        study.sampler = make_sampler(space, self.seed, len(study.get_trials(deepcopy=False)),
                                     self.salt)
        study.pruner = (optuna.pruners.NopPruner() if self.scoring.pareto
                        else make_pruner(space))
        if reference is None:
            trial = _claim_reference(study, space, self.tasks)
            if trial is None:
                return None
            _first_beat(study, trial)
            policy = reference_run_policy(space, self.tasks,
                                          trial.user_attrs.get("reference_task"))
        else:
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
                warnings.simplefilter("ignore")
                trial = study.ask()
            _first_beat(study, trial)
            if trial.user_attrs.get("role") == "reference":  # a leftover duplicate
                trial.set_user_attr("reference_task", None)
            trial.set_user_attr("role", "search")
            policy = search_trial_policy(space, self.tasks, suggest(trial, self.params))
        for key, value in (("worker", self.worker), ("device", self.device),
                           ("policy", policy.to_dict())):
            if value is not None:
                trial.set_user_attr(key, value)
        return trial, policy, reference

    def run(self, trial: Trial, policy: Policy, reference: Metrics | None) -> TrialOutcome:
        """Train ``trial``, store how it ended and tell Optuna; a data error is raised after
        the trial is stored."""
        role = trial.user_attrs["role"]
        number = trial.number
        self.emit(TrialStarted(trial=number, role=role, policy=policy.summary(),
                               finished=self.finished(), target=self.target,
                               task=trial.user_attrs.get("reference_task")))
        reporter = OptunaReporter(trial, self.scoring, reference,
                                  on_epoch=lambda e, m: self.emit(
                                      EpochEnded(trial=number, epoch=e, metrics=m)),
                                  prune=not self.scoring.pareto)
        try:
            with _Heartbeat(self.study, trial):
                outcome, user_error = run_training(lambda r: self.runner(policy, r), reporter)
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        self._store(trial, outcome)
        if role == "reference" and outcome.state == "complete":
            _drop_duplicate_references(self.study, trial.user_attrs.get("reference_task"))
        self.emit(outcome.end_event(number, role))
        if user_error is not None:
            raise user_error
        return outcome

    def _store(self, trial: Trial, outcome: TrialOutcome) -> None:
        for key in ("metrics", "epochs", "error", "final_weights", "data_wait",
                    "loader_workers"):
            value = getattr(outcome, key)
            if value is not None:
                trial.set_user_attr(key, value)
        if outcome.state == "complete":
            self.study.tell(trial, self.scoring.objectives(outcome))
        else:
            self.study.tell(trial, state=TrialState.PRUNED if outcome.state == "pruned"
                            else TrialState.FAIL)


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
    progress: SearchListener | None = None,
    on_trial_end: Callable[[StudyRecords], None] | None = None,
    fail_stale: bool = True,
    worker: str | None = None,
    sampler_salt: int = 0,
    device: str | None = None,
    dataset_subset: Mapping[str, Any] | None = None,
) -> StudyRecords:
    """Run trials until ``n_trials`` are finished (complete or pruned, reference included).

    Several processes may run this on one study at once (``policysearch.search.workers`` on
    one host, or one per host on a database): each reference trial runs once while the others
    wait for it; the count may overshoot by at most one trial per extra process. ``worker``
    labels the trials this process runs (``host:pid``), so a driver can fail the trials of a
    worker that died; ``fail_stale`` (a local journal only): first fail the trials that a
    dead search left running and enqueue their parameters again; leave it to the driver when
    it owns several workers. ``device`` (cpu, cuda) is stored with each trial for the
    study's device-seconds. ``dataset_subset``: the training subset the trials train on
    (stored with the study; None: the whole training split).
    """
    study_name = study_name or space.name
    emit = progress or _ignore
    study = prepare_study(space, tasks=tasks, metrics_info=metrics_info,
                          dataset_name=dataset_name, dataset_notes=dataset_notes,
                          out_dir=out_dir, storage=storage, study_name=study_name, seed=seed,
                          target=n_trials, emit=emit, fail_stale=fail_stale,
                          dataset_subset=dataset_subset)
    trials = _Trials(study, space, tasks, Scoring.of(space, tasks, metrics_info), runner=runner,
                     emit=emit, seed=seed, target=n_trials, worker=worker, device=device,
                     salt=sampler_salt)
    deadline = time.monotonic() + timeout if timeout else None
    rules = FailureRules()
    said_waiting = False
    while trials.finished() < n_trials:
        if deadline is not None and time.monotonic() >= deadline:
            emit(TimedOut(finished=trials.finished(), target=n_trials))
            break
        planned = trials.next_trial()
        if planned is None:  # another worker runs the reference: wait, then look again
            if not said_waiting:
                emit(WaitingForReference())
                said_waiting = True
            time.sleep(REFERENCE_POLL_S)
            continue
        stop = rules.count(trials.run(*planned))
        if stop is not None:
            raise SearchAborted(stop)
        if on_trial_end is not None:
            on_trial_end(study_records(study))
    return study_records(study)
