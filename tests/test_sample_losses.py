"""Per-sample losses (``Task.sample_losses``): for every kind, entry i is ``loss`` on sample i
alone and NaN where sample i has no target; the base class's loop serves a user's own kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from policysearch.data.base import TaskSpec
from policysearch.tasks import TASK_KINDS, MetricInfo, Task, make_task
from policysearch.tasks.base import batch_size, sample_slice

H = W = 32  # the heads' output size (features at these strides of a 32×32 input)
CHANNELS, STRIDES = (8, 16), (4, 8)

SPECS = {
    "classification": TaskSpec("t", "classification", num_classes=3),
    "multilabel": TaskSpec("t", "multilabel", num_classes=4),
    "segmentation": TaskSpec("t", "segmentation", num_classes=3),
    "detection": TaskSpec("t", "detection", num_classes=2),
    "depth": TaskSpec("t", "depth"),
    "normals": TaskSpec("t", "normals"),
}

# Detection boxes per sample: counts differ (1, 3, none but labelled, 2), so that normalising
# by the batch's centres instead of the sample's own gives other numbers.
BOXES = (
    [[4, 4, 20, 18]],
    [[2, 3, 12, 14], [4, 5, 14, 16], [16, 10, 28, 26]],
    [],
    [[1, 15, 9, 27], [18, 2, 27, 11]],
)
ATTRIBUTES = ([1, 0, -1, 1], [-1, -1, 0, -1], [0, 1, 1, 0], [1, -1, -1, -1])


def labelled_target(kind: str, i: int, size: int, rng: np.random.Generator) -> dict:
    """Sample i's target; the valid pixels or entries differ in number from sample to sample."""
    if kind == "classification":
        return {"label": i % 3}
    if kind == "multilabel":
        return {"attributes": np.array(ATTRIBUTES[i], np.int64)}
    if kind == "segmentation":
        mask = rng.integers(0, 3, (size, size)).astype(np.int64)
        mask[rng.random((size, size)) < 0.2 * i] = 255
        return {"mask": mask}
    if kind == "detection":
        boxes = np.array(BOXES[i], np.float32).reshape(-1, 4)
        return {"boxes": boxes, "box_labels": np.arange(len(boxes)) % 2}
    if kind == "depth":
        depth = rng.uniform(1, 5, (size, size)).astype(np.float32)
        depth[: 3 * i] = 0.0
        depth[-1, :3] = (-1.0, np.nan, np.inf)  # invalid too
        return {"depth": depth}
    if kind == "normals":
        n = rng.normal(size=(size, size, 3)).astype(np.float32)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n[: 3 * i] = 0.0
        n[-1, 0] = np.nan
        return {"normals": n}
    raise AssertionError(kind)


def empty_target(kind: str, size: int) -> dict | None:
    """A target that is present but has no valid entry (None where the kind has no such)."""
    if kind == "multilabel":
        return {"attributes": np.full(4, -1, np.int64)}
    if kind == "segmentation":
        return {"mask": np.full((size, size), 255, np.int64)}
    if kind == "depth":
        return {"depth": np.zeros((size, size), np.float32)}
    if kind == "normals":
        return {"normals": np.zeros((size, size, 3), np.float32)}
    return None


