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

**Schedules** (population-based searches, PBA): a policy may carry a ``schedule``, a list
of phases (``Phase``), each the shared and per-task slots in force from its ``from_epoch``
(epochs count from 0) until the next phase's. Phases have the policy's structure and give
slots to the same tasks (so the views never change); the weighting stays one per policy. The
policy's own ``shared`` / ``per_task`` are the last phase's (what training ends with). YAML::

    shared: [...]                # = the last phase's
    per_task: {...}
    schedule:
    - {from_epoch: 0, shared: [...], per_task: {...}}
    - {from_epoch: 4, shared: [...], per_task: {...}}

Replaying: ``policy.at_epoch(e)`` is the plain policy in force at epoch ``e``;
``policy.transform()`` follows the schedule (``aug.set_epoch(e)`` at the start of each epoch);
``policy.transform(epoch=e)`` starts at epoch ``e``.

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

from policysearch import weighting_schema
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
_TOP_KEYS = ("schema", "tasks", "structure", "shared", "per_task", "weighting", "provenance",
             "schedule")
_PHASE_KEYS = ("from_epoch", "shared", "per_task")
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
    ``dwa``; see ``policysearch.weighting_schema.METHODS``), per-task ``weights`` (used by
    ``static``; kept as a record by the others) and the method's hyper-parameters ``params``
    (plain numbers; one left out takes its default). YAML:
    ``{method: dwa, weights: {...}, params: {temperature: 2.0}}``, ``params`` optional."""

    method: str = "static"
    weights: dict[str, float] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class Phase:
    """One phase of a schedule: the shared and per-task slots in force from epoch
    ``from_epoch`` (counted from 0) until the next phase's. ``shared`` has the structure of the
    policy that holds the phase; YAML ``{from_epoch: 4, shared: [...], per_task: {...}}``."""

    from_epoch: int
    shared: Shared = ()
    per_task: dict[str, tuple[Slot, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.shared, list):
            self.shared = tuple(self.shared)
        self.per_task = _tuple_slots(self.per_task)


@dataclass
class Policy:
    """An augmentation policy for a set of tasks (see design.md, "Vocabulary").

    ``shared`` is a tuple of slots (``structure`` sequence), ``SubPolicies``,
    ``RandAugmentSpec`` or ``TrivialAugmentSpec``; ``structure`` follows from its type when
    left out. ``Policy(tasks, shared=[[...], [...]], structure="subpolicies")`` also works.

    ``schedule`` (PBT results): phases (``Phase``) by epoch, the first from epoch 0, their
    ``from_epoch`` increasing; ``shared`` and ``per_task`` left empty are then taken from the
    last phase (given, they must equal it). ``at_epoch(e)`` resolves it; see the module
    docstring.
    """

    tasks: dict[str, str]
    shared: Shared = ()
    per_task: dict[str, tuple[Slot, ...]] = field(default_factory=dict)
    # None: taken from the type of ``shared``; always a string once constructed.
    structure: str | None = None
    weighting: Weighting = field(default_factory=Weighting)
    provenance: dict[str, Any] = field(default_factory=dict)
    schedule: tuple[Phase, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.schedule, list):
            self.schedule = tuple(self.schedule)
        if isinstance(self.schedule, tuple):
            for phase in self.schedule:
                if isinstance(phase, Phase) and self.structure == "subpolicies" \
                        and isinstance(phase.shared, tuple):
                    phase.shared = SubPolicies(phase.shared)
            last = self.schedule[-1] if self.schedule else None
            if isinstance(last, Phase):
                # Left empty: the last phase's (given, they must equal it; see _validate).
                if self.shared in ((), []):
                    self.shared = last.shared
                if not self.per_task:
                    self.per_task = dict(last.per_task)
                if self.structure is None:
                    self.structure = _STRUCTURE_OF.get(type(last.shared), "sequence")
        if isinstance(self.shared, (list, tuple)):
            if self.structure == "subpolicies":
                self.shared = SubPolicies(tuple(self.shared))
            else:
                self.shared = tuple(self.shared)
        if self.structure is None:
            self.structure = _STRUCTURE_OF.get(type(self.shared), "sequence")
        if isinstance(self.per_task, Mapping):
            self.per_task = _tuple_slots(self.per_task)
        _validate(self, "<policy>")

    # --- schedules ---------------------------------------------------------------------------

    def at_epoch(self, epoch: int) -> Policy:
        """The plain policy (no schedule) in force at ``epoch`` (counted from 0): that of the
        last phase whose ``from_epoch`` is at most ``epoch``. A policy without a schedule
        returns itself. Tasks, structure, weighting and provenance are this policy's."""
        if not self.schedule:
            return self
        phase = self.schedule[self.phase_index(epoch)]
        return Policy(tasks=dict(self.tasks), shared=phase.shared, per_task=dict(phase.per_task),
                      structure=self.structure, weighting=self.weighting,
                      provenance=dict(self.provenance))

    def phase_index(self, epoch: int) -> int:
        """The index in ``schedule`` of the phase in force at ``epoch`` (0 without one)."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise UserError(f"an epoch is a whole number >= 0, got {epoch!r}", field="epoch")
        index = 0
        for i, phase in enumerate(self.schedule):
            if phase.from_epoch <= epoch:
                index = i
        return index

    @classmethod
    def from_phases(cls, phases: Sequence[tuple[int, Policy]], *,
                    weighting: Weighting | None = None,
                    provenance: Mapping[str, Any] | None = None) -> Policy:
        """The policy that applies each plain policy of ``(from_epoch, policy)`` from its
        epoch on (the first from epoch 0). Consecutive phases with the same slots are merged;
        one phase left gives a plain policy without a schedule. Tasks and structure come from
        the policies (which must agree), weighting and provenance from the last unless given."""
        if not phases:
            raise ValueError("from_phases needs at least one (from_epoch, policy)")
        merged: list[tuple[int, Policy]] = []
        for start, policy in phases:
            if policy.schedule:
                raise ValueError("from_phases takes plain policies (without a schedule)")
            if merged and _slots_key(merged[-1][1]) == _slots_key(policy):
                continue
            merged.append((int(start), policy))
        last = phases[-1][1]
        weighting = last.weighting if weighting is None else weighting
        provenance = dict(last.provenance if provenance is None else provenance)
        if len(merged) == 1:
            only = merged[0][1]
            return cls(tasks=dict(only.tasks), shared=only.shared, per_task=dict(only.per_task),
                       structure=only.structure, weighting=weighting, provenance=provenance)
        for _, policy in merged:
            if policy.tasks != last.tasks or policy.structure != last.structure:
                raise UserError("every phase must have the same tasks and structure "
                                f"({last.structure}, {', '.join(last.tasks)})", field="schedule")
        return cls(tasks=dict(last.tasks), structure=last.structure, weighting=weighting,
                   provenance=provenance,
                   schedule=tuple(Phase(start, p.shared, dict(p.per_task)) for start, p in merged))

    # --- views -------------------------------------------------------------------------------

    def view_of(self, task: str) -> str:
        """The view ``task`` trains on: its own name if it has per-task slots, else ``shared``."""
        self._check_task(task)
        return task if self.per_task.get(task) else SHARED

    def views(self) -> tuple[str, ...]:
        """Every view ``transform()`` produces: ``shared``, then each task with its own slots."""
        return (SHARED, *(t for t in self.tasks if self.per_task.get(t)))

    def transform(self, task: str | None = None, seed: int | None = None, *,
                  epoch: int | None = None) -> MultiTaskAugment:
        """The per-sample callable: ``sample -> {view: sample}``, or with ``task`` that task's
        single view sample.

        With a schedule it follows the schedule: it starts at ``epoch`` (default 0) and
        ``set_epoch(e)`` at the start of each epoch switches to the phase in force::

            aug = policy.transform()
            for epoch in range(epochs):
                aug.set_epoch(epoch)      # a no-op for a policy without a schedule
                ...                       # views = aug(sample)

        ``policy.at_epoch(e).transform()`` is the same augmentation as ``transform(epoch=e)``,
        fixed to that phase.
        """
        return MultiTaskAugment(self, task=task, seed=seed, epoch=epoch)

    def to_albumentations(
        self, task: str, *, size: tuple[int, int] | None = None, seed: int | None = None,
        epoch: int | None = None,
    ) -> A.Compose:
        """A plain ``A.Compose``: the shared structure, then ``task``'s slots, albumentations keys.

        A policy with a schedule needs ``epoch``: the Compose of the phase in force then (a
        Compose cannot switch phases by itself); without a schedule ``epoch`` is ignored.

        Keys: ``image``; ``mask``; ``bboxes`` (pascal_voc pixels) with label field ``labels``
        for detection; ``depth`` as an additional mask-type target for depth (outside pixels
        filled with 0.0, i.e. invalid). ``size`` (height, width) is required when the policy has
        a crop, which resizes back to the input size: it defaults to ``provenance['image_size']``.
        ``seed`` seeds one random stream shared by every transform (albumentations' own
        ``seed=`` gives each transform the same stream, so equal-p slots would fire together).
        """
        if self.schedule:
            if epoch is None:
                starts = ", ".join(str(p.from_epoch) for p in self.schedule)
                raise UserError(f"the policy has a schedule (phases from epochs {starts}); pass "
                                "epoch=E for the phase in force at epoch E", field="epoch")
            return self.at_epoch(epoch).to_albumentations(task, size=size, seed=seed)
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
        """The YAML mapping of design.md ("Public interface"); ``schedule`` only when set."""
        data = {
            "schema": SCHEMA,
            "tasks": dict(self.tasks),
            "structure": self.structure,
            "shared": _shared_dict(self.shared),
            "per_task": _per_task_dict(self.per_task),
            "weighting": _weighting_dict(self.weighting),
            "provenance": _plain(self.provenance),
        }
        if self.schedule:
            data["schedule"] = [
                {"from_epoch": int(p.from_epoch), "shared": _shared_dict(p.shared),
                 "per_task": _per_task_dict(p.per_task)}
                for p in self.schedule
            ]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        """Parse and validate the YAML mapping; every problem is a one-line ``UserError``."""
        if not isinstance(data, Mapping):
            raise UserError(
                f"a policy must be a mapping, got {type(data).__name__}", source=source
            )
        for key in data:
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
        schedule = _parse_schedule(data["schedule"], structure, source) \
            if "schedule" in data else ()
        if schedule and "shared" not in data:
            shared = schedule[-1].shared
        else:
            shared = _parse_shared(data.get("shared"), structure, source)
        if schedule and "per_task" not in data:
            per_task = dict(schedule[-1].per_task)
        else:
            per_task = _parse_per_task(data.get("per_task"), source, "per_task")
        weighting = _weighting(data.get("weighting") or {}, source)
        provenance = _mapping(data.get("provenance") or {}, source, "provenance")
        policy = cls.__new__(cls)
        policy.tasks = dict(tasks)
        policy.shared = shared
        policy.per_task = per_task
        policy.structure = structure
        policy.weighting = weighting
        policy.provenance = dict(provenance)
        policy.schedule = schedule
        _validate(policy, source)
        return policy

    def to_yaml(self, path: str | Path) -> Path:
        """Write the policy as YAML; returns ``path`` (so ``load_policy(p.to_yaml(f)) == p``)."""
        path = Path(path)
        data = self.to_dict()
        # One slot per line: slots are written in flow style, {op: rotate, p: 0.6, magnitude: 0.3};
        # a sub-policy is one line too, and an op list is one flow list. Phases likewise.
        for part in (data, *data.get("schedule", ())):
            part["shared"] = _flow_shared(part["shared"], self.structure)
            part["per_task"] = {t: [_FlowMap(s) for s in v] for t, v in part["per_task"].items()}
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
        path.write_text(text, encoding="utf-8")
        return path

    def summary(self) -> str:
        """A short one-liner, e.g. ``rotate(.6,.3) solarize(.2,.7) | seg: hflip(.5,1.0)`` or
        ``randaugment(n=2, m=.30, 14 ops)``.

        A schedule shows its phases by first epoch, ``e0: hflip(.5,1.0) → e4: rotate(.6,.3)``
        (more than four phases: the first two, how many are left out, the last two)."""
        if self.schedule:
            texts = [f"e{p.from_epoch}: {self._slots_text(p.shared, p.per_task)}"
                     for p in self.schedule]
            if len(texts) > 4:
                texts = [*texts[:2], f"… {len(texts) - 4} more …", *texts[-2:]]
            parts = [" → ".join(texts)]
        else:
            parts = [self._slots_text(self.shared, self.per_task)]
        if self.weighting.method != "static":
            parts.append(f"weighting: {_weighting_text(self.weighting)}")
        return " | ".join(parts)

    def _slots_text(self, shared: Shared, per_task: Mapping[str, tuple[Slot, ...]]) -> str:
        parts = [_shared_text(shared)]
        parts += [f"{t}: " + " ".join(_slot_text(s) for s in per_task[t])
                  for t in self.tasks if per_task.get(t)]
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
    Not thread-safe; in DataLoader workers pass ``worker_init_fn=policysearch.augment.seed_worker``
    (a seed per worker and per epoch; see policysearch.augment.seeding).

    A policy with a schedule: the augmentation of the phase in force at the current ``epoch``
    (``epoch`` at construction, default 0; then ``set_epoch``). Every phase is compiled up front
    (a phase that cannot work fails here, not epochs later); all share one random stream.
    """

    def __init__(self, policy: Policy, *, task: str | None = None, seed: int | None = None,
                 epoch: int | None = None):
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
            self._phases.append((_View(SHARED, phase.shared),
                                 [_View(t, phase.per_task[t]) for t in names]))
        for shared, task_views in self._phases:
            self._shared, self._task_views = shared, task_views
            self._check_normals()
        self.epoch = 0
        self.set_epoch(0 if epoch is None else epoch)
        self.set_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        """Switch to the phase of the schedule in force at ``epoch`` (counted from 0); without
        a schedule only ``epoch`` is recorded. The random stream goes on as it was."""
        index = self.policy.phase_index(epoch)
        self.epoch = epoch
        self._shared, self._task_views = self._phases[index]

    def set_seed(self, seed: int | None) -> None:
        """Reseed every view (one stream for all): same seed + same samples -> same outputs."""
        self._rng = np.random.default_rng(seed)
        self._py_random = random.Random(seed)
        for shared, task_views in self._phases:
            for view in (shared, *task_views):
                if view.compose is not None:
                    view.compose.set_random_state(self._rng, self._py_random)

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
    _check_per_task(policy.per_task, tasks, source, "per_task")
    _check_schedule(policy, tasks, source)
    w = policy.weighting
    if not isinstance(w, Weighting):
        raise UserError("must be a Weighting", source=source, field="weighting")
    problem = weighting_schema.method_problem(w.method)
    if problem:
        raise UserError(problem, source=source, field="weighting.method")
    for name, value in _mapping(w.params, source, "weighting.params").items():
        problem = weighting_schema.param_problem(w.method, name, value)
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


