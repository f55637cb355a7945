"""Task kinds: head factory, collate, loss, metrics and directions, one module per kind.

Importing this package registers the built-in kinds in ``TASK_KINDS``; a user's own kind is one
``register_task_kind(MyTask)`` away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from policysearch.records import MetricsInfo, metrics_info_from_tasks
from policysearch.tasks import (
    classification,
    depth,
    detection,
    multilabel,
    normals,
    segmentation,
)
from policysearch.tasks.base import (
    TASK_KINDS,
    DenseDecoder,
    Evaluator,
    MetricInfo,
    Task,
    make_task,
    register_task_kind,
)
from policysearch.tasks.classification import ClassificationTask
from policysearch.tasks.depth import DepthTask
from policysearch.tasks.detection import DetectionTask
from policysearch.tasks.multilabel import MultilabelTask
from policysearch.tasks.normals import NormalsTask
from policysearch.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    from policysearch.data.base import MultiTaskDataset

__all__ = [
    "TASK_KINDS",
    "ClassificationTask",
    "DenseDecoder",
    "DepthTask",
    "DetectionTask",
    "Evaluator",
    "MetricInfo",
    "MultilabelTask",
    "NormalsTask",
    "SegmentationTask",
    "Task",
    "classification",
    "depth",
    "detection",
    "make_task",
    "multilabel",
    "normals",
    "register_task_kind",
    "segmentation",
]


def task_setup(dataset: MultiTaskDataset) -> tuple[dict[str, str], MetricsInfo]:
    """The dataset's tasks as {name: kind} and their metrics (names, directions, primary)."""
    tasks = [make_task(spec) for spec in dataset.tasks]
    return {t.name: t.spec.kind for t in tasks}, metrics_info_from_tasks(tasks)
