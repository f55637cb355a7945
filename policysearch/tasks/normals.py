"""Surface normals: FPN-lite decoder to full resolution, unit vectors; 1 − cosine over valid pixels.

Targets are H×W×3 unit vectors (x right, y down, z out of the image); a zero vector marks a pixel
without a normal, and a sample without the target has none. Metrics follow LibMTL's NYUv2
normals: angle error in degrees pooled over every valid pixel of the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policysearch.errors import DataError
from policysearch.tasks.base import (
    MetricInfo,
    as_tensor,
    per_sample_mean,
    register_task_kind,
    resize_to,
)
from policysearch.tasks.dense import ActivatedDenseHead, DenseTask

THRESHOLDS = (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0))
BIN_DEG = 0.01  # width of the median's histogram bins: its error bound, in degrees
NUM_BINS = round(180 / BIN_DEG)


def valid_normals(normals: Tensor) -> Tensor:
    """B×H×W: pixels of a B×3×H×W map with a usable normal (finite, not the zero vector)."""
    return torch.isfinite(normals).all(dim=1) & (normals.abs().sum(dim=1) > 1e-6)


def unit_vectors(maps: Tensor) -> Tensor:
    """B×3×H×W vectors L2-normalised per pixel."""
    return F.normalize(maps, dim=1)


def unit_prediction(output: Tensor, size: Sequence[int]) -> Tensor:
    """The head's B×3×h×w output at ``size``, renormalised (bilinear resizing shortens it)."""
    return unit_vectors(resize_to(output, size))


class NormalsEvaluator:
    """Mean and median angle error (degrees) and the fractions of pixels within 11.25°, 22.5°
    and 30°, over all valid pixels of the split.

    The mean and the fractions are exact. The median comes from a histogram of ``BIN_DEG``-wide
    bins that also sums the angles in each bin; each of the middle order statistics is
    estimated by the mean of its bin, so the median is off by less than ``BIN_DEG`` (exact when
    a bin holds equal angles). Memory is constant (18,000 bins), whatever the split's size.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(NUM_BINS, dtype=torch.float64)
        self.sums = torch.zeros(NUM_BINS, dtype=torch.float64)
        self.within = dict.fromkeys((name for name, _ in THRESHOLDS), 0)
        self.total = 0.0
        self.count = 0

    def update(self, output: Tensor, targets: Tensor) -> None:
        pred = unit_prediction(output.detach().double(), targets.shape[-2:])
        gt = targets.to(pred.device, torch.float64)
        valid = valid_normals(gt)
        if not valid.any():
            return
        cos = (pred * unit_vectors(gt)).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angles = torch.rad2deg(torch.acos(cos))
        bins = (angles / BIN_DEG).long().clamp(0, NUM_BINS - 1)
        self.counts += torch.bincount(bins, minlength=NUM_BINS).cpu().double()
        self.sums += torch.bincount(bins, weights=angles, minlength=NUM_BINS).cpu()
        self.total += float(angles.sum())
        self.count += int(angles.numel())
        for name, limit in THRESHOLDS:
            self.within[name] += int((angles < limit).sum())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            # No valid pixel: zeros rather than NaN (Δm% then leaves the reference out with a
            # warning, as for any metric near zero), as the depth task does.
            return {"mean": 0.0, "median": 0.0, **dict.fromkeys(self.within, 0.0)}
        n = self.count
        median = (self._order_statistic((n - 1) // 2) + self._order_statistic(n // 2)) / 2
        return {"mean": self.total / n, "median": median,
                **{name: hits / n for name, hits in self.within.items()}}

    def _order_statistic(self, k: int) -> float:
        """The k-th smallest angle (0-based), estimated by the mean angle of its bin."""
        cumulative = torch.cumsum(self.counts, dim=0)
        b = int(torch.searchsorted(cumulative, torch.tensor(k + 1, dtype=torch.float64)))
        return float(self.sums[b] / self.counts[b])


class NormalsTask(DenseTask):
    """Per-pixel unit surface normals; all five LibMTL metrics enter Δm%, as in LibMTL.

    Targets collate to B×3×H×W float32 (channels first, like the head's output).
    """

    kind = "normals"
    metrics = (
        MetricInfo("mean", higher_is_better=False, primary=True),
        MetricInfo("median", higher_is_better=False, primary=True),
        *(MetricInfo(name, higher_is_better=True, primary=True) for name, _ in THRESHOLDS),
    )

    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        """Dense 3-channel prediction, L2-normalised per pixel; output B×3×H×W unit vectors."""
        return ActivatedDenseHead(channels, strides, 3, unit_vectors, width=self.width)

    def missing_map(self, size: tuple[int, int]) -> Tensor:
        """All zeros (invalid)."""
        return torch.zeros(3, *size)

    def target_map(self, value: Any, size: tuple[int, int]) -> Tensor:
        """H×W×3 normals, channels moved first; another shape is a ``DataError``."""
        n = as_tensor(value, torch.float32)
        if tuple(n.shape) != (*size, 3):
            raise DataError(f"task {self.name!r}: normals of shape {tuple(n.shape)} for an "
                            f"image of {size[0]}×{size[1]}, expected "
                            f"{size[0]}×{size[1]}×3", field=self.spec.target_key())
        return n.permute(2, 0, 1)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        """1 − cosine similarity, mean over the valid pixels of the batch (LibMTL, MTAN)."""
        pred = unit_prediction(output, targets.shape[-2:])
        valid = valid_normals(targets)
        if not valid.any():
            return pred.sum() * 0.0  # keeps the graph for weightings that need it
        gt = unit_vectors(torch.nan_to_num(targets))
        cos = (pred * gt).sum(dim=1)
        return 1.0 - cos[valid].mean()

    def has_target(self, targets: Tensor) -> bool:
        return bool(valid_normals(targets).any())

    def sample_losses(self, output: Tensor, targets: Tensor) -> Tensor:
        """1 − cosine per sample, mean over its valid pixels; NaN where it has none."""
        pred = unit_prediction(output.float(), targets.shape[-2:])
        gt = unit_vectors(torch.nan_to_num(targets))
        return 1.0 - per_sample_mean((pred * gt).sum(dim=1), valid_normals(targets))

    def evaluator(self) -> NormalsEvaluator:
        return NormalsEvaluator()


register_task_kind(NormalsTask)
