"""Monocular depth: FPN-lite decoder to full resolution, positive output; L1 over valid pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def valid_depth(depth: Tensor) -> Tensor:
    """Pixels with a usable ground-truth depth (> 0 and finite)."""
    return (depth > 0) & torch.isfinite(depth)


class DepthHead(nn.Module):
    """Dense 1-channel prediction made positive with softplus; output B×1×H×W."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], width: int = 32):
        super().__init__()
        self.dense = DensePredictionHead(channels, strides, 1, width=width)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return F.softplus(self.dense(features))


class DepthEvaluator:
    """Mean absolute and mean relative error, pooled over all valid pixels of the split."""

    def __init__(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0

    def update(self, output: Tensor, targets: Tensor) -> None:
        pred = resize_to(output.detach(), targets.shape[-2:])[:, 0].double()
        gt = targets.to(pred.device).double()
        valid = valid_depth(gt)
        err = (pred[valid] - gt[valid]).abs()
        self.abs_sum += float(err.sum())
        self.rel_sum += float((err / gt[valid]).sum())
        self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        # No valid pixel at all: report 0 error rather than NaN (Δm% then leaves the
        # reference out with a warning, as for any metric near zero).
        n = max(self.count, 1)
        return {"abs_err": self.abs_sum / n, "rel_err": self.rel_sum / n}


class DepthTask(Task):
    """Per-pixel depth (float32, ≤ 0 = invalid)."""

    kind = "depth"
    metrics = (
        MetricInfo("abs_err", higher_is_better=False, primary=True),
        MetricInfo("rel_err", higher_is_better=False, primary=True),
    )

    def __init__(self, spec: TaskSpec, width: int = 32):
        super().__init__(spec)
        self.width = width

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        return DepthHead(channels, strides, width=self.width)

    def collate(self, samples: Sequence[Sample]) -> Tensor:
        """B×H×W float32 depth maps; a sample without depth is all invalid (zeros)."""
        key = self.spec.target_key()
        maps = []
        for s in samples:
            d = s.get(key)
            maps.append(torch.zeros(image_size(s)) if d is None
                        else as_tensor(d, torch.float32).reshape(image_size(s)))
        return torch.stack(maps)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        pred = resize_to(output, targets.shape[-2:])[:, 0]
        valid = valid_depth(targets)
        if not valid.any():
            return pred.sum() * 0.0
        return (pred[valid] - targets[valid]).abs().mean()

    def evaluator(self) -> DepthEvaluator:
        return DepthEvaluator()


register_task_kind(DepthTask)
