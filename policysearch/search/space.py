"""Turn a search space into engine-neutral parameters, and parameters back into a Policy.

Each engine maps ``Param`` to its own distributions (Optuna's suggest_*, Ray's tune.*); both
rebuild the trial's policy with ``policy_from_params``, so one space means one thing everywhere.

Names: a slot's ``shared.<i>.op|p|magnitude`` (sub-policy k: ``shared.<k>.<i>.…``), a
RandAugment's ``shared.n`` and ``shared.magnitude``; a task's view likewise under ``task.<name>``
(``task.<name>.<i>.op``, or ``task.<name>.n`` and ``task.<name>.magnitude`` for a RandAugment of
its own).

Loss weighting: with several methods, the categorical ``weight.method`` picks one; the static
per-task weights ``weight.<task>`` and searched hyper-parameters ``weight.<method>.<name>``
matter only when their method is picked, which their ``Param.when`` says. ``parameters``
returns them all, in a fixed order (``weight.method`` first); an engine may skip a parameter
whose condition fails (define-by-run) or suggest it anyway: ``policy_from_params`` reads only
the picked method's values.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policysearch.augment import Policy, RandAugmentSpec, Slot, SubPolicies, TaskView, Weighting
from policysearch.config import PerTaskSpace, SearchSpace, SlotSpace, WeightSpace
from policysearch.errors import UserError
from policysearch.weighting_schema import USES_WEIGHTS, defaults

WEIGHT_METHOD = "weight.method"


@dataclass(frozen=True)
class Param:
    """One searched number or choice: ``choices`` for a categorical, else [low, high].

    ``when``: (name of an earlier categorical, value) under which this parameter is used;
    None when it always is.
    """

    name: str
    kind: Literal["categorical", "float", "int"]
    choices: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    when: tuple[str, str] | None = None


def _weight_params(space: WeightSpace, task_names: Sequence[str]) -> list[Param]:
    methods = space.methods
    several = len(methods) > 1
    if several and "static" in methods and "method" in task_names:
        raise UserError("a task named 'method' clashes with the parameter weight.method; "
                        "rename the task", field="weights.method")
    params = [Param(WEIGHT_METHOD, "categorical", choices=methods)] if several else []
    for method in methods:
        when = (WEIGHT_METHOD, method) if several else None
        if method == "static":
            low, high = space.range
            params += [Param(f"weight.{t}", "float", low=low, high=high, log=True, when=when)
                       for t in task_names]
        for name, spec in space.hyper(method).items():
            if isinstance(spec, tuple):
                params.append(Param(f"weight.{method}.{name}", "float", low=spec[0],
                                    high=spec[1], when=when))
    return params


def _weighting(space: WeightSpace, tasks: Sequence[str], values: Mapping[str, Any]) -> Weighting:
    """The trial's weighting: the picked method, its weights and every hyper-parameter."""
    methods = space.methods
    method = str(values[WEIGHT_METHOD]) if len(methods) > 1 else methods[0]
    if method in USES_WEIGHTS:
        weights = {t: float(values[f"weight.{t}"]) for t in tasks}
    elif method == "equal":
        weights = {t: 1.0 for t in tasks}
    else:
        weights = {}  # learned during training: TrialResult.weights
    params = defaults(method)
    for name, spec in space.hyper(method).items():
        params[name] = float(values[f"weight.{method}.{name}"]) if isinstance(spec, tuple) \
            else float(spec)
    return Weighting(method=method, weights=weights, params=params)


def _slot_params(prefix: str, space: SlotSpace) -> list[Param]:
    params: list[Param] = []
    for i in range(space.slots):
        params.append(Param(f"{prefix}.{i}.op", "categorical", choices=tuple(space.ops)))
        params.append(Param(f"{prefix}.{i}.p", "float", low=space.p[0], high=space.p[1]))
        params.append(Param(f"{prefix}.{i}.magnitude", "float", low=space.magnitude[0],
                            high=space.magnitude[1]))
    return params


