"""The dataset a search space names, generated or read once, with its notes."""

from __future__ import annotations

from policysearch.config import SearchSpace
from policysearch.data import get_dataset
from policysearch.data.base import MultiTaskDataset
from policysearch.errors import UserError

# The dataset_options each kind of dataset takes (``size`` comes from the budget).
FILE_OPTIONS = ("seed", "val_fraction", "limit", "skip_bad_samples")
GENERATED_OPTIONS = ("n_train", "n_val", "n_test", "seed")
SCENES_OPTIONS = ("test_seed", "normals")


def option_keys(dataset: str) -> tuple[str, ...]:
    """The ``dataset_options`` that the dataset named ``dataset`` takes: a file format's
    (``coco:PATH``, …) or a built-in or registered dataset's (``scenes`` two more)."""
    if ":" in dataset:
        return FILE_OPTIONS
    return GENERATED_OPTIONS + (SCENES_OPTIONS if dataset == "scenes" else ())


def load_dataset(space: SearchSpace) -> MultiTaskDataset:
    """The dataset, generated or read once for the whole search, every split resized to the
    budget's image size; files and splits checked up front. With the space's ``subset`` the
    training split is that subset (``data.subset.subset_train``: the one place a subset is
    applied, so every engine, worker and re-evaluation trains on the same samples); a subset
    larger than the training split is a ``SubsetError`` naming the space and ``subset.n``."""
    opts = space.dataset_options
    size = space.budget.image_size
    keys = option_keys(space.dataset)
    if ":" in space.dataset:  # a file format: coco:PATH, folder:PATH, …
        dataset = get_dataset(space.dataset, size=size,
                              **{key: getattr(opts, key) for key in keys})
    else:
        if not isinstance(size, int):
            raise UserError(f"the built-in dataset {space.dataset!r} is generated square: give "
                            f"one side, not {list(size)}", field="image_size")
        for key in SCENES_OPTIONS:
            if getattr(opts, key) is not None and key not in keys:
                raise UserError(f"{key} is an option of the scenes dataset, not of "
                                f"{space.dataset!r}", field=f"dataset_options.{key}")
        options = {key: getattr(opts, key) for key in keys}
        dataset = get_dataset(space.dataset, size=size,
                              **{k: v for k, v in options.items() if v is not None})
    for split in ("train", "val"):
        if len(dataset.split(split)) == 0:
            raise UserError(f"the {split} split is empty", field="dataset")
    if space.subset is not None:
        from policysearch.data.subset import subset_train

        return subset_train(dataset, space.subset, source=f"search space {space.name}")
    return dataset


def dataset_notes(dataset: MultiTaskDataset) -> list[str]:
    """What the reports must say about the dataset (how splits were made, skipped samples)."""
    return [str(n) for n in getattr(dataset, "notes", ())]
