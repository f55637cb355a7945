"""Datasets: the protocol every dataset follows and a registry of the built-in ones."""

from __future__ import annotations

from collections.abc import Callable

from policysearch.data.base import TARGET_KEYS, MultiTaskDataset, Sample, TaskSpec
from policysearch.data.shapes import ShapesDataset
from policysearch.errors import UserError

__all__ = [
    "DATASETS",
    "TARGET_KEYS",
    "MultiTaskDataset",
    "Sample",
    "ShapesDataset",
    "TaskSpec",
    "get_dataset",
]

# Built-in datasets by name; each factory takes the dataset's keyword options.
DATASETS: dict[str, Callable[..., MultiTaskDataset]] = {
    "shapes": ShapesDataset,
}


def get_dataset(name: str, **kwargs: object) -> MultiTaskDataset:
    """The built-in dataset ``name`` built with ``kwargs`` (e.g. seed, n_train, cache_dir)."""
    factory = DATASETS.get(name)
    if factory is None:
        known = ", ".join(sorted(DATASETS))
        raise UserError(f"unknown dataset {name!r}; known: {known}", field="dataset")
    return factory(**kwargs)
