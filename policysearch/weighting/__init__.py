"""Loss weighting: one small class per method behind one interface (``base.Weighting``); the
weighting owns the backward pass.

Importing this package registers the built-in methods in ``WEIGHTINGS``: ``static``, ``equal``,
``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad``, ``cagrad``. A user's own method is one
``register_weighting(MyWeighting)`` away; its keyword-only constructor arguments with numeric
defaults become its hyper-parameters (``params`` in the policy YAML).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence

import torch

from policysearch.errors import UserError
from policysearch.weighting.base import Weighting
from policysearch.weighting.cagrad import CAGradWeighting, cagrad_coefficients
from policysearch.weighting.dwa import DWAWeighting, dwa_weights
from policysearch.weighting.equal import EqualWeighting
from policysearch.weighting.gradients import GradientWeighting, task_gradients
from policysearch.weighting.gradnorm import GradNormWeighting
from policysearch.weighting.pcgrad import PCGradWeighting, pcgrad_combine, pcgrad_project
from policysearch.weighting.static import StaticWeighting
from policysearch.weighting.uncertainty import UncertaintyWeighting
from policysearch.weighting_schema import (
    METHODS,
    USES_WEIGHTS,
    HyperParam,
    param_problem,
    register_method,
)

WEIGHTINGS: dict[str, type[Weighting]] = {}
_NOT_HYPER = frozenset({"tasks", "weights", "shared", "seed", "device"})


def hyper_params_of(cls: type[Weighting]) -> dict[str, HyperParam]:
    """The keyword-only constructor arguments of ``cls`` with numeric defaults."""
    found = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if (name not in _NOT_HYPER and param.kind is param.KEYWORD_ONLY
                and isinstance(param.default, (int, float))
                and not isinstance(param.default, bool)):
            found[name] = HyperParam(float(param.default))
    return found


def register_weighting(cls: type[Weighting]) -> type[Weighting]:
    """Register ``cls`` under ``cls.name`` (usable as a decorator).

    A method the torch-free table ``policysearch.weighting_schema.METHODS`` lacks is added to it,
    with its hyper-parameters read from the constructor (no bounds).
    """
    WEIGHTINGS[cls.name] = cls
    if cls.name not in METHODS:
        register_method(cls.name, hyper_params_of(cls))
    return cls


for _cls in (StaticWeighting, EqualWeighting, UncertaintyWeighting, DWAWeighting,
             GradNormWeighting, PCGradWeighting, CAGradWeighting):
    register_weighting(_cls)


def make_weighting(method: str, tasks: Sequence[str],
                   weights: Mapping[str, float] | None = None,
                   params: Mapping[str, float] | None = None, *,
                   shared: Iterable[torch.Tensor] = (), seed: int = 0,
                   device: torch.device | str | None = None) -> Weighting:
    """Build the weighting ``method`` for ``tasks``.

    ``weights`` are used by ``static`` only (other methods start from their own values);
    ``params`` are the method's hyper-parameters (defaults for those left out). Unknown methods
    and parameters are one-line ``UserError``s naming the field.
    """
    if method not in WEIGHTINGS:
        known = ", ".join(WEIGHTINGS)
        raise UserError(f"unknown weighting method {method!r}; known: {known}",
                        field="weighting.method")
    cls = WEIGHTINGS[method]
    kwargs: dict[str, object] = {}
    for name, value in (params or {}).items():
        problem = param_problem(method, name, value)
        if problem:
            raise UserError(problem, field=f"weighting.params.{name}")
        kwargs[name] = float(value)
    if method in USES_WEIGHTS or "weights" in inspect.signature(cls.__init__).parameters:
        kwargs["weights"] = weights
    return cls(tasks, shared=shared, seed=seed, device=device, **kwargs)


__all__ = [
    "WEIGHTINGS",
    "CAGradWeighting",
    "DWAWeighting",
    "EqualWeighting",
    "GradNormWeighting",
    "GradientWeighting",
    "PCGradWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "Weighting",
    "cagrad_coefficients",
    "dwa_weights",
    "hyper_params_of",
    "make_weighting",
    "pcgrad_combine",
    "pcgrad_project",
    "register_weighting",
    "task_gradients",
]
