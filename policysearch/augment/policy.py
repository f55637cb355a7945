"""Policy (slots + weighting), its YAML form, and MultiTaskAugment, the per-sample callable.

Imports neither torch, optuna nor ray: ``load_policy`` must work in plain training code.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import yaml

from policysearch.augment.ops import FILL_MASK, build_slot, get_op, set_output_size
from policysearch.errors import UserError

SCHEMA = "policysearch.policy/v1"
STRUCTURES = ("sequence",)
# Structures the design names that this version cannot run yet.
_PLANNED_STRUCTURES = ("subpolicies", "randaugment", "trivialaugment")
SHARED = "shared"
_TOP_KEYS = ("schema", "tasks", "structure", "shared", "per_task", "weighting", "provenance")
_SLOT_KEYS = ("op", "p", "magnitude")
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


@dataclass
class Weighting:
    """How task losses are combined: ``static`` weights, or a dynamic method's name."""

    method: str = "static"
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Policy:
    """An augmentation policy for a set of tasks (see design.md, "Vocabulary")."""

    tasks: dict[str, str]
    shared: tuple[Slot, ...] = ()
    per_task: dict[str, tuple[Slot, ...]] = field(default_factory=dict)
    structure: str = "sequence"
    weighting: Weighting = field(default_factory=Weighting)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.shared, (list, tuple)):
            self.shared = tuple(self.shared)
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
        """A plain ``A.Compose``: the shared slots, then ``task``'s slots, albumentations keys.

        Keys: ``image``; ``mask``; ``bboxes`` (pascal_voc pixels) with label field ``labels``
        for detection; ``depth`` as an additional mask-type target for depth (outside pixels
        filled with 0.0, i.e. invalid). ``size`` (height, width) is required when the policy has
        a crop, which resizes back to the input size: it defaults to ``provenance['image_size']``.
        """
        self._check_task(task)
        kind = self.tasks[task]
        if kind == "normals":
            raise UserError(
                "surface normals need policysearch's own step; use load_policy(...).transform()",
                field=task,
            )
        slots = self.shared + self.per_task.get(task, ())
        transforms = [build_slot(s.op, s.p, s.magnitude) for s in slots]
        if any(get_op(s.op).sized for s in slots):
            size = size or _size_from(self.provenance.get("image_size"))
            if size is None:
                raise UserError(
                    "the policy has a 'crop' slot, which resizes back to the input size; "
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
        return A.Compose(
            transforms, bbox_params=bbox_params, additional_targets=targets, seed=seed
        )

    # --- serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping of design.md ("Public interface")."""
        return {
            "schema": SCHEMA,
            "tasks": dict(self.tasks),
            "structure": self.structure,
            "shared": [_slot_dict(s) for s in self.shared],
            "per_task": {t: [_slot_dict(s) for s in slots] for t, slots in self.per_task.items()},
            "weighting": {
                "method": self.weighting.method,
                "weights": {t: float(w) for t, w in self.weighting.weights.items()},
            },
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
        structure = data.get("structure", "sequence")
        shared = _slots(data.get("shared") or [], source, "shared")
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
        # One slot per line: slots are written in flow style, {op: rotate, p: 0.6, magnitude: 0.3}.
        data["shared"] = [_FlowMap(s) for s in data["shared"]]
        data["per_task"] = {t: [_FlowMap(s) for s in v] for t, v in data["per_task"].items()}
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        path.write_text(text, encoding="utf-8")
        return path

    def summary(self) -> str:
        """A short one-liner, e.g. ``rotate(.6,.3) solarize(.2,.7) | seg: hflip(.5,1.0)``."""
        parts = [" ".join(_slot_text(s) for s in self.shared) or "none"]
        parts += [
            f"{t}: " + " ".join(_slot_text(s) for s in self.per_task[t])
            for t in self.tasks
            if self.per_task.get(t)
        ]
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

    __slots__ = ("name", "compose", "spatial", "marker", "sized", "size")

    def __init__(self, name: str, slots: Sequence[Slot]):
        self.name = name
        ops = [get_op(s.op) for s in slots]
        self.spatial = any(op.kind == "geometric" for op in ops)
        self.marker = any(op.fills_outside for op in ops)
        self.size: tuple[int, int] | None = None
        self.compose: A.Compose | None = None
        self.sized: list[A.BasicTransform] = []
        if not slots:
            return
        transforms = [build_slot(s.op, s.p, s.magnitude) for s in slots]
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


class MultiTaskAugment:
    """``sample -> {view: sample}``: view ``shared`` is the sample under the shared slots, and
    each task with per-task slots gets a view (its name) = the shared view further transformed
    by its slots, one draw of the shared slots per sample. With ``task``, returns that task's
    single view sample instead of the dict.

    Sample keys (policysearch.data.base): ``image`` H×W×3 uint8; ``mask`` H×W int (nearest,
    255 where pixels come from outside); ``boxes`` N×4 float32 pixel x1,y1,x2,y2 with
    ``box_labels`` N (clipped; dropped with their labels when under 30% visible or under 2 px);
    ``depth`` H×W float32 (nearest, 0.0 = invalid where pixels come from outside). Other keys
    pass through unchanged (not copied); ``normals`` is removed from views with geometric slots.
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
            if self._shared.spatial or (own and own[0].spatial):
                raise UserError(
                    "geometric ops on surface normals are not supported yet (their vectors "
                    "must be rotated); use photometric ops for this task",
                    field=f"tasks.{name}",
                )


_NO_IDX = np.zeros(0, dtype=np.int64)


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
    mask = sample.get("mask")
    depth = sample.get("depth")
    boxes = sample.get("boxes")
    # mask, depth and the outside marker travel as the channels of one float32 mask: one warp,
    # so nearest sampling picks the same source pixel for all of them (cv2 may round
    # differently per dtype at the image border), and the fill (255) marks outside pixels.
    planes = [a for a in (mask, depth) if a is not None]
    marker = depth is not None and view.marker
    if planes:
        stacked = np.empty((*image.shape[:2], len(planes) + marker), dtype=np.float32)
        for i, plane in enumerate(planes):
            stacked[..., i] = plane.reshape(image.shape[:2])
        if marker:
            stacked[..., -1] = 0.0
        data["mask"] = stacked
    if boxes is not None:
        boxes_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        data["bboxes"] = boxes_arr
        data["box_idx"] = np.arange(len(boxes_arr))
    else:
        data["box_idx"] = _NO_IDX
    res = compose(**data)

    out["image"] = _like(res["image"], image)
    if planes:
        warped = res["mask"]
        shape = warped.shape[:2]
        if mask is not None:
            out["mask"] = _like(warped[..., 0].reshape(shape + mask.shape[2:]), mask)
        if depth is not None:
            new_depth = warped[..., 1 if mask is not None else 0]
            if marker:
                new_depth = np.where(warped[..., -1] == FILL_MASK, np.float32(0), new_depth)
            out["depth"] = _like(new_depth.reshape(shape + depth.shape[2:]), depth)
    if boxes is not None:
        idx = np.asarray(res["box_idx"], dtype=np.int64).reshape(-1)
        out["boxes"] = np.ascontiguousarray(np.asarray(res["bboxes"], dtype=np.float32)[:, :4])
        labels = sample.get("box_labels")
        if labels is not None:
            out["box_labels"] = np.ascontiguousarray(np.asarray(labels)[idx])
    out.pop("normals", None)
    return out


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
    for t in transforms:
        if isinstance(t, A.Affine):
            t.fill_mask = value
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
    if not isinstance(policy.structure, str):
        raise UserError("must be a string", source=source, field="structure")
    if policy.structure in _PLANNED_STRUCTURES:
        raise UserError(f"structure {policy.structure!r} is not supported yet; use 'sequence'",
                        source=source, field="structure")
    if policy.structure not in STRUCTURES:
        raise UserError(f"unknown structure {policy.structure!r}; expected 'sequence'",
                        source=source, field="structure")
    _check_slots(policy.shared, source, "shared")
    per_task = _mapping(policy.per_task, source, "per_task")
    for name, slots in per_task.items():
        if name not in tasks:
            raise UserError(f"{name!r} is not one of the policy's tasks ({', '.join(tasks)})",
                            source=source, field=f"per_task.{name}")
        _check_slots(slots, source, f"per_task.{name}")
    w = policy.weighting
    if not isinstance(w, Weighting):
        raise UserError("must be a Weighting", source=source, field="weighting")
    if not isinstance(w.method, str) or not w.method:
        raise UserError("must be a non-empty string", source=source, field="weighting.method")
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
        if key not in ("method", "weights"):
            raise UserError("unknown key; weighting has method and weights", source=source,
                            field=f"weighting.{key}")
    method = raw.get("method", "static")
    weights = _mapping(raw.get("weights") or {}, source, "weighting.weights")
    parsed = {}
    for name, value in weights.items():
        if not _is_number(value):
            raise UserError(f"a weight must be a number > 0, got {value!r}", source=source,
                            field=f"weighting.weights.{name}")
        parsed[name] = float(value)
    return Weighting(method=method, weights=parsed)


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


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _FlowMap, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


def _slot_dict(slot: Slot) -> dict[str, Any]:
    return {"op": slot.op, "p": float(slot.p), "magnitude": float(slot.magnitude)}


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
