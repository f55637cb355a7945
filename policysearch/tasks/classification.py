"""Image classification: pooled coarsest feature → MLP → logits; cross-entropy.

``PooledTask`` is the base of the image-level kinds (classification, multilabel): that head, one
output per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from policysearch.data.base import Sample, TaskSpec
from policysearch.tasks.base import MetricInfo, MetricsEvaluator, Task, register_task_kind

MISSING = -100  # label of a sample without this target (partial labels); ignored by loss/metrics


class ClassificationHead(nn.Module):
    """Average- and max-pooled coarsest feature, then a one-hidden-layer MLP."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        # Max pooling keeps "is this shape present" evidence that averaging dilutes.
        return self.mlp(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))


class ClassificationEvaluator(MetricsEvaluator):
    """Accuracy (micro) and macro F1 over all labelled samples of a split."""

    def __init__(self, num_classes: int):
        super().__init__(accuracy=MulticlassAccuracy(num_classes, average="micro"),
                         macro_f1=MulticlassF1Score(num_classes, average="macro"))

    def update(self, output: Tensor, targets: Tensor) -> None:
        preds = output.detach().argmax(dim=1).cpu()
        targets = targets.cpu()
        keep = targets != MISSING
        if keep.any():
            self.add(preds[keep], targets[keep])


class PooledTask(Task):
    """An image-level task: ``ClassificationHead`` on the coarsest features, one output per
    class of ``spec.num_classes`` (``num_classes``, at least ``min_classes``)."""

    min_classes: ClassVar[int]

    def __init__(self, spec: TaskSpec):
        super().__init__(spec)
        self.num_classes = self._require_classes(self.min_classes)

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        return ClassificationHead(channels[-1], self.num_classes)


class ClassificationTask(PooledTask):
    """Single-label classification; the target is an int in 0..num_classes-1."""

    kind = "classification"
    metrics = (
        MetricInfo("accuracy", higher_is_better=True, primary=True),
        MetricInfo("macro_f1", higher_is_better=True, primary=False),
    )
    min_classes = 2

    def collate(self, samples: Sequence[Sample]) -> Tensor:
        key = self.spec.target_key()
        labels = [s.get(key) for s in samples]
        return torch.tensor([MISSING if v is None else int(v) for v in labels], dtype=torch.long)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        if not (targets != MISSING).any():
            return output.sum() * 0.0  # keeps the graph for weightings that need it
        return F.cross_entropy(output, targets, ignore_index=MISSING)

    def has_target(self, targets: Tensor) -> bool:
        return bool((targets != MISSING).any())

    def sample_losses(self, output: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy per sample; NaN where the label is missing."""
        losses = F.cross_entropy(output.float(), targets, ignore_index=MISSING, reduction="none")
        return torch.where(targets != MISSING, losses, torch.nan)

    def evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator(self.num_classes)


register_task_kind(ClassificationTask)
