"""The policy's YAML mapping and the rules every policy obeys, checked in one pass.

``Policy.from_dict`` turns a mapping into a policy in two steps, each rule in one of them:

1. ``policy_arguments`` reads the mapping into ``Policy``'s constructor arguments (``Slot``,
   ``SubPolicies``, ``RandAugmentSpec``, ``TrivialAugmentSpec``, ``Phase``, ``Weighting``).
   It checks only the form it must understand to build them: the schema tag, known and
   present keys, a mapping or a list where one is written, a structure it knows how to read,
   an op name that is a string, and the plain numbers it converts to float (RandAugment's
   magnitude and mstd, weights, weighting params) or keeps as an epoch (``from_epoch``).
2. The constructor runs ``check_policy``, the one check of the values: task names and kinds,
   shared slots of the structure's type, known ops, probabilities and magnitudes in [0, 1],
   RandAugment and TrivialAugment settings, per-task views of known tasks (slots, or a
   RandAugment of their own in a ``randaugment`` policy), the schedule's phases, the
   weighting method, its params and weights, provenance keys. Its type tests (a mapping, a
   tuple of ``Slot``) are for policies built in code, which go through it alone.
   The base is a plain list of slots in every structure, read and checked like a sequence.

Every problem is a one-line ``UserError`` naming the source and the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from policysearch import weighting_schema
from policysearch.augment.ops import SCALES, get_op
from policysearch.augment.types import (
    SHARED,
    STRUCTURE_OF,
    STRUCTURES,
    Phase,
    PolicyData,
    RandAugmentSpec,
    Slot,
    SubPolicies,
    TrivialAugmentSpec,
    Weighting,
)
from policysearch.errors import UserError

if TYPE_CHECKING:
    from policysearch.augment.types import Shared, TaskView

SCHEMA = "policysearch.policy/v1"
_TOP_KEYS = ("schema", "tasks", "structure", "base", "shared", "per_task", "weighting",
             "provenance", "schedule")
_PHASE_KEYS = ("from_epoch", "shared", "per_task")
_SLOT_KEYS = ("op", "p", "magnitude")
_RANDAUGMENT_KEYS = ("n", "magnitude", "mstd", "ops", "scale")
_TRIVIALAUGMENT_KEYS = ("ops", "scale")
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# What ``shared`` must be for each structure: its YAML form (its Python type).
_SHARED_FORM = {
    "sequence": "a list of slots {op, p, magnitude} (a tuple of Slot)",
    "subpolicies": "a list of sub-policies, each a list of slots {op, p, magnitude} "
                   "(SubPolicies)",
    "randaugment": "a mapping {n, magnitude, mstd, ops} (RandAugmentSpec)",
    "trivialaugment": "a mapping {ops} (TrivialAugmentSpec)",
}
# What a task's view may be in a ``randaugment`` policy.
_RANDAUGMENT_VIEW = ("a list of slots {op, p, magnitude} or a mapping {n, magnitude, mstd, ops} "
                     "(its own RandAugment)")
_WEIGHT_RULE = "a weight must be a number > 0"


# --- reading the mapping ---------------------------------------------------------------------


def policy_arguments(data: Any, source: str) -> dict[str, Any]:
    """``Policy``'s constructor arguments from its YAML mapping ``data``; a problem of the form
    is a ``UserError`` naming ``source`` and the field (the values are the constructor's to
    check). ``shared`` and ``per_task`` left out of a file with a schedule are left out of the
    arguments too: the constructor takes the last phase's."""
    if not isinstance(data, Mapping):
        raise UserError(f"a policy must be a mapping, got {type(data).__name__}", source=source)
    for key in data:
        if key not in _TOP_KEYS:
            raise UserError(f"unknown key; expected one of {', '.join(_TOP_KEYS)}",
                            source=source, field=str(key))
    if data.get("schema") != SCHEMA:
        raise UserError(f"unsupported schema {data.get('schema')!r}; expected {SCHEMA!r}",
                        source=source, field="schema")
    if "tasks" not in data:
        raise UserError("missing (a mapping of task name to kind)", source=source, field="tasks")
    structure = _structure(data.get("structure", "sequence"), source)
    schedule = _read_schedule(data["schedule"], structure, source) if "schedule" in data else ()
    args: dict[str, Any] = {"tasks": _copy(data["tasks"]), "structure": structure}
    if not schedule or "shared" in data:
        args["shared"] = _read_shared(data.get("shared"), structure, source)
    if not schedule or "per_task" in data:
        args["per_task"] = _read_per_task(data.get("per_task"), structure, source, "per_task")
    args["base"] = _read_slots(data.get("base") or [], source, "base")
    args["weighting"] = _read_weighting(data.get("weighting") or {}, source)
    args["provenance"] = _copy(data.get("provenance") or {})
    args["schedule"] = schedule
    return args


