"""Population-based augmentation (``--engine ray --scheduler pbt``): Ray Tune's
``PopulationBasedTraining`` over the policy's parameters, as in PBA (Ho et al., ICML 2019).

How a search runs (the experiment folder, records, Ray session and progress events are the Ray
engine's, ``ray_engine`` / ``ray_results``):

1. The missing reference run(s) train first, as Ray trials of the Ray engine's trainable
   (``run_ray_trial``), under the same budget and seed.
2. A **population** starts: ``--trials`` minus the finished trials (reference runs included),
   at least 2; each member's policy is drawn from the search space with a generator seeded by
   ``--seed``; at most ``--workers`` members train at once (Ray time-slices the rest at the
   perturbation points). Members are trials: numbered after the existing records, one record
   each, counted by ``--trials``.
3. Every ``perturbation_interval(epochs)`` epochs, synchronously (every member at the same
   epoch), PBT ranks the members by Δm% against the reference; the bottom quarter copy a
   top-quarter member's checkpoint — the ``Trainer`` state, which carries the schedule trained
   so far — and perturb its policy parameters (probabilities and magnitudes × 0.8 or 1.2,
   clipped to the space's ranges, or resampled with probability 0.25; ops shifted to a
   neighbouring choice or resampled). Loss weights and the weighting method are not perturbed:
   the weighting is one per policy, so a member that copies another takes its weighting too.
4. A member's record holds the policy of its lineage: after an exploit the donor's schedule
   continues with the new policy, so the final policy carries a ``schedule`` (a member never
   exploited trained under one policy and has none). ``results`` shows it, ``export`` writes
   it and ``load_policy(...).at_epoch(e)`` replays it: training under the exported schedule
   from scratch gives the member's numbers (CPU, same seed).

Every random choice of PBT comes from a generator seeded by ``--seed``, and synchronous PBT
perturbs members in an order fixed by their scores, so a re-run on the CPU gives the same
search. Re-running the same command: finished members are kept; when fewer than ``--trials``
trials are finished (an interrupted search, or a larger ``--trials``), a new population of the
missing size (at least 2) runs.
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search import Searcher

from policysearch.augment import Policy
from policysearch.errors import UserError
from policysearch.events import (
    EpochEnded,
    SearchListener,
    TimedOut,
    TrialExploited,
    TrialStarted,
)
from policysearch.records import Metrics, StudyRecords, TrialRecord, stored_data_wait
from policysearch.search.lifecycle import (
    DATA_ERROR,
    FAULT,
    UNEXPECTED,
    Scoring,
    TrialOutcome,
    reference_run_policy,
    search_trial_policy,
)
from policysearch.search.ray_runtime import (
    METRIC,
    OUTCOME,
    TIME_ATTR,
    Detached,
    Ledger,
    RecordsCallback,
    TrialSetup,
    check_reachable,
    error_line,
    fit,
    next_run_name,
    open_ledger,
    ray_connected,
    run_ray_trial,
    trial_device,
    trial_outcome,
)
from policysearch.search.space import Param, draw_params, parameters

if TYPE_CHECKING:
    from policysearch.config import SearchSpace
    from policysearch.data.base import MultiTaskDataset
    from policysearch.search.options import SearchRun

SCHEDULER = "pbt"
# Share of the population that copies a better member at each perturbation, and share it
# copies from (Ray's quantile_fraction).
QUANTILE = 0.25
# Each mutated value is resampled from its range with this probability, else perturbed.
RESAMPLE_PROBABILITY = 0.25
PERTURBATION_FACTORS = (1.2, 0.8)
# Checkpoints kept per member: a donor's checkpoint must outlive the exploit that copies it.
CHECKPOINTS_KEPT = 4
STATE_FILE = "trainer.pt"
META_FILE = "member.json"


# --- what PBT searches (no Ray needed) -----------------------------------------------------------


def perturbation_interval(epochs: int) -> int:
    """Epochs between perturbations: an eighth of the budget, at least 1 (24 epochs: every 3,
    so a schedule has at most 8 phases)."""
    return max(1, epochs // 8)


def check_trials(trials: int, references: int) -> None:
    """``--trials`` must leave room for a population of 2 after the reference runs."""
    if trials < references + 2:
        runs = f"{references} reference run{'s' if references > 1 else ''}"
        raise UserError(f"PBT needs a population of at least 2: --trials {references + 2} or "
                        f"more ({runs} + the population)", field="--trials")


def population_size(trials: int, finished: int) -> int:
    """The members to train: the trials still missing (``--trials`` counts every finished
    trial, reference runs included), at least 2 (PBT copies between members), so a resumed
    search may overshoot ``--trials`` by one."""
    return max(2, trials - finished)


def mutated_parameters(space: SearchSpace, tasks: Sequence[str]) -> list[Param]:
    """The parameters PBT perturbs: the augmentation's (ops, probabilities, magnitudes,
    RandAugment's n and magnitude), not the loss weighting's."""
    return [p for p in parameters(space, list(tasks)) if not p.name.startswith("weight.")]


def initial_values(space: SearchSpace, tasks: Sequence[str], count: int,
                   seed: int) -> list[dict[str, Any]]:
    """``count`` members' parameter values, uniform (log-uniform where the space says so) in
    the space, drawn with a generator seeded by ``seed``."""
    rng = random.Random(seed * 1_000_003 + 7)
    params = parameters(space, list(tasks))
    return [draw_params(params, rng) for _ in range(count)]


def clip_values(values: Mapping[str, Any], params: Sequence[Param]) -> dict[str, Any]:
    """Values brought back into their ranges after a perturbation (×1.2 may leave [0, 1])."""
    out = dict(values)
    for p in params:
        if p.name not in out or p.kind == "categorical":
            continue
        value = min(max(float(out[p.name]), p.low), p.high)
        out[p.name] = int(round(value)) if p.kind == "int" else value
    return out


class _Clip:
    """PBT's ``custom_explore_fn``: the perturbed member values clipped to their ranges."""

    def __init__(self, params: Sequence[Param]):
        self.params = list(params)

    def __call__(self, config: dict) -> dict:
        member = dict(config["member"])
        member["values"] = clip_values(member["values"], self.params)
        return {**config, "member": member}