def setup(kind: str, size: int, n: int = 4) -> tuple[Task, list[dict], Any]:
    """The task, ``n`` labelled samples of ``size``×``size`` and a head's output for
    ``n + 2`` samples (spare rows for unlabelled samples)."""
    rng = np.random.default_rng(0)
    task = make_task(SPECS[kind])
    torch.manual_seed(0)
    head = task.make_head(CHANNELS, STRIDES).eval()
    features = [2 * torch.randn(n + 2, c, H // s, W // s)
                for c, s in zip(CHANNELS, STRIDES, strict=True)]
    image = np.zeros((size, size, 3), np.uint8)
    samples = [{"image": image, **labelled_target(kind, i, size, rng)} for i in range(n)]
    with torch.no_grad():
        output = head(features)
    return task, samples, output


def pick(output: Any, rows: list[int]) -> Any:
    """A head's output for some samples (indexing, independent of ``sample_slice``)."""
    if isinstance(output, dict):
        return {k: v[rows] for k, v in output.items()}
    return output[rows]


def alone(task: Task, output: Any, samples: list[dict], i: int) -> Tensor:
    """``loss`` on sample i alone: its output row and its own one-sample collate."""
    return task.loss(pick(output, [i]), task.collate([samples[i]])).float()


def test_every_registered_kind_is_covered() -> None:
    assert set(SPECS) == set(TASK_KINDS)


# 28: targets smaller than the 32×32 head output, so the dense kinds resize their output
@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("kind", sorted(SPECS))
def test_each_entry_is_the_loss_of_that_sample_alone(kind: str, size: int) -> None:
    task, samples, output = setup(kind, size)
    output = pick(output, list(range(len(samples))))
    with torch.no_grad():
        losses = task.sample_losses(output, task.collate(samples))
        expected = torch.stack([alone(task, output, samples, i) for i in range(len(samples))])
    assert losses.shape == (len(samples),) and losses.dtype == torch.float32
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert losses.unique().numel() == len(samples)  # the samples' losses really differ


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_a_sample_without_a_target_is_nan_and_the_others_unchanged(kind: str) -> None:
    task, samples, output = setup(kind, H)
    image = samples[0]["image"]
    mixed = [samples[0], {"image": image}, samples[1], samples[2]]
    rows = [0, 4, 1, 2]
    missing = [1]
    empty = empty_target(kind, H)
    if empty is not None:
        mixed.append({"image": image, **empty})
        rows.append(5)
        missing.append(4)
    out = pick(output, rows)
    with torch.no_grad():
        losses = task.sample_losses(out, task.collate(mixed))
        for i in missing:  # where loss alone is the placeholder
            assert float(alone(task, out, mixed, i)) == 0.0
        labelled = task.sample_losses(pick(output, [0, 1, 2]), task.collate(samples[:3]))
    assert losses.shape == (len(mixed),)
    assert torch.isnan(losses[missing]).all()
    finite = [i for i in range(len(mixed)) if i not in missing]
    assert torch.isfinite(losses[finite]).all()
    torch.testing.assert_close(losses[[0, 2, 3]], labelled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_the_base_loop_agrees_with_each_kind_override(kind: str) -> None:
    task, samples, output = setup(kind, H)
    assert type(task).sample_losses is not Task.sample_losses  # each built-in kind vectorises
    batch = [samples[0], {"image": samples[0]["image"]}, samples[1], samples[3]]
    out = pick(output, [0, 4, 1, 3])
    targets = task.collate(batch)
    with torch.no_grad():
        looped = Task.sample_losses(task, out, targets)
        vectorised = task.sample_losses(out, targets)
    assert torch.isnan(looped[1]) and torch.isfinite(looped[[0, 2, 3]]).all()
    torch.testing.assert_close(vectorised, looped, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_detection_normalises_by_each_samples_own_centres() -> None:
    task, samples, output = setup("detection", H)
    output = pick(output, [0, 1, 2, 3])
    targets = task.collate(samples)
    with torch.no_grad():
        losses = task.sample_losses(output, targets)
        batch_loss = task.loss(output, targets)
    # 1 + 3 + 0 + 2 centres: the batch loss is not the mean of the samples' own losses
    assert not torch.isclose(batch_loss, losses.mean(), rtol=1e-3)
    assert torch.isfinite(losses[2])  # labelled, no box: the focal loss of the negatives


# ---------------------------------------------------------------- the base class's loop


class PairTask(Task):
    """A user's kind: output {"pair": B×2, "scale": B}; targets {"values": B×2 (NaN: none),
    "names": a list of B, "image_size": (H, W)}; loss: mean over the labelled samples of
    scale · L1(pair, values)."""

    kind = "pair-test"
    metrics = (MetricInfo("l1", higher_is_better=False, primary=True),)

    def make_head(self, channels, strides):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def collate(self, samples):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def evaluator(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def loss(self, output: dict[str, Tensor], targets: dict[str, Any]) -> Tensor:
        assert targets["image_size"] == (8, 8)  # kept whole, not cut per sample
        assert len(targets["names"]) == len(targets["values"]) == len(output["scale"])
        keep = ~torch.isnan(targets["values"][:, 0])
        if not keep.any():
            return output["pair"].sum() * 0.0
        err = (output["pair"] - targets["values"]).abs().sum(dim=1) * output["scale"]
        return err[keep].mean()


class LabelledPairTask(PairTask):
    def has_target(self, targets: dict[str, Any]) -> bool:
        return bool((~torch.isnan(targets["values"][:, 0])).any())


def pair_batch(n: int) -> tuple[dict[str, Tensor], dict[str, Any], Tensor]:
    """Output, targets with sample 1 unlabelled, and each sample's loss by hand."""
    pair = torch.arange(2 * n, dtype=torch.float32).reshape(n, 2)
    scale = torch.arange(1, n + 1, dtype=torch.float32)
    values = torch.zeros(n, 2)
    values[:, 0] = 0.5
    values[1] = float("nan")
    by_hand = [float(scale[i] * ((pair[i, 0] - 0.5).abs() + pair[i, 1])) for i in range(n)]
    by_hand[1] = float("nan")
    targets = {"values": values, "names": [f"s{i}" for i in range(n)], "image_size": (8, 8)}
    return {"pair": pair, "scale": scale}, targets, torch.tensor(by_hand)


@pytest.mark.parametrize("n", [2, 3])  # 2: as long as the image size, which must stay whole
def test_the_default_loop_gives_a_user_kind_its_per_sample_losses(n: int) -> None:
    output, targets, by_hand = pair_batch(n)
    with torch.no_grad():
        losses = LabelledPairTask(TaskSpec("p", "pair-test")).sample_losses(output, targets)
    assert losses.shape == (n,) and losses.dtype == torch.float32
    assert torch.isnan(losses[1]) and torch.isfinite(losses[[i for i in range(n) if i != 1]]).all()
    torch.testing.assert_close(losses, by_hand, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_without_has_target_a_user_kind_gets_its_placeholder() -> None:
    output, targets, by_hand = pair_batch(3)
    losses = PairTask(TaskSpec("p", "pair-test")).sample_losses(output, targets)
    assert float(losses[1]) == 0.0
    torch.testing.assert_close(losses[[0, 2]], by_hand[[0, 2]], rtol=1e-5, atol=1e-6)


def test_sample_slice_and_batch_size() -> None:
    targets = {"boxes": [torch.zeros(1, 4), torch.zeros(0, 4)], "valid": torch.tensor([1, 0]),
               "image_size": (8, 8), "names": ("a", 3)}
    assert batch_size(targets) == 2
    assert batch_size({"size": (8, 8), "x": torch.zeros(()), "y": torch.zeros(5, 2)}) == 5
    assert batch_size({"size": (8, 8)}) is None
    one = sample_slice(targets, 1, 2)
    assert one["boxes"][0].shape == (0, 4) and len(one["boxes"]) == 1
    assert one["valid"].tolist() == [0] and one["image_size"] == (8, 8)
    assert one["names"] == ("a", 3)
    nested = sample_slice((torch.arange(6).reshape(3, 2), [torch.ones(1), None, 7]), 2, 3)
    assert nested[0].tolist() == [[4, 5]] and nested[1] == [7]
    with pytest.raises(ValueError, match="list of 2 in a batch of 3"):
        sample_slice(targets, 0, 3)
    with pytest.raises(ValueError, match="shape"):
        sample_slice(torch.zeros(4, 2), 0, 3)


def test_the_default_loop_on_an_empty_batch() -> None:
    output = {"pair": torch.zeros(0, 2), "scale": torch.zeros(0)}
    targets = {"values": torch.zeros(0, 2), "names": [], "image_size": (8, 8)}
    losses = LabelledPairTask(TaskSpec("p", "pair-test")).sample_losses(output, targets)
    assert losses.shape == (0,) and losses.dtype == torch.float32


def test_classification_entries_by_hand() -> None:
    task = make_task(SPECS["classification"])
    output = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]])
    targets = torch.tensor([0, -100, 1])
    losses = task.sample_losses(output, targets)
    expected = [float(F.cross_entropy(output[i], targets[i])) for i in (0, 2)]
    assert torch.isnan(losses[1])
    assert losses[[0, 2]].tolist() == pytest.approx(expected)
