"""A Ray engine experiment folder, read and written without importing ray.

The Ray engines (``search/ray_engine.py``, and the PBT scheduler) keep their own records beside
Ray Tune's files, so that the results table, export and resume never depend on Ray's internal
experiment state (which a killed driver may leave behind the last finished trials):

``<experiment>/policysearch.json``
    what the Optuna engine keeps in study user attributes: ``definition`` ({"space":
    space.canonical(), "seed": seed}: a resume must match it), ``metrics_info``, ``tasks``,
    ``reference``, ``dataset``, ``dataset_notes``, ``scheduler``, ``study``; ``subset`` for a
    search on a subset of the training split.
``<experiment>/trials/trial-<number>.json``
    one file per trial (``write_trial_record``): number, role, state ("complete" | "pruned" |
    "failed" | "running"), policy (``Policy.to_dict()``), metrics, epochs, error,
    final_weights, duration_s, reference_task, started_at, device, params, data_wait (per
    epoch, the share of its wall time spent waiting for batches) and loader_workers (files
    written before these were measured lack them: None), plus Ray's trial id and the worker
    it ran on.
    Files are replaced atomically (temporary file + ``os.replace``), so a reader or a killed
    writer never sees half a record.
``<experiment>/reruns/<key>.json``
    runs trained beside the experiment (re-evaluations with other seeds, other references:
    ``policysearch.evaluation.reeval``), one file per run: its ``key``
    (``rerun:<subject>:<seed>``, as an Optuna study's user attribute), metrics, epochs,
    seconds, final_weights, data_wait, loader_workers.
``<experiment>/optuna.journal``, ``<experiment>/tune-NNN/``
    the suggestions' Optuna study (TPE's memory across resumes) and Ray Tune's own folder of
    each run of the command; neither is needed to read the results.

The experiment folder is ``--out`` itself, or ``--ray-storage``/``<study>`` with a pointer file
``ray_experiment.json`` in ``--out``; ``policysearch results/export --out DIR`` accept both.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policysearch.errors import UserError
from policysearch.records import (
    MetricsInfo,
    StudyRecords,
    TrialRecord,
    rerun_entry,
)

if TYPE_CHECKING:
    from policysearch.training import TrialResult

EXPERIMENT_FILE = "policysearch.json"
POINTER_FILE = "ray_experiment.json"
TRIALS_DIR = "trials"
RERUNS_DIR = "reruns"
EXPERIMENT_SCHEMA = "policysearch.ray_experiment/v1"
TRIAL_SCHEMA = "policysearch.ray_trial/v1"
STATES = ("complete", "pruned", "failed", "running")
FINISHED_STATES = ("complete", "pruned")
STALE_ERROR = "left running by an interrupted search"
_RECORD_FIELDS = ("number", "state", "role", "metrics", "policy", "duration_s", "epochs",
                  "error", "reference_task", "final_weights", "started_at", "device",
                  "params", "data_wait", "loader_workers")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read this file: {err}".splitlines()[0], source=str(path)) from None


# --- where things are -------------------------------------------------------------------------


def experiment_dir(out_dir: Path, ray_storage: str | None, study_name: str) -> Path:
    """The experiment folder: ``--out`` itself, or ``<--ray-storage>/<study>`` (absolute)."""
    if ray_storage:
        return (Path(ray_storage).expanduser() / study_name).resolve()
    return Path(out_dir).resolve()


def trial_path(experiment: Path, number: int) -> Path:
    """The record file of trial ``number``."""
    return experiment / TRIALS_DIR / f"trial-{number:05d}.json"


def write_pointer(out_dir: Path, experiment: Path) -> None:
    """Let ``--out`` find an experiment kept elsewhere (``--ray-storage``)."""
    if Path(out_dir).resolve() != experiment:
        write_json_atomic(Path(out_dir) / POINTER_FILE, {"experiment": str(experiment)})


def resolve_experiment(path: Path) -> Path | None:
    """The experiment folder ``path`` is or points to; None when it is neither."""
    path = Path(path)
    if (path / EXPERIMENT_FILE).is_file():
        return path
    pointer = path / POINTER_FILE
    if pointer.is_file():
        target = Path(_read_json(pointer).get("experiment", ""))
        if not (target / EXPERIMENT_FILE).is_file():
            raise UserError(f"the Ray experiment it points to is missing ({target})",
                            source=str(pointer))
        return target
    return None


def is_ray_experiment(path: Path) -> bool:
    """Whether ``path`` holds (or points to) a search run by a Ray engine."""
    path = Path(path)
    return (path / EXPERIMENT_FILE).is_file() or (path / POINTER_FILE).is_file()


# --- the experiment file ----------------------------------------------------------------------


def experiment_info(*, study: str, definition: Mapping[str, Any],
                    metrics_info: MetricsInfo, tasks: Mapping[str, str], reference: str,
                    dataset: str, dataset_notes: Sequence[str], scheduler: str
                    ) -> dict[str, Any]:
    """The content of ``policysearch.json`` for a new experiment."""
    return {
        "schema": EXPERIMENT_SCHEMA,
        "study": study,
        "definition": dict(definition),
        "metrics_info": metrics_info,
        "tasks": dict(tasks),
        "reference": reference,
        "dataset": dataset,
        "dataset_notes": list(dataset_notes),
        "scheduler": scheduler,
        "engine": "ray",
    }


def read_experiment(experiment: Path) -> dict[str, Any] | None:
    """``policysearch.json`` of ``experiment``, or None for a new one."""
    path = Path(experiment) / EXPERIMENT_FILE
    return _read_json(path) if path.is_file() else None


def write_experiment(experiment: Path, info: Mapping[str, Any]) -> None:
    write_json_atomic(Path(experiment) / EXPERIMENT_FILE, dict(info))


# --- trial records ----------------------------------------------------------------------------


def write_trial_record(experiment: Path, record: TrialRecord, **extra: Any) -> Path:
    """Write (or replace) one trial's record; ``extra``: engine details such as
    ``ray_trial_id``, ``worker`` or ``retries`` (kept in the file, not in TrialRecord)."""
    if record.state not in STATES:
        raise ValueError(f"unknown trial state {record.state!r}")
    data = {"schema": TRIAL_SCHEMA, **{f: getattr(record, f) for f in _RECORD_FIELDS},
            "written_at": time.time(), **extra}
    path = trial_path(Path(experiment), record.number)
    write_json_atomic(path, data)
    return path


def record_from_dict(data: Mapping[str, Any]) -> TrialRecord:
    """A ``TrialRecord`` from a record file's content (engine extras dropped)."""
    return TrialRecord(**{f: data.get(f) for f in _RECORD_FIELDS if f in data})


