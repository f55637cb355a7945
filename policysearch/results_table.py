"""Results table: Δm% against the reference trial, ranking, per-task metrics, CSV/Markdown/JSON.

Engine-neutral: engines turn their trials into ``TrialRecord``s; everything here works on those.
A multi-objective (``pareto``) study adds each task's Δ% and a ``pareto`` column; re-evaluated
trials (trained again with other seeds, see policysearch.reeval) add the mean and std of Δm%
over their seeds.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from policysearch.errors import UserError

Metrics = dict[str, dict[str, float]]
# {task: {metric: {"higher": bool, "primary": bool}}}
MetricsInfo = dict[str, dict[str, dict[str, bool]]]

# A reference metric whose magnitude is below this is not divided by (Δm% would explode).
REFERENCE_EPS = 1e-6


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

    def line(self, budget_epochs: int | None) -> str:
        units = (f" = {self.full_trainings:.1f} full trainings of {budget_epochs} epochs"
                 if self.full_trainings is not None else "")
        wall = (f", {self.wall_seconds / 60:.1f} min wall time"
                if self.wall_seconds is not None else "")
        devices = "".join(f", {s / 3600:.2f} {d}-hours" for d, s in self.device_seconds.items())
        return (f"search cost: {self.trial_epochs} trial-epochs over {self.trials} trials"
                f"{units}; {self.trial_seconds / 60:.1f} min of trial time{wall}{devices}")

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "trial_epochs": self.trial_epochs,
                "trial_seconds": round(self.trial_seconds, 3),
                "full_trainings": self.full_trainings,
                "wall_seconds": None if self.wall_seconds is None else round(self.wall_seconds, 3),
                "device_seconds": {d: round(s, 3) for d, s in self.device_seconds.items()}}


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def search_cost(study: StudyRecords) -> SearchCost:
    """The compute a study's trials spent (re-evaluations beside the study not included)."""
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
    return SearchCost(trials=len(trained), trial_epochs=epochs, trial_seconds=seconds,
                      full_trainings=full, wall_seconds=wall, device_seconds=devices)


def trial_subject(number: int) -> str:
    """The key under which re-runs of trial ``number`` are stored."""
    return f"trial:{number}"


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
    # Rank against this baseline (trained beside the study) instead of the study's reference.
    reference_baseline: str | None = None
    budget_epochs: int | None = None  # epochs of one full training under the study's budget
    space: dict[str, Any] = field(default_factory=dict)  # the stored search space (canonical)

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


def weights_text(weights: Mapping[str, float]) -> str:
    """``seg 2, depth 0.5`` for reports."""
    return ", ".join(f"{t} {w:g}" for t, w in weights.items())


def _reference_note(rec: TrialRecord, study: StudyRecords) -> str:
    if rec.role != "reference":
        return ""
    if rec.reference_task is not None:
        return f"reference ({study.reference_name}, single task {rec.reference_task})"
    return f"reference ({study.reference_name})"


def _summary(policy: Mapping[str, Any] | None) -> str:
    if not policy:
        return ""
    from policysearch.augment import Policy

    try:
        return Policy.from_dict(dict(policy)).summary()
    except Exception:  # a stored policy from an older schema still gets a row
        return json.dumps(policy.get("shared", []))


def pareto_optimal(points: Sequence[Sequence[float]]) -> list[bool]:
    """For each point (objectives, all maximised): whether no other point dominates it, i.e.
    is at least as good on every objective and better on one. Equal points do not dominate
    each other."""
    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return (all(x >= y for x, y in zip(a, b, strict=True))
                and any(x > y for x, y in zip(a, b, strict=True)))

    return [not any(dominates(q, p) for q in points) for p in points]


def _seed_values(study: StudyRecords, rec: TrialRecord, refs: Mapping[int, Metrics | None],
                 weights: Mapping[str, float], notes: set[str]) -> list[float]:
    """A trial's Δm% for every seed it was trained with whose reference (trained with the
    same seed) is known."""
    values = []
    for seed, ref in refs.items():
        metrics = study.trial_metrics(rec, seed)
        if metrics is None or ref is None:
            continue
        value, found = delta_m(metrics, ref, study.metrics_info, weights)
        notes.update(found)
        if math.isfinite(value):
            values.append(value)
    return values


