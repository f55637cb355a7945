"""Policy (structure + slots + weighting), its YAML form, and MultiTaskAugment, the per-sample
callable.

The *shared* part of a policy has a **structure** (design.md, "Vocabulary"):

=================  ==========================================  ===================================
structure          ``Policy.shared``                           YAML ``shared:``
=================  ==========================================  ===================================
``sequence``       ``tuple[Slot, ...]``: slots in order,       ``[{op, p, magnitude}, ...]``
                   each with its p
``subpolicies``    ``SubPolicies``: one sub-policy picked      ``[[{op, p, magnitude}, ...], ...]``
                   uniformly per sample, its slots in order
``randaugment``    ``RandAugmentSpec``: n ops drawn with       ``{n: 2, magnitude: 0.3, mstd: 0.0,
                   replacement, each at exact magnitude (or    ops: [...]}``
                   N(magnitude, mstd) clipped), p=1
``trivialaugment`` ``TrivialAugmentSpec``: one op per sample,  ``{ops: [...]}``
                   magnitude uniform in [0, 1], wide ranges
=================  ==========================================  ===================================

Per-task slots are always a plain sequence (a task's extra view). Every structure compiles to
stock albumentations blocks (``OneOf``, ``Sequential``, ``RandomOrder``), so exported files load
with plain ``A.load``.

Imports neither torch, optuna nor ray: ``load_policy`` must work in plain training code.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import albumentations as A
import cv2
import numpy as np
import yaml
from albumentations.augmentations.geometric.distortion import BaseDistortion

from policysearch import weighting_names
from policysearch.augment.normals import frame_of, turn
from policysearch.augment.normals import unsupported as normals_unsupported
from policysearch.augment.ops import (
    FILL_MASK,
    RANDAUGMENT_OPS,
    SCALES,
    TRIVIALAUGMENT_OPS,
    Op,
    build_gaussian,
    build_sampled,
    build_slot,
    get_op,
    set_output_size,
)
from policysearch.errors import UserError

SCHEMA = "policysearch.policy/v1"
STRUCTURES = ("sequence", "subpolicies", "randaugment", "trivialaugment")
SHARED = "shared"
_TOP_KEYS = ("schema", "tasks", "structure", "shared", "per_task", "weighting", "provenance")
_SLOT_KEYS = ("op", "p", "magnitude")
_RANDAUGMENT_KEYS = ("n", "magnitude", "mstd", "ops", "scale")
_TRIVIALAUGMENT_KEYS = ("ops", "scale")
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# The bbox rules of every view: clipped to the image, dropped (with their labels) when less than
# 30% stays visible or a side gets under 2 px.
BOX_MIN_VISIBILITY = 0.3
BOX_MIN_SIDE = 2.0


@dataclass(frozen=True)
class Slot:
    """One (op, probability, magnitude)."""

    op: str
    p: float
    magnitude: float


@dataclass(frozen=True)
class SubPolicies:
    """AutoAugment's structure: one sub-policy (a sequence of slots) picked uniformly per
    sample, then its slots applied in order, each with its p."""

    policies: tuple[tuple[Slot, ...], ...]

    def __post_init__(self) -> None:
        if isinstance(self.policies, (list, tuple)):
            object.__setattr__(self, "policies", tuple(
                tuple(sp) if isinstance(sp, (list, tuple)) else sp for sp in self.policies
            ))


@dataclass(frozen=True)
class RandAugmentSpec:
    """RandAugment: ``n`` ops drawn uniformly *with replacement* from ``ops``, each applied
    (p=1) at ``magnitude`` with a random sign for signed ops. ``mstd`` > 0 draws the magnitude
    per application from N(magnitude, mstd) clipped to [0, 1] (timm). Defaults: torchvision's
    RandAugment (N=2, M=9 of 30, its 14 ops)."""

    n: int = 2
    magnitude: float = 0.3
    mstd: float = 0.0
    ops: tuple[str, ...] = RANDAUGMENT_OPS
    scale: str = "standard"

    def __post_init__(self) -> None:
        if isinstance(self.ops, list):
            object.__setattr__(self, "ops", tuple(self.ops))


@dataclass(frozen=True)
class TrivialAugmentSpec:
    """TrivialAugment: exactly one op drawn uniformly per sample, its magnitude drawn
    uniformly in [0, 1] per application, on the ``wide`` ranges by default. Default ops:
    torchvision's TrivialAugmentWide."""

    ops: tuple[str, ...] = TRIVIALAUGMENT_OPS
    scale: str = "wide"

    def __post_init__(self) -> None:
        if isinstance(self.ops, list):
            object.__setattr__(self, "ops", tuple(self.ops))


