"""Partial labels: a sample without a task's target changes neither that task's loss nor its
metrics — for every task kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policysearch.data.base import TaskSpec
from policysearch.tasks import TASK_KINDS, make_task

H = W = 32
CHANNELS, STRIDES = (8, 16), (4, 8)


def _target(kind: str, rng: np.random.Generator) -> dict:
    if kind == "classification":
        return {"label": int(rng.integers(0, 3))}
    if kind == "multilabel":
        return {"attributes": np.array([1, 0, -1, 1], np.int64)}
    if kind == "segmentation":
        return {"mask": rng.integers(0, 3, (H, W)).astype(np.int64)}
    if kind == "detection":
        return {"boxes": np.array([[4, 4, 20, 18]], np.float32), "box_labels": np.array([1])}
    if kind == "depth":
        return {"depth": rng.uniform(1, 5, (H, W)).astype(np.float32)}
    if kind == "normals":
        n = rng.normal(size=(H, W, 3)).astype(np.float32)
        return {"normals": n / np.linalg.norm(n, axis=-1, keepdims=True)}
    raise AssertionError(kind)


SPECS = {
    "classification": TaskSpec("t", "classification", num_classes=3),
    "multilabel": TaskSpec("t", "multilabel", num_classes=4),
    "segmentation": TaskSpec("t", "segmentation", num_classes=3),
    "detection": TaskSpec("t", "detection", num_classes=2),
    "depth": TaskSpec("t", "depth"),
    "normals": TaskSpec("t", "normals"),
}


def test_every_registered_kind_is_covered() -> None:
    assert set(SPECS) == set(TASK_KINDS)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_an_unlabelled_sample_changes_neither_loss_nor_metrics(kind: str) -> None:
    rng = np.random.default_rng(0)
    task = make_task(SPECS[kind])
    torch.manual_seed(0)
    head = task.make_head(CHANNELS, STRIDES).eval()
    features = [torch.randn(3, c, H // s, W // s) for c, s in zip(CHANNELS, STRIDES, strict=True)]
    image = np.zeros((H, W, 3), np.uint8)
    labelled = [{"image": image, **_target(kind, rng)} for _ in range(2)]
    unlabelled = {"image": image}  # the task's target is missing
    with torch.no_grad():
        output = head(features)

    def pick(rows: list[int]):  # noqa: ANN202 - a head's output for some samples
        if isinstance(output, dict):
            return {k: v[rows] for k, v in output.items()}
        return output[rows]

    mixed = [labelled[0], unlabelled, labelled[1]]
    loss_mixed = task.loss(output, task.collate(mixed))
    loss_alone = task.loss(pick([0, 2]), task.collate(labelled))
    assert float(loss_mixed) == pytest.approx(float(loss_alone), rel=1e-5, abs=1e-6)
    metrics = []
    for batch, out in ((mixed, output), (labelled, pick([0, 2]))):
        evaluator = task.evaluator()
        evaluator.update(out, task.collate(batch))
        metrics.append(evaluator.compute())
    assert metrics[0] == pytest.approx(metrics[1])
    only_unlabelled = task.loss(pick([1]), task.collate([unlabelled]))
    assert float(only_unlabelled) == 0.0
