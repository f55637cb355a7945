"""A policy as plain data and as a YAML file: ``policy_dict`` (``Policy.to_dict``),
``write_yaml`` (``Policy.to_yaml``: one slot per line) and ``load_policy`` (a file back to a
``Policy``, through ``Policy.from_dict``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from policysearch.augment.schema import SCHEMA
from policysearch.augment.types import PolicyData, RandAugmentSpec, SubPolicies, TrivialAugmentSpec

if TYPE_CHECKING:
    from policysearch.augment.types import Phase, Shared, Slot, TaskView, Weighting


def policy_dict(policy: PolicyData) -> dict[str, Any]:
    """The YAML mapping of ``policy``: schema, tasks, structure, ``base`` only when set,
    shared, per_task, weighting, provenance, and ``schedule`` only when set."""
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "tasks": dict(policy.tasks),
        "structure": policy.structure,
    }
    if policy.base:
        data["base"] = [_slot_dict(s) for s in policy.base]
    data |= {
        "shared": _shared_dict(policy.shared),
        "per_task": _per_task_dict(policy.per_task),
        "weighting": _weighting_dict(policy.weighting),
        "provenance": _plain(policy.provenance),
    }
    if policy.schedule:
        data["schedule"] = [_phase_dict(p) for p in policy.schedule]
    return data


def write_yaml(policy: PolicyData, path: str | Path) -> Path:
    """Write ``policy`` as a YAML file at ``path``; returns ``path``."""
    path = Path(path)
    data = policy_dict(policy)
    # One slot per line: slots are written in flow style, {op: rotate, p: 0.6, magnitude: 0.3};
    # a sub-policy is one line too, and an op list is one flow list. Phases likewise.
    for part in (data, *data.get("schedule", ())):
        part["shared"] = _flow_shared(part["shared"], policy.structure)
        part["per_task"] = {t: _flow_part(v) for t, v in part["per_task"].items()}
    if "base" in data:
        data["base"] = [_FlowMap(s) for s in data["base"]]
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    path.write_text(text, encoding="utf-8")
    return path


# --- plain data ------------------------------------------------------------------------------


def _phase_dict(phase: Phase) -> dict[str, Any]:
    return {"from_epoch": int(phase.from_epoch), "shared": _shared_dict(phase.shared),
            "per_task": _per_task_dict(phase.per_task)}


def _shared_dict(shared: Shared) -> Any:
    """The YAML value of ``shared`` or of a task's view (see ``policysearch.augment.types``);
    defaults of ``scale`` omitted."""
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


def _per_task_dict(per_task: Mapping[str, TaskView]) -> dict[str, Any]:
    return {t: _shared_dict(view) for t, view in per_task.items()}


def _slot_dict(slot: Slot) -> dict[str, Any]:
    return {"op": slot.op, "p": float(slot.p), "magnitude": float(slot.magnitude)}


def _weighting_dict(w: Weighting) -> dict[str, Any]:
    """The YAML value of ``weighting``; ``params`` only when set."""
    data: dict[str, Any] = {"method": w.method,
                            "weights": {t: float(v) for t, v in w.weights.items()}}
    if w.params:
        data["params"] = {name: float(v) for name, v in w.params.items()}
    return data


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


# --- YAML text -------------------------------------------------------------------------------


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


def _flow_shared(shared: Any, structure: str | None) -> Any:
    """The YAML value of ``shared`` with slots (and op lists) in flow style, one per line."""
    if structure == "subpolicies":
        return [_FlowList(_FlowMap(s) for s in sp) for sp in shared]
    return _flow_part(shared)


def _flow_part(part: Any) -> Any:
    """The YAML value of a slot list, a list of sub-policies (a task's own) or a
    RandAugment/TrivialAugment mapping (shared, or a task's view) in flow style, one slot (or
    sub-policy, or op list) per line."""
    if isinstance(part, dict):
        return {k: _FlowList(v) if k == "ops" else v for k, v in part.items()}
    if part and isinstance(part[0], list):  # a task's own sub-policies
        return [_FlowList(_FlowMap(s) for s in sp) for sp in part]
    return [_FlowMap(s) for s in part]