def read_trial_files(experiment: Path) -> list[dict[str, Any]]:
    """Every trial record file's content, by trial number."""
    folder = Path(experiment) / TRIALS_DIR
    if not folder.is_dir():
        return []
    found = [_read_json(p) for p in folder.glob("trial-*.json")]
    return sorted(found, key=lambda d: int(d["number"]))


def read_trial_records(experiment: Path) -> list[TrialRecord]:
    """Every trial of the experiment, by number."""
    return [record_from_dict(d) for d in read_trial_files(experiment)]


def mark_stale(experiment: Path) -> list[int]:
    """Mark failed the trials a killed driver left "running" (only one driver runs an
    experiment at a time); returns their numbers."""
    stale = []
    for data in read_trial_files(experiment):
        if data.get("state") == "running":
            record = record_from_dict(data)
            record.state, record.error = "failed", STALE_ERROR
            extra = {k: v for k, v in data.items()
                     if k not in _RECORD_FIELDS and k not in ("schema", "written_at")}
            write_trial_record(experiment, record, **extra)
            stale.append(record.number)
    return stale


# --- the study as the results table sees it ---------------------------------------------------


def study_records_from(info: Mapping[str, Any], records: Sequence[TrialRecord],
                       stored_runs: Mapping[str, Any] | None = None) -> StudyRecords:
    """StudyRecords from an experiment file's content, its trials and the runs trained beside
    it (``read_reruns``)."""
    return StudyRecords.from_stored(str(info.get("study", "")), info, records, stored_runs)


def read_reruns(experiment: Path) -> dict[str, dict[str, Any]]:
    """The runs trained beside the experiment (``save_rerun``): {key: content} of
    ``records.rerun_entry``."""
    folder = Path(experiment) / RERUNS_DIR
    stored = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            stored[data["key"]] = data
    return stored


def load_ray_records(path: Path) -> StudyRecords:
    """Read a Ray experiment (the folder, or an ``--out`` pointing to it) into StudyRecords."""
    return RayExperimentStore.open(path).records()


class RayExperimentStore:
    """A Ray experiment as a ``StudyStore`` (``policysearch.search.stores``). Runs trained
    beside it are files ``reruns/<key>.json``: one file per run, as the Optuna engine keeps
    one study attribute per run, so concurrent writers never overwrite each other's runs."""

    def __init__(self, experiment: Path):
        self.experiment = Path(experiment)
        self.location = str(self.experiment)

    @classmethod
    def open(cls, path: Path) -> RayExperimentStore:
        """The experiment ``path`` is (or points to); a user error when there is none."""
        experiment = resolve_experiment(Path(path))
        if experiment is None:
            raise UserError(f"no Ray experiment here ({EXPERIMENT_FILE} not found)",
                            source=str(path), field="--out")
        return cls(experiment)

    def records(self) -> StudyRecords:
        info = read_experiment(self.experiment) or {}
        if "metrics_info" not in info:
            raise UserError("not a policysearch experiment (no metrics recorded)",
                            source=str(self.experiment / EXPERIMENT_FILE))
        return study_records_from(info, read_trial_records(self.experiment),
                                  read_reruns(self.experiment))

    def save_rerun(self, subject: str, seed: int, result: TrialResult) -> None:
        key, content = rerun_entry(subject, seed, result)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".json"
        write_json_atomic(self.experiment / RERUNS_DIR / name, {"key": key, **content})
