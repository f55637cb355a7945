"""Named baseline policies: fixed, target-aware, on the same op set as searched policies.

``BASELINES`` maps a name to a factory ``tasks -> Policy`` (tasks: name -> kind); a new baseline
(RandAugment, TrivialAugment, AutoAugment) is one ``register_baseline`` call.
"""

from __future__ import annotations

from collections.abc import Callable

from policysearch.augment.policy import Policy, Slot
from policysearch.errors import UserError

BaselineFactory = Callable[[dict[str, str]], Policy]
BASELINES: dict[str, BaselineFactory] = {}


def register_baseline(name: str, factory: BaselineFactory, *, replace: bool = False) -> None:
    """Add a baseline under ``name``."""
    if name in BASELINES and not replace:
        raise ValueError(f"baseline {name!r} is already registered")
    BASELINES[name] = factory


def get_baseline(name: str, tasks: dict[str, str]) -> Policy:
    """The baseline policy ``name`` for ``tasks``; ``UserError`` listing the known ones."""
    factory = BASELINES.get(name)
    if factory is None:
        known = ", ".join(BASELINES)
        raise UserError(f"unknown baseline {name!r}; known: {known}", field="baseline")
    return factory(dict(tasks))


def _none(tasks: dict[str, str]) -> Policy:
    return Policy(tasks=tasks, provenance={"baseline": "none"})


def _flipcrop(tasks: dict[str, str]) -> Policy:
    shared = (Slot("hflip", 0.5, 1.0), Slot("crop", 1.0, 0.5))
    return Policy(tasks=tasks, shared=shared, provenance={"baseline": "flipcrop"})


register_baseline("none", _none)
register_baseline("flipcrop", _flipcrop)