def _read_shared(raw: Any, structure: str, source: str, where: str = "shared") -> Shared:
    """The YAML ``shared`` value of ``structure`` as its type."""
    if structure == "sequence":
        if isinstance(raw, list):
            for i, item in enumerate(raw):
                if isinstance(item, list):
                    raise UserError("a slot must be a mapping {op, p, magnitude}; a list of "
                                    "sub-policies needs structure: subpolicies", source=source,
                                    field=f"{where}[{i}]")
        return _read_slots(raw or [], source, where)
    if structure == "subpolicies":
        if not isinstance(raw, list) or not raw:
            raise UserError(f"must be {_SHARED_FORM[structure]}", source=source, field=where)
        return SubPolicies(tuple(
            _read_slots(sp, source, f"{where}[{i}]") for i, sp in enumerate(raw)
        ))
    if not isinstance(raw, Mapping):
        raise UserError(f"structure {structure!r} needs {_SHARED_FORM[structure]}, got "
                        f"{type(raw).__name__}", source=source, field=where)
    if structure == "randaugment":
        return _read_randaugment(raw, source, where)
    return TrivialAugmentSpec(ops=_read_ops(raw, structure, source, where),
                              scale=raw.get("scale", "wide"))


def _read_randaugment(raw: Mapping[str, Any], source: str, where: str) -> RandAugmentSpec:
    """A YAML RandAugment mapping ``{n, magnitude, mstd, ops}`` (shared or a task's view)."""
    ops = _read_ops(raw, "randaugment", source, where)
    magnitude, mstd = raw["magnitude"], raw.get("mstd", 0.0)
    for key, value in (("magnitude", magnitude), ("mstd", mstd)):
        if not _is_number(value):
            raise UserError(f"must be a number, got {value!r}", source=source,
                            field=f"{where}.{key}")
    return RandAugmentSpec(n=raw["n"], magnitude=float(magnitude), mstd=float(mstd),
                           ops=ops, scale=raw.get("scale", "standard"))


def _read_ops(raw: Mapping[str, Any], structure: str, source: str, where: str
              ) -> tuple[str, ...]:
    """The op list of a RandAugment or TrivialAugment mapping, once its keys are checked."""
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
    return tuple(ops)


def _read_slots(raw: Any, source: str, where: str) -> tuple[Slot, ...]:
    """A YAML list of ``{op, p, magnitude}`` mappings as slots."""
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
        if not isinstance(item["op"], str):
            raise UserError(f"must be an op name, got {item['op']!r}", source=source,
                            field=f"{fld}.op")
        slots.append(Slot(item["op"], item["p"], item["magnitude"]))
    return tuple(slots)


def _read_per_task(raw: Any, structure: str, source: str, where: str
                   ) -> dict[str, TaskView]:
    """A YAML ``per_task`` mapping (task -> its view)."""
    return {
        str(name): _read_view(view, structure, source, f"{where}.{name}")
        for name, view in _mapping(raw or {}, source, where).items()
    }


def _read_view(raw: Any, structure: str, source: str, where: str) -> TaskView:
    """A task's view: a list of slots; in a ``randaugment`` policy a RandAugment mapping, in a
    ``subpolicies`` one a list of sub-policies."""
    if not raw:  # left empty, as ever: no view of its own
        return ()
    if isinstance(raw, Mapping):
        if structure != "randaugment":
            raise UserError("a task's own RandAugment {n, magnitude, mstd, ops} needs structure: "
                            f"randaugment (this policy's is {structure}); here a task's view is "
                            "a list of slots {op, p, magnitude}", source=source, field=where)
        return _read_randaugment(raw, source, where)
    if structure == "randaugment" and not isinstance(raw, list):
        raise UserError(f"must be {_RANDAUGMENT_VIEW}", source=source, field=where)
    if isinstance(raw, list) and any(isinstance(item, list) for item in raw):
        if structure != "subpolicies":
            raise UserError("a task's own sub-policies [[{op, p, magnitude}, ...], ...] need "
                            f"structure: subpolicies (this policy's is {structure}); here a "
                            "task's view is a list of slots {op, p, magnitude}", source=source,
                            field=where)
        return SubPolicies(tuple(
            _read_slots(sp, source, f"{where}[{i}]") for i, sp in enumerate(raw)))
    return _read_slots(raw, source, where)


