"""The normals task kind: collate, masked 1 − cosine loss, angle metrics on known angles,
overfit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policysearch.data.base import TaskSpec
from policysearch.errors import DataError
from policysearch.models import build_network
from policysearch.tasks import TASK_KINDS, NormalsTask, make_task
from policysearch.tasks.normals import BIN_DEG

SPEC = TaskSpec("normals", "normals")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def sample(h: int = 8, w: int = 8, **targets: object) -> dict:
    return {"image": np.zeros((h, w, 3), np.uint8), **targets}


def random_unit(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(*shape, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def rotated(normals: np.ndarray, degrees: np.ndarray | float,
            rng: np.random.Generator) -> np.ndarray:
    """``normals`` (…×3 unit) each turned by ``degrees`` towards a random perpendicular."""
    u = np.cross(normals, random_unit(normals.shape[:-1], rng))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    a = np.deg2rad(np.broadcast_to(degrees, normals.shape[:-1]))[..., None]
    return np.cos(a) * normals + np.sin(a) * u


def channels_first(maps: np.ndarray) -> torch.Tensor:
    """B×H×W×3 → B×3×H×W tensor."""
    return torch.from_numpy(np.ascontiguousarray(maps)).permute(0, 3, 1, 2)


def case(degrees: np.ndarray, invalid: np.ndarray, rng: np.random.Generator,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, target): target unit normals with zeros where ``invalid``; output turned by
    ``degrees`` per pixel and scaled by a random positive length (the metric normalises)."""
    gt = random_unit(degrees.shape, rng)
    pred = rotated(gt, degrees, rng) * rng.uniform(0.5, 2.0, (*degrees.shape, 1))
    gt[invalid] = 0.0
    pred[invalid] = random_unit((int(invalid.sum()),), rng)  # wrong, but must not count
    return channels_first(pred).float(), channels_first(gt).float()


def test_registered_with_directions_and_primaries() -> None:
    assert TASK_KINDS["normals"] is NormalsTask
    task = make_task(SPEC)
    names = ("mean", "median", "within_11_25", "within_22_5", "within_30")
    assert task.primary_metrics() == names
    assert [task.direction(n) for n in names] == [False, False, True, True, True]


@pytest.mark.parametrize("angle, within", [(10.0, (1.0, 1.0, 1.0)), (25.0, (0.0, 0.0, 1.0))])
def test_constant_rotation_gives_that_angle(angle: float, within: tuple[float, ...]) -> None:
    rng = np.random.default_rng(0)
    invalid = rng.random((2, 6, 7)) < 0.3
    output, target = case(np.full((2, 6, 7), angle), invalid, rng)
    ev = make_task(SPEC).evaluator()
    ev.update(output, target)
    m = ev.compute()
    assert m["mean"] == pytest.approx(angle, abs=1e-4)
    assert m["median"] == pytest.approx(angle, abs=1e-4)
    assert (m["within_11_25"], m["within_22_5"], m["within_30"]) == within


def test_mixed_angles_pooled_over_batches_with_invalid_pixels() -> None:
    rng = np.random.default_rng(1)
    ev = make_task(SPEC).evaluator()
    # batch 1: 5° and 40° valid, two invalid; batch 2: 15° and 25° valid, an all-invalid sample
    ev.update(*case(np.array([[[5.0, 40.0, 1.0, 2.0]]]), np.array([[[0, 0, 1, 1]]], bool), rng))
    ev.update(*case(np.array([[[15.0, 25.0]], [[3.0, 3.0]]]),
                    np.array([[[0, 0]], [[1, 1]]], bool), rng))
    m = ev.compute()
    assert m["mean"] == pytest.approx((5 + 15 + 25 + 40) / 4, abs=1e-4)
    assert m["median"] == pytest.approx((15 + 25) / 2, abs=1e-4)  # even count: middle two
    assert m["within_11_25"] == 0.25 and m["within_22_5"] == 0.5 and m["within_30"] == 0.75
    ev.update(*case(np.array([[[50.0]]]), np.zeros((1, 1, 1), bool), rng))
    assert ev.compute()["median"] == pytest.approx(25.0, abs=1e-4)  # odd count: the middle one


def test_median_is_within_the_bin_width_and_the_rest_exact() -> None:
    rng = np.random.default_rng(2)
    degrees = rng.uniform(0, 90, (3, 16, 16))
    invalid = rng.random(degrees.shape) < 0.2
    output, target = case(degrees, invalid, rng)
    ev = make_task(SPEC).evaluator()
    ev.update(output[:2], target[:2])
    ev.update(output[2:], target[2:])
    m = ev.compute()
    # the angles the float32 maps really hold (the exact reference the metric must match)
    o, t = output.double(), target.double()
    cos = (o * t).sum(1) / o.norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)
    angles = np.degrees(np.arccos(np.clip(cos.numpy()[~invalid], -1, 1)))
    assert m["mean"] == pytest.approx(angles.mean(), rel=1e-9)
    assert abs(m["median"] - np.median(angles)) < BIN_DEG
    for name, limit in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30)):
        assert m[name] == pytest.approx(np.mean(angles < limit), abs=1e-12)


