"""Where a study lives, whichever engine ran it: one interface to read its records and to
store the runs trained beside it (re-evaluations with other seeds, other references).

The Optuna engine's store is a study in an Optuna storage (``optuna_study.OptunaStudyStore``:
one user attribute per run); the Ray engine's is an experiment folder
(``ray_results.RayExperimentStore``: one file per run). Both store a run under the same key with
the same content (``records.rerun_entry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from policysearch.errors import UserError
from policysearch.records import StudyRecords

if TYPE_CHECKING:
    from policysearch.training import TrialResult


class StudyStore(Protocol):
    """A study's storage, as every reader and the re-evaluation see it."""

    location: str  # for messages: the storage URL, journal or experiment folder

    def records(self) -> StudyRecords:
        """Every trial and stored run, with what is needed to score them."""
        ...

    def save_rerun(self, subject: str, seed: int, result: TrialResult) -> None:
        """Store one run trained beside the study (never a trial)."""
        ...


def open_store(out: Path | None, storage: str | None, study: str | None) -> StudyStore:
    """The study of a search's ``--out`` folder (an Optuna journal or a Ray experiment), or
    ``--storage URL --study NAME``."""
    from policysearch.search.optuna_study import open_study_store
    from policysearch.search.ray_results import RayExperimentStore, is_ray_experiment

    if storage is None and out is None:
        raise UserError("give --out DIR or --storage URL --study NAME", field="--out")
    if storage is None and out is not None and is_ray_experiment(out):
        return RayExperimentStore.open(out)
    return open_study_store(out_dir=out, storage=storage, study_name=study)


def load_records(out: Path | None, storage: str | None, study: str | None) -> StudyRecords:
    """A study's records (see ``open_store``)."""
    return open_store(out, storage, study).records()
