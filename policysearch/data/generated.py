"""What the built-in generated datasets (``shapes``, ``multidigits``, ``scenes``) share: split
names, the per-sample random generators, option checks, read-only stacked arrays and the dataset
base.

Samples are deterministic in (seed, split, index): ``sample_rng`` seeds each sample's own
generator with (salt, seed, split id, index), the salt keeping one dataset's sequences apart
from another's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

import numpy as np

from policysearch.data.base import TaskSpec
from policysearch.errors import UserError

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
S = TypeVar("S")


def check_split(split: str) -> None:
    """Refuse a split name other than ``train``, ``val`` and ``test`` (``UserError``)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; known: {', '.join(SPLITS)}", field="split")


def sample_rng(salt: int, seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: independent of the split's length."""
    return np.random.default_rng([salt, seed, SPLITS[split], index])


def check_int(value: object, field: str, minimum: int, what: str) -> int:
    """``value`` as an int when it is an integer (not a bool) ≥ ``minimum``, else a
    ``UserError`` saying that ``field`` must be ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{field} must be {what}, not {value!r}", field=field)
    return int(value)


def read_only(arrays: Mapping[str, np.ndarray], keys: Sequence[str], *,
              copy: bool) -> list[np.ndarray]:
    """``arrays[key]`` for each of ``keys``, made read-only: copies when ``copy`` (the given
    arrays stay writeable), else the given arrays themselves."""
    frozen = []
    for key in keys:
        arr = np.array(arrays[key]) if copy else np.asarray(arrays[key])
        arr.flags.writeable = False
        frozen.append(arr)
    return frozen


class ArraySplit:
    """Base of a split whose samples live in a few stacked arrays, the attributes named in
    ``ARRAYS``. Pickled for a loader worker process (``policysearch.input_pipeline``), the
    arrays travel in shared memory, as torch tensors (torch's multiprocessing pickler passes
    their memory, not a copy), and every worker reads the one copy; pickled elsewhere they go
    by value, as any tensor. Imports torch only when pickled."""

    ARRAYS: tuple[str, ...] = ()

    def __reduce__(self) -> tuple:
        tensors = self.__dict__.get("_shared")
        if tensors is None:
            import torch

            tensors = {k: torch.from_numpy(np.array(getattr(self, k))).share_memory_()
                       for k in self.ARRAYS}
            self.__dict__["_shared"] = tensors  # made once, sent to every worker
        return (_rebuild_split, (type(self), tensors))


def _rebuild_split(cls: type[ArraySplit], tensors: Mapping) -> ArraySplit:
    split = cls.__new__(cls)
    for key, tensor in tensors.items():
        arr = tensor.numpy()
        arr.flags.writeable = False
        setattr(split, key, arr)
    split.__dict__["_shared"] = tensors  # keeps the shared memory mapped
    return split


class GeneratedDataset(ABC, Generic[S]):
    """Base of a generated dataset: checked ``seed``, ``size`` (≥ 16) and split sizes
    (``counts``), a repr naming them, and each split made once by ``_make_split``."""

    name: str
    tasks: tuple[TaskSpec, ...]

    def __init__(self, seed: int, size: int, n_train: int, n_val: int, n_test: int):
        self.seed = check_int(seed, "seed", 0, "a non-negative integer")
        self.size = check_int(size, "size", 16, "an integer >= 16")
        self.counts = {
            split: check_int(n, f"n_{split}", 1, "a positive integer")
            for split, n in (("train", n_train), ("val", n_val), ("test", n_test))
        }
        self._splits: dict[str, S] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(seed={self.seed}, size={self.size}, "
                f"n_train={self.counts['train']}, n_val={self.counts['val']}, "
                f"n_test={self.counts['test']})")

    def split(self, name: str) -> S:
        """``train``, ``val`` or ``test``, made on first use."""
        check_split(name)
        if name not in self._splits:
            self._splits[name] = self._make_split(name)
        return self._splits[name]

    @abstractmethod
    def _make_split(self, name: str) -> S:
        """Split ``name`` (a known one), generated or read from a cache."""
