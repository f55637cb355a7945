"""The multilabel task kind: collate, masked BCE, metrics by hand with unknown entries, overfit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policysearch.data.base import TaskSpec
from policysearch.errors import DataError, UserError
from policysearch.models import build_network
from policysearch.tasks import TASK_KINDS, MultilabelTask, make_task

SPEC = TaskSpec("attrs", "multilabel", num_classes=3)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def sample(size: int = 8, **targets: object) -> dict:
    return {"image": np.zeros((size, size, 3), np.uint8), **targets}


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_registered_with_directions_and_primaries() -> None:
    assert TASK_KINDS["multilabel"] is MultilabelTask
    task = make_task(SPEC)
    assert task.primary_metrics() == ("mean_acc", "map")
    assert all(task.direction(m) for m in ("mean_acc", "macro_f1", "map"))
    assert make_task(TaskSpec("one", "multilabel", num_classes=1)).num_labels == 1
    with pytest.raises(UserError) as info:
        make_task(TaskSpec("none", "multilabel"))
    assert info.value.field == "num_classes"


def test_collate_with_a_missing_target_and_a_custom_key() -> None:
    task = make_task(SPEC)
    batch = task.collate([sample(attributes=np.array([1, 0, -1])), sample()])
    assert batch.dtype == torch.float32
    assert batch.tolist() == [[1, 0, -1], [-1, -1, -1]]
    custom = make_task(TaskSpec("a", "multilabel", num_classes=2, key="faces"))
    assert custom.collate([sample(faces=[True, False])]).tolist() == [[1, 0]]


@pytest.mark.parametrize("value, message", [
    (np.array([1, 0]), "2 attributes, expected 3"),
    (np.array([1, 0, 2]), "must be 1 .present., 0 .absent. or -1"),
    (np.array([1, 0, np.nan]), "must be 1 .present., 0 .absent. or -1"),
])
def test_collate_rejects_bad_attribute_vectors(value: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        make_task(SPEC).collate([sample(attributes=value)])
    assert info.value.field == "attributes"


def test_head_output_shape() -> None:
    head = make_task(SPEC).make_head((16, 32), (4, 8))
    out = head([torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)])
    assert out.shape == (2, 3)


def test_loss_by_hand_over_known_entries_only() -> None:
    task = make_task(SPEC)
    targets = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 1.0, -1.0]])
    output = torch.tensor([[2.0, -1.0, 7.0], [-5.0, 0.0, 3.0]], requires_grad=True)
    loss = task.loss(output, targets)
    # known: (x=2, y=1) -> log(1+e^-2); (x=-1, y=0) -> log(1+e^-1); (x=0, y=1) -> log 2
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    grad = output.grad
    assert grad is not None
    unknown = targets == -1
    assert (grad[unknown] == 0).all() and (grad[~unknown] != 0).all()
    # changing the output at unknown entries changes neither the loss nor its gradient
    moved = output.detach().clone()
    moved[unknown] = torch.tensor([-9.0, 4.0, -2.0])
    moved.requires_grad_(True)
    other = task.loss(moved, targets)
    other.backward()
    assert other.item() == pytest.approx(loss.item())
    assert torch.equal(moved.grad, grad)


def test_loss_with_no_known_entry_is_zero_with_a_graph() -> None:
    task = make_task(SPEC)
    output = torch.randn(2, 3, requires_grad=True)
    loss = task.loss(output, task.collate([sample(), sample(attributes=[-1, -1, -1])]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert output.grad is not None and (output.grad == 0).all()


# Four labelled samples, three attributes; probabilities and targets (-1 = unknown):
#   attr 0: p .9 .8 .3 .1 / t 1 0 1 0   -> acc 2/4, F1 (tp1 fp1 fn1) 1/2, AP 1*1/2 + 2/3*1/2 = 5/6
#   attr 1: p .6 .4 .7 .2 / t 1 -1 1 -1 -> acc 1, F1 1, AP 1 (unknowns .4, .2 would hurt nothing
#                                           anyway; they must not count as negatives)
#   attr 2: p .6 .1 .2 .3 / t 0 0 -1 0   -> acc 2/3, F1 0 (one false positive), no positive: no AP
PROBS = [[0.9, 0.6, 0.6], [0.8, 0.4, 0.1], [0.3, 0.7, 0.2], [0.1, 0.2, 0.3]]
TARGETS = [[1, 1, 0], [0, -1, 0], [1, 1, -1], [0, -1, 0]]


def logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[logit(p) for p in row] for row in probs])


def test_metrics_by_hand_with_unknown_entries_pooled_over_batches() -> None:
    ev = make_task(SPEC).evaluator()
    ev.update(logits(PROBS[:3]), torch.tensor(TARGETS[:3], dtype=torch.float32))
    ev.update(logits(PROBS[3:]), torch.tensor(TARGETS[3:], dtype=torch.float32))
    ev.update(logits([[0.99, 0.99, 0.99]]), torch.full((1, 3), -1.0))  # unlabelled: ignored
    m = ev.compute()
    assert m["mean_acc"] == pytest.approx((2 / 4 + 1 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["map"] == pytest.approx((5 / 6 + 1) / 2)


def test_unknown_entries_do_not_count_as_negatives() -> None:
    # attr 1's unknowns carry high scores: were they negatives, acc and AP would drop.
    probs = [row[:] for row in PROBS]
    probs[1][1] = probs[3][1] = 0.95
    ev = make_task(SPEC).evaluator()
    ev.update(logits(probs), torch.tensor(TARGETS, dtype=torch.float32))
    m = ev.compute()
    assert m["mean_acc"] == pytest.approx((2 / 4 + 1 + 2 / 3) / 3)
    assert m["map"] == pytest.approx((5 / 6 + 1) / 2)


def test_attribute_without_known_entries_is_left_out_and_f1_of_all_negatives() -> None:
    ev = make_task(SPEC).evaluator()
    # attr 0 never known; attr 1 all negative and predicted so (F1 = 1 by convention, no AP);
    # attr 2: one positive ranked first -> AP 1
    ev.update(logits([[0.9, 0.2, 0.8], [0.1, 0.3, 0.4]]),
              torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]))
    m = ev.compute()
    assert m == pytest.approx({"mean_acc": 1.0, "macro_f1": 1.0, "map": 1.0})


def test_empty_evaluator_reports_zeros() -> None:
    ev = make_task(SPEC).evaluator()
    assert ev.compute() == {"mean_acc": 0.0, "macro_f1": 0.0, "map": 0.0}
    ev.update(torch.zeros(2, 3), torch.full((2, 3), -1.0))
    assert ev.compute() == {"mean_acc": 0.0, "macro_f1": 0.0, "map": 0.0}


def test_tiny_overfit_with_partial_labels() -> None:
    """Attribute k: a bright patch in colour channel k; some entries unknown, one sample
    unlabelled."""
    rng = np.random.default_rng(0)
    present = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    images, samples = [], []
    for i, row in enumerate(present):
        img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        for k in np.flatnonzero(row):
            img[4 + 8 * k:12 + 8 * k, 4:28, k] = 255
        attrs = row.astype(np.float32)
        if i < 2:
            attrs[i] = -1.0  # unknown entries
        samples.append(sample(32, image=img, attributes=attrs))
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
    samples.append(sample(32))  # unlabelled
    images.append(torch.zeros(3, 32, 32))
    task = make_task(SPEC)
    net = build_network([task])
    targets = task.collate(samples)
    batch = torch.stack(images)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = task.loss(net(batch)[task.name], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:3]), losses
    net.eval()
    ev = task.evaluator()
    with torch.no_grad():
        ev.update(net(batch)[task.name], targets)
    assert ev.compute()["mean_acc"] == pytest.approx(1.0)