def _check_per_task(per_task: Any, tasks: Mapping[str, Any], source: str, where: str) -> None:
    per_task = _mapping(per_task, source, where)
    for name, slots in per_task.items():
        if name not in tasks:
            raise UserError(f"{name!r} is not one of the policy's tasks ({', '.join(tasks)})",
                            source=source, field=f"{where}.{name}")
        _check_slots(slots, source, f"{where}.{name}")


def _check_schedule(policy: Policy, tasks: Mapping[str, Any], source: str) -> None:
    """Phases: the first from epoch 0, then increasing; the policy's structure; slots for the
    same tasks in every phase; the policy's own slots equal to the last phase's."""
    schedule = getattr(policy, "schedule", ())
    if not isinstance(schedule, tuple):
        raise UserError("must be a list of phases {from_epoch, shared, per_task}",
                        source=source, field="schedule")
    if not schedule:
        return
    views = _own_views(schedule[0].per_task) if isinstance(schedule[0], Phase) else set()
    previous = -1
    for i, phase in enumerate(schedule):
        where = f"schedule[{i}]"
        if not isinstance(phase, Phase):
            raise UserError("must be a Phase(from_epoch, shared, per_task)", source=source,
                            field=where)
        start = phase.from_epoch
        if not isinstance(start, int) or isinstance(start, bool):
            raise UserError(f"must be a whole number (an epoch), got {start!r}", source=source,
                            field=f"{where}.from_epoch")
        if i == 0 and start != 0:
            raise UserError(f"the first phase must start at epoch 0, got {start}", source=source,
                            field=f"{where}.from_epoch")
        if i > 0 and start <= previous:
            raise UserError(f"must be greater than the previous phase's ({previous}), got "
                            f"{start}: phases are in increasing order", source=source,
                            field=f"{where}.from_epoch")
        previous = start
        _check_shared(phase.shared, policy.structure, source, f"{where}.shared")
        _check_per_task(phase.per_task, tasks, source, f"{where}.per_task")
        if _own_views(phase.per_task) != views:
            have = ", ".join(sorted(_own_views(phase.per_task))) or "none"
            want = ", ".join(sorted(views)) or "none"
            raise UserError(f"every phase must give per-task slots to the same tasks as the "
                            f"first ({want}), this one to: {have}", source=source,
                            field=f"{where}.per_task")
    last = schedule[-1]
    if policy.shared != last.shared:
        raise UserError("a policy with a schedule has the last phase's shared slots (or leaves "
                        "shared out)", source=source, field="shared")
    if _tuple_slots(_own(policy.per_task)) != _tuple_slots(_own(last.per_task)):
        raise UserError("a policy with a schedule has the last phase's per-task slots (or "
                        "leaves per_task out)", source=source, field="per_task")


