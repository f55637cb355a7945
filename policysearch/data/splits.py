"""Datasets read from files: lazy splits, up-front checks, bad-sample skipping, split carving.

A loader (``coco:PATH``, ``nyuv2:PATH``, …) turns its index into *records* (whatever it needs
to build one sample: file paths, annotations) and gives ``LazySplit`` two functions: ``check``
(cheap: files exist, headers readable, sizes agree; called for every record before the first
trial) and ``load`` (decode one sample). Samples are decoded on access, resized to the
options' size (``policysearch.data.resize``) and kept in memory up to a budget, so the files
are read once per worker, not once per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from policysearch.data.base import Sample, SampleSequence, TaskSpec
from policysearch.data.resize import Size, as_size, resize_sample
from policysearch.errors import DataError, UserError

R = TypeVar("R")
SPLITS = ("train", "val", "test")
CACHE_BYTES = 2 * 1024**3  # decoded samples kept in memory per split, at most


@dataclass(frozen=True)
class LoadOptions:
    """How a dataset is read: every option a loader may use.

    ``size``: resize every sample (targets included) to (H, W) — an int means square; None
    keeps the stored size (then all images must share it). ``val_fraction``: share of train
    carved into val when the dataset has no labelled val split. ``skip_bad_samples``: drop a
    sample whose files fail the up-front check (counted in ``skipped``) instead of stopping.
    ``limit``: at most this many samples per split (quick experiments; taken in index order).
    ``n_train``/``n_val``/``n_test``: sizes of *generated* datasets.
    """

    size: Size | None = None
    seed: int = 0
    val_fraction: float = 0.1
    skip_bad_samples: bool = False
    limit: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    cache_dir: Path | None = None

    @classmethod
    def make(cls, **kwargs: Any) -> LoadOptions:
        """Options from keyword arguments (``size`` may be an int); unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        for key in kwargs:
            if key not in known:
                raise UserError(f"unknown dataset option {key!r}; known: "
                                f"{', '.join(sorted(known))}", field="dataset_options")
        if kwargs.get("size") is not None:
            kwargs["size"] = as_size(kwargs["size"])
        if kwargs.get("cache_dir") is not None:
            kwargs["cache_dir"] = Path(kwargs["cache_dir"])
        fraction = kwargs.get("val_fraction", 0.1)
        if not 0.0 < float(fraction) < 1.0:
            raise UserError(f"must be between 0 and 1, got {fraction!r}",
                            field="dataset_options.val_fraction")
        return cls(**kwargs)


class LazySplit(SampleSequence, Generic[R]):
    """One split: ``records`` decoded by ``load`` on access, resized to ``size``, cached.

    ``peek``: a record's label-like targets (class labels, attribute vectors) without its
    image, for choosing a stratified subset (``data.subset``) without decoding every image;
    None: ``peek(i)`` decodes the sample (without caching it)."""

    def __init__(self, records: Sequence[R], load: Callable[[R], Sample],
                 size: Size | None = None, cache_bytes: int = CACHE_BYTES,
                 peek: Callable[[R], Sample] | None = None):
        self.records = list(records)
        self._load = load
        self._peek = peek
        self.size = size
        self._cache: dict[int, Sample] = {}
        self._cache_left = cache_bytes

    def __len__(self) -> int:
        return len(self.records)

    def divide_cache(self, parts: int) -> None:
        """Keep this process's share of the cache budget: each of ``parts`` loader workers
        decodes and caches what it reads, so together they stay within the budget."""
        self._cache_left //= max(1, parts)

    def peek(self, i: int) -> Sample:
        """Sample ``i``'s targets, at least those that need no image (see the class); decodes
        nothing when the loader gave ``peek``, and caches nothing either way."""
        if self._peek is not None:
            return self._peek(self.records[i])
        cached = self._cache.get(i)
        return dict(cached) if cached is not None else self._load(self.records[i])

    def _get(self, i: int) -> Sample:
        cached = self._cache.get(i)
        if cached is not None:
            return dict(cached)
        sample = self._load(self.records[i])
        if self.size is not None:
            sample = resize_sample(sample, self.size)
        _freeze(sample)
        nbytes = sum(v.nbytes for v in sample.values() if isinstance(v, np.ndarray))
        if nbytes <= self._cache_left:
            self._cache[i] = sample
            self._cache_left -= nbytes
        return dict(sample)


