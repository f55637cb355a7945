"""Task kinds: registry, collate, metrics on hand-computed cases, losses, CenterNet coding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policysearch.data.base import TaskSpec
from policysearch.errors import DataError, UserError
from policysearch.models import build_network
from policysearch.tasks import TASK_KINDS, MetricInfo, Task, make_task, register_task_kind
from policysearch.tasks.base import DenseDecoder
from policysearch.tasks.detection import DetectionTask

CLS = TaskSpec("shape", "classification", num_classes=3)
SEG = TaskSpec("seg", "segmentation", num_classes=3)
DET = TaskSpec("objects", "detection", num_classes=3)
DEPTH = TaskSpec("depth", "depth")
ALL_SPECS = (CLS, SEG, DET, DEPTH)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def logits_for(preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax over dim 1 is ``preds`` (B or B×H×W)."""
    one_hot = F.one_hot(preds, num_classes).float()
    return one_hot.movedim(-1, 1) if preds.ndim > 1 else one_hot


# ---------------------------------------------------------------- registry and metadata


def test_registry_has_the_four_kinds() -> None:
    assert {"classification", "segmentation", "detection", "depth"} <= set(TASK_KINDS)
    for spec in ALL_SPECS:
        task = make_task(spec)
        assert task.kind == spec.kind and task.name == spec.name


def test_unknown_kind_is_a_user_error() -> None:
    with pytest.raises(UserError, match="hologram") as info:
        make_task(TaskSpec("x", "hologram"))
    assert info.value.field == "kind"


def test_metric_directions_and_primaries() -> None:
    assert make_task(CLS).primary_metrics() == ("accuracy",)
    assert make_task(SEG).primary_metrics() == ("miou",)
    assert make_task(DET).primary_metrics() == ("map50",)
    depth = make_task(DEPTH)
    assert depth.primary_metrics() == ("abs_err", "rel_err")
    assert depth.direction("abs_err") is False
    assert make_task(DET).direction("map") is True
    with pytest.raises(UserError):
        depth.direction("accuracy")


def test_register_custom_kind() -> None:
    class Dummy(Task):
        kind = "dummy-kind"
        metrics = (MetricInfo("score", True, True),)

        def make_head(self, channels, strides):  # type: ignore[no-untyped-def]
            return torch.nn.Identity()

        def collate(self, samples):  # type: ignore[no-untyped-def]
            return None

        def loss(self, output, targets):  # type: ignore[no-untyped-def]
            return torch.zeros(())

        def evaluator(self):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    try:
        register_task_kind(Dummy)
        assert isinstance(make_task(TaskSpec("d", "dummy-kind")), Dummy)
        with pytest.raises(ValueError):
            register_task_kind(type("Other", (Dummy,), {}))
    finally:
        TASK_KINDS.pop("dummy-kind", None)


def test_too_few_classes_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:
        make_task(TaskSpec("c", "classification", num_classes=1))
    assert info.value.field == "num_classes"


# ---------------------------------------------------------------- collate


def sample(h: int = 8, w: int = 8, **targets: object) -> dict:
    return {"image": np.zeros((h, w, 3), np.uint8), **targets}


def test_collate_shapes_and_missing_targets() -> None:
    cls, seg, det, depth = (make_task(s) for s in ALL_SPECS)
    samples = [
        sample(label=2, mask=np.ones((8, 8), np.uint8), depth=np.ones((8, 8), np.float32),
               boxes=np.array([[1, 1, 5, 5]], np.float32), box_labels=np.array([1])),
        sample(),  # every target missing (partial labels)
    ]
    labels = cls.collate(samples)
    assert labels.tolist() == [2, -100]
    masks = seg.collate(samples)
    assert masks.shape == (2, 8, 8) and masks.dtype == torch.long
    assert (masks[1] == 255).all()
    depths = depth.collate(samples)
    assert depths.shape == (2, 8, 8) and depths.dtype == torch.float32 and (depths[1] == 0).all()
    boxes = det.collate(samples)
    assert boxes["valid"].tolist() == [True, False]
    assert boxes["boxes"][0].shape == (1, 4) and boxes["labels"][0].tolist() == [1]
    assert boxes["boxes"][1].shape == (0, 4) and boxes["image_size"] == (8, 8)


