"""Re-evaluation beside a study: the best trials and the reference trained again with other
seeds, and other baselines trained as the reference.

Runs use the study's stored definition (its space: dataset, budget; its seed) and are stored
beside the study by its store (``policysearch.search.stores``: an Optuna study's user
attributes, a Ray experiment's ``reruns/`` folder), never as trials: trial counts and the
study's definition stay as they were. A run already stored is reused, so running the same
command again trains only what is missing. Each seed's Δm% is measured against the reference
trained with that same seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from policysearch.augment import Policy, is_baseline
from policysearch.config import SearchSpace
from policysearch.errors import UserError
from policysearch.records import StudyRecords, delta_m, trial_subject
from policysearch.reporting.tables import best_search_trials

if TYPE_CHECKING:
    from policysearch.data.base import MultiTaskDataset
    from policysearch.search.stores import StudyStore

Say = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """One run to have stored: ``subject`` (see policysearch.records) trained with ``seed``."""

    subject: str
    seed: int
    policy: Policy
    label: str
    trial: int | None = None  # the trial re-run, for its Δm% in the progress line


def study_space(records: StudyRecords) -> SearchSpace:
    """The study's search space, rebuilt from its stored canonical form."""
    return stored_space(records.space, f"study {records.name}")


def stored_space(data: Mapping | None, where: str) -> SearchSpace:
    """A search space from its stored canonical form (``StudyRecords.space``); ``where``
    names the study in the error."""
    try:
        if not data:
            raise KeyError("space")
        return SearchSpace.model_validate(dict(data))
    except (KeyError, TypeError) as err:
        problem = f"no stored space ({err})"
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        problem = f"{loc}: {first['msg']}"
    raise UserError(f"cannot rebuild the study's search space from its stored definition: "
                    f"{problem}", field=where)


def _policy(data: Mapping | None, what: str, study: StudyRecords) -> Policy:
    if not data:
        raise UserError(f"{what} stored no policy: it cannot be trained again",
                        field=f"study {study.name}")
    try:
        return Policy.from_dict(dict(data), source=f"study {study.name}")
    except UserError as err:
        raise UserError(f"the policy of {what} cannot be rebuilt: {err.message}",
                        field=f"study {study.name}") from None


def reference_runs(records: StudyRecords, seeds: list[int],
                   tasks: Mapping[str, str]) -> list[Run]:
    """The runs that make up the reference at each seed (one per task when single-task)."""
    from policysearch.search.lifecycle import reference_policy

    name = records.reference_baseline or records.reference_name
    runs = []
    for subject, task in records.reference_subjects():
        label = f"reference {name}" + (f" (single task {task})" if task else "")
        if records.reference_baseline is None:  # the study's own: its reference trial's policy
            trial = next((r for r in records.records if r.role == "reference"
                          and r.state == "complete" and r.reference_task == task), None)
            if trial is None:
                raise UserError("the study has no complete reference trial yet",
                                field=f"study {records.name}")
            policy = _policy(trial.policy, f"reference trial {trial.number}", records)
        else:
            policy = reference_policy(name, {task: tasks[task]} if task else tasks)
        runs += [Run(subject, seed, policy, label) for seed in seeds]
    return runs


class _Trainer:
    """Trains the runs that are not stored yet; loads the dataset only when one is missing."""

    def __init__(self, store: StudyStore, records: StudyRecords, *, device: str,
                 threads: int | None, say: Say, task_weights: Mapping[str, float] | None):
        self.store = store
        self.records = records
        self.device = device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.say = say
        self.task_weights = task_weights
        self.trained = 0
        self.reused = 0
        self._seen: set[tuple[str, int]] = set()
        self._setup: tuple[SearchSpace, MultiTaskDataset] | None = None

    def _ready(self) -> tuple[SearchSpace, MultiTaskDataset]:
        if self._setup is None:
            from policysearch.data.loading import load_dataset
            from policysearch.training import resolve_device

            resolve_device(self.device)
            space = study_space(self.records)
            self.say(f"loading dataset {space.dataset} (image size {space.budget.image_size})")
            dataset = load_dataset(space)
            names = [t.name for t in dataset.tasks]
            if set(names) != set(self.records.metrics_info):
                raise UserError(f"the dataset's tasks ({', '.join(names)}) are not the study's "
                                f"({', '.join(self.records.metrics_info)})",
                                source=space.dataset, field=f"study {self.records.name}")
            self._setup = (space, dataset)
        return self._setup

    def run(self, runs: list[Run]) -> None:
        unique = {(r.subject, r.seed): r for r in runs if (r.subject, r.seed) not in self._seen}
        self._seen.update(unique)
        missing = [r for key, r in unique.items()
                   if key[1] not in self.records.reruns.get(key[0], {})]
        self.reused += len(unique) - len(missing)
        for i, run in enumerate(missing, 1):
            self._train(run, f"re-run {i}/{len(missing)}")

    def _train(self, run: Run, counter: str) -> None:
        from policysearch.training import TrialFailed, train_policy

        space, dataset = self._ready()
        what = f"{counter}: {run.label}, seed {run.seed}"
        try:
            result = train_policy(run.policy, dataset, space.budget, seed=run.seed,
                                  device=self.device, threads=self.threads)
        except TrialFailed as err:
            self.say(f"{what}: failed: {err}")
            return
        self.store.save_rerun(run.subject, run.seed, result)
        self.records.reruns.setdefault(run.subject, {})[run.seed] = result.metrics
        self.trained += 1
        self.say(f"{what}{self._delta(run, result.metrics)} ({result.seconds:.1f} s)")

    def _delta(self, run: Run, metrics: dict) -> str:
        ref = self.records.reference_metrics(run.seed)
        if run.trial is None or ref is None:
            return ""
        value, _ = delta_m(metrics, ref, self.records.metrics_info,
                           self.task_weights or self.records.task_weights)
        return f": Δm% {value:+.2f}" if math.isfinite(value) else ": Δm% undefined"


