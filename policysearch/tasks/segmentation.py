"""Semantic segmentation: FPN-lite decoder to full resolution; cross-entropy with ignore pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from policysearch.data.base import Sample, TaskSpec
from policysearch.tasks.base import (
    DensePredictionHead,
    MetricInfo,
    Task,
    as_tensor,
    image_size,
    register_task_kind,
    resize_to,
)


class SegmentationEvaluator:
    """mIoU (macro over the classes present in predictions or targets) and pixel accuracy."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index)
        self.pixel_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)

    def update(self, output: Tensor, targets: Tensor) -> None:
        preds = resize_to(output.detach(), targets.shape[-2:]).argmax(dim=1).cpu()
        targets = targets.cpu()
        self.miou.update(preds, targets)
        self.pixel_acc.update(preds, targets)

    def compute(self) -> dict[str, float]:
        if not self.miou.update_called:
            return {"miou": 0.0, "pixel_acc": 0.0}
        return {"miou": float(self.miou.compute()), "pixel_acc": float(self.pixel_acc.compute())}


class SegmentationTask(Task):
    """Per-pixel classes 0..num_classes-1 (0 = background); ``spec.ignore_index`` is unlabeled."""

    kind = "segmentation"
    metrics = (
        MetricInfo("miou", higher_is_better=True, primary=True),
        MetricInfo("pixel_acc", higher_is_better=True, primary=False),
    )

    def __init__(self, spec: TaskSpec, width: int = 32):
        super().__init__(spec)
        self.num_classes = self._require_classes(2)
        self.ignore_index = int(spec.ignore_index)
        self.width = width

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        return DensePredictionHead(channels, strides, self.num_classes, width=self.width)

    def collate(self, samples: Sequence[Sample]) -> Tensor:
        """B×H×W int64 masks; a sample without a mask is all ``ignore_index``."""
        key = self.spec.target_key()
        masks = []
        for s in samples:
            m = s.get(key)
            masks.append(torch.full(image_size(s), self.ignore_index, dtype=torch.long)
                         if m is None else as_tensor(m, torch.long))
        return torch.stack(masks)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        output = resize_to(output, targets.shape[-2:])
        if not (targets != self.ignore_index).any():
            return output.sum() * 0.0
        return F.cross_entropy(output, targets, ignore_index=self.ignore_index)

    def evaluator(self) -> SegmentationEvaluator:
        return SegmentationEvaluator(self.num_classes, self.ignore_index)


register_task_kind(SegmentationTask)
