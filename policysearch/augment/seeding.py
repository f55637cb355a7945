"""Seeding augmentation inside torch DataLoader worker processes.

A ``MultiTaskAugment`` called with the sample's index (``augment(sample, index=i)``) draws the
same numbers in every worker (``policysearch.augment.draws``). Called without one, its draws key
on a call counter, and each worker needs a seed of its own: ``seed_worker`` as the DataLoader's
``worker_init_fn`` reseeds them from torch's per-worker seed, which differs per worker and per
epoch (each new iterator draws a new base seed) and is reproducible when the DataLoader is given
a seeded ``generator``. Imports torch only when called (in a worker).
"""

from __future__ import annotations

from typing import Any

from policysearch.augment.runtime import MultiTaskAugment

__all__ = ["seed_worker", "augments_of"]


def augments_of(dataset: Any) -> list[MultiTaskAugment]:
    """The ``MultiTaskAugment`` objects ``dataset`` holds as attributes (one level deep, and
    the dataset itself)."""
    if isinstance(dataset, MultiTaskAugment):
        return [dataset]
    return [v for v in vars(dataset).values() if isinstance(v, MultiTaskAugment)] \
        if hasattr(dataset, "__dict__") else []


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 - the DataLoader's signature
    """``DataLoader(..., worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(S))``:
    reseed every ``MultiTaskAugment`` of the worker's dataset with the worker's torch seed.
    Needed only when the dataset calls ``augment(sample)`` without ``index=``; with the sample's
    index the draws are the same in every worker."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is None:  # called outside a worker: nothing to do
        return
    for augment in augments_of(info.dataset):
        augment.set_seed(info.seed % 2**32)