def _own(per_task: Mapping[str, Any]) -> dict[str, Any]:
    """The per-task slots of the tasks that have some (an empty list gives no view)."""
    return {t: slots for t, slots in per_task.items() if slots}


def _own_views(per_task: Mapping[str, Any]) -> set[str]:
    return set(_own(per_task))


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


def _check_shared(shared: Any, structure: str, source: str,
                  where: str = "shared") -> None:
    """``shared`` must have the type of ``structure``, with valid values."""
    if _STRUCTURE_OF.get(type(shared)) != structure:
        raise UserError(
            f"structure {structure!r} needs shared to be {_SHARED_FORM[structure]}, got "
            f"{type(shared).__name__}", source=source, field=where)
    if isinstance(shared, SubPolicies):
        if not isinstance(shared.policies, tuple) or not shared.policies:
            raise UserError("must hold at least one sub-policy", source=source, field=where)
        for i, sp in enumerate(shared.policies):
            _check_slots(sp, source, f"{where}[{i}]")
    elif isinstance(shared, RandAugmentSpec):
        if not isinstance(shared.n, int) or isinstance(shared.n, bool) or shared.n < 0:
            raise UserError(f"must be a whole number >= 0, got {shared.n!r}", source=source,
                            field=f"{where}.n")
        _check_unit(shared.magnitude, source, f"{where}.magnitude")
        if not _is_number(shared.mstd) or shared.mstd < 0:
            raise UserError(f"must be a number >= 0, got {shared.mstd!r}", source=source,
                            field=f"{where}.mstd")
        _check_ops(shared.ops, source, f"{where}.ops")
        _check_scale(shared.scale, source, f"{where}.scale")
    elif isinstance(shared, TrivialAugmentSpec):
        _check_ops(shared.ops, source, f"{where}.ops")
        _check_scale(shared.scale, source, f"{where}.scale")
    else:
        _check_slots(shared, source, where)