# --- one member's training (a Ray worker) --------------------------------------------------------


def run_member(config: dict[str, Any], dataset: MultiTaskDataset | None = None,
               space: SearchSpace | None = None, setup: TrialSetup | None = None,
               reference: Metrics | None = None, interval: int = 1) -> None:
    """The PBT trainable: continue the member's ``Trainer`` from its checkpoint (its own after
    a pause, another member's after an exploit), train to the end of the budget, report Δm%
    every epoch, checkpoint every ``interval`` epochs."""
    import torch

    from policysearch.training import Trainer

    assert dataset is not None and space is not None and setup is not None
    assert reference is not None
    trial_id = tune.get_context().get_trial_id()

    def fail(message: str, kind: str, epoch: int) -> None:
        outcome = TrialOutcome("failed", epochs=epoch, error=message, kind=kind)
        tune.report({TIME_ATTR: epoch, METRIC: math.nan, "state": "failed",
                     OUTCOME: outcome.to_dict()})

    try:
        policy = search_trial_policy(space, setup.tasks, config["member"]["values"])
        trainer = Trainer(policy, dataset, space.budget, seed=setup.seed,
                          device=trial_device(setup.device), threads=setup.threads)
        exploited: dict[str, Any] = {}
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = torch.load(Path(folder) / STATE_FILE, weights_only=True,
                                   map_location="cpu")
                meta = json.loads((Path(folder) / META_FILE).read_text())
            trainer.load_state_dict(state)
            if meta["trial_id"] != trial_id:  # PBT's exploit: another member's checkpoint
                exploited = {"exploited_from": meta["trial_id"], "exploited_at": trainer.epoch}
    except UserError as err:
        fail(str(err), DATA_ERROR, 0)
        return
    with trainer:  # its loader workers stop however the member ends
        _train_member(trainer, policy, setup, reference, trial_id, exploited, interval, fail)


