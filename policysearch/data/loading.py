"""The dataset a search space names, generated or read once, with its notes."""

from __future__ import annotations

from policysearch.config import SearchSpace
from policysearch.data import get_dataset
from policysearch.data.base import MultiTaskDataset
from policysearch.errors import UserError


def load_dataset(space: SearchSpace) -> MultiTaskDataset:
    """The dataset, generated or read once for the whole search, every split resized to the
    budget's image size; files and splits checked up front."""
    opts = space.dataset_options
    size = space.budget.image_size
    if ":" in space.dataset:  # a file format: coco:PATH, folder:PATH, …
        dataset = get_dataset(space.dataset, size=size, seed=opts.seed,
                              val_fraction=opts.val_fraction, limit=opts.limit,
                              skip_bad_samples=opts.skip_bad_samples)
    else:
        if not isinstance(size, int):
            raise UserError(f"the built-in dataset {space.dataset!r} is generated square: give "
                            f"one side, not {list(size)}", field="image_size")
        extra = {key: getattr(opts, key) for key in ("test_seed", "normals")
                 if getattr(opts, key) is not None}
        if extra and space.dataset != "scenes":
            key = next(iter(extra))
            raise UserError(f"{key} is an option of the scenes dataset, not of "
                            f"{space.dataset!r}", field=f"dataset_options.{key}")
        dataset = get_dataset(space.dataset, size=size, seed=opts.seed, n_train=opts.n_train,
                              n_val=opts.n_val, n_test=opts.n_test, **extra)
    for split in ("train", "val"):
        if len(dataset.split(split)) == 0:
            raise UserError(f"the {split} split is empty", field="dataset")
    return dataset


def dataset_notes(dataset: MultiTaskDataset) -> list[str]:
    """What the reports must say about the dataset (how splits were made, skipped samples)."""
    return [str(n) for n in getattr(dataset, "notes", ())]
