"""Results table: Δm% against the reference trial, ranking, per-task metrics, CSV/Markdown/JSON.

Works on ``policysearch.records``. A multi-objective (``pareto``) study adds each task's Δ% and a
``pareto`` column; re-evaluated trials (trained again with other seeds, see
``policysearch.evaluation.reeval``) add the mean and std of Δm% over their seeds.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from policysearch.records import (
    Metrics,
    MetricsInfo,
    ReferenceWarning,
    StudyRecords,
    TrialRecord,
    delta_m,
    search_cost,
    task_deltas,
    trial_subject,
)


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


def fresh_seed_deltas(study: StudyRecords, rec: TrialRecord,
                      weights: Mapping[str, float] | None = None,
                      refs: Mapping[int, Metrics | None] | None = None,
                      notes: set[str] | None = None) -> dict[int, float]:
    """A trial's Δm% at every seed of its stored re-runs but the study's own (the seed the
    trials were ranked on, whose value is biased by that selection), each against the
    reference trained with the same seed; seeds whose reference is missing or whose Δm% is
    undefined are left out. ``refs``: the references by seed, when already looked up."""
    weights = study.task_weights if weights is None else weights
    values = {}
    for seed in sorted(study.reruns.get(trial_subject(rec.number), {})):
        ref = refs.get(seed) if refs is not None else study.reference_metrics(seed)
        metrics = study.trial_metrics(rec, seed)
        if seed == study.seed or metrics is None or ref is None:
            continue
        value, found = delta_m(metrics, ref, study.metrics_info, weights)
        if notes is not None:
            notes.update(found)
        if math.isfinite(value):
            values[seed] = value
    return values


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval (low, high) of ``values``; the interval is NaN for fewer
    than two values, the mean too for none."""
    from scipy import stats

    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = (float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values)
            / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def results_frame(study: StudyRecords, *, warn: bool = True,
                  task_weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per trial: rank, Δm%, per-task metrics, loss weights, policy, state, duration,
    data wait.

    Δm% weighs the tasks by ``task_weights`` (default: the study's, else 1 each). A pareto
    study adds ``delta.<task>`` (each task's Δ%) and ``pareto`` (Pareto-optimal among the
    complete search trials; the reference is not a candidate); ranks stay by Δm%. Trials with
    stored re-runs (finalists, re-evaluation) add ``delta_m_mean``, ``delta_m_std`` (sample
    std), ``delta_m_low`` and ``delta_m_high`` (95% t interval of the mean) and ``seeds``:
    over the seeds of their re-runs, the study's own left out (``fresh_seed_deltas``). The
    loss weights are a trial's final weights (what a dynamic method ended with) when it
    recorded them, else its policy's static weights.
    ``data_wait``: the mean over the trial's epochs of the share of each epoch's wall time the
    training step waited for its next batch, in % (1 decimal; NaN when not recorded: pruned or
    failed trials, older studies); ``loader_workers``: the DataLoader worker processes that
    prepared the batches.
    """
    ref = study.reference_metrics()
    task_weights = dict(study.task_weights if task_weights is None else task_weights)
    pareto = study.objective == "pareto"
    rerun_trials = {s for s in study.reruns if s.startswith("trial:")}
    refs = ({s: study.reference_metrics(s) for s in study.rerun_seeds() if s != study.seed}
            if rerun_trials else {})
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
                values = list(fresh_seed_deltas(study, rec, task_weights, refs,
                                                seen_notes).values())
            mean, low, high = mean_interval(values)
            row["delta_m_mean"] = mean
            row["delta_m_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row["delta_m_low"], row["delta_m_high"] = low, high
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
        wait = rec.mean_data_wait()
        row["data_wait"] = math.nan if wait is None else round(100.0 * wait, 1)
        row["loader_workers"] = pd.NA if rec.loader_workers is None else rec.loader_workers
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
    frame["data_wait"] = frame["data_wait"].astype(float)
    frame["loader_workers"] = frame["loader_workers"].astype("Int64")
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
    frame.attrs["data_wait"] = data_wait_line(study) or ""
    if rerun_trials:
        seeds = ", ".join(str(s) for s in refs)
        frame.attrs["reeval"] = (
            f"delta_m_mean ± delta_m_std, 95% t interval [delta_m_low, delta_m_high]: Δm% over "
            f"the re-run seeds {seeds or '(none yet)'}, each against the reference trained with "
            f"the same seed; the study's seed {study.seed}, on which the trials were ranked, "
            "is left out.")
        frame.attrs["seed_noise"] = seed_noise_line(frame)
    return frame


def best_search_trials(study: StudyRecords, top: int,
                       task_weights: Mapping[str, float] | None = None) -> list[int]:
    """The numbers of the ``top`` best complete search trials by Δm% (the reference trial
    not counted), best first: the trials re-evaluated, and a search's finalists."""
    frame = results_frame(study, warn=False, task_weights=task_weights)
    chosen = frame[frame["rank"].notna() & frame["role"].eq("search")].head(top)
    return [int(n) for n in chosen["trial"]]


def data_wait_stats(study: StudyRecords) -> tuple[float, list[int], int] | None:
    """Over the complete trials that measured it: the mean of each trial's mean data-wait
    fraction in %, the loader worker counts they ran with, and how many trials; None when no
    complete trial measured it (older studies)."""
    measured = [r for r in study.records if r.state == "complete" and r.data_wait]
    if not measured:
        return None
    mean = statistics.mean(r.mean_data_wait() or 0.0 for r in measured)
    workers = sorted({r.loader_workers for r in measured if r.loader_workers is not None})
    return 100.0 * mean, workers, len(measured)


def loader_workers_text(workers: Sequence[int]) -> str:
    """``0 loader workers``, ``1 loader worker``, ``0 or 3 loader workers``."""
    return f"{' or '.join(map(str, workers))} loader worker{'' if list(workers) == [1] else 's'}"


def data_wait_line(study: StudyRecords) -> str | None:
    """``data wait: mean 23.4% of each epoch's wall time (0 loader workers), over 5 complete
    trials`` (``data_wait_stats``); None when no complete trial measured it."""
    stats = data_wait_stats(study)
    if stats is None:
        return None
    percent, workers, trials = stats
    loaders = f" ({loader_workers_text(workers)})" if workers else ""
    return (f"data wait: mean {percent:.1f}% of each epoch's wall time{loaders}, over "
            f"{trials} complete trial{'' if trials == 1 else 's'}")


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
        return ("seed noise: no trial has two re-run seeds yet (the study's own seed is left "
                "out); re-evaluate with --seeds 2 or more")

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
    for key in ("search_cost", "data_wait", "reeval", "seed_noise"):
        if frame.attrs.get(key):
            lines.append(frame.attrs[key])
    return lines


def to_json(frame: pd.DataFrame, top: int | None = None) -> str:
    shown = frame.head(top) if top else frame
    return shown.to_json(orient="records", indent=2)


def to_csv(frame: pd.DataFrame, top: int | None = None) -> str:
    return (frame.head(top) if top else frame).to_csv(index=False)


def compact_columns(frame: pd.DataFrame, info: MetricsInfo) -> list[str]:
    """Columns for a terminal: rank, trial, state, Δm% (and its mean over re-run seeds with
    the 95% interval), the Pareto mark and per-task Δ%, primary metrics, policy, duration,
    data wait (%)."""
    cols = ["rank", "trial", "state", "delta_m", "delta_m_mean", "delta_m_low", "delta_m_high",
            "seeds",
            "pareto", *(f"delta.{task}" for task in info)]
    for task, task_info in info.items():
        cols += [f"{task}.{m}" for m, meta in task_info.items() if meta.get("primary")]
    cols += ["policy", "duration_s", "data_wait"]
    return [c for c in cols if c in frame.columns]


