"""What every dataset provides: a sequence of sample dicts per split and the task specs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Target keys of a sample dict by task kind (design.md, "The flow").
TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("label",),
    "multilabel": ("attributes",),  # K-vector: 1 present, 0 absent, -1 unknown
    "segmentation": ("mask",),
    "detection": ("boxes", "box_labels"),
    "depth": ("depth",),
    "normals": ("normals",),
}


@dataclass(frozen=True)
class TaskSpec:
    """A task of a dataset: its name (column/file identifier), kind and target description.

    ``key`` is the sample-dict key holding the target (default by kind, see TARGET_KEYS);
    ``num_classes`` counts classes *without* background for detection, *with* background for
    segmentation; ``ignore_index`` marks unlabeled mask pixels.
    """

    name: str
    kind: str
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    key: str = ""
    ignore_index: int = 255
    extra: dict[str, Any] = field(default_factory=dict)

    def target_key(self) -> str:
        return self.key or TARGET_KEYS[self.kind][0]


Sample = dict[str, Any]


class MultiTaskDataset(Protocol):
    """Any dataset: its tasks and one sequence of sample dicts per split."""

    name: str
    tasks: tuple[TaskSpec, ...]

    def split(self, name: str) -> Sequence[Sample]:
        """``train``, ``val`` or ``test``; the search reads only train and val."""
        ...