def _check_ops(ops: Any, source: str, where: str) -> None:
    if not isinstance(ops, tuple) or not ops:
        raise UserError("must be a non-empty list of op names", source=source, field=where)
    for i, name in enumerate(ops):
        get_op(name, source=source, field=f"{where}[{i}]")
        if name in ops[:i]:
            raise UserError(f"{name!r} is listed twice", source=source, field=f"{where}[{i}]")


def _check_scale(scale: Any, source: str, where: str = "shared.scale") -> None:
    if scale not in SCALES:
        raise UserError(f"must be one of {', '.join(SCALES)}, got {scale!r}", source=source,
                        field=where)


def _check_unit(value: Any, source: str, where: str) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"must be a number in [0, 1], got {value!r}", source=source, field=where)


def _parse_shared(raw: Any, structure: str, source: str,
                  where: str = "shared") -> Shared:
    """Parse the YAML ``shared`` value of ``structure``."""
    if structure == "sequence":
        if isinstance(raw, list):
            for i, item in enumerate(raw):
                if isinstance(item, list):
                    raise UserError("a slot must be a mapping {op, p, magnitude}; a list of "
                                    "sub-policies needs structure: subpolicies", source=source,
                                    field=f"{where}[{i}]")
        return _slots(raw or [], source, where)
    if structure == "subpolicies":
        if not isinstance(raw, list) or not raw:
            raise UserError(f"must be {_SHARED_FORM[structure]}", source=source, field=where)
        return SubPolicies(tuple(
            _slots(sp, source, f"{where}[{i}]") for i, sp in enumerate(raw)
        ))
    if not isinstance(raw, Mapping):
        raise UserError(f"structure {structure!r} needs {_SHARED_FORM[structure]}, got "
                        f"{type(raw).__name__}", source=source, field=where)
    allowed = _RANDAUGMENT_KEYS if structure == "randaugment" else _TRIVIALAUGMENT_KEYS
    for key in raw:
        if key not in allowed:
            raise UserError(f"unknown key; {structure} has {', '.join(allowed)}", source=source,
                            field=f"{where}.{key}")
    required = ("n", "magnitude", "ops") if structure == "randaugment" else ("ops",)
    for key in required:
        if key not in raw:
            raise UserError("missing", source=source, field=f"{where}.{key}")
    ops = raw["ops"]
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise UserError("must be a list of op names", source=source, field=f"{where}.ops")
    if structure == "trivialaugment":
        return TrivialAugmentSpec(ops=tuple(ops), scale=raw.get("scale", "wide"))
    n, magnitude, mstd = raw["n"], raw["magnitude"], raw.get("mstd", 0.0)
    if not isinstance(n, int) or isinstance(n, bool):
        raise UserError(f"must be a whole number >= 0, got {n!r}", source=source,
                        field=f"{where}.n")
    for key, value in (("magnitude", magnitude), ("mstd", mstd)):
        if not _is_number(value):
            raise UserError(f"must be a number, got {value!r}", source=source,
                            field=f"{where}.{key}")
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


