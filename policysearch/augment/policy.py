"""``Policy``: an augmentation policy for a set of tasks — its shared and per-task slots, its
loss weighting, an optional schedule — with what it does: read (``from_dict``, checked once by
its constructor, ``policysearch.augment.schema``), write (``to_dict``, ``to_yaml``), compile
(``to_albumentations``), run (``transform``) and describe (``summary``). The plain data types
it is made of are ``policysearch.augment.types``; ``load_policy`` reads a policy file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import yaml

from policysearch.augment.compile import task_compose
from policysearch.augment.runtime import MultiTaskAugment
from policysearch.augment.schema import check_policy, policy_arguments
from policysearch.augment.serialize import policy_dict, write_yaml
from policysearch.augment.summary import policy_summary
from policysearch.augment.types import (
    _LEFT_OUT,
    SHARED,
    STRUCTURE_OF,
    Phase,
    Shared,
    Slot,
    SubPolicies,
    TaskView,
    Weighting,
    _tuple_slots,
    view_ops,
)
from policysearch.errors import UserError


@dataclass
class Policy:
    """An augmentation policy for a set of tasks: shared slots, per-task slots, the loss
    weighting and where the policy came from.

    ``shared`` is a tuple of slots (``structure`` sequence), ``SubPolicies``,
    ``RandAugmentSpec`` or ``TrivialAugmentSpec``; ``structure`` follows from its type when
    left out. ``Policy(tasks, shared=[[...], [...]], structure="subpolicies")`` also works.

    ``per_task``: task -> its own view, applied after the shared part: a tuple of slots, or
    (structure ``randaugment``) a ``RandAugmentSpec`` of its own.

    ``base``: slots applied to every sample before the shared part, in every phase (the
    recipe a search or a baseline builds on, e.g. flip and crop); empty by default.

    ``schedule`` (PBT results): phases (``Phase``) by epoch, the first from epoch 0, their
    ``from_epoch`` increasing; ``shared`` and ``per_task`` left out are then taken from the
    last phase (given, they must equal it). ``at_epoch(e)`` resolves it; see the module
    docstring.

    The constructor checks every value (``policysearch.augment.schema.check_policy``); a
    problem is a one-line ``UserError`` naming ``source`` (default ``<policy>``) and the field.
    """

    tasks: dict[str, str]
    shared: Shared = _LEFT_OUT
    per_task: dict[str, TaskView] = _LEFT_OUT
    # None: taken from the type of ``shared``; always a string once constructed.
    structure: str | None = None
    weighting: Weighting = field(default_factory=Weighting)
    provenance: dict[str, Any] = field(default_factory=dict)
    schedule: tuple[Phase, ...] = ()
    base: tuple[Slot, ...] = ()
    source: InitVar[str] = field(default="<policy>", kw_only=True)

    def __post_init__(self, source: str) -> None:
        if isinstance(self.schedule, list):
            self.schedule = tuple(self.schedule)
        if isinstance(self.base, list):
            self.base = tuple(self.base)
        if isinstance(self.schedule, tuple):
            for phase in self.schedule:
                if isinstance(phase, Phase) and self.structure == "subpolicies" \
                        and isinstance(phase.shared, tuple):
                    phase.shared = SubPolicies(phase.shared)
            last = self.schedule[-1] if self.schedule else None
            if isinstance(last, Phase):
                if self.shared is _LEFT_OUT:
                    self.shared = last.shared
                if self.per_task is _LEFT_OUT:
                    self.per_task = dict(last.per_task)
                if self.structure is None:
                    self.structure = STRUCTURE_OF.get(type(last.shared), "sequence")
        if self.shared is _LEFT_OUT:
            self.shared = ()
        if self.per_task is _LEFT_OUT:
            self.per_task = {}
        if isinstance(self.shared, (list, tuple)):
            if self.structure == "subpolicies":
                self.shared = SubPolicies(tuple(self.shared))
            else:
                self.shared = tuple(self.shared)
        if self.structure is None:
            self.structure = STRUCTURE_OF.get(type(self.shared), "sequence")
        if isinstance(self.per_task, Mapping):
            self.per_task = _tuple_slots(self.per_task)
        check_policy(self, source)

    # --- what it augments ----------------------------------------------------------------------

    def augmentation_key(self) -> tuple[Any, ...]:
        """What decides how this policy augments, hashable; training and ``from_phases`` tell
        policies apart by it. Equal keys: the same structure, base, shared slots, per-task slots
        of the same tasks (so the same views, each with the same transforms) and schedule
        phases. The tasks' kinds and order, the weighting and the provenance are not part of
        it. A policy without a base has the key it had before bases existed."""
        phases = [(p.from_epoch, p.shared, p.per_task) for p in self.schedule] \
            or [(0, self.shared, self.per_task)]
        key: tuple[Any, ...] = (self.structure, tuple(
            (start, shared, tuple(sorted((t, s) for t, s in per_task.items() if s)))
            for start, shared, per_task in phases))
        return (*key, ("base", self.base)) if self.base else key

    # --- schedules -----------------------------------------------------------------------------

    def at_epoch(self, epoch: int) -> Policy:
        """The plain policy (no schedule) in force at ``epoch`` (counted from 0): that of the
        last phase whose ``from_epoch`` is at most ``epoch``. A policy without a schedule
        returns itself. Tasks, structure, base, weighting and provenance are this policy's."""
        if not self.schedule:
            return self
        phase = self.schedule[self.phase_index(epoch)]
        return Policy(tasks=dict(self.tasks), shared=phase.shared, per_task=dict(phase.per_task),
                      structure=self.structure, weighting=self.weighting,
                      provenance=dict(self.provenance), base=self.base)

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
        epoch on (the first from epoch 0). Consecutive phases that augment alike
        (``augmentation_key``) are merged; one phase left gives a plain policy without a
        schedule. Tasks, structure and base come from the policies (which must agree: a base
        applies in every phase), weighting and provenance from the last unless given."""
        if not phases:
            raise ValueError("from_phases needs at least one (from_epoch, policy)")
        merged: list[tuple[int, Policy]] = []
        for start, policy in phases:
            if policy.schedule:
                raise ValueError("from_phases takes plain policies (without a schedule)")
            if merged and merged[-1][1].augmentation_key() == policy.augmentation_key():
                continue
            merged.append((int(start), policy))
        last = phases[-1][1]
        weighting = last.weighting if weighting is None else weighting
        provenance = dict(last.provenance if provenance is None else provenance)
        if len(merged) == 1:
            only = merged[0][1]
            return cls(tasks=dict(only.tasks), shared=only.shared, per_task=dict(only.per_task),
                       structure=only.structure, weighting=weighting, provenance=provenance,
                       base=only.base)
        for _, policy in merged:
            if policy.tasks != last.tasks or policy.structure != last.structure \
                    or policy.base != last.base:
                raise UserError("every phase must have the same tasks, structure and base "
                                f"({last.structure}, {', '.join(last.tasks)})", field="schedule")
        return cls(tasks=dict(last.tasks), structure=last.structure, weighting=weighting,
                   provenance=provenance, base=last.base,
                   schedule=tuple(Phase(start, p.shared, dict(p.per_task)) for start, p in merged))

    def op_names(self) -> frozenset[str]:
        """Every op the policy may apply: its base's, its shared part's and its per-task
        views' (a RandAugment or TrivialAugment op list included), in every phase."""
        phases = [(p.shared, p.per_task) for p in self.schedule] or [(self.shared,
                                                                       self.per_task)]
        names = set(view_ops(self.base))
        for shared, per_task in phases:
            names.update(view_ops(shared))
            for view in per_task.values():
                names.update(view_ops(view))
        return frozenset(names)

    # --- views ---------------------------------------------------------------------------------

    def view_of(self, task: str) -> str:
        """The view ``task`` trains on: its own name if it has a view of its own (slots or a
        RandAugment), else ``shared``."""
        self._check_task(task)
        return task if self.per_task.get(task) else SHARED

    def views(self) -> tuple[str, ...]:
        """Every view ``transform()`` produces: ``shared``, then each task with its own."""
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
        """A plain ``A.Compose``: the base, the shared structure, then ``task``'s own view (its
        slots or its RandAugment), with albumentations keys.

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
        return task_compose(self, task, size=size, seed=seed)

    # --- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping (see ``policysearch.augment.serialize``); ``schedule`` only when
        set."""
        return policy_dict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        """The policy of a YAML mapping; every problem is a one-line ``UserError`` naming
        ``source`` and the field. The mapping is read into this constructor's arguments, which
        the constructor checks (``policysearch.augment.schema``)."""
        return cls(**policy_arguments(data, source), source=source)

    def to_yaml(self, path: str | Path) -> Path:
        """Write the policy as YAML; returns ``path`` (so ``load_policy(p.to_yaml(f)) == p``)."""
        return write_yaml(self, path)

    def summary(self) -> str:
        """A short one-liner, e.g. ``rotate(.6,.3) solarize(.2,.7) | seg: hflip(.5,1.0)`` or
        ``randaugment(n=2, m=.30, 14 ops)``; see ``policysearch.augment.summary``."""
        return policy_summary(self)

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
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise UserError(f"invalid YAML{where}: {problem}", source=source) from None
    return Policy.from_dict(data, source=source)
