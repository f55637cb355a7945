"""Your own task kind: register a ``Task`` subclass, give a dataset a task of that kind, search.

A task kind (policysearch/tasks/base.py) brings everything task-specific:

- ``kind`` (its name) and ``metrics``: each ``MetricInfo(name, higher_is_better, primary)``;
  the primary ones enter Δm%;
- ``make_head(channels, strides)``: an nn.Module from the encoder's multi-scale features
  (fine→coarse) to the task's output;
- ``collate(samples)``: the batch's targets as tensors (a sample may lack the target: partial
  labels);
- ``loss(output, targets)``: a scalar; ``evaluator()``: an object with ``update(output,
  targets)`` and ``compute() -> {metric: value}`` over a split.

Here: ``count`` — regress how many objects an image holds. The samples are the built-in
``shapes`` scenes with one more key, ``count``. Augmentation moves spatial targets (mask,
boxes, depth, normals); any other key, like ``count``, passes through unchanged — so the
search space uses only ops that keep every object in the image (flips, colour ops).

    python examples/custom_task.py      # writes ./runs/custom_task/
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

import policysearch as ps
from policysearch.data import ShapesDataset, TaskSpec, register_dataset
from policysearch.tasks import MetricInfo, Task, register_task_kind

OUT = Path("runs/custom_task")
os.environ.setdefault("POLICYSEARCH_CACHE", str(Path("runs/cache").resolve()))


# --- 1. the task kind ----------------------------------------------------------------------------

class CountEvaluator:
    """Mean absolute and root-mean-square error over the labelled samples of a split."""

    def __init__(self) -> None:
        self.abs_sum = self.sq_sum = 0.0
        self.n = 0

    def update(self, output: Tensor, targets: Tensor) -> None:
        keep = ~torch.isnan(targets)  # NaN: a sample without a count
        err = output.detach().cpu()[keep] - targets[keep]
        self.abs_sum += float(err.abs().sum())
        self.sq_sum += float((err ** 2).sum())
        self.n += int(keep.sum())

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"mae": self.abs_sum / n, "rmse": math.sqrt(self.sq_sum / n)}


class CountHead(nn.Module):
    """Average-pool the coarsest feature map (a head gets the whole list, fine→coarse), then
    a small MLP to one number per image."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.mlp(features[-1].mean(dim=(2, 3))).squeeze(1)


class CountTask(Task):
    """Regress a non-negative number per image (the target key comes from the TaskSpec)."""

    kind = "count"
    metrics = (
        MetricInfo("mae", higher_is_better=False, primary=True),  # enters Δm% (lower is better)
        MetricInfo("rmse", higher_is_better=False, primary=False),
    )

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        return CountHead(channels[-1])

    def collate(self, samples: Sequence[dict]) -> Tensor:
        key = self.spec.target_key()
        return torch.tensor([float("nan") if s.get(key) is None else float(s[key])
                             for s in samples])

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        keep = ~torch.isnan(targets)
        if not keep.any():
            return output.sum() * 0.0  # keeps the graph (gradient weightings need one)
        return F.smooth_l1_loss(output[keep], targets[keep])

    def evaluator(self) -> CountEvaluator:
        return CountEvaluator()


register_task_kind(CountTask)


# --- 2. a dataset with a task of that kind -------------------------------------------------------

class WithCount:
    """A split of shapes scenes: image, the segmentation mask, and ``count`` (visible objects)."""

    def __init__(self, split: Sequence[dict]):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        s = self.split[i]
        return {"image": s["image"], "mask": s["mask"], "count": float(len(s["box_labels"]))}


class ShapesCount:
    name = "shapes_count"
    # A custom kind has no default target key: name it (key=...).
    tasks = (TaskSpec("seg", "segmentation", num_classes=5),
             TaskSpec("objects", "count", key="count"))

    def __init__(self, **options: object) -> None:
        self.shapes = ShapesDataset(**options)  # size, seed, n_train, n_val, n_test

    def split(self, name: str) -> WithCount:
        return WithCount(self.shapes.split(name))


register_dataset("shapes_count", ShapesCount)


# --- 3. search -----------------------------------------------------------------------------------

SPACE = {
    "name": "custom_task",
    "dataset": "shapes_count",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    # ops that keep every object in view, so `count` stays true
    "shared": {"slots": 1, "ops": ["identity", "hflip", "vflip", "brightness", "contrast"]},
    "per_task": {"tasks": ["objects"], "slots": 1, "ops": ["identity", "blur", "noise"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "reference": "none",  # flipcrop would crop objects away; the reference is no augmentation
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}
# A search into a folder that holds a study resumes it; this demo starts afresh every time.
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
space_file = OUT / "space.yaml"
space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))

outcome = ps.search(space=space_file, trials=3, out=OUT, device="cpu", threads=1, seed=0)
table = outcome.table
print(table[["rank", "trial", "delta_m", "seg.miou", "objects.mae", "objects.rmse",
             "policy"]].to_string(index=False))
policy = ps.load_policy(OUT / "best_policy.yaml")
print(f"best policy's tasks: {policy.tasks}; Δm% {policy.provenance['delta_m']:+.2f}")
if policy.tasks.get("objects") != "count" or table["objects.mae"].isna().all():
    sys.exit("the registered task kind was not trained")
print("custom task OK")