def test_output_of_another_size_is_resized() -> None:
    a = math.radians(10)
    tilted = np.array([math.sin(a), 0.0, math.cos(a)]) * 3.0  # 10° off, not unit length
    output = channels_first(np.broadcast_to(tilted, (1, 4, 4, 3))).float()
    target = channels_first(np.broadcast_to(np.array([0.0, 0.0, 1.0]), (1, 8, 8, 3))).float()
    ev = make_task(SPEC).evaluator()
    ev.update(output, target)
    assert ev.compute()["median"] == pytest.approx(10.0, abs=1e-4)
    loss = make_task(SPEC).loss(output, target)
    assert loss.item() == pytest.approx(1 - math.cos(a), abs=1e-6)


def test_empty_evaluator_reports_zeros() -> None:
    ev = make_task(SPEC).evaluator()
    ev.update(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    assert set(ev.compute().values()) == {0.0}


def test_collate_with_a_missing_target() -> None:
    task = make_task(SPEC)
    normals = random_unit((6, 5), np.random.default_rng(5)).astype(np.float32)
    batch = task.collate([sample(6, 5, normals=normals), sample(6, 5)])
    assert batch.shape == (2, 3, 6, 5) and batch.dtype == torch.float32
    assert torch.equal(batch[0, :, 2, 3], torch.from_numpy(normals[2, 3]))
    assert (batch[1] == 0).all()


@pytest.mark.parametrize("shape", [(6, 5), (6, 4, 3), (5, 6, 3)])
def test_collate_rejects_normals_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match="expected 6×5×3") as info:
        make_task(SPEC).collate([sample(6, 5, normals=np.zeros(shape, np.float32))])
    assert info.value.field == "normals"


def test_head_output_is_unit_vectors_at_input_size() -> None:
    head = make_task(SPEC).make_head((16, 32), (4, 8))
    out = head([torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)])
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_loss_by_hand_and_invalid_pixels_change_nothing() -> None:
    task = make_task(SPEC)
    target = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]], [[1.0, 0.0]]]])  # 1×3×1×2; 2nd invalid
    s = math.sin(math.radians(60))
    pred = torch.tensor([[[[s, 0.3]], [[0.0, -2.0]], [[0.5, 0.1]]]], requires_grad=True)
    loss = task.loss(pred, target)
    assert loss.item() == pytest.approx(1 - 0.5, abs=1e-6)  # the valid pixel is off by 60°
    loss.backward()
    assert pred.grad is not None and (pred.grad[..., 1] == 0).all()
    moved = pred.detach().clone()
    moved[..., 1] = torch.tensor([[-4.0], [1.0], [0.2]])
    moved.requires_grad_(True)
    other = task.loss(moved, target)
    other.backward()
    assert other.item() == loss.item() and torch.equal(moved.grad, pred.grad)
    # a NaN in an invalid pixel's target neither counts nor poisons the gradient
    poisoned = target.clone()
    poisoned[0, 0, 0, 1] = float("nan")
    fresh = pred.detach().clone().requires_grad_(True)
    task.loss(fresh, poisoned).backward()
    assert torch.equal(fresh.grad, pred.grad)


def test_loss_with_no_valid_pixel_is_zero_with_a_graph() -> None:
    task = make_task(SPEC)
    output = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = task.loss(output, task.collate([sample(4, 4), sample(4, 4)]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert output.grad is not None


def test_tiny_overfit() -> None:
    """A coloured rectangle tilts the surface; its colour says which way."""
    rng = np.random.default_rng(6)
    colours = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.uint8)
    tilts = np.array([[0.6, 0.0, 0.8], [0.0, -0.6, 0.8], [-0.6, 0.0, 0.8]], np.float32)
    images, samples = [], []
    for i in range(4):
        img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        normals = np.broadcast_to(np.float32([0, 0, 1]), (32, 32, 3)).copy()
        x, y = rng.integers(0, 16, 2)
        img[y:y + 14, x:x + 14] = colours[i % 3]
        normals[y:y + 14, x:x + 14] = tilts[i % 3]
        normals[:3] = 0.0  # an invalid band
        samples.append(sample(32, 32, image=img, normals=normals))
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
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