def _train_member(trainer: Any, policy: Any, setup: TrialSetup, reference: Metrics,
                  trial_id: str, exploited: dict[str, Any], interval: int,
                  fail: Callable[[str, str, int], None]) -> None:
    """``run_member``'s epochs: train, evaluate, report, checkpoint."""
    import torch

    from policysearch.training import TrialFailed

    epochs = trainer.budget.epochs
    while not trainer.done:
        try:
            trainer.train_epoch(policy)
            metrics = trainer.evaluate()
        except TrialFailed as err:
            fail(str(err), FAULT, trainer.epoch)
            return
        except UserError as err:  # a data file found broken inside the trial
            fail(str(err), DATA_ERROR, trainer.epoch)
            return
        except Exception as err:  # a bug or an environment problem
            fail(f"{type(err).__name__}: {err}".splitlines()[0], UNEXPECTED, trainer.epoch)
            return
        value = setup.scoring.epoch_value(metrics, reference)
        result = {
            TIME_ATTR: trainer.epoch,
            METRIC: math.nan if value is None else value,
            "state": "complete" if trainer.done else "running",
            "metrics": metrics,
            "final_weights": {t: float(w) for t, w in trainer.weighting.weights().items()},
            "data_wait": stored_data_wait(trainer.data_wait),
            "loader_workers": trainer.loader_workers,
            "duration_s": round(trainer.seconds, 3),
            "device": trainer.device.type,
            "policy": json.dumps(trainer.trained_policy().to_dict()),
            **exploited,
        }
        exploited = {}
        if trainer.done:
            outcome = setup.scoring.finish(trainer.result(), reference)
            result.update(state=outcome.state, **{OUTCOME: outcome.to_dict()})
        if trainer.epoch % interval == 0 and trainer.epoch < epochs:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(trainer.state_dict(), Path(folder) / STATE_FILE)
                (Path(folder) / META_FILE).write_text(
                    json.dumps({"trial_id": trial_id, "epoch": trainer.epoch}))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        else:
            tune.report(result)


# --- on the driver -------------------------------------------------------------------------------


class _References(Searcher):
    """Hands out the reference configs of the Ray engine's trainable, then finishes."""

    def __init__(self, configs: Sequence[dict[str, Any]]):
        super().__init__(metric=METRIC, mode="max")
        self.configs = list(configs)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True

    # Ray annotates suggest as returning a dict or None; Searcher.FINISHED is a str.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Detached, ())