def results_frame(study: StudyRecords, *, warn: bool = True,
                  task_weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per trial: rank, Δm%, per-task metrics, loss weights, policy, state, duration.

    Δm% weighs the tasks by ``task_weights`` (default: the study's, else 1 each). A pareto
    study adds ``delta.<task>`` (each task's Δ%) and ``pareto`` (Pareto-optimal among the
    complete search trials; the reference is not a candidate); ranks stay by Δm%. Trials with
    stored re-runs add ``delta_m_mean``, ``delta_m_std`` (sample std) and ``seeds``: over
    every seed they were trained with, the study's included, each against the reference
    trained with the same seed. The loss weights are a trial's final weights (what a dynamic
    method ended with) when it recorded them, else its policy's static weights.
    """
    ref = study.reference_metrics()
    task_weights = dict(study.task_weights if task_weights is None else task_weights)
    pareto = study.objective == "pareto"
    rerun_trials = {s for s in study.reruns if s.startswith("trial:")}
    refs = {s: study.reference_metrics(s) for s in study.rerun_seeds()} if rerun_trials else {}
    rows = []
    seen_notes: set[str] = set()
    for rec in study.records:
        row: dict[str, Any] = {"trial": rec.number, "state": rec.state,
                               "role": rec.role, "delta_m": math.nan}
        scored = bool(rec.metrics) and ref is not None and rec.reference_task is None
        if scored:
            value, notes = delta_m(rec.metrics, ref, study.metrics_info, task_weights)
            row["delta_m"] = value
            seen_notes.update(notes)
        if rerun_trials:
            values = []
            if trial_subject(rec.number) in rerun_trials and scored and rec.state == "complete":
                values = _seed_values(study, rec, refs, task_weights, seen_notes)
            row["delta_m_mean"] = statistics.mean(values) if values else math.nan
            row["delta_m_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row["seeds"] = len(values) if values else pd.NA
        if pareto:
            deltas = task_deltas(rec.metrics, ref, study.metrics_info)[0] if scored else {}
            for task in study.metrics_info:
                row[f"delta.{task}"] = deltas.get(task, math.nan)
        for task, task_info in study.metrics_info.items():
            for metric in task_info:
                value = (rec.metrics or {}).get(task, {}).get(metric, math.nan)
                row[f"{task}.{metric}"] = value
        loss_weights = (rec.final_weights
                        or ((rec.policy or {}).get("weighting") or {}).get("weights") or {})
        for task in study.metrics_info:
            row[f"w.{task}"] = loss_weights.get(task, math.nan)
        row["policy"] = _summary(rec.policy)
        row["epochs"] = rec.epochs
        row["duration_s"] = rec.duration_s
        row["note"] = rec.error or _reference_note(rec, study)
        rows.append(row)
    if warn:
        for note in sorted(seen_notes):
            warnings.warn(note, ReferenceWarning, stacklevel=2)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["rank", "trial", "state", "delta_m"])
    complete = frame["state"].eq("complete") & frame["delta_m"].notna()
    if "seeds" in frame.columns:
        frame["seeds"] = frame["seeds"].astype("Int64")
    if pareto:
        _mark_front(frame, complete, list(study.metrics_info))
    frame["_order"] = 2
    frame.loc[frame["state"].eq("pruned"), "_order"] = 1
    frame.loc[complete, "_order"] = 0
    frame = frame.sort_values(["_order", "delta_m", "trial"], ascending=[True, False, True],
                              na_position="last", kind="mergesort").drop(columns="_order")
    ranks = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    ranks[complete.loc[frame.index]] = range(1, int(complete.sum()) + 1)
    frame.insert(0, "rank", ranks)
    frame = frame.reset_index(drop=True)
    frame.attrs["notes"] = sorted(seen_notes)
    frame.attrs["reference"] = study.reference_label()
    frame.attrs["task_weights"] = {t: w for t, w in task_weights.items() if w != 1.0}
    frame.attrs["dataset"] = study.dataset
    frame.attrs["dataset_notes"] = list(study.dataset_notes)
    frame.attrs["objective"] = study.objective
    cost = search_cost(study)
    frame.attrs["search_cost"] = cost.line(study.budget_epochs) if cost.trials else ""
    if rerun_trials:
        seeds = ", ".join(str(s) for s in refs)
        frame.attrs["reeval"] = (
            f"delta_m_mean ± delta_m_std: Δm% over seeds {seeds} (the study's seed "
            f"{study.seed} included), each against the reference trained with the same seed.")
        frame.attrs["seed_noise"] = seed_noise_line(frame)
    return frame


def _mark_front(frame: pd.DataFrame, complete: pd.Series, tasks: list[str]) -> None:
    """Add the ``pareto`` column before the per-task Δ% columns. A task whose Δ% is undefined (every
    reference metric ~0) is 0 for every candidate, so it decides nothing."""
    candidates = frame[complete & frame["role"].eq("search")]
    points = candidates[[f"delta.{t}" for t in tasks]].fillna(0.0).to_numpy().tolist()
    front = pd.Series(False, index=frame.index)
    if points:
        front[candidates.index] = pareto_optimal(points)
    frame.insert(frame.columns.get_loc(f"delta.{tasks[0]}"), "pareto", front)


def seed_noise_line(frame: pd.DataFrame) -> str:
    """Whether the best re-evaluated trial's mean Δm% beats the next one's by more than their
    combined std, √(std₁² + std₂²)."""
    done = frame[frame["rank"].notna() & frame["delta_m_std"].notna()].sort_values("rank")
    if done.empty:
        return "seed noise: no trial has been trained with more than one seed yet"

    def text(row: pd.Series) -> str:
        return (f"rank {int(row['rank'])} (trial {int(row['trial'])}) Δm% "
                f"{row['delta_m_mean']:+.2f} ± {row['delta_m_std']:.2f} over "
                f"{int(row['seeds'])} seeds")

    if len(done) == 1:
        return f"seed noise: only {text(done.iloc[0])} is re-evaluated; re-evaluate two to compare"
    first, second = done.iloc[0], done.iloc[1]
    ranks = int(first["rank"]), int(second["rank"])
    gap = first["delta_m_mean"] - second["delta_m_mean"]
    combined = math.hypot(first["delta_m_std"], second["delta_m_std"])
    if gap > combined:
        verdict = (f"the mean of rank {ranks[0]} exceeds that of rank {ranks[1]} by {gap:.2f}, "
                   f"more than their combined std {combined:.2f}")
    elif -gap > combined:
        verdict = (f"the mean of rank {ranks[1]} is higher by {-gap:.2f}, more than their "
                   f"combined std {combined:.2f}")
    else:
        verdict = (f"the difference of the means, {gap:+.2f}, is within the seed noise "
                   f"(combined std {combined:.2f})")
    return f"seed noise: {text(first)} vs {text(second)}: {verdict}."


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            out[col] = out[col].round(4)
    return out


def write_results(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write results.csv and results.md into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(frame) + "\n")
    return [csv_path, md_path]


def to_markdown(frame: pd.DataFrame, top: int | None = None) -> str:
    shown = _rounded(frame.head(top) if top else frame).drop(columns=["role"], errors="ignore")
    for col in ("policy", "note"):
        if col in shown.columns:  # a bare "|" would end the Markdown table cell
            shown[col] = shown[col].astype(str).str.replace("|", "\\|", regex=False)
    text = shown.to_markdown(index=False)
    notes = frame.attrs.get("notes") or []
    ref = frame.attrs.get("reference")
    lines = [text]
    if ref:
        lines.append(f"\nΔm% (delta_m) is measured against {ref}.")
    if frame.attrs.get("task_weights"):
        lines.append(f"\nΔm% weighs the tasks: {weights_text(frame.attrs['task_weights'])} "
                     "(others 1).")
    lines += [f"\n{line}" for line in footer_lines(frame)]
    lines += [f"\n> dataset {frame.attrs.get('dataset', '')}: {n}"
              for n in frame.attrs.get("dataset_notes") or []]
    lines += [f"\n> warning: {n}" for n in notes]
    return "\n".join(lines)


def footer_lines(frame: pd.DataFrame) -> list[str]:
    """What the table's footer says about a multi-objective study and re-evaluated trials."""
    lines = []
    if frame.attrs.get("objective") == "pareto":
        lines.append("Multi-objective study: one objective per task, its Δ% (delta.<task>, "
                     "higher is better); `pareto` marks the Pareto-optimal trials (the reference "
                     "is not a candidate); rank is by Δm%.")
    for key in ("search_cost", "reeval", "seed_noise"):
        if frame.attrs.get(key):
            lines.append(frame.attrs[key])
    return lines


def to_json(frame: pd.DataFrame, top: int | None = None) -> str:
    shown = frame.head(top) if top else frame
    return shown.to_json(orient="records", indent=2)


def to_csv(frame: pd.DataFrame, top: int | None = None) -> str:
    return (frame.head(top) if top else frame).to_csv(index=False)


def compact_columns(frame: pd.DataFrame, info: MetricsInfo) -> list[str]:
    """Columns for a terminal: rank, trial, state, Δm% (and its mean ± std over seeds), the
    Pareto mark and per-task Δ%, primary metrics, policy."""
    cols = ["rank", "trial", "state", "delta_m", "delta_m_mean", "delta_m_std", "seeds",
            "pareto", *(f"delta.{task}" for task in info)]
    for task, task_info in info.items():
        cols += [f"{task}.{m}" for m, meta in task_info.items() if meta.get("primary")]
    cols += ["policy", "duration_s"]
    return [c for c in cols if c in frame.columns]


def metrics_info_from_tasks(tasks: Sequence[Any]) -> MetricsInfo:
    """Direction and primary flag of every metric of the given Task objects."""
    return {t.name: {m.name: {"higher": m.higher_is_better, "primary": m.primary}
                     for m in t.metrics} for t in tasks}
