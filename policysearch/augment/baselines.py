"""Named baseline policies: fixed, target-aware, on the same op set as searched policies.

``BASELINES`` maps a name to a factory ``tasks -> Policy`` (tasks: name -> kind); a new baseline
is one ``register_baseline`` call. ``get_baseline`` also takes a timm-style RandAugment string
(``rand-n2-m9-mstd0.5``, see ``policysearch.augment.timm_strings``).

===========================  ==================================================================
``none``                     no augmentation
``crop``                     a random-resized crop (area >= 0.55, aspect 3/4..4/3), no flip
``flipcrop``                 hflip (p=.5), then the random-resized crop
``randaugment``              torchvision's RandAugment: N=2 of its 14 ops, M=9 -> magnitude 0.3
``trivialaugment``           torchvision's TrivialAugmentWide: one of its 14 ops, magnitude
                             uniform, wide ranges
``autoaugment``              torchvision's AutoAugment ImageNet policy: 25 sub-policies of 2
                             slots, magnitude bin k of 10 -> magnitude k/9
``flipcrop+randaugment``     flipcrop's slots as the policy's ``base``, then RandAugment
``flipcrop+trivialaugment``  the same with TrivialAugmentWide
``flipcrop+autoaugment``     the same with AutoAugment
===========================  ==================================================================

The ``flipcrop+`` ones are how practitioners run RandAugment, TrivialAugment and AutoAugment:
their papers and torchvision's reference recipes always crop and flip first; the bare ones do
not.

The RandAugment scale: torchvision's ``RandAugment(magnitude=9, num_magnitude_bins=31)`` counts
M=9 of 0..30, which is our magnitude 9/30 = 0.3 (the ``randaugment`` baseline); timm's
``rand-m9`` counts 9 of 0..10 (``mmax``), our magnitude 0.9, three times stronger
(``policysearch.augment.timm_strings``, ``magnitude_scales``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from policysearch.augment.ops import RANDAUGMENT_OPS, TRIVIALAUGMENT_OPS
from policysearch.augment.policy import Policy
from policysearch.augment.timm_strings import is_timm_string, parse_timm_string
from policysearch.augment.types import (
    RandAugmentSpec,
    Slot,
    SubPolicies,
    TrivialAugmentSpec,
)
from policysearch.errors import UserError

BaselineFactory = Callable[[dict[str, str]], Policy]
BASELINES: dict[str, BaselineFactory] = {}

# torchvision op names -> ours (torchvision's "Color" is PIL's ImageEnhance.Color: saturation).
TORCHVISION_OPS: dict[str, str] = {
    "Identity": "identity", "ShearX": "shear_x", "ShearY": "shear_y",
    "TranslateX": "translate_x", "TranslateY": "translate_y", "Rotate": "rotate",
    "Brightness": "brightness", "Color": "saturation", "Contrast": "contrast",
    "Sharpness": "sharpness", "Posterize": "posterize", "Solarize": "solarize",
    "AutoContrast": "autocontrast", "Equalize": "equalize", "Invert": "invert",
}

# torchvision.transforms.AutoAugment._get_policies(AutoAugmentPolicy.IMAGENET), verbatim:
# (op, probability, magnitude bin of 10 or None for ops without a magnitude).
AUTOAUGMENT_IMAGENET: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
AUTOAUGMENT_BINS = 10  # torchvision's _augmentation_space(10, ...): bin k -> k/9 of the range


def register_baseline(name: str, factory: BaselineFactory, *, replace: bool = False) -> None:
    """Add a baseline under ``name``."""
    if name in BASELINES and not replace:
        raise ValueError(f"baseline {name!r} is already registered")
    BASELINES[name] = factory


def is_baseline(name: str) -> bool:
    """True for a registered baseline name or a valid timm-style string (``rand-n2-m9``)."""
    if name in BASELINES:
        return True
    if not is_timm_string(name):
        return False
    try:
        parse_timm_string(name)
    except UserError:
        return False
    return True


def get_baseline(name: str, tasks: dict[str, str]) -> Policy:
    """The baseline policy ``name`` (or timm-style string) for ``tasks``; ``UserError``
    listing the known ones otherwise."""
    factory = BASELINES.get(name)
    if factory is not None:
        return factory(dict(tasks))
    if is_timm_string(name):
        return Policy(tasks=dict(tasks), shared=parse_timm_string(name),
                      provenance={"baseline": name})
    known = ", ".join(BASELINES)
    raise UserError(
        f"unknown baseline {name!r}; known: {known} (or a RandAugment string such as "
        "rand-n2-m9-mstd0.5)",
        field="baseline",
    )


def baselines_table() -> list[dict[str, str]]:
    """One row per registered baseline, for ``policysearch ops``: ``name`` and ``policy``, its
    summary (for one classification task)."""
    return [{"name": name, "policy": get_baseline(name, {"task": "classification"}).summary()}
            for name in BASELINES]


def autoaugment_subpolicies(
    policy: tuple[tuple[tuple[str, float, int | None], ...], ...] = AUTOAUGMENT_IMAGENET,
) -> SubPolicies:
    """torchvision-style sub-policies on our ops: bin k of 10 -> magnitude k/9."""
    return SubPolicies(tuple(
        tuple(
            Slot(TORCHVISION_OPS[op], p, 0.0 if k is None else k / (AUTOAUGMENT_BINS - 1))
            for op, p, k in sub
        )
        for sub in policy
    ))


def _none(tasks: dict[str, str]) -> Policy:
    return Policy(tasks=tasks, provenance={"baseline": "none"})


# The standard recipe: a random-resized crop (area in [1 - 0.9*0.5, 1] = [0.55, 1]) and flipcrop
# adds a horizontal flip before it.
CROP = (Slot("crop", 1.0, 0.5),)
FLIPCROP = (Slot("hflip", 0.5, 1.0), *CROP)


def _crop(tasks: dict[str, str]) -> Policy:
    return Policy(tasks=tasks, shared=CROP, provenance={"baseline": "crop"})


def _flipcrop(tasks: dict[str, str]) -> Policy:
    return Policy(tasks=tasks, shared=FLIPCROP, provenance={"baseline": "flipcrop"})


def _randaugment(tasks: dict[str, str]) -> Policy:
    # torchvision RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31): 9/30 = 0.3.
    spec = RandAugmentSpec(n=2, magnitude=9 / 30, mstd=0.0, ops=RANDAUGMENT_OPS)
    return Policy(tasks=tasks, shared=spec, provenance={"baseline": "randaugment"})


def _trivialaugment(tasks: dict[str, str]) -> Policy:
    spec = TrivialAugmentSpec(ops=TRIVIALAUGMENT_OPS, scale="wide")
    return Policy(tasks=tasks, shared=spec, provenance={"baseline": "trivialaugment"})


def _autoaugment(tasks: dict[str, str]) -> Policy:
    return Policy(tasks=tasks, shared=autoaugment_subpolicies(),
                  provenance={"baseline": "autoaugment"})


def _on_flipcrop(name: str, factory: BaselineFactory) -> BaselineFactory:
    """The baseline ``factory`` with flipcrop's slots as its base."""
    def with_base(tasks: dict[str, str]) -> Policy:
        return replace(factory(tasks), base=FLIPCROP, provenance={"baseline": name})
    return with_base


register_baseline("none", _none)
register_baseline("crop", _crop)
register_baseline("flipcrop", _flipcrop)
register_baseline("randaugment", _randaugment)
register_baseline("trivialaugment", _trivialaugment)
register_baseline("autoaugment", _autoaugment)
register_baseline("flipcrop+randaugment", _on_flipcrop("flipcrop+randaugment", _randaugment))
register_baseline("flipcrop+trivialaugment",
                  _on_flipcrop("flipcrop+trivialaugment", _trivialaugment))
register_baseline("flipcrop+autoaugment", _on_flipcrop("flipcrop+autoaugment", _autoaugment))
