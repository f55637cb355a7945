"""A policy as Python source: one albumentations ``A.Compose(...)`` expression per task, to paste
into a training script (``policysearch export --format python``).

The source is generated from albumentations' own serialisation of the Compose
(``A.to_dict``), so evaluating it gives back a Compose that serialises identically; arguments
equal to a transform's default are left out to keep it readable.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from policysearch.augment import Policy
from policysearch.errors import UserError

__all__ = ["compose_source", "policy_source"]

_INDENT = "    "
# Compose-level arguments whose dict form is another albumentations class.
_PARAM_CLASSES = {"bbox_params": "BboxParams", "keypoint_params": "KeypointParams"}


def policy_source(policy: Policy, *, epoch: int | None = None,
                  size: tuple[int, int] | None = None) -> str:
    """A Python snippet: ``import albumentations as A`` and one ``<task>_transform = A.Compose(
    ...)`` per task (a task albumentations cannot transform, e.g. surface normals, gets a
    comment saying why). A policy with a schedule needs ``epoch``: the phase in force then.
    ``size`` (height, width): the crop's output size, as ``Policy.to_albumentations``."""
    if policy.schedule and epoch is None:
        starts = ", ".join(str(p.from_epoch) for p in policy.schedule)
        raise UserError(f"the policy has a schedule (phases from epochs {starts}); give "
                        "--epoch E for the phase in force at epoch E", field="--epoch")
    lines = ["import albumentations as A", ""]
    provenance = policy.provenance or {}
    if provenance.get("study") is not None:
        lines.insert(0, f"# policysearch: study {provenance['study']}, trial "
                        f"{provenance.get('trial')}, Δm% {provenance.get('delta_m')}")
    for task in policy.tasks:
        name = f"{_identifier(task)}_transform"
        try:
            compose = policy.to_albumentations(task, epoch=epoch, size=size)
        except UserError as err:
            lines += [f"# {name}: none — {err.message}", ""]
            continue
        lines += [f"# task {task} ({policy.tasks[task]})", f"{name} = {compose_source(compose)}",
                  ""]
    return "\n".join(lines).rstrip() + "\n"


def compose_source(compose: Any) -> str:
    """``A.Compose(...)`` source that evaluates (with ``import albumentations as A``) to a
    Compose serialising exactly as ``compose`` does."""
    import albumentations as A

    return _call(A.to_dict(compose)["transform"], 0)


def _call(node: dict[str, Any], depth: int) -> str:
    import albumentations as A

    name = node["__class_fullname__"]
    cls = getattr(A, name, None)
    if cls is None:
        raise UserError(f"albumentations has no class {name!r} to write as Python",
                        field="--format")
    args = {k: v for k, v in node.items() if k != "__class_fullname__"}
    children = args.pop("transforms", None)
    args = {k: v for k, v in args.items() if not _is_default(name, k, v)}
    parts = [f"{k}={_param(k, v)}" for k, v in args.items()]
    if children is None:
        return f"A.{name}({', '.join(parts)})"
    pad = _INDENT * (depth + 1)
    inner = "".join(f"{pad}{_call(child, depth + 1)},\n" for child in children)
    tail = f", {', '.join(parts)}" if parts else ""
    return f"A.{name}([\n{inner}{_INDENT * depth}]{tail})"


def _param(key: str, value: Any) -> str:
    if key in _PARAM_CLASSES and isinstance(value, dict):
        kwargs = ", ".join(f"{k}={_value(v)}" for k, v in value.items())
        return f"A.{_PARAM_CLASSES[key]}({kwargs})"
    return _value(value)


def _value(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _is_default(name: str, key: str, value: Any) -> bool:
    """Whether ``key=value`` is what ``A.<name>`` uses when the argument is left out."""
    defaults = _defaults(name)
    return key in defaults and _same(defaults[key], value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@functools.cache
def _defaults(name: str) -> dict[str, Any]:
    """The serialised arguments of ``A.<name>()`` built without arguments ({} when it needs
    some: then every argument is written out). Read only."""
    import albumentations as A

    cls = getattr(A, name)
    for args in ((), ([],)):  # Compose, OneOf, … need their list of transforms
        try:
            return A.to_dict(cls(*args))["transform"]
        except Exception:  # noqa: BLE001, S112 - e.g. crops need a size: write every argument
            continue
    return {}


def _identifier(task: str) -> str:
    text = "".join(c if c.isalnum() or c == "_" else "_" for c in task)
    return text if text and not text[0].isdigit() else f"task_{text}"