def _randaugment_params(prefix: str, n: tuple[int, int],
                        magnitude: tuple[float, float]) -> list[Param]:
    """A RandAugment's N (whole) and M, searched in their ranges."""
    return [Param(f"{prefix}.n", "int", low=n[0], high=n[1]),
            Param(f"{prefix}.magnitude", "float", low=magnitude[0], high=magnitude[1])]


def _view_params(prefix: str, space: PerTaskSpace) -> list[Param]:
    """A task's view: its RandAugment's N and M (``per_task.n`` set), else its slots."""
    if space.n is not None:
        return _randaugment_params(prefix, space.n, space.magnitude)
    return _slot_params(prefix, space)


def parameters(space: SearchSpace, task_names: Sequence[str]) -> list[Param]:
    """Every parameter of the space, in a fixed order (shared part, each task's view, weights;
    see the module docstring for the conditional weighting parameters)."""
    if space.structure == "subpolicies":
        params = []
        for k in range(space.shared.subpolicies):
            params += _slot_params(f"shared.{k}", space.shared)
    elif space.structure == "randaugment":
        params = _randaugment_params("shared", space.shared.n, space.shared.magnitude)
    else:
        params = _slot_params("shared", space.shared)
    for task in space.per_task.names:
        params += _view_params(f"task.{task}", space.per_task)
    return params + _weight_params(space.weights, task_names)


def draw_params(params: Sequence[Param], rng: random.Random) -> dict[str, Any]:
    """One value per parameter, uniform in its range (log-uniform where the space says so),
    drawn with ``rng``: a random point of the space (PBT's first members, random policies)."""
    values: dict[str, Any] = {}
    for p in params:
        if p.kind == "categorical":
            values[p.name] = rng.choice(p.choices)
        elif p.kind == "int":
            values[p.name] = rng.randint(int(p.low), int(p.high))
        elif p.log:
            values[p.name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
        else:
            values[p.name] = rng.uniform(p.low, p.high)
    return values


def _slots(prefix: str, count: int, values: Mapping[str, Any]) -> tuple[Slot, ...]:
    return tuple(
        Slot(op=str(values[f"{prefix}.{i}.op"]), p=float(values[f"{prefix}.{i}.p"]),
             magnitude=float(values[f"{prefix}.{i}.magnitude"]))
        for i in range(count)
    )


def _randaugment(prefix: str, ops: Sequence[str], values: Mapping[str, Any]) -> RandAugmentSpec:
    """The RandAugment of ``prefix``'s N and M, drawing from ``ops``."""
    return RandAugmentSpec(n=int(values[f"{prefix}.n"]),
                           magnitude=float(values[f"{prefix}.magnitude"]), ops=tuple(ops))


def _view(prefix: str, space: PerTaskSpace, values: Mapping[str, Any]) -> TaskView:
    """A task's view: its own RandAugment (``per_task.n`` set), else its slots."""
    if space.n is not None:
        return _randaugment(prefix, space.ops, values)
    return _slots(prefix, space.slots, values)


def policy_from_params(space: SearchSpace, tasks: Mapping[str, str],
                       values: Mapping[str, Any]) -> Policy:
    """The policy a trial's parameter values stand for (``tasks``: name -> kind); the space's
    ``base`` is its base, the same in every trial."""
    per_task = {t: _view(f"task.{t}", space.per_task, values) for t in space.per_task.names}
    shared: tuple[Slot, ...] | SubPolicies | RandAugmentSpec
    if space.structure == "subpolicies":
        shared = SubPolicies(tuple(_slots(f"shared.{k}", space.shared.slots, values)
                                   for k in range(space.shared.subpolicies)))
    elif space.structure == "randaugment":
        shared = _randaugment("shared", space.shared.ops, values)
    else:
        shared = _slots("shared", space.shared.slots, values)
    return Policy(
        tasks=dict(tasks),
        base=tuple(Slot(op=s.op, p=s.p, magnitude=s.magnitude) for s in space.base),
        shared=shared,
        per_task={t: s for t, s in per_task.items() if s},
        weighting=_weighting(space.weights, list(tasks), values),
    )