Shared: TypeAlias = tuple[Slot, ...] | SubPolicies | RandAugmentSpec | TrivialAugmentSpec
_STRUCTURE_OF: dict[type, str] = {
    tuple: "sequence",
    SubPolicies: "subpolicies",
    RandAugmentSpec: "randaugment",
    TrivialAugmentSpec: "trivialaugment",
}
# What ``shared`` must be for each structure: its YAML form (its Python type).
_SHARED_FORM = {
    "sequence": "a list of slots {op, p, magnitude} (a tuple of Slot)",
    "subpolicies": "a list of sub-policies, each a list of slots {op, p, magnitude} "
                   "(SubPolicies)",
    "randaugment": "a mapping {n, magnitude, mstd, ops} (RandAugmentSpec)",
    "trivialaugment": "a mapping {ops} (TrivialAugmentSpec)",
}


@dataclass
class Weighting:
    """How task losses are combined: a method (``static``, ``equal`` or a dynamic one such as
    ``dwa``; see ``policysearch.weighting_names.METHODS``), per-task ``weights`` (used by
    ``static``; kept as a record by the others) and the method's hyper-parameters ``params``
    (plain numbers; one left out takes its default). YAML:
    ``{method: dwa, weights: {...}, params: {temperature: 2.0}}``, ``params`` optional."""

    method: str = "static"
    weights: dict[str, float] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class Policy:
    """An augmentation policy for a set of tasks (see design.md, "Vocabulary").

    ``shared`` is a tuple of slots (``structure`` sequence), ``SubPolicies``,
    ``RandAugmentSpec`` or ``TrivialAugmentSpec``; ``structure`` follows from its type when
    left out. ``Policy(tasks, shared=[[...], [...]], structure="subpolicies")`` also works.
    """

    tasks: dict[str, str]
    shared: Shared = ()
    per_task: dict[str, tuple[Slot, ...]] = field(default_factory=dict)
    # None: taken from the type of ``shared``; always a string once constructed.
    structure: str | None = None
    weighting: Weighting = field(default_factory=Weighting)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.shared, (list, tuple)):
            if self.structure == "subpolicies":
                self.shared = SubPolicies(tuple(self.shared))
            else:
                self.shared = tuple(self.shared)
        if self.structure is None:
            self.structure = _STRUCTURE_OF.get(type(self.shared), "sequence")
        if isinstance(self.per_task, Mapping):
            self.per_task = {
                name: tuple(slots) if isinstance(slots, (list, tuple)) else slots
                for name, slots in self.per_task.items()
            }
        _validate(self, "<policy>")

    # --- views -------------------------------------------------------------------------------

    def view_of(self, task: str) -> str:
        """The view ``task`` trains on: its own name if it has per-task slots, else ``shared``."""
        self._check_task(task)
        return task if self.per_task.get(task) else SHARED

    def views(self) -> tuple[str, ...]:
        """Every view ``transform()`` produces: ``shared``, then each task with its own slots."""
        return (SHARED, *(t for t in self.tasks if self.per_task.get(t)))

    def transform(self, task: str | None = None, seed: int | None = None) -> MultiTaskAugment:
        """The per-sample callable: ``sample -> {view: sample}``, or with ``task`` that task's
        single view sample."""
        return MultiTaskAugment(self, task=task, seed=seed)

    def to_albumentations(
        self, task: str, *, size: tuple[int, int] | None = None, seed: int | None = None
    ) -> A.Compose:
        """A plain ``A.Compose``: the shared structure, then ``task``'s slots, albumentations keys.

        Keys: ``image``; ``mask``; ``bboxes`` (pascal_voc pixels) with label field ``labels``
        for detection; ``depth`` as an additional mask-type target for depth (outside pixels
        filled with 0.0, i.e. invalid). ``size`` (height, width) is required when the policy has
        a crop, which resizes back to the input size: it defaults to ``provenance['image_size']``.
        ``seed`` seeds one random stream shared by every transform (albumentations' own
        ``seed=`` gives each transform the same stream, so equal-p slots would fire together).
        """
        self._check_task(task)
        kind = self.tasks[task]
        if kind == "normals":
            raise UserError(
                "surface normals need policysearch's own step; use load_policy(...).transform()",
                field=task,
            )
        transforms, ops = _compile(self.shared)
        more, more_ops = _compile(self.per_task.get(task, ()))
        transforms, ops = transforms + more, ops + more_ops
        if any(op.sized for op in ops):
            size = size or _size_from(self.provenance.get("image_size"))
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
            bbox_params = _bbox_params(["labels"])
        targets = {"depth": "mask"} if kind == "depth" else None
        compose = A.Compose(transforms, bbox_params=bbox_params, additional_targets=targets)
        if seed is not None:
            compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return compose

    # --- serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping of design.md ("Public interface")."""
        return {
            "schema": SCHEMA,
            "tasks": dict(self.tasks),
            "structure": self.structure,
            "shared": _shared_dict(self.shared),
            "per_task": {t: [_slot_dict(s) for s in slots] for t, slots in self.per_task.items()},
            "weighting": _weighting_dict(self.weighting),
            "provenance": _plain(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        """Parse and validate the YAML mapping; every problem is a one-line ``UserError``."""
        if not isinstance(data, Mapping):
            raise UserError(
                f"a policy must be a mapping, got {type(data).__name__}", source=source
            )
        for key in data:
            if key == "schedule":
                raise UserError("policy schedules (PBT) are not supported by this version",
                                source=source, field="schedule")
            if key not in _TOP_KEYS:
                raise UserError(f"unknown key; expected one of {', '.join(_TOP_KEYS)}",
                                source=source, field=str(key))
        if data.get("schema") != SCHEMA:
            raise UserError(f"unsupported schema {data.get('schema')!r}; expected {SCHEMA!r}",
                            source=source, field="schema")
        if "tasks" not in data:
            raise UserError("missing (a mapping of task name to kind)", source=source,
                            field="tasks")
        tasks = _mapping(data["tasks"], source, "tasks")
        structure = _structure(data.get("structure", "sequence"), source)
        shared = _parse_shared(data.get("shared"), structure, source)
        per_task = {
            str(name): _slots(slots or [], source, f"per_task.{name}")
            for name, slots in _mapping(data.get("per_task") or {}, source, "per_task").items()
        }
        weighting = _weighting(data.get("weighting") or {}, source)
        provenance = _mapping(data.get("provenance") or {}, source, "provenance")
        policy = cls.__new__(cls)
        policy.tasks = dict(tasks)
        policy.shared = shared
        policy.per_task = per_task
        policy.structure = structure
        policy.weighting = weighting
        policy.provenance = dict(provenance)
        _validate(policy, source)
        return policy

    def to_yaml(self, path: str | Path) -> Path:
        """Write the policy as YAML; returns ``path`` (so ``load_policy(p.to_yaml(f)) == p``)."""
        path = Path(path)
        data = self.to_dict()
        # One slot per line: slots are written in flow style, {op: rotate, p: 0.6, magnitude: 0.3};
        # a sub-policy is one line too, and an op list is one flow list.
        shared = data["shared"]
        if isinstance(self.shared, SubPolicies):
            data["shared"] = [_FlowList(_FlowMap(s) for s in sp) for sp in shared]
        elif isinstance(shared, dict):
            data["shared"] = {k: _FlowList(v) if k == "ops" else v for k, v in shared.items()}
        else:
            data["shared"] = [_FlowMap(s) for s in shared]
        data["per_task"] = {t: [_FlowMap(s) for s in v] for t, v in data["per_task"].items()}
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
        path.write_text(text, encoding="utf-8")
        return path

    def summary(self) -> str:
        """A short one-liner, e.g. ``rotate(.6,.3) solarize(.2,.7) | seg: hflip(.5,1.0)`` or
        ``randaugment(n=2, m=.30, 14 ops)``."""
        parts = [_shared_text(self.shared)]
        parts += [
            f"{t}: " + " ".join(_slot_text(s) for s in self.per_task[t])
            for t in self.tasks
            if self.per_task.get(t)
        ]
        if self.weighting.method != "static":
            parts.append(f"weighting: {_weighting_text(self.weighting)}")
        return " | ".join(parts)

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise UserError(f"unknown task {task!r}; the policy's tasks: {known}", field="task")


def load_policy(path: str | Path) -> Policy:
    """Read a policy YAML file (``yaml.safe_load`` only); problems are one-line ``UserError``s."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError("file not found", source=source) from None
    except OSError as err:
        raise UserError(f"cannot read: {err.strerror or err}", source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"invalid YAML{where}: {_one_line(problem)}", source=source) from None
    return Policy.from_dict(data, source=source)


# --- MultiTaskAugment ------------------------------------------------------------------------


class _View:
    """One view's compiled pipeline."""

    __slots__ = ("name", "compose", "spatial", "marker", "sized", "size", "unsupported")

    def __init__(self, name: str, shared: Shared):
        self.name = name
        transforms, ops = _compile(shared)
        self.spatial = any(op.kind == "geometric" for op in ops)
        self.marker = any(op.fills_outside for op in ops)
        self.size: tuple[int, int] | None = None
        self.compose: A.Compose | None = None
        self.sized: list[A.BasicTransform] = []
        # Leaf transforms that move pixels but have no rule to turn surface normals.
        self.unsupported = normals_unsupported(transforms)
        if not transforms:
            return
        if self.spatial:
            self.compose = A.Compose(
                transforms,
                bbox_params=_bbox_params(["box_idx"]),
                strict=False,
            )
        else:
            # Photometric only: the targets never enter albumentations.
            self.compose = A.Compose(transforms, strict=False)
        _collect(transforms, A.RandomResizedCrop, self.sized)
        dropouts: list[A.BasicTransform] = []
        _collect(transforms, A.CoarseDropout, dropouts)
        for t in dropouts:
            # Cutout erases the image only; without a bbox processor it leaves boxes alone
            # (with one it would shrink or drop boxes under the hole).
            t.set_processors({})


def _compile(shared: Shared) -> tuple[list[A.BasicTransform], list[Op]]:
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


class MultiTaskAugment:
    """``sample -> {view: sample}``: view ``shared`` is the sample under the shared slots, and
    each task with per-task slots gets a view (its name) = the shared view further transformed
    by its slots, one draw of the shared slots per sample. With ``task``, returns that task's
    single view sample instead of the dict.

    Sample keys (policysearch.data.base): ``image`` H×W×3 uint8; ``mask`` H×W int (nearest,
    255 where pixels come from outside); ``boxes`` N×4 float32 pixel x1,y1,x2,y2 with
    ``box_labels`` N (clipped; dropped with their labels when under 30% visible or under 2 px);
    ``depth`` H×W float32 (nearest, 0.0 = invalid where pixels come from outside);
    ``normals`` H×W×3 float32 unit vectors (nearest, vectors turned with the image, see
    ``policysearch.augment.normals``; zero vectors where pixels come from outside);
    ``instance_masks`` N×H×W, one per box (nearest, kept or dropped with their box, 0 outside).
    Other keys pass through unchanged (not copied).
    Not thread-safe; in DataLoader workers call ``set_seed`` per worker (and per epoch).
    """

    def __init__(self, policy: Policy, *, task: str | None = None, seed: int | None = None):
        if policy.structure not in STRUCTURES:
            raise UserError(f"structure {policy.structure!r} is not supported", field="structure")
        self.policy = policy
        self.task = task
        shared = _View(SHARED, policy.shared)
        if task is None:
            names = [t for t in policy.tasks if policy.per_task.get(t)]
        else:
            names = [task] if policy.view_of(task) == task else []
        self._shared = shared
        self._task_views = [_View(t, policy.per_task[t]) for t in names]
        self._check_normals()
        self.set_seed(seed)

    def set_seed(self, seed: int | None) -> None:
        """Reseed every view (one stream for all): same seed + same samples -> same outputs."""
        self._rng = np.random.default_rng(seed)
        self._py_random = random.Random(seed)
        for view in (self._shared, *self._task_views):
            if view.compose is not None:
                view.compose.set_random_state(self._rng, self._py_random)

    @property
    def views(self) -> tuple[str, ...]:
        """The view names ``__call__`` returns."""
        return (SHARED, *(v.name for v in self._task_views))

    def pipeline(self, view: str = SHARED) -> A.Compose | None:
        """The albumentations ``Compose`` behind ``view`` (None when it has no ops), for
        inspection. It takes the internal keys: ``image``, ``mask`` (mask, depth and the
        outside marker stacked as float32 channels), ``bboxes`` with ``box_idx``."""
        for v in (self._shared, *self._task_views):
            if v.name == view:
                return v.compose
        raise UserError(f"unknown view {view!r}; views: {', '.join(self.views)}", field="view")

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        shared = _apply(self._shared, sample)
        if self.task is not None:
            return _apply(self._task_views[0], shared) if self._task_views else shared
        views = {SHARED: shared}
        for view in self._task_views:
            views[view.name] = _apply(view, shared)
        return views

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


def _collect(transforms: Sequence[Any], cls: type, found: list[Any]) -> None:
    for t in transforms:
        if isinstance(t, cls):
            found.append(t)
        _collect(getattr(t, "transforms", ()), cls, found)


def _set_fill_mask(transforms: Sequence[Any], value: float) -> None:
    """Set the outside fill of every mask-type target of the warps in ``transforms``."""
    for t in transforms:
        if isinstance(t, (A.Affine, BaseDistortion)) and t.fill_mask is not None:
            t.fill_mask = (float(value),) * 4 if isinstance(t.fill_mask, tuple) else value
        _set_fill_mask(getattr(t, "transforms", ()), value)


def _bbox_params(label_fields: list[str]) -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=label_fields,
        min_visibility=BOX_MIN_VISIBILITY,
        min_width=BOX_MIN_SIDE,
        min_height=BOX_MIN_SIDE,
        clip=True,
        filter_invalid_bboxes=True,
    )


def _size_from(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (value[0], value[1])
    return None


# --- validation ------------------------------------------------------------------------------


def _validate(policy: Policy, source: str) -> None:
    """Check every part of ``policy``; raise ``UserError`` naming ``source`` and the field."""
    tasks = _mapping(policy.tasks, source, "tasks")
    for name, kind in tasks.items():
        if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
            raise UserError("a task name must be an identifier (letters, digits, _ or -)",
                            source=source, field=f"tasks.{name}")
        if name == SHARED:
            raise UserError(f"{SHARED!r} is reserved for the shared view; rename the task",
                            source=source, field=f"tasks.{name}")
        if not isinstance(kind, str) or not kind:
            raise UserError("a task kind must be a non-empty string (e.g. segmentation)",
                            source=source, field=f"tasks.{name}")
    _structure(policy.structure, source)
    _check_shared(policy.shared, policy.structure, source)
    per_task = _mapping(policy.per_task, source, "per_task")
    for name, slots in per_task.items():
        if name not in tasks:
            raise UserError(f"{name!r} is not one of the policy's tasks ({', '.join(tasks)})",
                            source=source, field=f"per_task.{name}")
        _check_slots(slots, source, f"per_task.{name}")
    w = policy.weighting
    if not isinstance(w, Weighting):
        raise UserError("must be a Weighting", source=source, field="weighting")
    problem = weighting_names.method_problem(w.method)
    if problem:
        raise UserError(problem, source=source, field="weighting.method")
    for name, value in _mapping(w.params, source, "weighting.params").items():
        problem = weighting_names.param_problem(w.method, name, value)
        if problem:
            raise UserError(problem, source=source, field=f"weighting.params.{name}")
    for name, value in _mapping(w.weights, source, "weighting.weights").items():
        fld = f"weighting.weights.{name}"
        if name not in tasks:
            raise UserError(f"{name!r} is not one of the policy's tasks", source=source,
                            field=fld)
        if not _is_number(value) or not value > 0:
            raise UserError(f"a weight must be a number > 0, got {value!r}", source=source,
                            field=fld)
    prov = _mapping(policy.provenance, source, "provenance")
    for key in prov:
        if not isinstance(key, str):
            raise UserError(f"keys must be strings, got {key!r}", source=source,
                            field="provenance")


def _check_slots(slots: Any, source: str, where: str) -> None:
    if not isinstance(slots, tuple):
        raise UserError("must be a list of slots", source=source, field=where)
    for i, slot in enumerate(slots):
        fld = f"{where}[{i}]"
        if not isinstance(slot, Slot):
            raise UserError("must be a Slot(op, p, magnitude)", source=source, field=fld)
        get_op(slot.op, source=source, field=f"{fld}.op")
        for attr in ("p", "magnitude"):
            value = getattr(slot, attr)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"must be a number in [0, 1], got {value!r}", source=source,
                                field=f"{fld}.{attr}")


def _structure(value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise UserError("must be a string", source=source, field="structure")
    if value not in STRUCTURES:
        raise UserError(f"unknown structure {value!r}; expected one of {', '.join(STRUCTURES)}",
                        source=source, field="structure")
    return value


def _check_shared(shared: Any, structure: str, source: str) -> None:
    """``shared`` must have the type of ``structure``, with valid values."""
    if _STRUCTURE_OF.get(type(shared)) != structure:
        raise UserError(
            f"structure {structure!r} needs shared to be {_SHARED_FORM[structure]}, got "
            f"{type(shared).__name__}", source=source, field="shared")
    if isinstance(shared, SubPolicies):
        if not isinstance(shared.policies, tuple) or not shared.policies:
            raise UserError("must hold at least one sub-policy", source=source, field="shared")
        for i, sp in enumerate(shared.policies):
            _check_slots(sp, source, f"shared[{i}]")
    elif isinstance(shared, RandAugmentSpec):
        if not isinstance(shared.n, int) or isinstance(shared.n, bool) or shared.n < 0:
            raise UserError(f"must be a whole number >= 0, got {shared.n!r}", source=source,
                            field="shared.n")
        _check_unit(shared.magnitude, source, "shared.magnitude")
        if not _is_number(shared.mstd) or shared.mstd < 0:
            raise UserError(f"must be a number >= 0, got {shared.mstd!r}", source=source,
                            field="shared.mstd")
        _check_ops(shared.ops, source, "shared.ops")
        _check_scale(shared.scale, source)
    elif isinstance(shared, TrivialAugmentSpec):
        _check_ops(shared.ops, source, "shared.ops")
        _check_scale(shared.scale, source)
    else:
        _check_slots(shared, source, "shared")


def _check_ops(ops: Any, source: str, where: str) -> None:
    if not isinstance(ops, tuple) or not ops:
        raise UserError("must be a non-empty list of op names", source=source, field=where)
    for i, name in enumerate(ops):
        get_op(name, source=source, field=f"{where}[{i}]")
        if name in ops[:i]:
            raise UserError(f"{name!r} is listed twice", source=source, field=f"{where}[{i}]")


def _check_scale(scale: Any, source: str) -> None:
    if scale not in SCALES:
        raise UserError(f"must be one of {', '.join(SCALES)}, got {scale!r}", source=source,
                        field="shared.scale")


def _check_unit(value: Any, source: str, where: str) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"must be a number in [0, 1], got {value!r}", source=source, field=where)


def _parse_shared(raw: Any, structure: str, source: str) -> Shared:
    """Parse the YAML ``shared`` value of ``structure``."""
    if structure == "sequence":
        if isinstance(raw, list):
            for i, item in enumerate(raw):
                if isinstance(item, list):
                    raise UserError("a slot must be a mapping {op, p, magnitude}; a list of "
                                    "sub-policies needs structure: subpolicies", source=source,
                                    field=f"shared[{i}]")
        return _slots(raw or [], source, "shared")
    if structure == "subpolicies":
        if not isinstance(raw, list) or not raw:
            raise UserError(f"must be {_SHARED_FORM[structure]}", source=source, field="shared")
        return SubPolicies(tuple(
            _slots(sp, source, f"shared[{i}]") for i, sp in enumerate(raw)
        ))
    if not isinstance(raw, Mapping):
        raise UserError(f"structure {structure!r} needs {_SHARED_FORM[structure]}, got "
                        f"{type(raw).__name__}", source=source, field="shared")
    allowed = _RANDAUGMENT_KEYS if structure == "randaugment" else _TRIVIALAUGMENT_KEYS
    for key in raw:
        if key not in allowed:
            raise UserError(f"unknown key; {structure} has {', '.join(allowed)}", source=source,
                            field=f"shared.{key}")
    required = ("n", "magnitude", "ops") if structure == "randaugment" else ("ops",)
    for key in required:
        if key not in raw:
            raise UserError("missing", source=source, field=f"shared.{key}")
    ops = raw["ops"]
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise UserError("must be a list of op names", source=source, field="shared.ops")
    if structure == "trivialaugment":
        return TrivialAugmentSpec(ops=tuple(ops), scale=raw.get("scale", "wide"))
    n, magnitude, mstd = raw["n"], raw["magnitude"], raw.get("mstd", 0.0)
    if not isinstance(n, int) or isinstance(n, bool):
        raise UserError(f"must be a whole number >= 0, got {n!r}", source=source,
                        field="shared.n")
    for key, value in (("magnitude", magnitude), ("mstd", mstd)):
        if not _is_number(value):
            raise UserError(f"must be a number, got {value!r}", source=source,
                            field=f"shared.{key}")
    return RandAugmentSpec(n=n, magnitude=float(magnitude), mstd=float(mstd), ops=tuple(ops),
                           scale=raw.get("scale", "standard"))


def _slots(raw: Any, source: str, where: str) -> tuple[Slot, ...]:
    """Parse a YAML list of ``{op, p, magnitude}`` mappings."""
    if not isinstance(raw, list):
        raise UserError("must be a list of {op, p, magnitude}", source=source, field=where)
    slots = []
    for i, item in enumerate(raw):
        fld = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise UserError("a slot must be a mapping {op, p, magnitude}", source=source,
                            field=fld)
        for key in item:
            if key not in _SLOT_KEYS:
                raise UserError("unknown key; a slot has op, p and magnitude", source=source,
                                field=f"{fld}.{key}")
        for key in _SLOT_KEYS:
            if key not in item:
                raise UserError("missing", source=source, field=f"{fld}.{key}")
        op = item["op"]
        if not isinstance(op, str):
            raise UserError(f"must be an op name, got {op!r}", source=source, field=f"{fld}.op")
        get_op(op, source=source, field=f"{fld}.op")
        values = []
        for key in ("p", "magnitude"):
            value = item[key]
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"must be a number in [0, 1], got {value!r}", source=source,
                                field=f"{fld}.{key}")
            values.append(float(value))
        slots.append(Slot(op, values[0], values[1]))
    return tuple(slots)