def _read_schedule(raw: Any, structure: str, source: str) -> tuple[Phase, ...]:
    """A YAML ``schedule``: a non-empty list of ``{from_epoch, shared, per_task}``."""
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
        shared = _read_shared(item.get("shared"), structure, source, f"{where}.shared")
        per_task = _read_per_task(item.get("per_task"), structure, source,
                                  f"{where}.per_task")
        phases.append(Phase(start, shared, per_task))
    return tuple(phases)


def _read_weighting(raw: Any, source: str) -> Weighting:
    """A YAML ``weighting`` mapping ``{method, weights, params}``."""
    raw = _mapping(raw, source, "weighting")
    for key in raw:
        if key not in ("method", "weights", "params"):
            raise UserError("unknown key; weighting has method, weights and params",
                            source=source, field=f"weighting.{key}")
    parsed: dict[str, dict[str, float]] = {"weights": {}, "params": {}}
    for part, what in (("weights", _WEIGHT_RULE), ("params", "must be a number")):
        for name, value in _mapping(raw.get(part) or {}, source, f"weighting.{part}").items():
            if not _is_number(value):
                raise UserError(f"{what}, got {value!r}", source=source,
                                field=f"weighting.{part}.{name}")
            parsed[part][str(name)] = float(value)
    return Weighting(method=raw.get("method", "static"), weights=parsed["weights"],
                     params=parsed["params"])


def _copy(value: Any) -> Any:
    """A mapping as a dict of its own; anything else as it is, for the checks to refuse."""
    return dict(value) if isinstance(value, Mapping) else value


# --- checking a policy -----------------------------------------------------------------------


def check_policy(policy: PolicyData, source: str) -> None:
    """Check every value of ``policy`` once; raise ``UserError`` naming ``source`` and the
    field. Run by ``Policy``'s constructor."""
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
    _check_slots(policy.base, source, "base")
    _check_shared(policy.shared, policy.structure, source)
    _check_per_task(policy.per_task, tasks, policy.structure, source, "per_task")
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
            raise UserError(f"{_WEIGHT_RULE}, got {value!r}", source=source, field=fld)
    prov = _mapping(policy.provenance, source, "provenance")
    for key in prov:
        if not isinstance(key, str):
            raise UserError(f"keys must be strings, got {key!r}", source=source,
                            field="provenance")


def _structure(value: Any, source: str) -> str:
    """``value`` if it names a structure, else a ``UserError``."""
    if not isinstance(value, str):
        raise UserError("must be a string", source=source, field="structure")
    if value not in STRUCTURES:
        raise UserError(f"unknown structure {value!r}; expected one of {', '.join(STRUCTURES)}",
                        source=source, field="structure")
    return value


def _check_shared(shared: Any, structure: Any, source: str, where: str = "shared") -> None:
    """``shared`` must have the type of ``structure`` (a known one), with valid values."""
    if STRUCTURE_OF.get(type(shared)) != structure:
        _structure(structure, source)
        raise UserError(
            f"structure {structure!r} needs shared to be {_SHARED_FORM[structure]}, got "
            f"{type(shared).__name__}", source=source, field=where)
    if isinstance(shared, SubPolicies):
        if not isinstance(shared.policies, tuple) or not shared.policies:
            raise UserError("must hold at least one sub-policy", source=source, field=where)
        for i, sp in enumerate(shared.policies):
            _check_slots(sp, source, f"{where}[{i}]")
    elif isinstance(shared, RandAugmentSpec):
        _check_randaugment(shared, source, where)
    elif isinstance(shared, TrivialAugmentSpec):
        _check_ops(shared.ops, source, f"{where}.ops")
        _check_scale(shared.scale, source, f"{where}.scale")
    else:
        _check_slots(shared, source, where)