def extra_seeds(records: StudyRecords, seeds: int) -> list[int]:
    """The seeds re-runs train with: the study's seed + 1 … + ``seeds``, never the seed its
    trials trained (and were ranked) with."""
    return list(range(records.seed + 1, records.seed + seeds + 1))


def reevaluate(*, out_dir: Path | None, storage: str | None, study_name: str | None,
               top: int | None = None, seeds: int = 2, reference: str | None = None,
               task_weights: Mapping[str, float] | None = None, device: str = "auto",
               threads: int | None = None, progress: Say | None = None) -> StudyRecords:
    """Train what ``policysearch results --reeval/--reference`` needs and return the study's
    records, ranked against ``reference`` when given.

    ``top``: re-train the ``top`` best complete search trials (by Δm%, the reference trial
    not counted) and the reference with seeds study seed + 1 … + ``seeds``. ``reference``: a
    baseline trained under the study's budget and seed (as one network per task when the
    study's reference is single-task) and at every other seed a stored re-run used, so that
    each seed's Δm% has its own reference.
    """
    from policysearch.search.stores import open_store
    from policysearch.training import resolve_device

    say = progress or (lambda line: None)
    if top is not None and top < 1:
        raise UserError("must be at least 1", field="--reeval")
    if top is not None and seeds < 1:
        raise UserError("must be at least 1", field="--seeds")
    if reference is not None and not is_baseline(reference):
        raise UserError(f"unknown baseline {reference!r}", field="--reference")
    resolve_device(device)  # a missing GPU is a user error before anything is said or trained
    store = open_store(out_dir, storage, study_name)
    records = store.records().with_reference(reference)
    tasks = records.tasks
    trainer = _Trainer(store, records, device=device, threads=threads, say=say,
                       task_weights=task_weights)
    if records.reference_baseline is not None:
        trainer.run(reference_runs(records, [records.seed], tasks))
    elif records.reference_metrics() is None:
        raise UserError("the study has no complete reference trial yet",
                        field=f"study {records.name}")
    if top is not None:
        chosen = best_search_trials(records, top, task_weights)
        if len(chosen) < top:
            say(f"only {len(chosen)} complete search trials to re-evaluate")
        by_number = {r.number: r for r in records.records}
        trial_runs = []
        for number in chosen:
            rec = by_number[number]
            policy = _policy(rec.policy, f"trial {rec.number}", records)
            trial_runs.append(Run(trial_subject(rec.number), 0, policy, f"trial {rec.number}",
                                  trial=rec.number))
        runs = []
        for seed in extra_seeds(records, seeds):
            runs += reference_runs(records, [seed], tasks)  # first: the trials' Δm% needs it
            runs += [Run(r.subject, seed, r.policy, r.label, r.trial) for r in trial_runs]
        trainer.run(runs)
    # Every seed a stored trial re-run used needs the reference trained with that seed.
    rerun_seeds = sorted({seed for subject, runs in records.reruns.items()
                          if subject.startswith("trial:") for seed in runs} - {records.seed})
    trainer.run(reference_runs(records, rerun_seeds, tasks))
    say(f"re-evaluation: trained {trainer.trained} runs, reused {trainer.reused} stored runs")
    return store.records().with_reference(reference)


__all__ = ["Run", "extra_seeds", "reevaluate", "reference_runs",
           "stored_space", "study_space"]
