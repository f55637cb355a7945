"""Per-pixel tasks (segmentation, depth, normals): their shared base task and head.

``DenseTask`` keeps the decoder width and collates one target map per sample, a sample without
the target getting an all-invalid map; ``ActivatedDenseHead`` is a ``DensePredictionHead`` whose
output goes through a per-pixel activation.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from policysearch.data.base import Sample, TaskSpec
from policysearch.tasks.base import DensePredictionHead, Task, image_size


class ActivatedDenseHead(nn.Module):
    """``DensePredictionHead`` with ``out_channels`` maps, then ``activation``; B×C×H×W."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int,
                 activation: Callable[[Tensor], Tensor], width: int = 32):
        super().__init__()
        self.dense = DensePredictionHead(channels, strides, out_channels, width=width)
        self.activation = activation

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.activation(self.dense(features))


class DenseTask(Task):
    """A per-pixel task: heads on the ``DenseDecoder`` of ``width`` channels, targets stacked
    from one map per sample (``target_map``, or ``missing_map`` for a sample without one)."""

    def __init__(self, spec: TaskSpec, width: int = 32):
        super().__init__(spec)
        self.width = width

    def collate(self, samples: Sequence[Sample]) -> Tensor:
        """The samples' target maps, stacked along a new batch dimension."""
        key = self.spec.target_key()
        maps = []
        for s in samples:
            value = s.get(key)
            size = image_size(s)
            maps.append(self.missing_map(size) if value is None
                        else self.target_map(value, size))
        return torch.stack(maps)

    @abstractmethod
    def missing_map(self, size: tuple[int, int]) -> Tensor:
        """The all-invalid target of an image of ``size`` (H, W) without this target."""

    @abstractmethod
    def target_map(self, value: Any, size: tuple[int, int]) -> Tensor:
        """A sample's target ``value`` as a tensor, for an image of ``size`` (H, W)."""
