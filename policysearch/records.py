"""The records every engine writes and every reader works on: one trial (``TrialRecord``), a
whole study (``StudyRecords``), what it cost (``SearchCost``), and Δm%, the combined task metric
every ranking is built on (``delta_m``, ``task_deltas``).

Engine-neutral: engines turn their trials into ``TrialRecord``s; the results table
(``policysearch.reporting.tables``), the report and the exports work on those.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from policysearch.errors import UserError

Metrics = dict[str, dict[str, float]]
# {task: {metric: {"higher": bool, "primary": bool}}}
MetricsInfo = dict[str, dict[str, dict[str, bool]]]

# A reference metric whose magnitude is below this is not divided by (Δm% would explode).
REFERENCE_EPS = 1e-6
RERUN_PREFIX = "rerun:"


class ReferenceWarning(UserWarning):
    """A reference metric too close to zero was left out of Δm%."""


@dataclass
class TrialRecord:
    """One trial as every engine reports it."""

    number: int
    state: str  # complete | pruned | failed | running
    role: str = "search"  # search | reference
    metrics: Metrics | None = None
    policy: dict[str, Any] | None = None
    duration_s: float | None = None
    epochs: int | None = None
    error: str | None = None
    reference_task: str | None = None  # the task of a single-task reference run
    final_weights: dict[str, float] | None = None  # loss weights at the end of training
    started_at: float | None = None  # POSIX time the trial started (for the study's wall time)
    device: str | None = None  # where it trained: cpu, cuda, cuda:1 …
    # The searched parameter values the policy was built from (search.space names); None for
    # references and for runs of engines that keep none (PBT members change theirs).
    params: dict[str, Any] | None = None
    # Per trained epoch: the share of the epoch's wall time the training step waited for its
    # next batch, in [0, 1]; None when unknown (pruned or failed trials, older studies).
    data_wait: list[float] | None = None
    loader_workers: int | None = None  # DataLoader worker processes that prepared the batches

    def mean_data_wait(self) -> float | None:
        """The mean of ``data_wait`` over the trial's epochs (a fraction), or None."""
        return sum(self.data_wait) / len(self.data_wait) if self.data_wait else None


@dataclass(frozen=True)
class SearchCost:
    """What a study's trials spent: every trained epoch (the reference's, pruned and failed
    trials' included), the trials' own run time, the wall time during which at least one
    trial ran (the union of the trials' intervals: idle time between resumed sessions is not
    counted) and device-seconds by device kind (each trial holds one device; trials sharing
    a GPU each count their own time). ``full_trainings``: trial-epochs over one full
    training's epochs, the unit that compares search methods."""

    trials: int
    trial_epochs: int
    trial_seconds: float
    full_trainings: float | None
    wall_seconds: float | None = None
    device_seconds: dict[str, float] = field(default_factory=dict)
    # Runs trained beside the study (finalists, ``results --reeval``/``--reference``), which
    # are not trials: counted apart from the trials' numbers above.
    rerun_runs: int = 0
    rerun_epochs: int = 0
    rerun_seconds: float = 0.0

    def line(self, budget_epochs: int | None) -> str:
        units = (f" = {self.full_trainings:.1f} full trainings of {budget_epochs} epochs"
                 if self.full_trainings is not None else "")
        wall = (f", {self.wall_seconds / 60:.1f} min wall time"
                if self.wall_seconds is not None else "")
        devices = "".join(f", {s / 3600:.2f} {d}-hours" for d, s in self.device_seconds.items())
        return (f"search cost: {self.trial_epochs} trial-epochs over {self.trials} trials"
                f"{units}; {self.trial_seconds / 60:.1f} min of trial time{wall}{devices}"
                f"{self.rerun_text(budget_epochs)}")

    def rerun_text(self, budget_epochs: int | None) -> str:
        """``; plus 96 trial-epochs in 8 re-runs beside the study (finalists, re-evaluation)
        = 4.0 full trainings, 3.1 min``; empty without re-runs."""
        if not self.rerun_runs:
            return ""
        units = (f" = {self.rerun_epochs / budget_epochs:.1f} full trainings"
                 if budget_epochs else "")
        return (f"; plus {self.rerun_epochs} trial-epochs in {self.rerun_runs} re-runs beside "
                f"the study (finalists, re-evaluation){units}, {self.rerun_seconds / 60:.1f} min")

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "trial_epochs": self.trial_epochs,
                "trial_seconds": round(self.trial_seconds, 3),
                "full_trainings": self.full_trainings,
                "wall_seconds": None if self.wall_seconds is None else round(self.wall_seconds, 3),
                "device_seconds": {d: round(s, 3) for d, s in self.device_seconds.items()},
                "rerun_runs": self.rerun_runs, "rerun_epochs": self.rerun_epochs,
                "rerun_seconds": round(self.rerun_seconds, 3)}


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def search_cost(study: StudyRecords) -> SearchCost:
    """The compute a study's trials spent, and apart from it what the runs trained beside the
    study spent (finalists, re-evaluations)."""
    trained = [r for r in study.records if r.epochs]
    epochs = sum(int(r.epochs or 0) for r in trained)
    seconds = sum(float(r.duration_s or 0.0) for r in trained)
    full = epochs / study.budget_epochs if study.budget_epochs else None
    timed = [r for r in study.records if r.started_at is not None and r.duration_s is not None]
    wall = (_union_seconds([(r.started_at, r.started_at + r.duration_s) for r in timed])
            if timed else None)
    devices: dict[str, float] = {}
    for r in trained:
        if r.device:
            kind = r.device.split(":")[0]
            devices[kind] = devices.get(kind, 0.0) + float(r.duration_s or 0.0)
    spent = [run for runs in study.rerun_spent.values() for run in runs.values()]
    return SearchCost(trials=len(trained), trial_epochs=epochs, trial_seconds=seconds,
                      full_trainings=full, wall_seconds=wall, device_seconds=devices,
                      rerun_runs=len(spent), rerun_epochs=sum(e for e, _ in spent),
                      rerun_seconds=sum(s for _, s in spent))


