"""The task concept: head factory, target collation, loss, metrics and their directions.

One subclass per task *kind* (classification, segmentation, …), registered in ``TASK_KINDS``;
``make_task(spec)`` builds the task of a dataset's ``TaskSpec``. ``DenseDecoder`` is the FPN-lite
decoder shared by the dense heads (segmentation, depth, detection); ``MetricsEvaluator`` the base
of the evaluators made of torchmetrics metrics (classification, segmentation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from policysearch.data.base import Sample, TaskSpec
from policysearch.errors import UserError


@dataclass(frozen=True)
class MetricInfo:
    """A metric of a task kind: its name, direction and whether it enters Δm%."""

    name: str
    higher_is_better: bool
    primary: bool


class Evaluator(Protocol):
    """Accumulates one task's metrics over the batches of a split."""

    def update(self, output: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


class MetricsEvaluator:
    """An evaluator over named torchmetrics metrics that all see the same batches; every value
    is 0.0 while none was added. Subclasses turn ``update``'s output and targets into
    predictions and pass them to ``add``."""

    def __init__(self, **metrics: Metric):
        self.metrics = metrics
        self.added = False

    def add(self, preds: Tensor, targets: Tensor) -> None:
        """Update every metric with one batch of predictions and targets."""
        for metric in self.metrics.values():
            metric.update(preds, targets)
        self.added = True

    def compute(self) -> dict[str, float]:
        if not self.added:
            return dict.fromkeys(self.metrics, 0.0)
        return {name: float(metric.compute()) for name, metric in self.metrics.items()}


class Task(ABC):
    """A task of the multi-task network; ``kind`` selects the subclass (see ``TASK_KINDS``)."""

    kind: ClassVar[str]
    metrics: ClassVar[tuple[MetricInfo, ...]]

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name

    @abstractmethod
    def make_head(self, channels: Sequence[int], strides: Sequence[int]) -> nn.Module:
        """A head mapping the encoder's features (fine→coarse, with these channels and strides
        relative to the input image) to this task's output."""

    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> Any:
        """The targets of a batch of samples, as CPU tensors (or lists of them)."""

    def to_device(self, targets: Any, device: torch.device | str) -> Any:
        """Move collated targets to ``device`` (tensors inside dicts, lists and tuples)."""
        return move_to(targets, device)

    @abstractmethod
    def loss(self, output: Any, targets: Any) -> Tensor:
        """Scalar training loss of a batch (mean over the batch)."""

    def has_target(self, targets: Any) -> bool:
        """Whether collated ``targets`` hold any target of this task, i.e. whether ``loss`` on
        them is a real loss rather than a ``* 0.0`` placeholder. The default says yes: a kind
        whose samples can lack a target overrides it so that ``sample_losses`` gives them NaN."""
        return True

    def sample_losses(self, output: Any, targets: Any) -> Tensor:
        """Each sample's own loss: B float32 on the output's device, for scoring a trained model
        sample by sample (under ``torch.no_grad()``: no gradient is promised).

        Entry i equals, up to float tolerance, ``loss`` on sample i alone: on the one-sample
        slices ``sample_slice(output, i, B)`` and ``sample_slice(targets, i, B)``. It is NaN
        where sample i has no target of this task (``has_target`` False on its slice, where
        ``loss`` would return its ``* 0.0`` placeholder), so "no target" differs from "perfect".

        The batch ``loss`` need not be the mean of these: a loss that pools pixels, entries or
        object centres over the batch weighs samples by their counts.

        This default calls ``loss`` once per sample; the built-in kinds override it with
        vectorised equivalents.
        """
        batch = batch_size(output)
        if batch is None:
            batch = batch_size(targets)
        if batch is None:
            raise ValueError(f"task {self.name!r}: no tensor or list in the output or targets "
                             "to take the batch size from")
        found = first_tensor(output)
        device = found.device if found is not None else torch.device("cpu")
        nan = torch.tensor(float("nan"), dtype=torch.float32, device=device)
        values = []
        for i in range(batch):
            sample_targets = sample_slice(targets, i, batch)
            if not self.has_target(sample_targets):
                values.append(nan)
                continue
            value = self.loss(sample_slice(output, i, batch), sample_targets)
            values.append(value.detach().float().reshape(()).to(device))
        if not values:
            return torch.zeros(0, dtype=torch.float32, device=device)
        return torch.stack(values)

    @abstractmethod
    def evaluator(self) -> Evaluator:
        """A fresh metric accumulator for one evaluation pass."""

    def primary_metrics(self) -> tuple[str, ...]:
        """Names of the metrics that enter Δm%."""
        return tuple(m.name for m in self.metrics if m.primary)

    def direction(self, metric: str) -> bool:
        """True when a higher value of ``metric`` is better."""
        for m in self.metrics:
            if m.name == metric:
                return m.higher_is_better
        known = ", ".join(m.name for m in self.metrics)
        raise UserError(f"task {self.name!r} ({self.kind}) has no metric {metric!r}; "
                        f"known: {known}", field="metric")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def _require_classes(self, minimum: int) -> int:
        n = int(self.spec.num_classes)
        if n < minimum:
            raise UserError(f"task {self.name!r} ({self.kind}) needs num_classes >= {minimum}, "
                            f"got {n}", field="num_classes")
        return n


TASK_KINDS: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register_task_kind(cls: T, *, replace: bool = False) -> T:
    """Register a task kind under ``cls.kind``; returns ``cls`` (usable as a decorator)."""
    existing = TASK_KINDS.get(cls.kind)
    if existing is not None and existing is not cls and not replace:
        raise ValueError(f"task kind {cls.kind!r} is already registered to {existing.__name__}")
    TASK_KINDS[cls.kind] = cls
    return cls


def make_task(spec: TaskSpec) -> Task:
    """The task object for a dataset's task spec."""
    cls = TASK_KINDS.get(spec.kind)
    if cls is None:
        known = ", ".join(sorted(TASK_KINDS))
        raise UserError(f"unknown task kind {spec.kind!r} (task {spec.name!r}); known: {known}",
                        field="kind")
    return cls(spec)


def move_to(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move_to(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(move_to(v, device) for v in obj)
    return obj


def batch_size(obj: Any) -> int | None:
    """B of a head's output or of collated targets: dim 0 of the first tensor with a dim or the
    length of the first list, whichever comes first (dicts and tuples searched in order); None
    when there is neither."""
    if isinstance(obj, Tensor):
        return int(obj.shape[0]) if obj.ndim else None
    if isinstance(obj, list):
        return len(obj)
    for value in _children(obj, lists=False):
        n = batch_size(value)
        if n is not None:
            return n
    return None


def first_tensor(obj: Any) -> Tensor | None:
    """The first tensor inside ``obj`` (itself, or in dicts, lists and tuples); None if none."""
    if isinstance(obj, Tensor):
        return obj
    for value in _children(obj, lists=True):
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def _children(obj: Any, lists: bool) -> Sequence[Any]:
    if isinstance(obj, Mapping):
        return list(obj.values())
    if isinstance(obj, tuple) or (lists and isinstance(obj, list)):
        return obj
    return ()


def sample_slice(obj: Any, i: int, batch: int) -> Any:
    """Sample ``i`` of a batch of ``batch`` samples, as a batch of one.

    Tensors are cut along dim 0 (``[i:i+1]``); lists are per-sample (one entry per sample, as
    ``collate`` makes them) and become ``[obj[i]]``; dicts and tuples are cut entry by entry;
    0-dim tensors and other values (an image size of ints, names) are kept. A tensor or list
    whose length is not ``batch`` is a ``ValueError``: per-sample cannot be told from per-batch.
    """
    if isinstance(obj, Tensor):
        if obj.ndim == 0:
            return obj
        if obj.shape[0] != batch:
            raise ValueError(f"cannot cut sample {i} from a tensor of shape {tuple(obj.shape)} "
                             f"in a batch of {batch}")
        return obj[i:i + 1]
    if isinstance(obj, list):
        if len(obj) != batch:
            raise ValueError(f"cannot cut sample {i} from a list of {len(obj)} in a batch of "
                             f"{batch}")
        return [obj[i]]
    if isinstance(obj, Mapping):
        return {k: sample_slice(v, i, batch) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(sample_slice(v, i, batch) for v in obj)
    return obj


def per_sample_mean(values: Tensor, keep: Tensor) -> Tensor:
    """B: each sample's mean of ``values`` over the entries where ``keep`` (both B×…); NaN for
    a sample with no entry kept. Entries not kept are left out, whatever they hold (NaN, inf)."""
    kept = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.flatten(1).sum(dim=1) / keep.flatten(1).sum(dim=1).to(values.dtype)


def as_tensor(value: Any, dtype: torch.dtype) -> Tensor:
    """A CPU tensor of ``dtype`` from a NumPy array, tensor, list or scalar."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", dtype)
    arr = np.asarray(value)
    if not arr.flags.writeable:  # cached dataset arrays are read-only; torch must not share them
        arr = arr.copy()
    return torch.as_tensor(arr, dtype=dtype)


def image_size(sample: Sample) -> tuple[int, int]:
    """(H, W) of a sample's H×W×3 image."""
    shape = sample["image"].shape
    return int(shape[0]), int(shape[1])


def resize_to(output: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinearly resize a B×C×h×w map to ``size`` when it differs (input sides not divisible
    by the encoder's strides)."""
    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return F.interpolate(output, size=tuple(size), mode="bilinear", align_corners=False)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DenseDecoder(nn.Module):
    """FPN-lite: 1×1 laterals to ``width`` channels, upsample-add coarse→fine, one 3×3 conv.

    Uses the features of stride ≥ ``out_stride`` (default: the finest stride) and returns one
    B×width map at ``out_stride``, bilinearly resampled when the finest used stride differs.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], width: int = 32,
                 out_stride: int | None = None):
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError("channels and strides must be non-empty and of equal length")
        self.out_stride = int(out_stride if out_stride is not None else min(strides))
        used = [i for i, s in enumerate(strides) if s >= self.out_stride] or [len(strides) - 1]
        self.used = tuple(used)
        self.in_stride = int(strides[used[0]])
        self.width = width
        self.laterals = nn.ModuleList(nn.Conv2d(channels[i], width, 1) for i in used)
        self.fuse = conv_bn_relu(width, width)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        feats = [features[i] for i in self.used]
        x = self.laterals[-1](feats[-1])
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            x = lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        if self.in_stride != self.out_stride:
            h, w = feats[0].shape[-2:]
            scale = self.in_stride / self.out_stride
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear",
                              align_corners=False)
        return self.fuse(x)


class DensePredictionHead(nn.Module):
    """``DenseDecoder`` + 1×1 prediction, bilinearly upsampled to the input image size."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int,
                 width: int = 32):
        super().__init__()
        self.decoder = DenseDecoder(channels, strides, width)
        self.predict = nn.Conv2d(width, out_channels, 1)
        self.stride = self.decoder.out_stride

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = self.predict(self.decoder(features))
        finest = features[self.decoder.used[0]]
        scale = self.decoder.in_stride
        size = (finest.shape[-2] * scale, finest.shape[-1] * scale)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
