"""Results table: Δm% against the reference trial, ranking, per-task metrics, CSV/Markdown/JSON.

Engine-neutral: engines turn their trials into ``TrialRecord``s; everything here works on those.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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

    def reference(self) -> TrialRecord | None:
        """The (first) complete multi-task reference trial."""
        done = [r for r in self.records if r.role == "reference" and r.state == "complete"
                and r.reference_task is None]
        return done[0] if done else None

    def reference_metrics(self) -> Metrics | None:
        """What Δm% is measured against: the reference trial's metrics, or with a single-task
        reference each task's metrics from its own run (None until every task has one)."""
        if not self.single_task_reference:
            ref = self.reference()
            return ref.metrics if ref is not None else None
        return combine_single_task(self.records, self.metrics_info)

    def reference_label(self) -> str:
        """How the reference is described in reports."""
        if self.single_task_reference:
            return f"single-task runs of {self.reference_name}, one network per task"
        return f"the reference trial ({self.reference_name})"


def combine_single_task(records: Sequence[TrialRecord], info: MetricsInfo) -> Metrics | None:
    """The metrics of each task from its complete single-task reference run, or None while a
    task has none."""
    found: Metrics = {}
    for rec in records:
        if (rec.role == "reference" and rec.state == "complete" and rec.reference_task
                and rec.metrics and rec.reference_task not in found):
            found[rec.reference_task] = rec.metrics[rec.reference_task]
    return found if set(info) <= set(found) else None


def delta_m(metrics: Metrics, reference: Metrics, info: MetricsInfo,
            weights: Mapping[str, float] | None = None) -> tuple[float, list[str]]:
    """Δm% (Maninis et al. 2019, LibMTL's convention) and the warnings it raised.

    Per task: mean over its primary metrics of ±(M − M_ref)/|M_ref| × 100 (+ when higher is
    better); then the (optionally weighted) mean over tasks. Reference metrics with
    |M_ref| < REFERENCE_EPS are left out with a warning, never divided by.
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


def results_frame(study: StudyRecords, *, warn: bool = True,
                  task_weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per trial: rank, Δm%, per-task metrics, loss weights, policy, state, duration.

    Δm% weighs the tasks by ``task_weights`` (default: the study's, else 1 each).
    """
    ref = study.reference_metrics()
    task_weights = dict(study.task_weights if task_weights is None else task_weights)
    rows = []
    seen_notes: set[str] = set()
    for rec in study.records:
        row: dict[str, Any] = {"trial": rec.number, "state": rec.state,
                               "role": rec.role, "delta_m": math.nan}
        if rec.metrics and ref is not None and rec.reference_task is None:
            value, notes = delta_m(rec.metrics, ref, study.metrics_info, task_weights)
            row["delta_m"] = value
            seen_notes.update(notes)
        for task, task_info in study.metrics_info.items():
            for metric in task_info:
                value = (rec.metrics or {}).get(task, {}).get(metric, math.nan)
                row[f"{task}.{metric}"] = value
        loss_weights = ((rec.policy or {}).get("weighting") or {}).get("weights") or {}
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
    frame["_order"] = 2
    frame.loc[frame["state"].eq("pruned"), "_order"] = 1
    frame.loc[complete, "_order"] = 0
    frame = frame.sort_values(["_order", "delta_m", "trial"], ascending=[True, False, True],
                              na_position="last", kind="mergesort").drop(columns="_order")
    ranks = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    ranks[complete.loc[frame.index]] = range(1, int(complete.sum()) + 1)
    frame.insert(0, "rank", ranks)
    frame.attrs["notes"] = sorted(seen_notes)
    frame.attrs["reference"] = study.reference_label()
    frame.attrs["task_weights"] = {t: w for t, w in task_weights.items() if w != 1.0}
    frame.attrs["dataset"] = study.dataset
    frame.attrs["dataset_notes"] = list(study.dataset_notes)
    return frame.reset_index(drop=True)


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
    lines += [f"\n> dataset {frame.attrs.get('dataset', '')}: {n}"
              for n in frame.attrs.get("dataset_notes") or []]
    lines += [f"\n> warning: {n}" for n in notes]
    return "\n".join(lines)


def to_json(frame: pd.DataFrame, top: int | None = None) -> str:
    shown = frame.head(top) if top else frame
    return shown.to_json(orient="records", indent=2)


def to_csv(frame: pd.DataFrame, top: int | None = None) -> str:
    return (frame.head(top) if top else frame).to_csv(index=False)


def compact_columns(frame: pd.DataFrame, info: MetricsInfo) -> list[str]:
    """Columns for a terminal: rank, trial, state, Δm%, primary metrics, policy."""
    cols = ["rank", "trial", "state", "delta_m"]
    for task, task_info in info.items():
        cols += [f"{task}.{m}" for m, meta in task_info.items() if meta.get("primary")]
    cols += ["policy", "duration_s"]
    return [c for c in cols if c in frame.columns]


def metrics_info_from_tasks(tasks: Sequence[Any]) -> MetricsInfo:
    """Direction and primary flag of every metric of the given Task objects."""
    return {t.name: {m.name: {"higher": m.higher_is_better, "primary": m.primary}
                     for m in t.metrics} for t in tasks}
