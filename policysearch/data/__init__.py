"""Datasets: the protocol every dataset follows, the built-in ones and the file formats.

``get_dataset(spec, **options)`` takes a built-in name (``shapes``, ``multidigits``,
``scenes``) or a file format with a path (``coco:PATH``, ``nyuv2:PATH``, ``attributes:PATH``,
``folder:PATH``).
A format's module defines ``load(path: Path, options: LoadOptions) -> FileDataset``; it is
imported when first used. ``register_dataset`` / ``register_format`` add a user's own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policysearch.data.base import TARGET_KEYS, MultiTaskDataset, Sample, TaskSpec
from policysearch.data.shapes import ShapesDataset
from policysearch.data.splits import FileDataset, LazySplit, LoadOptions
from policysearch.errors import UserError

__all__ = [
    "DATASETS",
    "FORMATS",
    "TARGET_KEYS",
    "FileDataset",
    "LazySplit",
    "LoadOptions",
    "MultiTaskDataset",
    "Sample",
    "ShapesDataset",
    "TaskSpec",
    "check_spec",
    "get_dataset",
    "register_dataset",
    "register_format",
]

# Built-in (generated or shipped) datasets by name: a factory taking keyword options, or the
# "module:attribute" of one, imported on first use.
DATASETS: dict[str, Callable[..., MultiTaskDataset] | str] = {
    "shapes": ShapesDataset,
    "multidigits": "policysearch.data.multidigits:MultiDigitsDataset",
    "scenes": "policysearch.data.scenes:ScenesDataset",
}
# File formats by scheme: ``load(path, options)`` or the "module:attribute" of one.
FORMATS: dict[str, Callable[[Path, LoadOptions], MultiTaskDataset] | str] = {
    "coco": "policysearch.data.coco:load",
    "nyuv2": "policysearch.data.nyuv2:load",
    "attributes": "policysearch.data.attributes:load",
    "folder": "policysearch.data.folder:load",
}


def register_dataset(name: str, factory: Callable[..., MultiTaskDataset]) -> None:
    """Make ``get_dataset(name, ...)`` call ``factory(**options)``."""
    DATASETS[name] = factory


def register_format(scheme: str, loader: Callable[[Path, LoadOptions], MultiTaskDataset]) -> None:
    """Make ``get_dataset("scheme:PATH", ...)`` call ``loader(Path(PATH), LoadOptions)``."""
    FORMATS[scheme] = loader


def _resolve(entry: Callable[..., Any] | str) -> Callable[..., Any]:
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def check_spec(spec: str, *, field: str = "dataset") -> None:
    """Refuse a ``spec`` that names no registered dataset or format (or a format without a
    path), loading nothing: a ``UserError`` naming ``field`` (the key, or the flag that gave
    it)."""
    scheme, sep, path = spec.partition(":")
    if sep:
        if scheme not in FORMATS:
            known = ", ".join(f"{s}:PATH" for s in sorted(FORMATS))
            raise UserError(f"unknown dataset format {scheme!r}; known: {known}", field=field)
        if not path:
            raise UserError(f"{scheme}: needs a path, e.g. {scheme}:/data/{scheme}",
                            field=field)
    elif spec not in DATASETS:
        known = ", ".join([*sorted(DATASETS), *(f"{s}:PATH" for s in sorted(FORMATS))])
        raise UserError(f"unknown dataset {spec!r}; known: {known}", field=field)


def get_dataset(spec: str, **options: Any) -> MultiTaskDataset:
    """The dataset named by ``spec`` (see the module docstring), built with ``options``
    (``size``, ``seed``, ``n_train``…, see ``LoadOptions``)."""
    check_spec(spec)
    scheme, sep, path = spec.partition(":")
    if sep:
        return _resolve(FORMATS[scheme])(Path(path).expanduser(), LoadOptions.make(**options))
    return _resolve(DATASETS[spec])(**options)
