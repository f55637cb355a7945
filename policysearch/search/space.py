"""Turn a search space into engine-neutral parameters, and parameters back into a Policy.

Each engine maps ``Param`` to its own distributions (Optuna's suggest_*, Ray's tune.*); both
rebuild the trial's policy with ``policy_from_params``, so one space means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policysearch.augment import Policy, RandAugmentSpec, Slot, SubPolicies, Weighting
from policysearch.config import SearchSpace, SlotSpace


@dataclass(frozen=True)
class Param:
    """One searched number or choice: ``choices`` for a categorical, else [low, high]."""

    name: str
    kind: Literal["categorical", "float", "int"]
    choices: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 1.0
    log: bool = False


def _slot_params(prefix: str, space: SlotSpace) -> list[Param]:
    params: list[Param] = []
    for i in range(space.slots):
        params.append(Param(f"{prefix}.{i}.op", "categorical", choices=tuple(space.ops)))
        params.append(Param(f"{prefix}.{i}.p", "float", low=space.p[0], high=space.p[1]))
        params.append(Param(f"{prefix}.{i}.magnitude", "float", low=space.magnitude[0],
                            high=space.magnitude[1]))
    return params


def parameters(space: SearchSpace, task_names: Sequence[str]) -> list[Param]:
    """Every parameter of the space, in a fixed order (shared slots, per-task slots, weights)."""
    if space.structure == "subpolicies":
        params = []
        for k in range(space.shared.subpolicies):
            params += _slot_params(f"shared.{k}", space.shared)
    elif space.structure == "randaugment":
        params = [Param("shared.n", "int", low=space.shared.n[0], high=space.shared.n[1]),
                  Param("shared.magnitude", "float", low=space.shared.magnitude[0],
                        high=space.shared.magnitude[1])]
    else:
        params = _slot_params("shared", space.shared)
    for task in space.per_task.tasks:
        params += _slot_params(f"task.{task}", space.per_task)
    if space.weights.method == "static":
        low, high = space.weights.range
        params += [Param(f"weight.{t}", "float", low=low, high=high, log=True)
                   for t in task_names]
    return params


def _slots(prefix: str, count: int, values: Mapping[str, Any]) -> tuple[Slot, ...]:
    return tuple(
        Slot(op=str(values[f"{prefix}.{i}.op"]), p=float(values[f"{prefix}.{i}.p"]),
             magnitude=float(values[f"{prefix}.{i}.magnitude"]))
        for i in range(count)
    )


def policy_from_params(space: SearchSpace, tasks: Mapping[str, str],
                       values: Mapping[str, Any]) -> Policy:
    """The policy a trial's parameter values stand for (``tasks``: name -> kind)."""
    per_task = {t: _slots(f"task.{t}", space.per_task.slots, values) for t in space.per_task.tasks}
    if space.weights.method == "static":
        weights = {t: float(values[f"weight.{t}"]) for t in tasks}
    else:
        weights = {t: 1.0 for t in tasks}
    shared: tuple[Slot, ...] | SubPolicies | RandAugmentSpec
    if space.structure == "subpolicies":
        shared = SubPolicies(tuple(_slots(f"shared.{k}", space.shared.slots, values)
                                   for k in range(space.shared.subpolicies)))
    elif space.structure == "randaugment":
        shared = RandAugmentSpec(n=int(values["shared.n"]),
                                 magnitude=float(values["shared.magnitude"]),
                                 ops=tuple(space.shared.ops))
    else:
        shared = _slots("shared", space.shared.slots, values)
    return Policy(
        tasks=dict(tasks),
        shared=shared,
        per_task={t: s for t, s in per_task.items() if s},
        weighting=Weighting(method=space.weights.method, weights=weights),
    )