def test_detection_collate_rejects_bad_labels() -> None:
    det = make_task(DET)
    with pytest.raises(DataError):
        det.collate([sample(boxes=np.zeros((2, 4)), box_labels=np.array([0]))])
    with pytest.raises(DataError):
        det.collate([sample(boxes=np.array([[0, 0, 2, 2]]), box_labels=np.array([3]))])


# ---------------------------------------------------------------- metrics by hand


def test_classification_metrics_by_hand() -> None:
    ev = make_task(CLS).evaluator()
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    target = torch.tensor([0, 1, 1, 1, 2, 0])
    ev.update(logits_for(preds[:4], 3), target[:4])
    ev.update(logits_for(preds[4:], 3), target[4:])
    ev.update(logits_for(torch.tensor([1]), 3), torch.tensor([-100]))  # unlabeled: ignored
    m = ev.compute()
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: 0 -> tp1 fp1 fn1 = 0.5; 1 -> tp2 fn1 = 0.8; 2 -> tp1 fp1 = 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_segmentation_metrics_with_ignore_pixels() -> None:
    ev = make_task(SEG).evaluator()
    target = torch.tensor([[[0, 0, 1], [1, 1, 255], [2, 2, 255]]])
    preds = torch.tensor([[[0, 1, 1], [1, 1, 0], [2, 0, 2]]])
    ev.update(logits_for(preds, 3), target)
    m = ev.compute()
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    # IoU: class 0 = 1/3, class 1 = 3/4, class 2 = 1/2 (ignored pixels count for nothing)
    assert m["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_depth_metrics_by_hand_pooled_over_batches() -> None:
    ev = make_task(DEPTH).evaluator()
    ev.update(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[2.0, 2.0], [0, -1]]]))
    ev.update(torch.ones(1, 1, 2, 2), torch.tensor([[[4.0, 0.0], [0.0, 0.0]]]))
    m = ev.compute()
    # valid pixels: (1 vs 2), (2 vs 2), (1 vs 4)
    assert m["abs_err"] == pytest.approx((1 + 0 + 3) / 3)
    assert m["rel_err"] == pytest.approx((1 / 2 + 0 + 3 / 4) / 3)


def det_targets(boxes: list[list[list[float]]], labels: list[list[int]]) -> dict:
    return {
        "boxes": [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        "labels": [torch.tensor(lab, dtype=torch.long) for lab in labels],
        "valid": torch.ones(len(boxes), dtype=torch.bool),
        "image_size": (64, 64),
    }


def dets(boxes: list[list[float]], labels: list[int], score: float = 0.9) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.full((len(labels),), score),
            "labels": torch.tensor(labels, dtype=torch.long)}


GT_BOXES = [[[0, 0, 10, 10], [20, 20, 40, 36]], [[5, 30, 25, 60]]]
GT_LABELS = [[0, 1], [2]]


def test_detection_map_perfect() -> None:
    ev = make_task(DET).evaluator()
    ev.update_detections([dets(b, lab) for b, lab in zip(GT_BOXES, GT_LABELS, strict=True)],
                         det_targets(GT_BOXES, GT_LABELS))
    m = ev.compute()
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)


def test_detection_map_shifted_boxes() -> None:
    ev = make_task(DET).evaluator()
    # shifted by 2.5 px: IoU = (10 - 2.5) / (10 + 2.5) = 0.6
    ev.update_detections([dets([[2.5, 0, 12.5, 10]], [0])], det_targets([[[0, 0, 10, 10]]], [[0]]))
    m = ev.compute()
    assert m["map50"] == pytest.approx(1.0)
    assert 0.0 < m["map"] < 1.0


def test_detection_map_no_predictions_and_empty_ground_truth() -> None:
    ev = make_task(DET).evaluator()
    ev.update_detections([dets([], []), dets([], [])], det_targets(GT_BOXES, GT_LABELS))
    assert ev.compute() == {"map50": 0.0, "map": 0.0}
    for preds in ([dets([[1, 1, 5, 5]], [0])], [dets([], [])]):
        ev = make_task(DET).evaluator()
        ev.update_detections(preds, det_targets([[]], [[]]))
        m = ev.compute()
        assert all(math.isfinite(v) for v in m.values()) and m["map50"] == 0.0
    assert make_task(DET).evaluator().compute() == {"map50": 0.0, "map": 0.0}


# ---------------------------------------------------------------- CenterNet coding


def perfect_output(task: DetectionTask, targets: dict, out_size: tuple[int, int]) -> dict:
    enc = task.encode(targets["boxes"], targets["labels"], out_size)
    heat = enc["heatmap"].clamp(1e-6, 1 - 1e-6)
    return {"heatmap": torch.log(heat / (1 - heat)), "size": enc["size"],
            "offset": enc["offset"]}