def stored_data_wait(fractions: Sequence[float]) -> list[float] | None:
    """Per-epoch data-wait fractions as records keep them (4 decimals); None for none."""
    return [round(float(w), 4) for w in fractions] or None


def trial_subject(number: int) -> str:
    """The key under which re-runs of trial ``number`` are stored."""
    return f"trial:{number}"


def rerun_entry(subject: str, seed: int, result: Any) -> tuple[str, dict[str, Any]]:
    """The key and content under which one run trained beside a study is stored (an Optuna
    study user attribute ``rerun:<subject>:<seed>``, a Ray experiment's re-run file);
    ``result``: the run's ``training.TrialResult``."""
    weights = {t: float(w) for t, w in (result.weights or {}).items()}
    return f"{RERUN_PREFIX}{subject}:{seed}", {
        "metrics": result.metrics, "epochs": result.epochs,
        "seconds": round(result.seconds, 3), "final_weights": weights or None,
        "data_wait": stored_data_wait(result.data_wait), "loader_workers": result.loader_workers}


def _stored_runs(stored: Mapping[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(subject, seed, content)`` of every run in ``{key: content}`` of ``rerun_entry``
    (other keys ignored)."""
    for key, value in stored.items():
        if not key.startswith(RERUN_PREFIX) or not isinstance(value, dict):
            continue
        subject, _, seed = key.removeprefix(RERUN_PREFIX).rpartition(":")
        if subject and seed.lstrip("-").isdigit() and value.get("metrics"):
            yield subject, int(seed), value


def stored_reruns(stored: Mapping[str, Any]) -> dict[str, dict[int, Metrics]]:
    """``{subject: {seed: metrics}}`` from ``{key: content}`` of ``rerun_entry`` (other keys
    ignored)."""
    runs: dict[str, dict[int, Metrics]] = {}
    for subject, seed, value in _stored_runs(stored):
        runs.setdefault(subject, {})[seed] = value["metrics"]
    return runs


def stored_rerun_spent(stored: Mapping[str, Any]) -> dict[str, dict[int, tuple[int, float]]]:
    """``{subject: {seed: (epochs, seconds)}}``: what each run of ``stored_reruns`` trained."""
    spent: dict[str, dict[int, tuple[int, float]]] = {}
    for subject, seed, value in _stored_runs(stored):
        spent.setdefault(subject, {})[seed] = (int(value.get("epochs") or 0),
                                               float(value.get("seconds") or 0.0))
    return spent


def reference_subject(baseline: str | None, task: str | None = None) -> str:
    """The key of re-runs of a reference: the study's own (``baseline`` None) or another
    baseline; ``task`` for one network of a single-task reference."""
    prefix = "reference" if baseline is None else f"baseline:{baseline}"
    return prefix if task is None else f"{prefix}:{task}"


@dataclass
class StudyRecords:
    """A study's trials plus what is needed to score them."""

    name: str
    metrics_info: MetricsInfo
    records: list[TrialRecord] = field(default_factory=list)
    reference_name: str = "flipcrop"
    dataset: str = ""
    dataset_notes: list[str] = field(default_factory=list)
    image_size: int | list[int] | None = None
    single_task_reference: bool = False
    task_weights: dict[str, float] = field(default_factory=dict)
    objective: str = "delta_m"  # delta_m | pareto (one objective per task)
    seed: int = 0  # the study's training seed: the seed of every trial's own metrics
    # Runs trained beside the study (not trials): {subject: {seed: metrics}}; subjects are
    # trial_subject(n) and reference_subject(...).
    reruns: dict[str, dict[int, Metrics]] = field(default_factory=dict)
    # What each of those runs trained: {subject: {seed: (epochs, seconds)}} (for the cost).
    rerun_spent: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)
    # Rank against this baseline (trained beside the study) instead of the study's reference.
    reference_baseline: str | None = None
    budget_epochs: int | None = None  # epochs of one full training under the study's budget
    space: dict[str, Any] = field(default_factory=dict)  # the stored search space (canonical)
    tasks: dict[str, str] = field(default_factory=dict)  # name -> kind
    # The training subset the trials trained on ({n, seed, of, stratified_by}; the space's
    # ``subset``, policysearch.data.subset); None: the whole training split.
    subset: dict[str, Any] | None = None

    @classmethod
    def from_stored(cls, name: str, info: Mapping[str, Any], records: Sequence[TrialRecord],
                    stored_runs: Mapping[str, Any] | None = None) -> StudyRecords:
        """A study from what its engine stored about it (``info``: the Optuna study's user
        attributes, or a Ray experiment's ``policysearch.json``), its trials and the runs
        trained beside it (``{key: content}`` of ``rerun_entry``; other keys ignored)."""
        if "metrics_info" not in info:
            raise UserError("not a policysearch study (no metrics recorded)",
                            field=f"study {name}")
        definition = info.get("definition") or {}
        space = definition.get("space") or {}
        budget = space.get("budget", {})
        return cls(
            name=name,
            metrics_info=info["metrics_info"],
            records=sorted(records, key=lambda r: r.number),
            reference_name=info.get("reference", "flipcrop"),
            dataset=info.get("dataset", ""),
            dataset_notes=list(info.get("dataset_notes", [])),
            image_size=budget.get("image_size"),
            budget_epochs=budget.get("epochs"),
            space=dict(space),
            single_task_reference=bool(space.get("single_task_reference", False)),
            task_weights=dict(space.get("task_weights") or {}),
            objective=space.get("objective", "delta_m"),
            seed=int(definition.get("seed", 0)),
            reruns=stored_reruns(stored_runs or {}),
            rerun_spent=stored_rerun_spent(stored_runs or {}),
            tasks=dict(info.get("tasks") or {}),
            subset=_stored_subset(info.get("subset"), space.get("subset")),
        )

    def with_reference(self, baseline: str | None) -> StudyRecords:
        """A copy ranked against ``baseline`` (None or the study's own: its reference trial)."""
        own = baseline is None or baseline == self.reference_name
        return replace(self, reference_baseline=None if own else baseline)

    def reference_subjects(self) -> list[tuple[str, str | None]]:
        """The re-run subjects that make up the reference, with the task of each
        single-task network (None for one multi-task network)."""
        if self.single_task_reference:
            return [(reference_subject(self.reference_baseline, t), t) for t in self.metrics_info]
        return [(reference_subject(self.reference_baseline), None)]

    def reference(self) -> TrialRecord | None:
        """The (first) complete multi-task reference trial."""
        done = [r for r in self.records if r.role == "reference" and r.state == "complete"
                and r.reference_task is None]
        return done[0] if done else None

    def reference_metrics(self, seed: int | None = None) -> Metrics | None:
        """What Δm% is measured against: the reference trial's metrics, or with a single-task
        reference each task's metrics from its own run (None until every task has one).

        ``seed`` other than the study's, or another ``reference_baseline``: the reference
        trained beside the study with that seed (None while it is missing).
        """
        seed = self.seed if seed is None else seed
        if self.reference_baseline is None and seed == self.seed:
            if not self.single_task_reference:
                ref = self.reference()
                return ref.metrics if ref is not None else None
            return combine_single_task(self.records, self.metrics_info)
        found: Metrics = {}
        for subject, task in self.reference_subjects():
            metrics = self.reruns.get(subject, {}).get(seed)
            if metrics is None:
                return None
            if task is None:
                return metrics
            found[task] = metrics[task]
        return found

    def trial_metrics(self, record: TrialRecord, seed: int) -> Metrics | None:
        """A trial's metrics when trained with ``seed`` (its own run or a stored re-run)."""
        if seed == self.seed:
            return record.metrics
        return self.reruns.get(trial_subject(record.number), {}).get(seed)

    def trial_seeds(self, number: int) -> list[int]:
        """Every seed trial ``number`` was trained with (the study's and its stored re-runs'):
        the seeds its selection may have looked at, which a fair re-evaluation leaves out."""
        return sorted({self.seed, *self.reruns.get(trial_subject(number), {})})

    def rerun_seeds(self) -> list[int]:
        """Every seed, the study's included, that some stored re-run used."""
        return sorted({self.seed, *(s for runs in self.reruns.values() for s in runs)})

    def reference_label(self) -> str:
        """How the reference is described in reports."""
        name = self.reference_baseline or self.reference_name
        if self.single_task_reference:
            text = f"single-task runs of {name}, one network per task"
        elif self.reference_baseline is None:
            return f"the reference trial ({name})"
        else:
            text = f"the baseline {name}"
        if self.reference_baseline is not None:
            text += (" trained beside the study under its budget and seed (--reference), "
                     f"not the study's reference ({self.reference_name})")
        return text


def _stored_subset(stored: Any, in_space: Any) -> dict[str, Any] | None:
    """The study's subset: as stored beside the study, else (a study whose engine stored
    none) the space's ``{n, seed}``; None for the whole training split."""
    if isinstance(stored, dict):
        return dict(stored)
    if isinstance(in_space, dict):
        return {"n": in_space.get("n"), "seed": in_space.get("seed", 0), "of": None,
                "stratified_by": None}
    return None


def combine_single_task(records: Sequence[TrialRecord], info: MetricsInfo) -> Metrics | None:
    """The metrics of each task from its complete single-task reference run, or None while a
    task has none."""
    found: Metrics = {}
    for rec in records:
        if (rec.role == "reference" and rec.state == "complete" and rec.reference_task
                and rec.metrics and rec.reference_task not in found):
            found[rec.reference_task] = rec.metrics[rec.reference_task]
    return found if set(info) <= set(found) else None


def task_deltas(metrics: Metrics, reference: Metrics,
                info: MetricsInfo) -> tuple[dict[str, float], list[str]]:
    """Each task's Δ% (higher is better) and the warnings it raised: the mean over the task's
    primary metrics of ±(M − M_ref)/|M_ref| × 100 (+ when higher is better).

    Reference metrics with |M_ref| < REFERENCE_EPS are left out with a warning, never divided
    by; a task with no metric left has no entry.
    """
    notes: list[str] = []
    per_task: dict[str, float] = {}
    for task, task_info in info.items():
        if task not in reference:
            raise UserError(f"task {task!r} is missing from the reference's metrics "
                            f"(it has {', '.join(sorted(reference)) or 'none'})",
                            field="reference")
        terms = []
        for metric, meta in task_info.items():
            if not meta.get("primary"):
                continue
            ref = reference[task][metric]
            if abs(ref) < REFERENCE_EPS:
                notes.append(f"{task}.{metric}: reference value {ref:g} is ~0, left out of Δm%")
                continue
            sign = 1.0 if meta["higher"] else -1.0
            terms.append(sign * (metrics[task][metric] - ref) / abs(ref) * 100.0)
        if terms:
            per_task[task] = sum(terms) / len(terms)
    return per_task, notes


def delta_m(metrics: Metrics, reference: Metrics, info: MetricsInfo,
            weights: Mapping[str, float] | None = None) -> tuple[float, list[str]]:
    """Δm% (Maninis et al. 2019, LibMTL's convention) and the warnings it raised: the
    (optionally weighted) mean over tasks of ``task_deltas``."""
    per_task, notes = task_deltas(metrics, reference, info)
    if not per_task:
        return float("nan"), notes
    w = {t: (weights or {}).get(t, 1.0) for t in per_task}
    value = sum(w[t] * v for t, v in per_task.items()) / sum(w.values())
    return value, notes


def metrics_info_from_tasks(tasks: Sequence[Any]) -> MetricsInfo:
    """Direction and primary flag of every metric of the given Task objects."""
    return {t.name: {m.name: {"higher": m.higher_is_better, "primary": m.primary}
                     for m in t.metrics} for t in tasks}
