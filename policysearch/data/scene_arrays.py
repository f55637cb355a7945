"""What the scene datasets (``shapes``, ``scenes``) share: the targets drawn from an instance
map (boxes of the visible objects, whether the label is clear) and the stacked arrays of a split:
one image, semantic mask, depth map, label and box list per sample, and for ``scenes``
optionally surface normals.

Keys: ``images`` (N,H,W,3) uint8, ``masks`` (N,H,W) uint8, ``depths`` (N,H,W) float32,
``labels`` (N,) int64, ``boxes`` (M,4) float32, ``box_labels`` (M,) int64 and ``box_offsets``
(N+1,) int64: the boxes of image ``i`` are rows ``box_offsets[i]:box_offsets[i+1]``; with
normals, ``normals`` (N,H,W,3) float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from policysearch.data.base import Sample, SampleSequence
from policysearch.data.generated import ArraySplit, read_only

__all__ = ["KEYS", "MIN_BOX_PIXELS", "MIN_LABEL_PIXELS", "NORMALS_KEYS", "NormalsSceneSplit",
           "SceneSplit", "clear_label", "object_boxes", "stack", "valid"]

MIN_BOX_PIXELS = 12  # an object with fewer visible pixels gets no box
MIN_LABEL_PIXELS = 20  # the labelled (largest) object is this visible (fewer on small images)
LABEL_MARGIN = 0.6  # the second-largest visible object has at most this share of the largest
KEYS = ("images", "masks", "depths", "labels", "boxes", "box_labels", "box_offsets")
NORMALS_KEYS = (*KEYS, "normals")


def object_boxes(instance: np.ndarray, classes: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From an instance map (0 background, ``k + 1`` the visible pixels of object ``k``): the
    visible pixel counts of the objects, and the tight boxes (M x 4 float32, x1, y1, x2, y2;
    x2/y2 exclusive) and classes (M int64) of those with at least ``MIN_BOX_PIXELS``."""
    visible = np.bincount(instance.ravel(), minlength=len(classes) + 1)[1:]
    boxes, box_labels = [], []
    for k in np.flatnonzero(visible >= MIN_BOX_PIXELS):
        ys, xs = np.nonzero(instance == k + 1)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        box_labels.append(int(classes[k]))
    return (visible, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(box_labels, dtype=np.int64))


def clear_label(visible: np.ndarray, size: int) -> bool:
    """Whether the largest of the visible pixel counts is clear on a ``size`` image: big enough
    and clearly larger than the next (else the scene is redrawn)."""
    ranked = np.sort(visible)[::-1]
    min_pixels = max(MIN_BOX_PIXELS, min(MIN_LABEL_PIXELS, size * size // 200))
    return bool(ranked.size and ranked[0] >= min_pixels
                and (ranked.size == 1 or ranked[1] <= LABEL_MARGIN * ranked[0]))


def stack(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """The stacked arrays of ``samples`` (at least one; sample dicts as ``SceneSplit`` gives
    them); ``normals`` when the samples carry them."""
    counts = [len(s["boxes"]) for s in samples]
    arrays: dict[str, np.ndarray] = {
        "images": np.stack([s["image"] for s in samples]).astype(np.uint8),
        "masks": np.stack([s["mask"] for s in samples]).astype(np.uint8),
        "depths": np.stack([s["depth"] for s in samples]).astype(np.float32),
        "labels": np.asarray([s["label"] for s in samples], dtype=np.int64),
        "boxes": np.concatenate([s["boxes"] for s in samples]).astype(np.float32).reshape(-1, 4),
        "box_labels": np.concatenate([s["box_labels"] for s in samples]).astype(np.int64),
        "box_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    }
    if "normals" in samples[0]:
        arrays["normals"] = np.stack([s["normals"] for s in samples]).astype(np.float32)
    return arrays


def valid(arrays: dict[str, np.ndarray], n: int, size: int, *, normals: bool = False) -> bool:
    """Whether loaded cache arrays have the expected keys, shapes and dtypes."""
    expected: dict[str, tuple[tuple[int, ...] | None, Any]] = {
        "images": ((n, size, size, 3), np.uint8),
        "masks": ((n, size, size), np.uint8),
        "depths": ((n, size, size), np.float32),
        "labels": ((n,), np.int64),
        "boxes": (None, np.float32),
        "box_labels": (None, np.int64),
        "box_offsets": ((n + 1,), np.int64),
    }
    if normals:
        expected["normals"] = ((n, size, size, 3), np.float32)
    for key, (shape, dtype) in expected.items():
        arr = arrays.get(key)
        if arr is None or arr.dtype != dtype or (shape is not None and arr.shape != shape):
            return False
    m = int(arrays["box_offsets"][-1])
    return (
        arrays["boxes"].shape == (m, 4)
        and arrays["box_labels"].shape == (m,)
        and int(arrays["box_offsets"][0]) == 0
        and bool(np.all(np.diff(arrays["box_offsets"]) >= 0))
    )


class SceneSplit(ArraySplit, SampleSequence):
    """One split of a scene dataset: a sequence of fresh sample dicts over stacked arrays.

    Every ``__getitem__`` returns new arrays (copies), so callers may modify them freely.
    The stacked arrays are read-only attributes (``images``, ``masks``, ``depths``,
    ``labels``, ``boxes``, ``box_labels``, ``box_offsets``) for vectorised use.
    """

    ARRAYS: tuple[str, ...] = KEYS
    images: np.ndarray
    masks: np.ndarray
    depths: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    box_offsets: np.ndarray

    def __init__(self, arrays: dict[str, np.ndarray]):
        for key, arr in zip(self.ARRAYS, read_only(arrays, self.ARRAYS, copy=False),
                            strict=True):
            setattr(self, key, arr)

    def __len__(self) -> int:
        return len(self.labels)

    def _get(self, i: int) -> Sample:
        lo, hi = int(self.box_offsets[i]), int(self.box_offsets[i + 1])
        return {
            "image": self.images[i].copy(),
            "label": int(self.labels[i]),
            "mask": self.masks[i].copy(),
            "boxes": self.boxes[lo:hi].copy(),
            "box_labels": self.box_labels[lo:hi].copy(),
            "depth": self.depths[i].copy(),
        }


class NormalsSceneSplit(SceneSplit):
    """A ``SceneSplit`` whose samples also carry ``normals`` (H x W x 3 float32)."""

    ARRAYS = NORMALS_KEYS
    normals: np.ndarray

    def _get(self, i: int) -> Sample:
        return {**super()._get(i), "normals": self.normals[i].copy()}
