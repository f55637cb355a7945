"""One-line text summaries of policies (``Policy.summary``).

A slot is ``op(p,magnitude)`` with two decimals at most, ``rotate(.6,.3)``; views are joined by
`` | ``, ``rotate(.6,.3) solarize(.2,.7) | seg: hflip(.5,1.0)``; the other structures read
``subpolicies(...)``, ``randaugment(n=2, m=.30, 14 ops)``, ``trivialaugment(14 ops)``, and so
does a task's own RandAugment, ``randaugment(n=2, m=.30, 14 ops) | shape: randaugment(n=1,
m=.50, 14 ops)``. A schedule shows its phases by first epoch, ``e0: hflip(.5,1.0) → e4:
rotate(.6,.3)`` (more than four phases: the first two, how many are left out, the last two). A
base comes first, ``base: hflip(.5,1.0) crop(1.0,.5) + randaugment(n=2, m=.30, 14 ops)``; it
applies in every phase, so it is shown once before them (no square brackets: rich tables read
them as markup). A weighting other than ``static`` is added, ``| weighting: dwa(temperature=2)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from policysearch.augment.types import PolicyData, RandAugmentSpec, SubPolicies, TrivialAugmentSpec

if TYPE_CHECKING:
    from policysearch.augment.types import Shared, Slot, TaskView, Weighting


def policy_summary(policy: PolicyData) -> str:
    """The one-line summary of ``policy`` (see the module docstring)."""
    if policy.schedule:
        texts = [f"e{p.from_epoch}: {_slots_text(policy.tasks, p.shared, p.per_task)}"
                 for p in policy.schedule]
        if len(texts) > 4:
            texts = [*texts[:2], f"… {len(texts) - 4} more …", *texts[-2:]]
        parts = [" → ".join(texts)]
    else:
        parts = [_slots_text(policy.tasks, policy.shared, policy.per_task)]
    if policy.base:
        parts[0] = f"base: {' '.join(_slot_text(s) for s in policy.base)} + {parts[0]}"
    if policy.weighting.method != "static":
        parts.append(f"weighting: {_weighting_text(policy.weighting)}")
    return " | ".join(parts)


def _slots_text(tasks: Iterable[str], shared: Shared,
                per_task: Mapping[str, TaskView]) -> str:
    parts = [_shared_text(shared)]
    parts += [f"{t}: {_shared_text(per_task[t])}" for t in tasks if per_task.get(t)]
    return " | ".join(parts)


def _shared_text(shared: Shared) -> str:
    """The shared part of a summary, or a task's view."""
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


def _slot_text(slot: Slot) -> str:
    return f"{slot.op}({_num(slot.p)},{_num(slot.magnitude)})"


def _weighting_text(w: Weighting) -> str:
    """The weighting part of a summary, e.g. ``dwa(temperature=2)``."""
    params = ", ".join(f"{name}={value:g}" for name, value in w.params.items())
    return f"{w.method}({params})" if params else w.method


def _num(x: float) -> str:
    """At most two decimals, no leading zero: 0.6 -> ``.6``, 1 -> ``1.0``."""
    text = f"{x:.2f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return text[1:] if text.startswith("0.") else text


def _fixed2(x: float) -> str:
    """Two decimals, no leading zero: 0.3 -> ``.30``."""
    text = f"{x:.2f}"
    return text[1:] if text.startswith("0.") else text
