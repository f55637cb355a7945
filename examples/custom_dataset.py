"""Your own dataset: register a factory, then search on it by name.

A dataset is anything with ``name``, ``tasks`` (a tuple of ``TaskSpec``: task name, kind,
classes) and ``split(name)`` returning a sequence of *sample dicts* for ``train``, ``val`` and
``test`` — a plain list is enough. A sample dict holds the image (H×W×3 uint8) and, per task,
its target under the kind's key: ``label`` (int) for classification, ``mask`` (H×W int,
0 = background) for segmentation, ``boxes``/``box_labels`` for detection, ``depth``,
``normals``, ``attributes`` (see policysearch/data/base.py).

Here the data is generated in the script: a coloured square on a noisy background; task
``colour`` classifies the square's colour, task ``region`` segments it. The search then finds
augmentations + loss weights for both tasks at once.

    python examples/custom_dataset.py      # writes ./runs/custom_dataset/
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

import policysearch as ps
from policysearch.data import TaskSpec, register_dataset

OUT = Path("runs/custom_dataset")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}


def make_sample(rng: np.random.Generator, size: int) -> dict:
    """One sample dict: image, ``label`` (colour index) and ``mask`` (0 background, 1 + colour
    inside the square)."""
    image = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)  # grey-ish noise
    colour = int(rng.integers(len(COLOURS)))
    side = int(rng.integers(size // 4, size // 2))
    y, x = rng.integers(0, size - side, 2)
    image[y:y + side, x:x + side] = list(COLOURS.values())[colour]
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y:y + side, x:x + side] = 1 + colour
    return {"image": image, "label": colour, "mask": mask}


@dataclass
class SquaresDataset:
    """A user's dataset: the three splits are plain lists of sample dicts."""

    samples: dict[str, list[dict]] = field(repr=False)
    name: str = "squares"
    tasks: tuple[TaskSpec, ...] = (
        TaskSpec("colour", "classification", num_classes=len(COLOURS),
                 class_names=tuple(COLOURS)),
        # segmentation counts the background class too
        TaskSpec("region", "segmentation", num_classes=1 + len(COLOURS),
                 class_names=("background", *COLOURS)),
    )

    def split(self, name: str) -> list[dict]:
        return self.samples[name]


def make_squares(*, size: int = 32, seed: int = 0, n_train: int = 64, n_val: int = 32,
                 n_test: int = 32, **_: object) -> SquaresDataset:
    """The factory. A search calls it with the space's ``dataset_options`` (n_train, n_val,
    n_test, seed) and ``size`` = the budget's image_size; extra options are ignored."""
    rng = np.random.default_rng(seed)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    return SquaresDataset({split: [make_sample(rng, size) for _ in range(n)]
                           for split, n in counts.items()})


# One line makes the dataset known by name: `dataset: squares` in a space file, or
# ps.search(dataset="squares"), or ps.preview(policy, "squares").
register_dataset("squares", make_squares)

SPACE = {
    "name": "squares",
    "dataset": "squares",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "crop"]},
    # hue changes colours, i.e. the `colour` labels: give it to the segmentation view only
    # (a per-task op never touches the other task's view).
    "per_task": {"tasks": ["region"], "slots": 1, "ops": ["identity", "hue", "contrast"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}

# A search into a folder that holds a study resumes it; this demo starts afresh every time.
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
space_file = OUT / "squares.yaml"
space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))

outcome = ps.search(space=space_file, trials=3, out=OUT, device="cpu", threads=1, seed=0)
table = outcome.table
print(f"searched {len(table)} trials on the registered dataset 'squares'")
metric_columns = [c for c in table.columns if c.startswith(("colour.", "region."))]
print(table[["rank", "trial", "delta_m", *metric_columns, "policy"]].to_string(index=False))

# The exported policy names the user's tasks and dataset.
policy = ps.load_policy(OUT / "best_policy.yaml")
print(f"best policy: tasks {policy.tasks}, dataset {policy.provenance.get('dataset')!r}, "
      f"Δm% {policy.provenance.get('delta_m'):+.2f}")
ok = (policy.tasks == {"colour": "classification", "region": "segmentation"}
      and policy.provenance.get("dataset") == "squares"
      and {"colour.accuracy", "region.miou"} <= set(table.columns))
if not ok:
    sys.exit("the search did not run on the registered dataset")

# The policy works on the user's own samples, e.g. in a torch Dataset's __getitem__.
views = policy.transform()(make_sample(np.random.default_rng(1), 32))
print(f"augmented views: {sorted(views)}")
print("custom dataset OK")
