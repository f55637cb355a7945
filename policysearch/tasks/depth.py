"""Monocular depth: FPN-lite decoder to full resolution, positive output; L1 over valid pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policysearch.tasks.base import (
    MetricInfo,
    as_tensor,
    per_sample_mean,
    register_task_kind,
    resize_to,
)
from policysearch.tasks.dense import ActivatedDenseHead, DenseTask


def valid_depth(depth: Tensor) -> Tensor:
    """Pixels with a usable ground-truth depth (> 0 and finite)."""
    return (depth > 0) & torch.isfinite(depth)


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


class DepthTask(DenseTask):
    """Per-pixel depth (float32, ≤ 0 = invalid); targets collate to B×H×W float32 maps."""

    kind = "depth"
    metrics = (
        MetricInfo("abs_err", higher_is_better=False, primary=True),
        MetricInfo("rel_err", higher_is_better=False, primary=True),
    )

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        """Dense 1-channel prediction made positive with softplus; output B×1×H×W."""
        return ActivatedDenseHead(channels, strides, 1, F.softplus, width=self.width)

    def missing_map(self, size: tuple[int, int]) -> Tensor:
        """All invalid (zeros)."""
        return torch.zeros(size)

    def target_map(self, value: Any, size: tuple[int, int]) -> Tensor:
        return as_tensor(value, torch.float32).reshape(size)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        pred = resize_to(output, targets.shape[-2:])[:, 0]
        valid = valid_depth(targets)
        if not valid.any():
            return pred.sum() * 0.0
        return (pred[valid] - targets[valid]).abs().mean()

    def has_target(self, targets: Tensor) -> bool:
        return bool(valid_depth(targets).any())

    def sample_losses(self, output: Tensor, targets: Tensor) -> Tensor:
        """L1 per sample, mean over its valid pixels; NaN where it has none."""
        pred = resize_to(output.float(), targets.shape[-2:])[:, 0]
        return per_sample_mean((pred - targets).abs(), valid_depth(targets))

    def evaluator(self) -> DepthEvaluator:
        return DepthEvaluator()


register_task_kind(DepthTask)
