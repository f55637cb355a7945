"""Semantic segmentation: FPN-lite decoder to full resolution; cross-entropy with ignore pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from policysearch.data.base import TaskSpec
from policysearch.tasks.base import (
    DensePredictionHead,
    MetricInfo,
    MetricsEvaluator,
    as_tensor,
    per_sample_mean,
    register_task_kind,
    resize_to,
)
from policysearch.tasks.dense import DenseTask


class SegmentationEvaluator(MetricsEvaluator):
    """mIoU (macro over the classes present in predictions or targets) and pixel accuracy."""

    def __init__(self, num_classes: int, ignore_index: int):
        super().__init__(
            miou=MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
            pixel_acc=MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index))

    def update(self, output: Tensor, targets: Tensor) -> None:
        preds = resize_to(output.detach(), targets.shape[-2:]).argmax(dim=1).cpu()
        self.add(preds, targets.cpu())


class SegmentationTask(DenseTask):
    """Per-pixel classes 0..num_classes-1 (0 = background); ``spec.ignore_index`` is unlabeled.

    Targets collate to B×H×W int64 masks.
    """

    kind = "segmentation"
    metrics = (
        MetricInfo("miou", higher_is_better=True, primary=True),
        MetricInfo("pixel_acc", higher_is_better=True, primary=False),
    )

    def __init__(self, spec: TaskSpec, width: int = 32):
        super().__init__(spec, width)
        self.num_classes = self._require_classes(2)
        self.ignore_index = int(spec.ignore_index)

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        return DensePredictionHead(channels, strides, self.num_classes, width=self.width)

    def missing_map(self, size: tuple[int, int]) -> Tensor:
        """All ``ignore_index``."""
        return torch.full(size, self.ignore_index, dtype=torch.long)

    def target_map(self, value: Any, size: tuple[int, int]) -> Tensor:
        return as_tensor(value, torch.long)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        output = resize_to(output, targets.shape[-2:])
        if not (targets != self.ignore_index).any():
            return output.sum() * 0.0
        return F.cross_entropy(output, targets, ignore_index=self.ignore_index)

    def has_target(self, targets: Tensor) -> bool:
        return bool((targets != self.ignore_index).any())

    def sample_losses(self, output: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy per sample, mean over its labelled pixels; NaN where it has none."""
        output = resize_to(output.float(), targets.shape[-2:])
        pixels = F.cross_entropy(output, targets, ignore_index=self.ignore_index,
                                 reduction="none")
        return per_sample_mean(pixels, targets != self.ignore_index)

    def evaluator(self) -> SegmentationEvaluator:
        return SegmentationEvaluator(self.num_classes, self.ignore_index)


register_task_kind(SegmentationTask)