def _parse_per_task(raw: Any, source: str, where: str) -> dict[str, tuple[Slot, ...]]:
    """Parse a YAML ``per_task`` mapping (task -> list of slots)."""
    return {
        str(name): _slots(slots or [], source, f"{where}.{name}")
        for name, slots in _mapping(raw or {}, source, where).items()
    }


def _parse_schedule(raw: Any, structure: str, source: str) -> tuple[Phase, ...]:
    """Parse a YAML ``schedule``: a non-empty list of ``{from_epoch, shared, per_task}``."""
    if not isinstance(raw, list):
        raise UserError("must be a list of phases {from_epoch, shared, per_task}",
                        source=source, field="schedule")
    if not raw:
        raise UserError("must hold at least one phase (leave schedule out for a policy without "
                        "one)", source=source, field="schedule")
    phases = []
    for i, item in enumerate(raw):
        where = f"schedule[{i}]"
        item = _mapping(item, source, where)
        for key in item:
            if key not in _PHASE_KEYS:
                raise UserError(f"unknown key; a phase has {', '.join(_PHASE_KEYS)} (the "
                                "weighting is the policy's)", source=source,
                                field=f"{where}.{key}")
        if "from_epoch" not in item:
            raise UserError("missing (the first epoch of the phase, from 0)", source=source,
                            field=f"{where}.from_epoch")
        start = item["from_epoch"]
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise UserError(f"must be a whole number >= 0 (an epoch), got {start!r}",
                            source=source, field=f"{where}.from_epoch")
        shared = _parse_shared(item.get("shared"), structure, source, f"{where}.shared")
        per_task = _parse_per_task(item.get("per_task"), source, f"{where}.per_task")
        phases.append(Phase(start, shared, per_task))
    return tuple(phases)


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


def _tuple_slots(per_task: Any) -> Any:
    """``per_task`` with lists of slots made tuples (other values left for validation)."""
    if not isinstance(per_task, Mapping):
        return per_task
    return {name: tuple(slots) if isinstance(slots, (list, tuple)) else slots
            for name, slots in per_task.items()}


def _slots_key(policy: Policy) -> tuple[Any, ...]:
    """What a plain policy's augmentation is: equal keys, equal augmentation."""
    return (policy.structure, policy.shared,
            tuple(sorted((t, tuple(s)) for t, s in _own(policy.per_task).items())))


def _per_task_dict(per_task: Mapping[str, Sequence[Slot]]) -> dict[str, Any]:
    return {t: [_slot_dict(s) for s in slots] for t, slots in per_task.items()}


def _flow_shared(shared: Any, structure: str | None) -> Any:
    """The YAML value of ``shared`` with slots (and op lists) in flow style, one per line."""
    if structure == "subpolicies":
        return [_FlowList(_FlowMap(s) for s in sp) for sp in shared]
    if isinstance(shared, dict):
        return {k: _FlowList(v) if k == "ops" else v for k, v in shared.items()}
    return [_FlowMap(s) for s in shared]


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
