"""Names and hyper-parameters of the loss-weighting methods, as plain data (no torch).

The policy YAML (``policysearch.augment.schema``) and the search-space schema
(``policysearch.config``) validate method and hyper-parameter names against ``METHODS``; the
classes of ``policysearch.weighting`` take the same names as constructor arguments, with these
defaults. ``policysearch.weighting.register_weighting`` adds a user's own method here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HyperParam:
    """One hyper-parameter: its default and the allowed interval (``low`` excluded when
    ``low_open``)."""

    default: float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    doc: str = ""

    def bounds_text(self) -> str:
        left = "(" if self.low_open else "["
        return f"{left}{self.low:g}, {self.high:g}]"

    def allows(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high


METHODS: dict[str, dict[str, HyperParam]] = {
    "static": {},
    "equal": {},
    "uncertainty": {},
    "dwa": {"temperature": HyperParam(2.0, 0.0, low_open=True, doc="softmax temperature T")},
    "gradnorm": {
        "alpha": HyperParam(1.5, 0.0, doc="strength of the restoring force"),
        "lr": HyperParam(0.025, 0.0, low_open=True, doc="Adam learning rate of the weights"),
    },
    "pcgrad": {},
    "cagrad": {"c": HyperParam(0.5, 0.0, doc="radius of the conflict-averse ball")},
}
# Methods whose ``weights`` (one per task) are used; the others ignore them.
USES_WEIGHTS = frozenset({"static"})


def register_method(name: str, params: Mapping[str, HyperParam]) -> None:
    """Make ``name`` and its hyper-parameters known (a user's own weighting method)."""
    METHODS[name] = dict(params)


def is_number(value: Any) -> bool:
    """A plain finite int or float (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def method_problem(method: Any) -> str | None:
    """Why ``method`` is not a known weighting method, or None when it is."""
    if isinstance(method, str) and method in METHODS:
        return None
    return f"unknown weighting method {method!r}; known: {', '.join(METHODS)}"


def param_problem(method: str, name: Any, value: Any) -> str | None:
    """Why ``value`` is not a valid hyper-parameter ``name`` of ``method``, or None."""
    known = METHODS.get(method, {})
    if name not in known:
        has = ", ".join(known) if known else "no hyper-parameters"
        return f"unknown hyper-parameter {name!r} of {method} (it has {has})"
    info = known[name]
    if not is_number(value) or not info.allows(value):
        return f"must be a number in {info.bounds_text()}, got {value!r}"
    return None


def defaults(method: str) -> dict[str, float]:
    """Every hyper-parameter of ``method`` at its default value."""
    return {name: info.default for name, info in METHODS.get(method, {}).items()}