def _weighting(raw: Any, source: str) -> Weighting:
    raw = _mapping(raw, source, "weighting")
    for key in raw:
        if key not in ("method", "weights", "params"):
            raise UserError("unknown key; weighting has method, weights and params",
                            source=source, field=f"weighting.{key}")
    method = raw.get("method", "static")
    parsed: dict[str, dict[str, float]] = {"weights": {}, "params": {}}
    for part, what in (("weights", "a weight must be a number > 0"),
                       ("params", "must be a number")):
        for name, value in _mapping(raw.get(part) or {}, source, f"weighting.{part}").items():
            if not _is_number(value):
                raise UserError(f"{what}, got {value!r}", source=source,
                                field=f"weighting.{part}.{name}")
            parsed[part][str(name)] = float(value)
    return Weighting(method=method, weights=parsed["weights"], params=parsed["params"])


def _weighting_dict(w: Weighting) -> dict[str, Any]:
    """The YAML value of ``weighting``; ``params`` only when set."""
    data: dict[str, Any] = {"method": w.method,
                            "weights": {t: float(v) for t, v in w.weights.items()}}
    if w.params:
        data["params"] = {name: float(v) for name, v in w.params.items()}
    return data


def _weighting_text(w: Weighting) -> str:
    """The weighting part of ``Policy.summary``, e.g. ``dwa(temperature=2)``."""
    params = ", ".join(f"{name}={value:g}" for name, value in w.params.items())
    return f"{w.method}({params})" if params else w.method


