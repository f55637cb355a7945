"""K folds of a training split for density matching (Fast AutoAugment, Lim et al. 2019): each
fold trains a model on one part of the split and holds the rest out for scoring policies.

A fold is a seeded, stratified shuffle split (what Fast AutoAugment takes from scikit-learn's
``StratifiedShuffleSplit``, with its held-out share of 0.4 by default): fold ``k`` holds out
``round(heldout × N)`` samples chosen by ``data.subset.choose_indices`` from the fold's own
seed, stratified by the first classification task's label like a training subset (a plain
random sample without one), and trains on the others. Folds are drawn independently, so their
held-out parts overlap, as in Fast AutoAugment. The same (N, folds, heldout, seed, labels) give
the same folds in any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policysearch.data.base import MultiTaskDataset, Sample
from policysearch.data.subset import IndexedSplit, choose_indices, split_labels, stratify_task

_SALT = 0xF01D5


@dataclass(frozen=True)
class Fold:
    """One fold: ``train`` and ``heldout`` indices into the training split (sorted, disjoint,
    together the whole split)."""

    number: int
    train: np.ndarray
    heldout: np.ndarray

    def digest(self) -> str:
        """A short fingerprint of the fold's indices (a resume checks it)."""
        import hashlib

        data = self.train.astype(np.int64).tobytes() + b"|" + self.heldout.astype(
            np.int64).tobytes()
        return hashlib.sha256(data).hexdigest()[:16]


def fold_indices(total: int, folds: int, heldout: float, seed: int,
                 labels: Sequence[int | None] | None = None) -> list[Fold]:
    """``folds`` stratified shuffle splits of ``range(total)``, each holding out
    ``round(heldout × total)`` samples (at least 1, and at least 2 left to train on)."""
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    if not 0.0 < heldout < 1.0:
        raise ValueError(f"heldout must be between 0 and 1, got {heldout}")
    n_out = min(max(1, round(heldout * total)), total - 2)
    if n_out < 1:
        raise ValueError(f"cannot hold out samples of a split of {total}")
    result = []
    for k in range(folds):
        fold_seed = int(np.random.SeedSequence([_SALT, seed, k]).generate_state(1)[0])
        out = choose_indices(total, n_out, fold_seed, labels)
        keep = np.setdiff1d(np.arange(total, dtype=np.int64), out, assume_unique=True)
        result.append(Fold(number=k, train=keep, heldout=out))
    return result


def dataset_folds(dataset: MultiTaskDataset, folds: int, heldout: float,
                  seed: int) -> list[Fold]:
    """The folds of ``dataset``'s training split (stratified as ``fold_indices`` says)."""
    train = dataset.split("train")
    task = stratify_task(dataset.tasks)
    labels = split_labels(train, task.target_key()) if task is not None else None
    return fold_indices(len(train), folds, heldout, seed, labels)


class FoldDataset:
    """``dataset`` seen through one fold: its ``train`` split is the fold's training part,
    ``val`` the fold's held-out part (what a fold model is evaluated and scored on); ``test``
    and everything else as they were."""

    def __init__(self, dataset: MultiTaskDataset, fold: Fold):
        self.dataset = dataset
        self.fold = fold
        self.name = dataset.name
        self.tasks = dataset.tasks
        whole = dataset.split("train")
        self._splits: dict[str, Sequence[Sample]] = {
            "train": IndexedSplit(whole, fold.train), "val": IndexedSplit(whole, fold.heldout)}

    def split(self, name: str) -> Sequence[Sample]:
        return self._splits[name] if name in self._splits else self.dataset.split(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
