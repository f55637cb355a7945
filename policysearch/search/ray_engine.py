"""Ray Tune engine (``--engine ray``): the search space, trial lifecycle and training path of
the Optuna engine, run as Ray Tune trials on a local Ray instance or a cluster, with TPE
(through OptunaSearch) and ASHA. What both Ray engines share (connecting, the experiment
folder, the trainable, the records) is ``ray_runtime``; PBT is ``ray_pbt``.

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
* Each trial runs ``ray_runtime.run_ray_trial`` in a reused Ray actor (torch is imported once
  per worker) with the dataset from Ray's object store (``tune.with_parameters``: put there
  once, not rebuilt per trial), and reports Δm% against the reference after every epoch; ASHA
  (``--scheduler asha``) stops trials that fall behind, recorded as "pruned". A trial's last
  report carries its outcome (``lifecycle.TrialOutcome``), so a trial stopped at its last
  epoch loses nothing.
* ``RecordsCallback`` (on the driver) writes each trial's record (``ray_results``) when it
  starts and ends, applies the lifecycle's failure rules, and gives the progress events the
  Optuna engine gives.
* A trial whose worker dies is retried (``FailureConfig``), and marked failed when it keeps
  dying; the search goes on. An exception inside a trial fails that trial without a retry (a
  data error stops the search with exit status 2, as with the Optuna engine).
* Resume (the same command again, after Ctrl-C or a killed driver): the records are the truth;
  trials left "running" are marked failed, finished ones are kept and counted, TPE continues
  from its Optuna journal, and a new Tuner runs only what is missing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from policysearch.config import SearchSpace
from policysearch.events import PruningOff, TimedOut
from policysearch.records import StudyRecords
from policysearch.search import ray_results as rr
from policysearch.search.lifecycle import Scoring, reference_run_policy, search_trial_policy
from policysearch.search.ray_runtime import (
    METRIC,
    RETRIES,
    TASK_METRIC,
    TIME_ATTR,
    AbortStopper,
    Detached,
    Ledger,
    RecordsCallback,
    TrialSetup,
    check_not_optuna,
    check_reachable,
    experiment_lock,
    fit,
    next_run_name,
    open_ledger,
    ray_connected,
    run_ray_trial,
    trial_outcome,
)
from policysearch.search.sampling import make_sampler, suggest
from policysearch.search.space import parameters

if TYPE_CHECKING:
    from policysearch.search.options import SearchRun

SCHEDULERS = ("asha", "none")
ASHA_REDUCTION = 3  # keep the best third at each rung (Hyperband's η)
OPTUNA_JOURNAL = "optuna.journal"  # TPE's memory across resumes, in the experiment folder
PRUNING_OFF_PARETO = "pruning is off: ASHA cannot stop multi-objective trials"


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



class PolicySearcher(Searcher):
    """References first, then OptunaSearch's suggestions; the Ray config of a trial is
    ``{"number", "role", "reference_task", "policy", "reference", "params"}``."""

    def __init__(self, ledger: Ledger, optuna_search: OptunaSearch, metric: str | list[str]):
        super().__init__()
        # Ray annotates one metric name; a pareto search has one per task.
        self._metric, self._mode = metric, ("max" if isinstance(metric, str)  # type: ignore
                                            else ["max"] * len(metric))
        self._metrics = [metric] if isinstance(metric, str) else list(metric)
        self.ledger = ledger
        self._optuna = optuna_search  # not ".searcher": Ray would try to save it as a wrapper
        self._search_ids: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # our metric and mode are fixed; the space is define-by-run

    # Ray annotates suggest as returning a dict or None; Searcher.FINISHED is a str.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        ledger = self.ledger
        if ledger.stop_reason() is not None:
            return Searcher.FINISHED
        if ledger.finished() + len(ledger.live) >= ledger.target:
            return None  # every missing trial is running; one may still fail
        missing = ledger.missing_references()
        if missing:
            task = missing[0]
            policy = reference_run_policy(ledger.space, ledger.tasks, task)
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
        policy = search_trial_policy(ledger.space, ledger.tasks, values)
        return {"number": ledger.allocate(trial_id), "role": "search", "reference_task": None,
                "policy": policy.to_dict(), "reference": reference, "params": dict(values)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._search_ids and result.get("state") == "running":
            self._optuna.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._search_ids:
            return
        state = "failed" if error else trial_outcome(
            result, self.ledger.space.budget.epochs).state
        values = [result.get(m) for m in self._metrics] if result else []
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


def optimize_ray(run: SearchRun) -> StudyRecords:
    """Run (or resume) a search with Ray Tune until ``--trials`` trials are finished
    (complete or pruned, the reference included), and return every trial's record."""
    options = run.options
    options.ray_resources()  # a bad request is refused before anything is written
    if options.ray_address is not None:
        check_reachable(options.ray_address)  # before anything is written
    experiment = rr.experiment_dir(Path(run.out_dir), options.ray_storage, run.study_name)
    check_not_optuna(experiment)  # before the lock file is written there
    with experiment_lock(experiment):
        deadline = time.monotonic() + options.timeout if options.timeout else None
        ledger = open_ledger(run, deadline=deadline)
        if ledger.finished() < options.trials:
            _run_missing(run, ledger)
        return ledger.study()


def _run_missing(run: SearchRun, ledger: Ledger) -> None:
    """Connect to Ray and run the trials still missing."""
    space, options = run.space, run.options
    scoring = Scoring.of(space, run.tasks, run.metrics_info)
    if scoring.pareto and options.scheduler == "asha" and space.pruner.name != "none":
        run.emit(PruningOff(message=PRUNING_OFF_PARETO))
    with ray_connected(options) as resources:
        setup = TrialSetup(budget=space.budget, seed=options.seed, device=options.device,
                           threads=max(1, int(resources["cpu"])), scoring=scoring)
        _fit(run, ledger, setup, resources)


def _fit(run: SearchRun, ledger: Ledger, setup: TrialSetup,
         resources: dict[str, float]) -> None:
    """One Tuner run: the trials still missing."""
    space, options, experiment, study_name = (run.space, run.options, ledger.experiment,
                                              run.study_name)
    metric: str | list[str] = ([f"{TASK_METRIC}{t}" for t in setup.tasks] if setup.scoring.pareto
                               else METRIC)
    storage, n_existing = optuna_study_for(space, experiment, study_name,
                                           len(setup.tasks) if setup.scoring.pareto else 1)
    params = parameters(space, list(setup.tasks))
    optuna_search = OptunaSearch(space=lambda trial: suggest(trial, params), metric=metric,
                                 mode="max" if isinstance(metric, str) else ["max"] * len(metric),
                                 sampler=make_sampler(space, options.seed, n_existing),
                                 storage=storage, study_name=study_name)
    searcher = PolicySearcher(ledger, optuna_search, metric)
    run_name = next_run_name(experiment)
    callback = RecordsCallback(ledger, run_name=run_name, emit=run.emit,
                               on_trial_end=run.on_trial_end)
    use_asha = (options.scheduler == "asha" and space.pruner.name != "none"
                and not setup.scoring.pareto)
    trainable = tune.with_resources(
        tune.with_parameters(run_ray_trial, dataset=run.dataset, setup=setup), resources)
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
    fit(tuner, callback)
    if ledger.timed_out and ledger.finished() < ledger.target:
        run.emit(TimedOut(finished=ledger.finished(), target=ledger.target))
