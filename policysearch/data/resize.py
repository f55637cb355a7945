"""Resizing a sample and all its targets to one size, before augmentation.

Every split of a dataset is resized to the budget's image size so that batches stack. The
image is resampled with area averaging when it shrinks and bilinearly when it grows; masks,
depth, surface normals and instance masks with nearest-neighbour sampling (a label or a depth
is never blended with its neighbour; invalid depth stays invalid); boxes are scaled, clipped and
dropped with their labels (and instance masks) when they shrink below ``MIN_BOX_SIDE``.
Normals keep their vectors: a resize stretches the picture of a surface without tilting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

MIN_BOX_SIDE = 1.0  # pixels, after resizing

Size = tuple[int, int]  # (height, width)


def as_size(value: int | Size | list[int]) -> Size:
    """``S`` → (S, S); ``(H, W)`` as it is."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    h, w = value  # type: ignore[misc]
    return int(h), int(w)


def resize_sample(sample: Mapping[str, Any], size: Size) -> dict[str, Any]:
    """A new sample dict with image and spatial targets resized to ``size`` (H, W)."""
    out = dict(sample)
    image = sample["image"]
    h0, w0 = image.shape[:2]
    h, w = size
    if (h0, w0) == (h, w):
        return out
    shrink = h < h0 and w < w0
    out["image"] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink
                              else cv2.INTER_LINEAR)
    for key in ("mask", "depth", "normals"):
        value = sample.get(key)
        if value is not None:
            out[key] = _nearest(np.asarray(value), (h, w))
    sx, sy = w / w0, h / h0
    boxes = sample.get("boxes")
    keep = None
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        keep = ((b[:, 2] - b[:, 0]) >= MIN_BOX_SIDE) & ((b[:, 3] - b[:, 1]) >= MIN_BOX_SIDE)
        out["boxes"] = np.ascontiguousarray(b[keep])
        if sample.get("box_labels") is not None:
            out["box_labels"] = np.ascontiguousarray(np.asarray(sample["box_labels"])[keep])
    instances = sample.get("instance_masks")
    if instances is not None:
        inst = np.asarray(instances)
        moved = [_nearest(m, (h, w)) for m in inst]
        arr = np.stack(moved) if moved else np.zeros((0, h, w), dtype=inst.dtype)
        out["instance_masks"] = np.ascontiguousarray(arr[keep] if keep is not None and
                                                     len(keep) == len(arr) else arr)
    return out


def _nearest(arr: np.ndarray, size: Size) -> np.ndarray:
    h, w = size
    dtype = arr.dtype
    # cv2 resizes up to 512 channels of these types; int64 and bool go through int32 / uint8.
    work = arr.astype(np.int32) if dtype == np.int64 else arr
    work = work.astype(np.uint8) if dtype == np.bool_ else work
    out = cv2.resize(work, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    if arr.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        out = out[..., None]
    return np.ascontiguousarray(out.astype(dtype, copy=False))
