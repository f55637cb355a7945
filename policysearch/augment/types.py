"""The policy data types: ``Slot``, the shared structures (``SubPolicies``,
``RandAugmentSpec``, ``TrivialAugmentSpec``), a task's view (``TaskView``), ``Weighting``,
``Phase``; ``Policy`` is made of them
(``policysearch.augment.policy``).

The *shared* part of a policy has a **structure**:

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

A task's own view (``per_task``: task -> view, applied after the shared part) is a plain sequence
of slots, ``[{op, p, magnitude}, ...]``, in every structure. In a ``randaugment`` policy it may
instead be a ``RandAugmentSpec`` of its own, YAML ``{n, magnitude, mstd, ops}`` as the shared
one: the task's view is then base, the shared RandAugment, then the task's RandAugment. In a
``subpolicies`` policy it may be ``SubPolicies`` of its own, YAML ``[[{op, p, magnitude}, ...],
...]``: one of them picked per sample, apart from the shared part's pick (what a density-matching
search exports: the union of its best candidates' views).

A policy may carry a **base**: a plain sequence of slots applied to every sample before the
shared part (so before the per-task views branch off), in every phase of a schedule, e.g. the
random crop and flip a training recipe always applies. YAML ``base: [{op, p, magnitude}, ...]``,
left out when empty; a search space's ``base`` is every trial's, never searched.

Every structure compiles to stock albumentations blocks (``OneOf``, ``Sequential``,
``RandomOrder``), so exported files load with plain ``A.load``.

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

Every ``Policy`` is checked by its constructor (``policysearch.augment.schema``), whether read
from YAML (``Policy.from_dict``) or built in code. The modules that check, compile, run and
write policies build on these types, and ``Policy`` (``policysearch.augment.policy``) on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from policysearch.augment.ops import RANDAUGMENT_OPS, TRIVIALAUGMENT_OPS

if TYPE_CHECKING:

    pass

STRUCTURES = ("sequence", "subpolicies", "randaugment", "trivialaugment")
# The name of the shared view (and so no task's name).
SHARED = "shared"


class _LeftOut:
    """The default of ``Policy.shared`` and ``Policy.per_task``: not given."""

    def __repr__(self) -> str:
        return "<left out>"


# Left out of a policy with a schedule: the last phase's; else no slots.
_LEFT_OUT: Any = _LeftOut()


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
# The structure of each type of ``shared``.
STRUCTURE_OF: dict[type, str] = {
    tuple: "sequence",
    SubPolicies: "subpolicies",
    RandAugmentSpec: "randaugment",
    TrivialAugmentSpec: "trivialaugment",
}
# A task's own view: slots in order (any structure); in a ``randaugment`` policy its own
# RandAugment, in a ``subpolicies`` policy sub-policies of its own.
TaskView: TypeAlias = tuple[Slot, ...] | SubPolicies | RandAugmentSpec


def view_ops(part: Shared) -> tuple[str, ...]:
    """Every op a shared part or a task's view may apply (an op list included)."""
    if isinstance(part, SubPolicies):
        return tuple(s.op for sub in part.policies for s in sub)
    if isinstance(part, (RandAugmentSpec, TrivialAugmentSpec)):
        return part.ops
    return tuple(s.op for s in part)


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
    policy that holds the phase, and so may ``per_task``'s views (``TaskView``); YAML
    ``{from_epoch: 4, shared: [...], per_task: {...}}``."""

    from_epoch: int
    shared: Shared = ()
    per_task: dict[str, TaskView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.shared, list):
            self.shared = tuple(self.shared)
        self.per_task = _tuple_slots(self.per_task)


def _tuple_slots(per_task: Any) -> Any:
    """``per_task`` with lists of slots made tuples (other values left for the checks)."""
    if not isinstance(per_task, Mapping):
        return per_task
    return {name: tuple(slots) if isinstance(slots, (list, tuple)) else slots
            for name, slots in per_task.items()}


class PolicyData(Protocol):
    """What the modules that check, compile, run, write and describe a policy read of it.
    ``policysearch.augment.policy.Policy`` is the one implementation; a protocol lets those
    modules sit below ``Policy`` without importing it (``Policy``'s methods call them)."""

    tasks: dict[str, str]
    shared: Shared
    per_task: dict[str, TaskView]
    structure: str | None
    weighting: Weighting
    provenance: dict[str, Any]
    schedule: tuple[Phase, ...]
    base: tuple[Slot, ...]

    def at_epoch(self, epoch: int) -> PolicyData:
        """The plain policy in force at ``epoch``."""
        ...

    def phase_index(self, epoch: int) -> int:
        """Which phase of the schedule is in force at ``epoch``."""
        ...

    def view_of(self, task: str) -> str:
        """The view ``task`` trains on."""
        ...

    def summary(self) -> str:
        """One line of text."""
        ...
