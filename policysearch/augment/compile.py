"""Compiling policies to albumentations: the transforms of a structure (``compile_shared``)
and a task's plain ``A.Compose`` (``task_compose``, behind ``Policy.to_albumentations``).

Every structure becomes stock albumentations blocks (``OneOf``, ``Sequential``,
``RandomOrder``), so an exported Compose loads with plain ``A.load``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.geometric.distortion import BaseDistortion

from policysearch.augment.ops import (
    Op,
    build_gaussian,
    build_sampled,
    build_slot,
    get_op,
    set_output_size,
)
from policysearch.augment.types import (
    PolicyData,
    RandAugmentSpec,
    Shared,
    SubPolicies,
    TrivialAugmentSpec,
)
from policysearch.errors import UserError

# The bbox rules of every view: clipped to the image, dropped (with their labels) when less than
# 30% stays visible or a side gets under 2 px.
BOX_MIN_VISIBILITY = 0.3
BOX_MIN_SIDE = 2.0


def compile_shared(shared: Shared) -> tuple[list[A.BasicTransform], list[Op]]:
    """The albumentations transforms of a structure (or a plain slot sequence), and its ops."""
    if isinstance(shared, SubPolicies):
        if not shared.policies:
            return [], []
        ops = [get_op(s.op) for sp in shared.policies for s in sp]
        branches = [
            A.Sequential([build_slot(s.op, s.p, s.magnitude) for s in sp], p=1.0)
            for sp in shared.policies
        ]
        # OneOf picks a child in proportion to its p: all 1, so uniformly.
        return [A.OneOf(branches, p=1.0)], ops
    if isinstance(shared, RandAugmentSpec):
        ops = [get_op(name) for name in shared.ops]
        if shared.n == 0 or not ops:
            return [], []
        choices = [
            build_gaussian(name, shared.magnitude, shared.mstd, scale=shared.scale)
            for name in shared.ops
        ]
        # RandomOrder = SomeOf without sorting the draws: n picks with replacement, applied in
        # the order drawn (SomeOf would apply them in list order).
        return [A.RandomOrder(choices, n=shared.n, replace=True, p=1.0)], ops
    if isinstance(shared, TrivialAugmentSpec):
        ops = [get_op(name) for name in shared.ops]
        if not ops:
            return [], []
        choices = [build_sampled(name, 0.0, 1.0, scale=shared.scale) for name in shared.ops]
        return [A.OneOf(choices, p=1.0)], ops
    slots = tuple(shared)
    return (
        [build_slot(s.op, s.p, s.magnitude) for s in slots],
        [get_op(s.op) for s in slots],
    )


def task_compose(policy: PolicyData, task: str, *, size: tuple[int, int] | None = None,
                 seed: int | None = None) -> A.Compose:
    """``Policy.to_albumentations`` of a policy without a schedule and one of its tasks: the
    base, the shared structure, then ``task``'s slots, with albumentations' keys for the task's
    kind."""
    kind = policy.tasks[task]
    if kind == "normals":
        raise UserError(
            "surface normals need policysearch's own step; use load_policy(...).transform()",
            field=task,
        )
    transforms: list[A.BasicTransform] = []
    ops: list[Op] = []
    for part in (policy.base, policy.shared, policy.per_task.get(task, ())):
        more, more_ops = compile_shared(part)
        transforms, ops = transforms + more, ops + more_ops
    if any(op.sized for op in ops):
        size = size or _size_from(policy.provenance.get("image_size"))
        if size is None:
            raise UserError(
                "the policy has a 'crop' op, which resizes back to the input size; "
                "pass size=(height, width) or set provenance.image_size",
                field=task,
            )
        for t in transforms:
            set_output_size(t, size)
    if kind == "depth":
        # The depth file's mask-type targets get 0.0 (invalid) where pixels come from outside.
        _set_fill_mask(transforms, 0)
    bbox_params = None
    if kind == "detection":
        bbox_params = box_params(["labels"])
    targets = {"depth": "mask"} if kind == "depth" else None
    compose = A.Compose(transforms, bbox_params=bbox_params, additional_targets=targets)
    if seed is not None:
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return compose


def box_params(label_fields: list[str]) -> A.BboxParams:
    """The bbox rules of every view (pascal_voc pixels), with ``label_fields``."""
    return A.BboxParams(
        format="pascal_voc",
        label_fields=label_fields,
        min_visibility=BOX_MIN_VISIBILITY,
        min_width=BOX_MIN_SIDE,
        min_height=BOX_MIN_SIDE,
        clip=True,
        filter_invalid_bboxes=True,
    )


def transforms_of_type(transforms: Sequence[Any], cls: type) -> list[Any]:
    """The transforms of class ``cls`` in ``transforms`` and, depth first, their children."""
    found = []
    for t in transforms:
        if isinstance(t, cls):
            found.append(t)
        found += transforms_of_type(getattr(t, "transforms", ()), cls)
    return found


def _set_fill_mask(transforms: Sequence[Any], value: float) -> None:
    """Set the outside fill of every mask-type target of the warps in ``transforms``."""
    for t in transforms:
        if isinstance(t, (A.Affine, BaseDistortion)) and t.fill_mask is not None:
            t.fill_mask = (float(value),) * 4 if isinstance(t.fill_mask, tuple) else value
        _set_fill_mask(getattr(t, "transforms", ()), value)


def _size_from(value: Any) -> tuple[int, int] | None:
    """An image size (an int, or [height, width]) from provenance; None if it is not one."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (value[0], value[1])
    return None
