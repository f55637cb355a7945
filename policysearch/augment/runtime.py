"""The runtime of a policy: ``MultiTaskAugment`` applies its views to a sample dict.

Each view is a compiled albumentations pipeline (``policysearch.augment.compile``). A spatial
view carries every spatial target of the sample (mask, depth, surface normals, instance masks)
as the channels of one float32 mask, so one warp moves them all alike; they are unstacked
afterwards, with depth, normals and instance masks zeroed where pixels came from outside and
normals turned with the image (``policysearch.augment.normals``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast

import albumentations as A
import cv2
import numpy as np
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import DualTransform

from policysearch.augment.compile import box_params, compile_shared, transforms_of_type
from policysearch.augment.draws import SlotRandom, draw_key
from policysearch.augment.normals import frame_of, turn
from policysearch.augment.normals import unsupported as normals_unsupported
from policysearch.augment.ops import FILL_MASK, build_slot
from policysearch.augment.types import SHARED, STRUCTURES, PolicyData, Shared, Slot
from policysearch.errors import UserError


class _View:
    """One view's compiled pipeline, and the generators of its slots (``draws``): the
    ``base`` slots (the shared view's only), then those of ``shared`` (the shared part, or a
    task's own view)."""

    __slots__ = ("name", "compose", "spatial", "marker", "sized", "size", "unsupported",
                 "randoms", "slots")

    def __init__(self, name: str, shared: Shared, base: tuple[Slot, ...] = ()) -> None:
        self.name = name
        base_transforms, base_ops = compile_shared(base)
        transforms, ops = compile_shared(shared)
        transforms, ops = base_transforms + transforms, base_ops + ops
        self.spatial = any(op.kind == "geometric" for op in ops)
        self.marker = any(op.fills_outside for op in ops)
        self.size: tuple[int, int] | None = None
        self.compose: A.Compose | None = None
        self.sized: list[A.BasicTransform] = []
        # Leaf transforms that move pixels but have no rule to turn surface normals.
        self.unsupported = normals_unsupported(transforms)
        self.randoms: list[SlotRandom] = []
        self.slots: list[int] = []
        if not transforms:
            return
        if self.spatial:
            self.compose = A.Compose(
                transforms,
                bbox_params=box_params(["box_idx"]),
                strict=False,
            )
        else:
            # Photometric only: the targets never enter albumentations.
            self.compose = A.Compose(transforms, strict=False)
        self.sized = transforms_of_type(transforms, A.RandomResizedCrop)
        for t in transforms_of_type(transforms, A.CoarseDropout):
            # Cutout erases the image only; without a bbox processor it leaves boxes alone
            # (with one it would shrink or drop boxes under the hole).
            t.set_processors({})
        # Slot 0: the Compose's own draws; slot i: the i-th top-level transform of ``shared``
        # and its children; slot -i: the i-th of the base, so that adding a base leaves what
        # the shared slots draw unchanged. (A seeded Compose would hand every transform the
        # same generator.)
        self.slots = [0, *range(-1, -len(base_transforms) - 1, -1),
                      *range(1, len(transforms) - len(base_transforms) + 1)]
        self.randoms = [SlotRandom() for _ in self.slots]
        self.compose.set_random_state(self.randoms[0].numpy, self.randoms[0].python)
        for t, r in zip(self.compose.transforms, self.randoms[1:], strict=True):
            t.set_random_state(r.numpy, r.python)

    def reseed(self, seed: int, epoch: int, index: int) -> None:
        """Key every slot's draws to (seed, epoch, sample index, this view, slot)."""
        for slot, r in zip(self.slots, self.randoms, strict=True):
            r.reseed(draw_key(seed, epoch, index, self.name, slot))


class MultiTaskAugment:
    """``sample -> {view: sample}``: view ``shared`` is the sample under the base and the
    shared slots, and each task with a view of its own (``Policy.per_task``) gets a view (its
    name) = the shared view further transformed by its slots or its own RandAugment, one draw
    of the shared slots per sample. With ``task``, returns that task's single view sample
    instead of the dict.

    Sample keys (policysearch.data.base): ``image`` H×W×3 uint8; ``mask`` H×W int (nearest,
    255 where pixels come from outside); ``boxes`` N×4 float32 pixel x1,y1,x2,y2 with
    ``box_labels`` N (clipped; dropped with their labels when under 30% visible or under 2 px);
    ``depth`` H×W float32 (nearest, 0.0 = invalid where pixels come from outside);
    ``normals`` H×W×3 float32 unit vectors (nearest, vectors turned with the image, see
    ``policysearch.augment.normals``; zero vectors where pixels come from outside);
    ``instance_masks`` N×H×W, one per box (nearest, kept or dropped with their box, 0 outside).
    Other keys pass through unchanged (not copied).

    Random draws: each slot's derive from (``seed``, ``epoch``, sample index, view, slot)
    (``policysearch.augment.draws``). Pass the sample's index, ``augment(sample, index=i)``, and
    the result depends on nothing else: not on the process, the order or what ran before (in
    DataLoader workers too). Without it, the index is a count of calls since ``set_seed``; in
    DataLoader workers then pass ``worker_init_fn=policysearch.augment.seed_worker``. Not
    thread-safe.

    A policy with a schedule: the augmentation of the phase in force at the current ``epoch``
    (``epoch`` at construction, default 0; then ``set_epoch``). Every phase is compiled up front
    (a phase that cannot work fails here, not epochs later).
    """

    def __init__(self, policy: PolicyData, *, task: str | None = None, seed: int | None = None,
                 epoch: int | None = None) -> None:
        if policy.structure not in STRUCTURES:
            raise UserError(f"structure {policy.structure!r} is not supported", field="structure")
        self.policy = policy
        self.task = task
        phases = [policy.at_epoch(p.from_epoch) for p in policy.schedule] or [policy]
        # Per phase: (shared view, task views).
        self._phases: list[tuple[_View, list[_View]]] = []
        for phase in phases:
            if task is None:
                names = [t for t in phase.tasks if phase.per_task.get(t)]
            else:
                names = [task] if phase.view_of(task) == task else []
            self._phases.append((_View(SHARED, phase.shared, phase.base),
                                 [_View(t, phase.per_task[t]) for t in names]))
        for shared, task_views in self._phases:
            self._shared, self._task_views = shared, task_views
            self._check_normals()
        self.epoch = 0
        self.set_epoch(0 if epoch is None else epoch)
        self.set_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        """Switch to the phase of the schedule in force at ``epoch`` (counted from 0); without
        a schedule only ``epoch`` is recorded. ``epoch`` is part of every draw's key."""
        index = self.policy.phase_index(epoch)
        self.epoch = epoch
        self._shared, self._task_views = self._phases[index]

    def set_seed(self, seed: int | None) -> None:
        """The seed of every draw (None: a fresh one from the OS); restarts the call count,
        so the same seed and samples give the same outputs."""
        entropy = np.random.SeedSequence().entropy  # an int when drawn from the OS
        self.seed = int(cast(int, entropy)) if seed is None else int(seed)
        self._calls = 0

    @property
    def views(self) -> tuple[str, ...]:
        """The view names ``__call__`` returns."""
        return (SHARED, *(v.name for v in self._task_views))

    def pipeline(self, view: str = SHARED) -> A.Compose | None:
        """The albumentations ``Compose`` behind ``view`` (None when it has no ops) in the
        current phase, for inspection. It takes the internal keys: ``image``, ``mask`` (mask,
        depth and the outside marker stacked as float32 channels), ``bboxes`` with
        ``box_idx``."""
        for v in (self._shared, *self._task_views):
            if v.name == view:
                return v.compose
        raise UserError(f"unknown view {view!r}; views: {', '.join(self.views)}", field="view")

    def __call__(self, sample: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
        """``{view: sample}`` for ``sample`` (with ``task``: that task's view sample);
        ``index``: the sample's index in its split, which keys the draws."""
        if index is None:
            index = self._calls
            self._calls += 1
        shared = self._run(self._shared, sample, index)
        if self.task is not None:
            return self._run(self._task_views[0], shared, index) if self._task_views else shared
        views = {SHARED: shared}
        for view in self._task_views:
            views[view.name] = self._run(view, shared, index)
        return views

    def _run(self, view: _View, sample: Mapping[str, Any], index: int) -> dict[str, Any]:
        view.reseed(self.seed, self.epoch, index)
        return _apply(view, sample)

    def __repr__(self) -> str:
        return f"MultiTaskAugment({self.policy.summary()!r}, views={list(self.views)})"

    def _check_normals(self) -> None:
        for name, kind in self.policy.tasks.items():
            if kind != "normals" or (self.task is not None and name != self.task):
                continue
            own = [v for v in self._task_views if v.name == name]
            for view in (self._shared, *own):
                if view.unsupported:
                    raise UserError(_no_normals_rule(view), field=f"tasks.{name}")


def targets_not_moved(op: str, keys: Collection[str]) -> list[str]:
    """The sample keys among ``keys`` that ``op`` cannot move with the image: ``normals`` when
    a transform it builds moves pixels with no rule to turn normals (a view refuses to run
    then), ``boxes`` when one moves pixels but not boxes (albumentations raises mid-epoch).
    Every built-in op moves every target (image, mask, depth, normals, boxes, instance
    masks); this finds a user's op that does not."""
    if not {"boxes", "normals"} & set(keys):
        return []  # albumentations moves every mask-like plane with any pixel-moving transform
    transform = build_slot(op, 1.0, 1.0)
    missing = []
    if "boxes" in keys and any(_without_boxes(t) for t in _leaves(transform)):
        missing.append("boxes")
    if "normals" in keys and normals_unsupported([transform]):
        missing.append("normals")
    return missing


def _leaves(transform: Any) -> list[Any]:
    if isinstance(transform, BaseCompose):
        return [leaf for t in transform.transforms for leaf in _leaves(t)]
    return [transform]


def _without_boxes(transform: Any) -> bool:
    return (isinstance(transform, DualTransform)
            and type(transform).apply_to_bboxes is DualTransform.apply_to_bboxes)


def _no_normals_rule(view: _View) -> str:
    names = ", ".join(sorted(set(view.unsupported)))
    return (f"surface normals cannot follow albumentations {names} (no rule turns their "
            "vectors); register one with policysearch.augment.normals.register_rule")


_NO_IDX = np.zeros(0, dtype=np.int64)
# Sample keys that travel as channels of one float32 mask through a spatial view, in order.
_PLANES = ("mask", "depth", "normals", "instance_masks")


def _planes(sample: Mapping[str, Any], shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """The spatial targets of ``sample`` as (key, H×W×k array), instance masks moved to the
    last axis; a size mismatch is a ``UserError`` naming the key."""
    found = []
    for key in _PLANES:
        value = sample.get(key)
        if value is None:
            continue
        arr = np.asarray(value)
        if key == "instance_masks":
            ok = arr.ndim == 3 and arr.shape[1:] == shape
            arr = np.moveaxis(arr, 0, -1) if ok else arr
        elif key == "normals":
            ok = arr.shape == (*shape, 3)
        else:
            ok = arr.shape[:2] == shape and (arr.ndim == 2 or arr.shape[2:] == (1,))
        if not ok:
            form = {"normals": "H×W×3", "instance_masks": "N×H×W"}.get(key, "H×W")
            raise UserError(f"shape {arr.shape} does not fit the image {shape[0]}×{shape[1]} "
                            f"(expected {form})", field=key)
        found.append((key, arr.reshape(*shape, -1)))
    return found


def _apply(view: _View, sample: Mapping[str, Any]) -> dict[str, Any]:
    """Run one view's compose on a sample dict; returns a new dict."""
    out = dict(sample)
    compose = view.compose
    if compose is None:
        return out
    image = sample["image"]
    if view.sized and image.shape[:2] != view.size:
        view.size = image.shape[:2]
        for t in view.sized:
            t.size = view.size
    if not view.spatial:
        res = compose(image=image)
        out["image"] = _like(res["image"], image)
        return out

    data: dict[str, Any] = {"image": image}
    boxes = sample.get("boxes")
    # Every spatial target travels as the channels of one float32 mask: one warp, so nearest
    # sampling picks the same source pixel for all of them (cv2 may round differently per
    # dtype at the image border), and the fill (255) of an extra channel marks outside pixels.
    planes = _planes(sample, image.shape[:2])
    keys = {key for key, _ in planes}
    empty = [(key, arr) for key, arr in planes if arr.shape[2] == 0]  # no instance at all
    planes = [(key, arr) for key, arr in planes if arr.shape[2]]
    normals = "normals" in keys
    if normals and view.unsupported:
        raise UserError(_no_normals_rule(view), field="normals")
    marker = view.marker and bool(keys & {"depth", "normals", "instance_masks"})
    if planes:
        layers = [arr.astype(np.float32, copy=False) for _, arr in planes]
        channels = sum(arr.shape[2] for _, arr in planes) + marker
        if channels > 4 and channels % 4:
            # Past 4 channels the warp runs in chunks of 4 and the rest; OpenCV's nearest
            # sampling can round a tie differently for another channel count, so that targets
            # in the last chunk would land a pixel apart from the others. Zero channels make
            # every chunk 4 wide.
            layers.append(np.zeros((*image.shape[:2], 4 - channels % 4), dtype=np.float32))
        if marker:
            layers.append(np.zeros(image.shape[:2], dtype=np.float32))
        data["mask"] = _stack(layers)
    if boxes is not None:
        boxes_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n_masks = {k: a.shape[2] for k, a in (*planes, *empty)}.get("instance_masks")
        if n_masks is not None and n_masks != len(boxes_arr):
            raise UserError(f"{n_masks} instance masks for {len(boxes_arr)} boxes: one mask per "
                            "box", field="instance_masks")
        data["bboxes"] = boxes_arr
        data["box_idx"] = np.arange(len(boxes_arr))
    else:
        data["box_idx"] = _NO_IDX
    compose.save_applied_params = normals  # the normals step reads which transforms ran
    res = compose(**data)

    out["image"] = _like(res["image"], image)
    idx = None
    if boxes is not None:
        idx = np.asarray(res["box_idx"], dtype=np.int64).reshape(-1)
        out["boxes"] = np.ascontiguousarray(np.asarray(res["bboxes"], dtype=np.float32)[:, :4])
        labels = sample.get("box_labels")
        if labels is not None:
            out["box_labels"] = np.ascontiguousarray(np.asarray(labels)[idx])
    for key, _ in empty:
        out[key] = np.zeros((0, *res["image"].shape[:2]), dtype=np.asarray(sample[key]).dtype)
    if planes:
        _unstack(res, planes, sample, out, marker=marker, kept_boxes=idx)
    return out


def _unstack(res: Mapping[str, Any], planes: list[tuple[str, np.ndarray]],
             sample: Mapping[str, Any], out: dict[str, Any], *, marker: bool,
             kept_boxes: np.ndarray | None) -> None:
    """Write each spatial target of ``planes`` from the warped mask of ``res`` into ``out``:
    mask as is; depth, normals and instance masks zero where pixels came from outside (the
    ``marker`` channel); normals turned; instance masks of the kept boxes only."""
    warped = res["mask"].reshape(*res["mask"].shape[:2], -1)
    shape = warped.shape[:2]
    outside = warped[..., -1] == FILL_MASK if marker else None
    at = 0
    for key, arr in planes:
        part = warped[..., at:at + arr.shape[2]]  # a view: res is our own copy (see _stack)
        at += arr.shape[2]
        old = sample[key]
        if key == "normals":
            out[key] = _like(turn(part, frame_of(res["applied_transforms"], shape), outside), old)
            continue
        if key == "instance_masks":
            part = part[..., kept_boxes] if kept_boxes is not None else part
        if outside is not None and key != "mask":
            np.copyto(part, np.float32(0), where=outside[..., None])
        if key == "instance_masks":
            out[key] = _like(np.moveaxis(part, -1, 0), old)
        else:
            out[key] = _like(part.reshape(shape + np.shape(old)[2:]), old)


def _stack(layers: list[np.ndarray]) -> np.ndarray:
    """A new H×W×C float32 array of the layers' channels (always a copy: the result may be
    written in place, and albumentations returns it as it is when no warp runs)."""
    if sum(1 if a.ndim == 2 else a.shape[2] for a in layers) <= 512:  # cv2's channel limit
        return cv2.merge(layers)
    return np.dstack(layers)


def _like(new: np.ndarray, old: Any) -> np.ndarray:
    dtype = getattr(old, "dtype", None)
    if dtype is not None and new.dtype != dtype:
        new = new.astype(dtype)
    return np.ascontiguousarray(new)
