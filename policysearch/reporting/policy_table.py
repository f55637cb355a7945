"""A policy as a readable table (``policysearch show FILE``): one row per slot, by phase and
view (the base first, in every phase), then the loss weighting and where the policy came
from."""

from __future__ import annotations

from rich.table import Table

from policysearch.augment import Policy
from policysearch.augment.types import RandAugmentSpec, Shared, Slot, SubPolicies

__all__ = ["policy_rows", "policy_table", "policy_notes"]


def policy_rows(policy: Policy) -> list[dict[str, str]]:
    """One dict per row: ``epochs``, ``view``, ``slot``, ``op``, ``p``, ``magnitude``."""
    if policy.schedule:
        starts = [p.from_epoch for p in policy.schedule]
        ends = [*(str(s - 1) for s in starts[1:]), "end"]
        phases = [(f"{s}–{e}", p.shared, p.per_task)
                  for s, e, p in zip(starts, ends, policy.schedule, strict=True)]
    else:
        phases = [("all", policy.shared, policy.per_task)]
    rows: list[dict[str, str]] = []
    for epochs, shared, per_task in phases:
        rows += [{"epochs": epochs, "view": "base (before shared)", "slot": str(i),
                  **_slot(slot)} for i, slot in enumerate(policy.base, start=1)]
        rows += [{"epochs": epochs, **row} for row in _shared_rows(shared)]
        for task in policy.tasks:
            rows += [{"epochs": epochs, **row}
                     for row in _shared_rows(per_task.get(task, ()), f"{task} only")]
    return rows


def _shared_rows(shared: Shared, view: str = "shared") -> list[dict[str, str]]:
    """The rows of the shared part, or of a task's own view (``view``: its label)."""
    if isinstance(shared, SubPolicies):
        return [{"view": f"{view}, sub-policy {k} of {len(shared.policies)}", "slot": str(i),
                 **_slot(slot)}
                for k, sub in enumerate(shared.policies, start=1)
                for i, slot in enumerate(sub, start=1)]
    if isinstance(shared, RandAugmentSpec):
        mstd = f" ± {shared.mstd:g}" if shared.mstd else ""
        return [{"view": view, "slot": "1",
                 "op": f"randaugment: {shared.n} of {len(shared.ops)} ops ({shared.scale})",
                 "p": "1", "magnitude": f"{shared.magnitude:.3g}{mstd}"}]
    if isinstance(shared, tuple):
        return [{"view": view, "slot": str(i), **_slot(slot)}
                for i, slot in enumerate(shared, start=1)]
    return [{"view": view, "slot": "1",  # TrivialAugmentSpec
             "op": f"trivialaugment: 1 of {len(shared.ops)} ops ({shared.scale})", "p": "1",
             "magnitude": "uniform"}]


def _slot(slot: Slot) -> dict[str, str]:
    return {"op": slot.op, "p": f"{slot.p:.2f}", "magnitude": f"{slot.magnitude:.2f}"}


def policy_table(policy: Policy, title: str | None = None) -> Table:
    """The rows of ``policy_rows`` as a rich table (an ``epochs`` column only with a
    schedule)."""
    rows = policy_rows(policy)
    columns = ["view", "slot", "op", "p", "magnitude"]
    if policy.schedule:
        columns.insert(0, "epochs")
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col in ("slot", "p", "magnitude") else "left")
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    if not rows:
        table.add_row(*(["(no ops)"] + [""] * (len(columns) - 1)))
    return table


def policy_notes(policy: Policy) -> list[str]:
    """Lines under the table: tasks, loss weighting, provenance."""
    lines = ["tasks: " + ", ".join(f"{t} ({k})" for t, k in policy.tasks.items())]
    w = policy.weighting
    weights = ", ".join(f"{t} {v:.3g}" for t, v in w.weights.items())
    params = ", ".join(f"{k} {v:g}" for k, v in w.params.items())
    text = f"loss weighting: {w.method}"
    if weights:
        text += f"; weights {weights}"
    if params:
        text += f"; {params}"
    lines.append(text)
    provenance = policy.provenance or {}
    if provenance:
        lines.append("provenance: " + ", ".join(f"{k} {v}" for k, v in provenance.items()))
    return lines
