"""Finalist racing at the end of a search (``--finalists K --finalist-seeds S``).

A trial's Δm% is one training run with the study's seed, and the best of many such values is
partly a lucky seed. After the trials, the K best complete search trials by validation Δm% and
the reference are trained again with S seeds no trial used, through the re-evaluation
(``policysearch.evaluation.reeval``: the runs are stored beside the study, and a resumed search
trains only the missing ones); the exported policy is then the finalist with the best mean Δm%
over those seeds (``exports.best_policy.pick_finalist``).
"""

from __future__ import annotations

from dataclasses import dataclass

from policysearch.errors import UserError
from policysearch.evaluation.reeval import extra_seeds, reevaluate
from policysearch.events import FinalistsProgress, FinalistsStarted
from policysearch.records import StudyRecords, trial_subject
from policysearch.reporting.tables import best_search_trials
from policysearch.search.options import SearchOptions, SearchRun


def check_finalists(options: SearchOptions, objective: str) -> None:
    """``--finalists`` and ``--finalist-seeds`` before anything is trained."""
    if options.finalists < 0:
        raise UserError("must be at least 0 (0: no finalists)", field="--finalists")
    if options.finalist_seeds < 1:
        raise UserError("must be at least 1", field="--finalist-seeds")
    if options.finalists and objective == "pareto":
        raise UserError("finalists are raced by Δm%, but a pareto study exports its Pareto "
                        "front; re-evaluate its trials with 'policysearch results --reeval K'",
                        field="--finalists")


@dataclass(frozen=True)
class FinalistPlan:
    """What the race trains: every finalist and every reference network at every seed."""

    trials: list[int]  # best first
    seeds: list[int]
    runs: int
    stored: int  # of ``runs``, those stored already (reused)
    epochs: int  # of one run: the study's budget

    def event(self) -> FinalistsStarted:
        return FinalistsStarted(trials=self.trials, seeds=self.seeds, runs=self.runs,
                                stored=self.stored, epochs=self.epochs)


def plan_finalists(records: StudyRecords, finalists: int, seeds: int) -> FinalistPlan:
    """The race for the ``finalists`` best search trials with ``seeds`` fresh seeds."""
    trials = best_search_trials(records, finalists)
    fresh = extra_seeds(records, seeds)
    subjects = [trial_subject(n) for n in trials] + [s for s, _ in records.reference_subjects()]
    stored = sum(seed in records.reruns.get(subject, {}) for subject in subjects
                 for seed in fresh)
    return FinalistPlan(trials=trials, seeds=fresh, runs=len(subjects) * len(fresh),
                        stored=stored, epochs=records.budget_epochs or 0)


def race_finalists(run: SearchRun, records: StudyRecords) -> StudyRecords:
    """Train the finalists of ``run``'s study (``--finalists``; nothing when 0 or when no
    search trial completed) and return the study's records with their runs."""
    options = run.options
    if not options.finalists:
        return records
    plan = plan_finalists(records, options.finalists, options.finalist_seeds)
    if not plan.trials or records.reference_metrics() is None:
        return records
    run.emit(plan.event())
    return reevaluate(out_dir=None if options.storage else run.out_dir, storage=options.storage,
                      study_name=run.study_name, top=options.finalists,
                      seeds=options.finalist_seeds, device=options.device,
                      threads=options.threads,
                      progress=lambda line: run.emit(FinalistsProgress(message=line)))