def _check_randaugment(spec: RandAugmentSpec, source: str, where: str) -> None:
    """A RandAugment's settings (the shared part or a task's view)."""
    if not isinstance(spec.n, int) or isinstance(spec.n, bool) or spec.n < 0:
        raise UserError(f"must be a whole number >= 0, got {spec.n!r}", source=source,
                        field=f"{where}.n")
    _check_unit(spec.magnitude, source, f"{where}.magnitude")
    if not _is_number(spec.mstd) or spec.mstd < 0:
        raise UserError(f"must be a number >= 0, got {spec.mstd!r}", source=source,
                        field=f"{where}.mstd")
    _check_ops(spec.ops, source, f"{where}.ops")
    _check_scale(spec.scale, source, f"{where}.scale")


def _check_slots(slots: Any, source: str, where: str) -> None:
    if not isinstance(slots, tuple):
        raise UserError("must be a list of slots", source=source, field=where)
    for i, slot in enumerate(slots):
        fld = f"{where}[{i}]"
        if not isinstance(slot, Slot):
            raise UserError("must be a Slot(op, p, magnitude)", source=source, field=fld)
        get_op(slot.op, source=source, field=f"{fld}.op")
        _check_unit(slot.p, source, f"{fld}.p")
        _check_unit(slot.magnitude, source, f"{fld}.magnitude")


def _check_per_task(per_task: Any, tasks: Mapping[str, Any], structure: Any, source: str,
                    where: str) -> None:
    """Views of known tasks: slots, a ``RandAugmentSpec`` in a ``randaugment`` policy, or
    ``SubPolicies`` in a ``subpolicies`` one."""
    per_task = _mapping(per_task, source, where)
    for name, view in per_task.items():
        fld = f"{where}.{name}"
        if name not in tasks:
            raise UserError(f"{name!r} is not one of the policy's tasks ({', '.join(tasks)})",
                            source=source, field=fld)
        if isinstance(view, SubPolicies):
            if structure != "subpolicies":
                raise UserError(f"a task's own SubPolicies need structure 'subpolicies', got "
                                f"{structure!r}; here a task's view is a tuple of Slot",
                                source=source, field=fld)
            _check_shared(view, structure, source, fld)
        elif not isinstance(view, RandAugmentSpec):
            _check_slots(view, source, fld)
        elif structure == "randaugment":
            _check_randaugment(view, source, fld)
        else:
            raise UserError(f"a task's own RandAugmentSpec needs structure 'randaugment', got "
                            f"{structure!r}; here a task's view is a tuple of Slot",
                            source=source, field=fld)


def _check_schedule(policy: PolicyData, tasks: Mapping[str, Any], source: str) -> None:
    """Phases: the first from epoch 0, then increasing; the policy's structure; slots for the
    same tasks in every phase; the policy's own slots equal to the last phase's."""
    schedule = policy.schedule
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
        _check_per_task(phase.per_task, tasks, policy.structure, source, f"{where}.per_task")
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
    if _own(policy.per_task) != _own(last.per_task):
        raise UserError("a policy with a schedule has the last phase's per-task slots (or "
                        "leaves per_task out)", source=source, field="per_task")


def _own(per_task: Mapping[str, Any]) -> dict[str, Any]:
    """The per-task slots of the tasks that have some (an empty list gives no view)."""
    return {t: slots for t, slots in per_task.items() if slots}


def _own_views(per_task: Mapping[str, Any]) -> set[str]:
    return set(_own(per_task))


def _check_ops(ops: Any, source: str, where: str) -> None:
    if not isinstance(ops, tuple) or not ops:
        raise UserError("must be a non-empty list of op names", source=source, field=where)
    for i, name in enumerate(ops):
        get_op(name, source=source, field=f"{where}[{i}]")
        if name in ops[:i]:
            raise UserError(f"{name!r} is listed twice", source=source, field=f"{where}[{i}]")


def _check_scale(scale: Any, source: str, where: str) -> None:
    if scale not in SCALES:
        raise UserError(f"must be one of {', '.join(SCALES)}, got {scale!r}", source=source,
                        field=where)


def _check_unit(value: Any, source: str, where: str) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"must be a number in [0, 1], got {value!r}", source=source, field=where)


# --- shared helpers --------------------------------------------------------------------------


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
