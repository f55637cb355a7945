"""timm-style RandAugment strings (``rand-n2-m9-mstd0.5``) -> ``RandAugmentSpec``.

The string keeps timm's own scale: ``m`` and ``mstd`` are on 0..``mmax`` (default 10), so they
are divided by ``mmax`` to become our magnitude in [0, 1]. torchvision's RandAugment counts its
magnitude on another scale (31 bins, 0..30). Side by side:

==================================  ===========  =========  ==================================
convention                          value        of         our magnitude
==================================  ===========  =========  ==================================
torchvision ``RandAugment``         M=9          30         9/30 = 0.30 (baseline randaugment)
timm ``rand-m9``                    m9           mmax=10    9/10 = 0.90
timm ``rand-m9-mstd0.5``            mstd0.5      mmax=10    mstd 0.05 (N(0.9, 0.05), clipped)
timm ``rand-m9-mmax20``             m9           mmax=20    0.45
torchvision ``AutoAugment`` bin k   k            9          k/9 (baseline autoaugment)
==================================  ===========  =========  ==================================

Keys: ``n`` (ops per sample, default 2), ``m`` (magnitude, default 10 as in timm), ``mstd``
(default 0), ``mmax`` (default 10). Anything else (timm's ``inc``, ``w``, ``p``) is refused.
The ops are torchvision's RandAugment list on our ops (``RANDAUGMENT_OPS``), each applied with
p=1 on the standard ranges; timm's own list differs (Invert and SolarizeAdd instead of
Identity) and applies each op with p=0.5, so equal strings are not equal pipelines.
"""

from __future__ import annotations

import re

from policysearch.augment.ops import RANDAUGMENT_OPS
from policysearch.augment.types import RandAugmentSpec
from policysearch.errors import UserError

TIMM_KEYS = ("n", "m", "mstd", "mmax")
TIMM_DEFAULTS = {"n": 2.0, "m": 10.0, "mstd": 0.0, "mmax": 10.0}
TORCHVISION_MAX = 30  # RandAugment(num_magnitude_bins=31): magnitude index 0..30
_SECTION = re.compile(r"([a-z]*)(.*)")
_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")


def timm_magnitude(m: float, mmax: float = 10.0) -> float:
    """timm's magnitude ``m`` of ``mmax`` as ours: ``m / mmax`` (m9 -> 0.9)."""
    return float(m) / float(mmax)


def torchvision_magnitude(m: int, num_bins: int = 31) -> float:
    """torchvision's RandAugment magnitude index ``m`` of ``num_bins`` as ours (9 -> 0.3)."""
    return float(m) / float(num_bins - 1)


def magnitude_scales() -> list[dict[str, str | float]]:
    """The table of the module docstring as rows: convention, value, of, magnitude."""
    return [
        {"convention": "torchvision RandAugment", "value": "M=9", "of": "30",
         "magnitude": torchvision_magnitude(9)},
        {"convention": "timm rand-m9", "value": "m9", "of": "mmax=10",
         "magnitude": timm_magnitude(9)},
        {"convention": "timm rand-m9-mstd0.5", "value": "mstd0.5", "of": "mmax=10",
         "magnitude": timm_magnitude(0.5)},
        {"convention": "timm rand-m9-mmax20", "value": "m9", "of": "mmax=20",
         "magnitude": timm_magnitude(9, 20)},
        {"convention": "torchvision AutoAugment bin k", "value": "k", "of": "9",
         "magnitude": "k/9"},
    ]


def is_timm_string(name: str) -> bool:
    """True when ``name`` is meant as a timm-style RandAugment string (``rand`` / ``rand-...``);
    whether it is valid is ``parse_timm_string``'s business."""
    return isinstance(name, str) and (name == "rand" or name.startswith("rand-"))


def parse_timm_string(text: str) -> RandAugmentSpec:
    """``rand-n2-m9-mstd0.5`` -> ``RandAugmentSpec(n=2, magnitude=0.9, mstd=0.05)``.

    ``UserError`` naming the string and the bad key for an unknown key, a repeated key or a
    bad value.
    """
    if not is_timm_string(text):
        raise UserError(f"{text!r} is not a RandAugment string; expected e.g. rand-n2-m9-mstd0.5",
                        field="baseline")
    values = dict(TIMM_DEFAULTS)
    seen: set[str] = set()
    for section in text.split("-")[1:]:
        match = _SECTION.fullmatch(section)
        key, raw = match.groups() if match else ("", section)
        if key not in TIMM_KEYS:
            raise UserError(
                f"{text!r}: unknown key {key or section!r}; a RandAugment string takes "
                f"{', '.join(TIMM_KEYS)} (e.g. rand-n2-m9-mstd0.5)", field="baseline")
        if key in seen:
            raise UserError(f"{text!r}: key {key!r} given twice", field="baseline")
        seen.add(key)
        if not _NUMBER.fullmatch(raw) or (key == "n" and not raw.isdigit()):
            kind = "a whole number" if key == "n" else "a number"
            raise UserError(f"{text!r}: key {key!r} needs {kind}, got {raw!r}", field="baseline")
        values[key] = float(raw)
    n, m, mstd, mmax = (values[k] for k in TIMM_KEYS)
    if mmax <= 0:
        raise UserError(f"{text!r}: key 'mmax' must be > 0", field="baseline")
    if m > mmax:
        # timm would silently clip m to mmax; a policy should say what it does.
        raise UserError(f"{text!r}: key 'm' ({m:g}) exceeds mmax ({mmax:g}); lower m or raise "
                        "mmax", field="baseline")
    if mstd > 100:
        raise UserError(f"{text!r}: key 'mstd' > 100 (timm's uniform magnitude) is not "
                        "supported", field="baseline")
    return RandAugmentSpec(n=int(n), magnitude=timm_magnitude(m, mmax),
                           mstd=timm_magnitude(mstd, mmax), ops=RANDAUGMENT_OPS)