def _mapping(value: Any, source: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise UserError(f"must be a mapping, got {type(value).__name__}", source=source,
                        field=where)
    return value


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


# --- YAML helpers ----------------------------------------------------------------------------


class _FlowMap(dict):
    """A mapping written in YAML flow style (one slot per line)."""


class _FlowList(list):
    """A list written in YAML flow style (one sub-policy or op list per line)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _FlowMap, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)
_Dumper.add_representer(
    _FlowList, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data,
                                                    flow_style=True)
)


def _slot_dict(slot: Slot) -> dict[str, Any]:
    return {"op": slot.op, "p": float(slot.p), "magnitude": float(slot.magnitude)}


def _shared_dict(shared: Shared) -> Any:
    """The YAML value of ``shared`` (see the module docstring); defaults of ``scale`` omitted."""
    if isinstance(shared, SubPolicies):
        return [[_slot_dict(s) for s in sp] for sp in shared.policies]
    if isinstance(shared, RandAugmentSpec):
        data: dict[str, Any] = {"n": int(shared.n), "magnitude": float(shared.magnitude),
                                "mstd": float(shared.mstd), "ops": list(shared.ops)}
        if shared.scale != "standard":
            data["scale"] = shared.scale
        return data
    if isinstance(shared, TrivialAugmentSpec):
        data = {"ops": list(shared.ops)}
        if shared.scale != "wide":
            data["scale"] = shared.scale
        return data
    return [_slot_dict(s) for s in shared]


def _plain(value: Any) -> Any:
    """Provenance as plain YAML-safe data (NumPy scalars -> Python, tuples -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _num(x: float) -> str:
    text = f"{x:.2f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return text[1:] if text.startswith("0.") else text


def _slot_text(slot: Slot) -> str:
    return f"{slot.op}({_num(slot.p)},{_num(slot.magnitude)})"


def _fixed2(x: float) -> str:
    text = f"{x:.2f}"
    return text[1:] if text.startswith("0.") else text


def _shared_text(shared: Shared) -> str:
    """The shared part of ``Policy.summary``."""
    if isinstance(shared, SubPolicies):
        longest = max((len(sp) for sp in shared.policies), default=0)
        if len(shared.policies) > 3:
            return f"subpolicies({len(shared.policies)} x {longest} slots)"
        inner = " / ".join(" ".join(_slot_text(s) for s in sp) or "none"
                           for sp in shared.policies)
        return f"subpolicies({inner})"
    if isinstance(shared, RandAugmentSpec):
        extra = f", mstd={_fixed2(shared.mstd)}" if shared.mstd else ""
        extra += ", wide" if shared.scale != "standard" else ""
        return (f"randaugment(n={shared.n}, m={_fixed2(shared.magnitude)}{extra}, "
                f"{len(shared.ops)} ops)")
    if isinstance(shared, TrivialAugmentSpec):
        extra = ", standard" if shared.scale != "wide" else ""
        return f"trivialaugment({len(shared.ops)} ops{extra})"
    return " ".join(_slot_text(s) for s in shared) or "none"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