def _freeze(sample: Sample) -> None:
    # Cached arrays are shared between accesses: nobody may write into them.
    for value in sample.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False


def check_records(records: Sequence[R], check: Callable[[R], None], *, skip: bool,
                  skipped: list[str]) -> list[R]:
    """The records that pass ``check``. A failing record raises its ``DataError`` unless
    ``skip``, in which case it is left out and its one-line reason appended to ``skipped``."""
    kept = []
    for record in records:
        try:
            check(record)
        except DataError as err:
            if not skip:
                raise
            skipped.append(str(err))
            continue
        kept.append(record)
    return kept


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, carved) of a deterministic random split of ``n`` items: ``carved`` holds
    round(fraction × n) of them (at least 1 when n ≥ 2), both sorted."""
    count = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
    order = np.random.default_rng(np.random.SeedSequence([0xCA7E, seed])).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


@dataclass
class FileDataset:
    """A dataset read from files: its tasks, one sequence of samples per split, and what the
    reports must say about it (``notes``: e.g. how val was made; ``skipped``: bad samples).
    ``unsafe_ops``: ops that change what its labels mean (the folder format's
    ``unsafe_ops``), see ``policysearch.data.base.unsafe_ops``."""

    name: str
    tasks: tuple[TaskSpec, ...]
    splits: dict[str, Sequence[Sample]]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unsafe_ops: tuple[str, ...] = ()

    def split(self, name: str) -> Sequence[Sample]:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}",
                            field="split")
        return self.splits.get(name, [])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"FileDataset({self.name!r}, tasks={[t.name for t in self.tasks]}, {sizes})"


def assemble(name: str, tasks: Sequence[TaskSpec], records: dict[str, list[R]],
             load: Callable[[R], Sample], check: Callable[[R], None],
             options: LoadOptions, *, source: str,
             peek: Callable[[R], Sample] | None = None) -> FileDataset:
    """The dataset from per-split ``records`` (``train`` required; ``val``/``test`` optional).

    ``peek``: a record's label-like targets without decoding it (``LazySplit``). Checks
    every record up front (``check_records``), applies ``limit``, and when val is
    missing carves it from train (``val_fraction``, ``seed``); when test is missing too the
    given val becomes test first. The notes say what was done.
    """
    if not records.get("train"):
        raise DataError("no training samples found", source=source)
    skipped: list[str] = []
    notes: list[str] = []
    kept = {split: check_records(recs, check, skip=options.skip_bad_samples, skipped=skipped)
            for split, recs in records.items() if recs}
    if options.limit is not None:
        kept = {split: recs[: options.limit] for split, recs in kept.items()}
    if "test" not in kept and "val" in kept:
        kept["test"] = kept.pop("val")
        notes.append("no labelled test split: the given val split is used as test")
    elif "test" not in kept:
        rest, carved = carve(len(kept["train"]), options.val_fraction, options.seed + 1)
        train = kept["train"]
        kept["train"] = [train[i] for i in rest]
        kept["test"] = [train[i] for i in carved]
        notes.append(f"test carved from train: {len(carved)} of {len(train)} samples "
                     f"({options.val_fraction:.0%}, seed {options.seed + 1}, deterministic)")
    if "val" not in kept:
        rest, carved = carve(len(kept["train"]), options.val_fraction, options.seed)
        train = kept["train"]
        kept["train"] = [train[i] for i in rest]
        kept["val"] = [train[i] for i in carved]
        notes.append(f"val carved from train: {len(carved)} of {len(train)} samples "
                     f"({options.val_fraction:.0%}, seed {options.seed}, deterministic)")
    if skipped:
        notes.append(f"{len(skipped)} bad samples skipped (--skip-bad-samples)")
    splits = {split: LazySplit(kept[split], load, options.size, peek=peek)
              for split in SPLITS if split in kept}
    return FileDataset(name=name, tasks=tuple(tasks), splits=splits, notes=notes,
                       skipped=skipped)