def test_encode_decode_roundtrip() -> None:
    task = make_task(DET)
    boxes = [[[5, 7, 25, 30], [33, 30, 61, 50], [40, 2, 47, 9]], [[10, 10, 21, 41]]]
    labels = [[0, 2, 2], [1]]
    targets = det_targets(boxes, labels)
    enc = task.encode(targets["boxes"], targets["labels"], (16, 16))
    assert enc["heatmap"].shape == (2, 3, 16, 16)
    assert int((enc["heatmap"] == 1).sum()) == 4 and int(enc["mask"].sum()) == 4
    decoded = task.decode(perfect_output(task, targets, (16, 16)), (64, 64))
    for det, gt_boxes, gt_labels in zip(decoded, targets["boxes"], targets["labels"], strict=True):
        assert len(det["boxes"]) == len(gt_boxes)
        order = torch.argsort(det["boxes"][:, 0])
        gt_order = torch.argsort(gt_boxes[:, 0])
        assert torch.allclose(det["boxes"][order], gt_boxes[gt_order], atol=1.0)
        assert det["labels"][order].tolist() == gt_labels[gt_order].tolist()


def test_perfect_output_scores_full_map_through_evaluator() -> None:
    task = make_task(DET)
    targets = det_targets(GT_BOXES, GT_LABELS)
    ev = task.evaluator()
    ev.update(perfect_output(task, targets, (16, 16)), targets)
    assert ev.compute()["map50"] == pytest.approx(1.0)


def test_nms_removes_a_duplicate_of_the_same_class_only() -> None:
    task = make_task(DET)
    heat = torch.full((1, 3, 16, 16), -10.0)
    heat[0, 0, 8, 8] = 4.0
    heat[0, 0, 8, 10] = 3.0  # two cells away: survives max-pool, same class -> NMS duplicate
    heat[0, 1, 8, 10] = 3.0  # same place, other class: kept
    size = torch.full((1, 2, 16, 16), 10.0)  # 40 px boxes 8 px apart: IoU = 32 / 48
    output = {"heatmap": heat, "size": size, "offset": torch.zeros(1, 2, 16, 16)}
    (det,) = task.decode(output, (64, 64))
    assert sorted(det["labels"].tolist()) == [0, 1]
    assert det["scores"].max() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())


def test_decode_keeps_at_most_max_detections() -> None:
    task = make_task(DET)
    output = {"heatmap": torch.zeros(2, 3, 16, 16), "size": torch.ones(2, 2, 16, 16),
              "offset": torch.zeros(2, 2, 16, 16)}
    output["heatmap"][:, :, ::2, ::2] = 5.0  # 192 separate peaks per image
    decoded = task.decode(output, (64, 64))
    assert all(len(d["boxes"]) == task.max_detections for d in decoded)


# ---------------------------------------------------------------- losses and heads


