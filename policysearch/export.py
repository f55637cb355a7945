"""Export of a study's best policy: best_policy.yaml plus one albumentations file per task."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from policysearch.augment import Policy, load_policy
from policysearch.errors import UserError
from policysearch.results_table import StudyRecords, results_frame

__all__ = ["ExportResult", "export_policy", "albumentations_path", "load_policy", "pick_trial"]


@dataclass
class ExportResult:
    yaml_path: Path
    albumentations: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it has no file
    policy: Policy | None = None


def albumentations_path(yaml_path: Path, task: str) -> Path:
    """``X.yaml`` → ``X.<task>.albumentations.json``."""
    return yaml_path.with_name(f"{yaml_path.stem}.{task}.albumentations.json")


def pick_trial(study: StudyRecords, rank: int = 1,
               task_weights: dict[str, float] | None = None) -> tuple[Policy, dict]:
    """The policy of the trial at ``rank`` (1 = best Δm%, with ``task_weights`` if given),
    with its provenance."""
    frame = results_frame(study, warn=False, task_weights=task_weights)
    ranked = frame[frame["rank"].notna()]
    if ranked.empty:
        raise UserError("the study has no completed trial to export", field=f"study {study.name}")
    if not 1 <= rank <= len(ranked):
        raise UserError(f"rank must be between 1 and {len(ranked)}", field="--rank")
    row = ranked[ranked["rank"] == rank].iloc[0]
    record = next(r for r in study.records if r.number == int(row["trial"]))
    if record.policy is None:
        raise UserError(f"trial {record.number} stored no policy", field=f"study {study.name}")
    provenance = {
        "study": study.name,
        "trial": record.number,
        "rank": rank,
        "delta_m": round(float(row["delta_m"]), 4),
        "reference": study.reference_name,
        "dataset": study.dataset,
    }
    if study.image_size:
        provenance["image_size"] = study.image_size
    weights = study.task_weights if task_weights is None else task_weights
    if any(w != 1.0 for w in weights.values()):
        provenance["task_weights"] = dict(weights)
    policy = Policy.from_dict(dict(record.policy), source=f"study {study.name}")
    return replace(policy, provenance=provenance), provenance


def export_policy(policy: Policy, to: Path) -> ExportResult:
    """Write ``to`` (policy YAML) and, per task, ``<stem>.<task>.albumentations.json``."""
    import albumentations as A

    result = ExportResult(yaml_path=to, policy=policy)
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        policy.to_yaml(to)
        for task in policy.tasks:
            try:
                compose = policy.to_albumentations(task)
            except UserError as err:
                result.skipped[task] = err.message
                continue
            path = albumentations_path(to, task)
            A.save(compose, str(path), data_format="json")
            result.albumentations[task] = path
    except OSError as err:
        raise UserError(f"cannot write: {err.strerror}", source=str(to)) from None
    return result
