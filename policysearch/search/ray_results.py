"""Read a Ray Tune experiment folder (``--engine ray``) into the same records as an Optuna
study, without importing ray. (Filled in with the Ray engine.)"""

from __future__ import annotations

from pathlib import Path

from policysearch.errors import UserError
from policysearch.results_table import StudyRecords


def is_ray_experiment(path: Path) -> bool:
    """Whether ``path`` holds a search run by the Ray engine."""
    return False


def load_ray_records(path: Path) -> StudyRecords:
    raise UserError("reading Ray experiments is not available yet", source=str(path))