class MembersCallback(Callback):
    """Records the members as the Ray engine records trials (start, every epoch, end) and
    emits the same progress events, plus ``exploit`` ({trial, from_trial, epoch, policy})
    when a member continues from another's checkpoint. A member's number is fixed at its first
    start (its config, ``number`` included, is the donor's after an exploit)."""

    def __init__(self, ledger: Ledger, *, run_name: str, emit: SearchListener, epochs: int,
                 on_trial_end: Callable[[StudyRecords], None] | None = None):
        self.ledger = ledger
        self.run_name = run_name
        self.emit = emit
        self.epochs = epochs
        self.on_trial_end = on_trial_end
        self.numbers: dict[str, int] = {}  # Ray trial id -> trial number
        self.exploits: dict[int, list[dict[str, int]]] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.numbers:
            return  # going on after a pause or an exploit
        number = int(trial.config["member"]["number"])
        self.numbers[trial.trial_id] = number
        self.ledger.started.setdefault(number, time.time())
        policy = search_trial_policy(self.ledger.space, self.ledger.tasks,
                                     trial.config["member"]["values"])
        record = TrialRecord(number=number, state="running", role="search",
                             policy=policy.to_dict(), started_at=time.time())
        self.ledger.write(record, ray_trial_id=trial.trial_id, run=self.run_name,
                          scheduler=SCHEDULER)
        self.emit(TrialStarted(trial=number, role="search", policy=policy.summary(),
                               finished=self.ledger.finished(), target=self.ledger.target,
                               task=None))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        number = self.numbers.get(trial.trial_id)
        if number is None or not result.get("metrics"):
            return
        record = self.ledger.records[number]
        record.metrics = result["metrics"]
        record.policy = json.loads(result["policy"])
        record.epochs = int(result[TIME_ATTR])
        record.final_weights = result.get("final_weights")
        record.data_wait = result.get("data_wait")
        record.loader_workers = result.get("loader_workers")
        record.duration_s = result.get("duration_s")
        record.device = result.get("device", record.device)
        if "exploited_from" in result:
            donor = self.numbers.get(str(result["exploited_from"]), -1)
            step = {"epoch": int(result["exploited_at"]), "from_trial": donor}
            self.exploits.setdefault(number, []).append(step)
            self.emit(TrialExploited(trial=number, from_trial=donor, epoch=step["epoch"],
                                     policy=Policy.from_dict(record.policy).summary()))
        self.ledger.write(record, exploits=self.exploits.get(number, []))
        self.emit(EpochEnded(trial=number, epoch=int(result[TIME_ATTR]) - 1,
                             metrics=result["metrics"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A member stopped before the end of the budget was stopped by --timeout.
        self._end(trial, trial_outcome(trial.last_result or None, self.epochs, "--timeout"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        self._end(trial, TrialOutcome("failed", error=error_line(trial), kind=UNEXPECTED,
                                      epochs=last.get(TIME_ATTR)))

    def _end(self, trial: Any, outcome: TrialOutcome) -> None:
        number = self.numbers.get(trial.trial_id)
        if number is None:
            return
        ledger = self.ledger
        last = ledger.records[number]  # its lineage's policy, as of its last epoch
        record = outcome.record(number, role="search", policy=last.policy,
                                started_at=last.started_at, device=last.device,
                                duration_s=outcome.seconds or last.duration_s)
        if outcome.state != "complete":  # what it trained so far
            record.metrics, record.epochs = last.metrics, last.epochs
            record.final_weights = last.final_weights
            record.data_wait, record.loader_workers = last.data_wait, last.loader_workers
        ledger.write(record, exploits=self.exploits.get(number, []))
        ledger.end(outcome)
        self.emit(outcome.end_event(number, "search"))
        if self.on_trial_end is not None:
            self.on_trial_end(ledger.study())

    def interrupted(self, why: str) -> None:
        """Mark the members still in flight failed (Ctrl-C, or the driver's own error)."""
        for number in self.numbers.values():
            record = self.ledger.records.get(number)
            if record is not None and record.state == "running":
                record.state, record.error = "failed", why
                self.ledger.write(record)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Detached, ())


def optimize_pbt(run: SearchRun) -> StudyRecords:
    """Run (or continue) a PBT search until ``--trials`` trials are finished (the reference
    runs included). Returns every trial's record; a member's policy carries the schedule its
    lineage trained under (see the module docstring)."""
    space, options, tasks = run.space, run.options, dict(run.tasks)
    check_trials(options.trials, len(tasks) if space.single_task_reference else 1)
    options.ray_resources()  # a bad request is refused before anything is written
    if options.ray_address is not None:
        check_reachable(options.ray_address)  # before anything is written
    ledger = open_ledger(run)
    if ledger.finished() >= options.trials:
        return ledger.study()
    # PBT ranks members by Δm%, even for a pareto space.
    scoring = replace(Scoring.of(space, tasks, run.metrics_info), pareto=False)
    started = time.monotonic()
    with ray_connected(options) as resources:
        setup = TrialSetup(budget=space.budget, seed=options.seed, device=options.device,
                           threads=max(1, int(resources["cpu"])), scoring=scoring)
        _fit_references(run, ledger, setup, resources)
        reference = ledger.study().reference_metrics()
        if reference is None:
            raise UserError("the reference run did not complete; see its record",
                            source=str(ledger.experiment), field="reference")
        timeout = None
        if options.timeout:
            timeout = options.timeout - (time.monotonic() - started)
            if timeout <= 0:
                run.emit(TimedOut(finished=ledger.finished(), target=ledger.target))
                return ledger.study()
        _fit_population(run, ledger, setup, reference, resources, timeout)
    return ledger.study()


def _fit_references(run: SearchRun, ledger: Ledger, setup: TrialSetup,
                    resources: dict[str, float]) -> None:
    """The missing reference runs, as the Ray engine runs them (its trainable and records)."""
    dataset, options, experiment = run.dataset, run.options, ledger.experiment
    configs: list[dict[str, Any]] = []
    for key in ledger.missing_references(running=False):
        number = max([*ledger.records, *(c["number"] for c in configs)], default=-1) + 1
        policy = reference_run_policy(ledger.space, ledger.tasks, key)
        configs.append({"number": number, "role": "reference", "reference_task": key,
                        "policy": policy.to_dict(), "reference": None})
    if not configs:
        return
    run_name = next_run_name(experiment)
    callback = RecordsCallback(ledger, run_name=run_name, emit=run.emit,
                               on_trial_end=run.on_trial_end)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_ray_trial, dataset=dataset, setup=setup),
                            resources),
        tune_config=tune.TuneConfig(
            search_alg=_References(configs), num_samples=len(configs),
            max_concurrent_trials=options.workers, reuse_actors=True,
            trial_name_creator=lambda t: f"trial-{t.config['number']:05d}",
            trial_dirname_creator=lambda t: f"trial-{t.config['number']:05d}"),
        run_config=tune.RunConfig(name=run_name, storage_path=str(experiment), verbose=0,
                                  callbacks=[callback]),
    )
    fit(tuner, callback)


def _fit_population(run: SearchRun, ledger: Ledger, setup: TrialSetup, reference: Metrics,
                    resources: dict[str, float], timeout: float | None) -> None:
    """One PBT run of a new population."""
    dataset, options, experiment = run.dataset, run.options, ledger.experiment
    space = ledger.space
    epochs = space.budget.epochs
    interval = perturbation_interval(epochs)
    size = population_size(ledger.target, ledger.finished())
    first = max(ledger.records, default=-1) + 1
    members = [{"number": first + i, "values": values}
               for i, values in enumerate(initial_values(space, list(ledger.tasks), size,
                                                         options.seed + first))]
    mutated = mutated_parameters(space, list(ledger.tasks))
    # Every random choice of PBT (which member to copy, resample or perturb, by how much)
    # comes from this generator: resampling through callables that use it (tune's domains
    # would draw from NumPy's global state), the rest through PBT's module-level ``random``,
    # which is this generator while the population trains.
    rng = random.Random(options.seed * 1_000_003 + first)
    mutations: dict[str, Any] = {}
    for p in mutated:
        if p.kind == "categorical":
            mutations[p.name] = list(p.choices)
        elif p.kind == "int":
            mutations[p.name] = (lambda lo=int(p.low), hi=int(p.high): rng.randint(lo, hi))
        else:
            mutations[p.name] = (lambda lo=p.low, hi=p.high: rng.uniform(lo, hi))
    scheduler = PopulationBasedTraining(
        time_attr=TIME_ATTR, metric=METRIC, mode="max", perturbation_interval=interval,
        hyperparam_mutations={"member": {"values": mutations}}, quantile_fraction=QUANTILE,
        resample_probability=RESAMPLE_PROBABILITY, perturbation_factors=PERTURBATION_FACTORS,
        custom_explore_fn=_Clip(mutated), synch=True, log_config=False)
    run_name = next_run_name(experiment)
    callback = MembersCallback(ledger, run_name=run_name, emit=run.emit, epochs=epochs,
                               on_trial_end=run.on_trial_end)
    trainable = tune.with_resources(
        tune.with_parameters(run_member, dataset=dataset, space=space, setup=setup,
                             reference=reference, interval=interval), resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"member": tune.grid_search(members)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, max_concurrent_trials=options.workers, reuse_actors=True,
            time_budget_s=timeout,
            trial_name_creator=lambda t: f"trial-{t.config['member']['number']:05d}",
            trial_dirname_creator=lambda t: f"trial-{t.config['member']['number']:05d}"),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(experiment), verbose=0,
            stop={TIME_ATTR: epochs},  # no exploit after the last epoch
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[callback]),
    )
    pbt_module: Any = sys.modules[PopulationBasedTraining.__module__]
    saved_random, pbt_module.random = pbt_module.random, rng
    try:
        fit(tuner, callback)
    finally:
        pbt_module.random = saved_random
    if timeout is not None and ledger.finished() < ledger.target:
        run.emit(TimedOut(finished=ledger.finished(), target=ledger.target))