def full_batch(n: int = 4, size: int = 32) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x1, y1 = rng.integers(0, size // 2, 2)
        depth = rng.uniform(0.5, 3.0, (size, size)).astype(np.float32)
        depth[:2] = 0.0  # an invalid band
        out.append(sample(size, size, label=int(rng.integers(3)),
                          mask=rng.integers(0, 3, (size, size)).astype(np.uint8),
                          boxes=np.array([[x1, y1, x1 + 10, y1 + 12]], np.float32),
                          box_labels=np.array([int(rng.integers(3))]), depth=depth))
    return out


def test_losses_finite_positive_and_gradients_reach_encoder() -> None:
    tasks = [make_task(s) for s in ALL_SPECS]
    net = build_network(tasks)
    samples = full_batch()
    images = torch.randn(len(samples), 3, 32, 32)
    for task in tasks:
        net.zero_grad()
        out = net(images)
        loss = task.loss(out[task.name], task.collate(samples))
        assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0, task.name
        loss.backward()
        stem = net.encoder.stem[0].weight.grad
        assert stem is not None and stem.abs().sum() > 0, task.name


def test_depth_loss_ignores_invalid_pixels() -> None:
    task = make_task(DEPTH)
    target = torch.tensor([[[1.0, 2.0], [0.0, -3.0]]])
    pred = torch.tensor([[[[1.5, 2.5], [7.0, 9.0]]]])
    other = pred.clone()
    other[0, 0, 1] = torch.tensor([100.0, 0.1])
    assert task.loss(pred, target) == pytest.approx(0.5)
    assert task.loss(other, target) == task.loss(pred, target)


def test_losses_with_all_targets_missing_are_zero_with_a_graph() -> None:
    tasks = [make_task(s) for s in ALL_SPECS]
    net = build_network(tasks)
    out = net(torch.randn(2, 3, 32, 32))
    for task in tasks:
        loss = task.loss(out[task.name], task.collate([sample(32, 32), sample(32, 32)]))
        assert loss.item() == 0.0 and loss.requires_grad, task.name


def test_dense_losses_accept_input_sides_not_divisible_by_the_stride() -> None:
    tasks = [make_task(s) for s in ALL_SPECS]
    net = build_network(tasks)
    samples = full_batch(2, 36)
    images = torch.randn(2, 3, 36, 36)
    out = net(images)
    for task in tasks:
        loss = task.loss(out[task.name], task.collate(samples))
        assert torch.isfinite(loss), task.name
        ev = task.evaluator()
        ev.update(out[task.name], task.collate(samples))
        assert all(math.isfinite(v) for v in ev.compute().values())


def test_dense_decoder_upsamples_coarse_encoders_to_the_requested_stride() -> None:
    dec = DenseDecoder((32, 64), (8, 16), width=16, out_stride=4)
    y = dec([torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)])
    assert y.shape == (2, 16, 16, 16)
    dec = DenseDecoder((16, 32, 64), (2, 4, 8), width=8, out_stride=4)
    assert dec.used == (1, 2)
    y = dec([torch.randn(1, 16, 16, 16), torch.randn(1, 32, 8, 8), torch.randn(1, 64, 4, 4)])
    assert y.shape == (1, 8, 8, 8)


def test_detection_head_bias_prior_and_output_shapes() -> None:
    task = make_task(DET)
    head = task.make_head((32, 64, 64), (4, 8, 16))
    out = head([torch.randn(2, 32, 16, 16), torch.randn(2, 64, 8, 8), torch.randn(2, 64, 4, 4)])
    assert out["heatmap"].shape == (2, 3, 16, 16)
    assert out["size"].shape == out["offset"].shape == (2, 2, 16, 16)
    assert head.heatmap[-1].bias.detach().allclose(torch.tensor(-2.19), atol=0.01)


# ---------------------------------------------------------------- tiny overfit per head


def synthetic(n: int = 8, size: int = 32) -> tuple[torch.Tensor, list[dict]]:
    """Images with one coloured rectangle; its colour is the class, all targets agree."""
    rng = np.random.default_rng(1)
    colours = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.uint8)
    images, samples = [], []
    for i in range(n):
        cls = i % 3
        img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        w, h = rng.integers(8, 16, 2)
        x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
        img[y1:y1 + h, x1:x1 + w] = colours[cls]
        mask = np.zeros((size, size), np.uint8)
        mask[y1:y1 + h, x1:x1 + w] = cls + 1
        depth = np.full((size, size), 4.0, np.float32)
        depth[y1:y1 + h, x1:x1 + w] = 1.0 + cls
        depth[0] = 0.0
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
        samples.append(sample(size, size, image=img, label=cls, mask=mask, depth=depth,
                              boxes=np.array([[x1, y1, x1 + w, y1 + h]], np.float32),
                              box_labels=np.array([cls])))
    return torch.stack(images), samples


@pytest.mark.parametrize(
    "spec, steps, factor, metric, bound",
    [
        (CLS, 100, 0.1, "accuracy", 0.99),
        (TaskSpec("seg", "segmentation", num_classes=4), 150, 0.3, "miou", 0.8),
        (DET, 200, 0.3, "map50", 0.8),
        (DEPTH, 150, 0.3, "abs_err", 0.5),
    ],
    ids=["classification", "segmentation", "detection", "depth"],
)
def test_tiny_overfit(spec: TaskSpec, steps: int, factor: float, metric: str,
                      bound: float) -> None:
    images, samples = synthetic()
    task = make_task(spec)
    net = build_network([task])
    targets = task.collate(samples)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = task.loss(net(images)[task.name], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    assert last < factor * first, (first, last)
    net.eval()
    ev = task.evaluator()
    with torch.no_grad():
        ev.update(net(images)[task.name], targets)
    value = ev.compute()[metric]
    assert (value >= bound) if task.direction(metric) else (value <= bound), value
