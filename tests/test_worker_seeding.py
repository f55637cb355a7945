"""Augmentation in torch DataLoader workers: seed_worker gives each worker and each epoch its
own stream, and the whole run repeats exactly for the same DataLoader generator seed."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from policysearch.augment import MultiTaskAugment, augments_of, get_baseline, seed_worker

N = 8  # identical samples: any difference between outputs comes from the augmentation


class Repeated(Dataset):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        self.augment = MultiTaskAugment(get_baseline("trivialaugment", {"shape":
                                                                        "classification"}),
                                        task="shape", seed=0)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.augment({"image": self.image})["image"].copy())


def _epochs(seed: int, epochs: int = 2) -> list[torch.Tensor]:
    loader = DataLoader(Repeated(), batch_size=1, num_workers=2, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(seed))
    return [torch.cat(list(loader)) for _ in range(epochs)]


def test_workers_and_epochs_draw_their_own_augmentations_reproducibly() -> None:
    first, second = _epochs(seed=5)
    # Batches alternate between the two workers: worker 0 gave samples 0, 2, …; worker 1 gave
    # 1, 3, …. Seeded alike, they would give the same sequence.
    assert not torch.equal(first[0::2], first[1::2])
    assert not torch.equal(first, second)  # a new epoch, new seeds
    again = _epochs(seed=5)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, _epochs(seed=6)[0])


def test_without_seed_worker_the_workers_repeat_each_other() -> None:
    loader = DataLoader(Repeated(), batch_size=1, num_workers=2,
                        generator=torch.Generator().manual_seed(5))
    batches = torch.cat(list(loader))
    assert torch.equal(batches[0::2], batches[1::2])  # what seed_worker is for


def test_augments_of_finds_the_augment_attribute() -> None:
    data = Repeated()
    assert augments_of(data) == [data.augment]
    assert augments_of(data.augment) == [data.augment]
    assert augments_of(object()) == []
    seed_worker(0)  # outside a worker: does nothing
