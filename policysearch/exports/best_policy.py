"""Export of a study's best policy: best_policy.yaml plus one albumentations file per task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from policysearch.augment import Policy, load_policy
from policysearch.errors import UserError
from policysearch.records import StudyRecords
from policysearch.reporting.tables import (
    best_search_trials,
    fresh_seed_deltas,
    mean_interval,
    results_frame,
)

__all__ = ["ExportResult", "export_policy", "albumentations_path", "load_policy",
           "pick_finalist", "pick_trial"]


@dataclass
class ExportResult:
    """What ``export_policy`` wrote.

    ``albumentations``: the albumentations files, keyed by task — or, for a policy with a
    schedule, by ``<task>.from<E>``, one file per task and phase (``phases`` has the same
    paths as task -> {first epoch: path}); ``skipped``: task -> why it has no file;
    ``notes``: what a reader of the export must know (e.g. how to use per-phase files).
    """

    yaml_path: Path
    albumentations: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it has no file
    policy: Policy | None = None
    phases: dict[str, dict[int, Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def albumentations_path(yaml_path: Path, task: str, from_epoch: int | None = None) -> Path:
    """``X.yaml`` → ``X.<task>.albumentations.json``; with ``from_epoch`` (a phase of a
    schedule) ``X.<task>.from<E>.albumentations.json``."""
    phase = "" if from_epoch is None else f".from{from_epoch}"
    return yaml_path.with_name(f"{yaml_path.stem}.{task}{phase}.albumentations.json")


def pick_trial(study: StudyRecords, rank: int | None = 1,
               task_weights: Mapping[str, float] | None = None, *, front: bool = False,
               priority: str | None = None) -> tuple[Policy, dict]:
    """The policy of one trial, with its provenance (which says how it was picked).

    By default the trial at ``rank`` among all complete trials (1 = best Δm%, with
    ``task_weights`` if given). ``front`` (multi-objective studies only): the Pareto-front
    member at ``rank`` by Δm%; ``priority`` (implies ``front``): the member at ``rank`` by that
    task's Δ%, ties broken by Δm%.
    """
    front = front or priority is not None
    rank = 1 if rank is None else rank
    frame = results_frame(study, warn=False, task_weights=task_weights)
    ranked = frame[frame["rank"].notna()]
    if ranked.empty:
        raise UserError("the study has no completed trial to export", field=f"study {study.name}")
    if front:
        row, picked = _front_member(study, ranked, priority, rank)
    else:
        if not 1 <= rank <= len(ranked):
            raise UserError(f"rank must be between 1 and {len(ranked)}", field="--rank")
        row, picked = ranked[ranked["rank"] == rank].iloc[0], f"rank {rank} by Δm%"
    return _picked(study, row, picked, task_weights)


def _picked(study: StudyRecords, row: pd.Series, picked: str,
            task_weights: Mapping[str, float] | None,
            extra: Mapping[str, Any] | None = None) -> tuple[Policy, dict]:
    """The policy of the trial of ``row`` (a ``results_frame`` row) with its provenance:
    ``picked`` says how it was picked, ``extra`` adds to it."""
    record = next(r for r in study.records if r.number == int(row["trial"]))
    if record.policy is None:
        raise UserError(f"trial {record.number} stored no policy", field=f"study {study.name}")
    provenance = {
        "study": study.name,
        "trial": record.number,
        "rank": int(row["rank"]),
        "picked": picked,
        "delta_m": round(float(row["delta_m"]), 4),
        "reference": study.reference_baseline or study.reference_name,
        "dataset": study.dataset,
        "selection_seeds": study.trial_seeds(record.number),  # the benchmark leaves them out
    }
    if study.objective == "pareto":
        deltas = {t: float(row[f"delta.{t}"]) for t in study.metrics_info}
        provenance["task_deltas"] = {t: round(v, 4) for t, v in deltas.items()
                                     if math.isfinite(v)}  # undefined: reference ~0
    if study.image_size:
        provenance["image_size"] = study.image_size
    if study.subset is not None:  # searched on a subset of the training split
        provenance["subset"] = dict(study.subset)
    weights = study.task_weights if task_weights is None else task_weights
    if any(w != 1.0 for w in weights.values()):
        provenance["task_weights"] = dict(weights)
    provenance.update(extra or {})
    policy = Policy.from_dict(dict(record.policy), source=f"study {study.name}")
    return replace(policy, provenance=provenance), provenance


def pick_finalist(study: StudyRecords, finalists: int,
                  task_weights: Mapping[str, float] | None = None) -> tuple[Policy, dict]:
    """Of the ``finalists`` best complete search trials by Δm% (``--finalists``), the one with
    the best mean Δm% over the seeds of its re-runs, the study's seed left out
    (``tables.fresh_seed_deltas``); ties go to the better rank. Its provenance lists every
    finalist's mean, 95% t interval and seeds. While no finalist has a re-run: rank 1, as
    ``pick_trial``."""
    frame = results_frame(study, warn=False, task_weights=task_weights).set_index("trial")
    by_number = {r.number: r for r in study.records}
    entries = []
    for number in best_search_trials(study, finalists, task_weights):
        values = fresh_seed_deltas(study, by_number[number], task_weights)
        mean, low, high = mean_interval(list(values.values()))
        entries.append({"trial": number, "rank": int(frame.loc[number, "rank"]),
                        "delta_m": _rounded(frame.loc[number, "delta_m"]),
                        "mean": _rounded(mean), "interval": [_rounded(low), _rounded(high)],
                        "seeds": list(values)})
    raced = [e for e in entries if e["seeds"]]
    if not raced:
        return pick_trial(study, 1, task_weights)
    best = max(raced, key=lambda e: (e["mean"], -e["rank"]))
    seeds = ", ".join(str(s) for s in best["seeds"])
    picked = (f"best mean Δm% of the {len(entries)} finalists (the best trials by Δm%, trained "
              f"again with seeds other than the study's), over seeds {seeds}")
    if best["mean"] is not None and best["mean"] < 0:  # Δm% is against the same seed's reference
        picked += ("; the reference scored higher than every finalist on these seeds: the "
                   "search found nothing better than the reference")
    row = frame.loc[best["trial"]].copy()
    row["trial"] = best["trial"]
    extra = {"delta_m_mean": best["mean"], "delta_m_interval": best["interval"],
             "seeds": best["seeds"], "finalists": entries}
    return _picked(study, row, picked, task_weights, extra)


def _rounded(value: float) -> float | None:
    """For provenance: 4 decimals, None for NaN (no interval from one seed)."""
    return round(float(value), 4) if math.isfinite(value) else None


def _front_member(study: StudyRecords, ranked: pd.DataFrame,
                  priority: str | None, rank: int) -> tuple[pd.Series, str]:
    """The picked row of the Pareto front and how it was picked."""
    if study.objective != "pareto":
        raise UserError(f"study {study.name} is not multi-objective (objective "
                        f"{study.objective}): it has no Pareto front; search with --objective "
                        "pareto, or pick by --rank", field="--front")
    if priority is not None and priority not in study.metrics_info:
        raise UserError(f"unknown task {priority!r}; the study has "
                        f"{', '.join(study.metrics_info)}", field="--priority")
    members = ranked[ranked["pareto"].astype(bool)]
    if members.empty:
        raise UserError("the Pareto front is empty: no complete search trial yet",
                        field=f"study {study.name}")
    if not 1 <= rank <= len(members):
        raise UserError(f"with --front, rank must be between 1 and {len(members)} (the size "
                        "of the Pareto front)", field="--rank")
    size = f"Pareto front ({len(members)} trial{'s' if len(members) > 1 else ''})"
    which = "best" if rank == 1 else f"number {rank} by"
    if priority is None:  # ranked is sorted by Δm%
        return members.iloc[rank - 1], f"{size}: {which} Δm%"
    ordered = members.sort_values([f"delta.{priority}", "delta_m", "trial"],
                                  ascending=[False, False, True], na_position="last",
                                  kind="mergesort")
    return ordered.iloc[rank - 1], f"{size}: {which} Δ% on {priority}, ties by Δm%"


def export_policy(policy: Policy, to: Path, *, write_yaml: bool = True) -> ExportResult:
    """Write ``to`` (policy YAML; not with ``write_yaml`` False) and, per task,
    ``<stem>.<task>.albumentations.json``.

    A policy with a schedule (PBT) is written with its schedule, and each task gets one file
    per phase, ``<stem>.<task>.from<E>.albumentations.json``, the policy in force from epoch
    ``E`` until the next phase: a plain albumentations file cannot switch by itself, and a
    single file would silently drop the schedule. The result's ``notes`` say so;
    ``load_policy(to).transform()`` replays the schedule (``set_epoch``).
    """
    import albumentations as A

    result = ExportResult(yaml_path=to, policy=policy)
    starts = [p.from_epoch for p in policy.schedule] or [None]
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        if write_yaml:
            policy.to_yaml(to)
        for task in policy.tasks:
            for start in starts:
                phase = policy if start is None else policy.at_epoch(start)
                try:
                    compose = phase.to_albumentations(task)
                except UserError as err:
                    result.skipped[task] = err.message
                    break
                path = albumentations_path(to, task, start)
                A.save(compose, str(path), data_format="json")
                if start is None:
                    result.albumentations[task] = path
                else:
                    result.albumentations[f"{task}.from{start}"] = path
                    result.phases.setdefault(task, {})[start] = path
            if task in result.skipped:
                for path in result.phases.pop(task, {}).values():
                    path.unlink(missing_ok=True)
                    result.albumentations = {k: v for k, v in result.albumentations.items()
                                             if v != path}
    except OSError as err:
        raise UserError(f"cannot write: {err.strerror}", source=str(to)) from None
    if policy.schedule:
        epochs = ", ".join(str(s) for s in starts)
        result.notes.append(
            f"the policy has a schedule of {len(starts)} phases (from epochs {epochs}): one "
            f"albumentations file per task and phase, {to.stem}.<task>.from<E>."
            "albumentations.json, to use from epoch E on; load_policy(...).transform() with "
            "set_epoch(epoch) replays the schedule for you")
    return result
