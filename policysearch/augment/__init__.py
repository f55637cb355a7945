"""Augmentation: the op registry, policies, their views and serialization, baselines.

Imports neither torch, optuna nor ray, so ``load_policy`` works in any training code.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# albumentations 2.0.8 asks PyPI for a newer version on import (2 s timeout); policysearch makes
# no network requests at run time. A user who wants the check can set the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _import_albumentations_without_torch() -> None:
    """Import albumentations without its torch helpers.

    albumentations 2.0.8's ``__init__`` runs ``from .pytorch import *`` (suppressing
    ImportError), which imports torch whenever torch is installed: about a second, and against
    this package's rule. A ``None`` entry in ``sys.modules`` makes that import fail quietly; it
    is removed right after, and ``A.ToTensorV2`` / ``A.ToTensor3D`` still resolve on first use.
    """
    if "albumentations" in sys.modules or "torch" in sys.modules:
        return
    key = "albumentations.pytorch"
    sys.modules[key] = None  # type: ignore[assignment]
    try:
        import albumentations
    finally:
        if key in sys.modules and sys.modules[key] is None:
            del sys.modules[key]

    def __getattr__(name: str) -> Any:  # PEP 562, on the albumentations module
        if name in ("ToTensorV2", "ToTensor3D"):
            import albumentations.pytorch as albu_torch

            return getattr(albu_torch, name)
        raise AttributeError(f"module 'albumentations' has no attribute {name!r}")

    if not hasattr(albumentations, "ToTensorV2"):
        albumentations.__getattr__ = __getattr__  # type: ignore[attr-defined]


_import_albumentations_without_torch()

from policysearch.augment.baselines import (  # noqa: E402
    AUTOAUGMENT_IMAGENET,
    BASELINES,
    TORCHVISION_OPS,
    autoaugment_subpolicies,
    baselines_table,
    get_baseline,
    is_baseline,
    register_baseline,
)
from policysearch.augment.ops import (  # noqa: E402
    OPS,
    RANDAUGMENT_OPS,
    SCALES,
    TRIVIALAUGMENT_OPS,
    Op,
    build_gaussian,
    build_sampled,
    build_slot,
    get_op,
    register_op,
)
from policysearch.augment.policy import Policy, load_policy  # noqa: E402
from policysearch.augment.runtime import MultiTaskAugment, targets_not_moved  # noqa: E402
from policysearch.augment.schema import SCHEMA  # noqa: E402
from policysearch.augment.seeding import augments_of, seed_worker  # noqa: E402
from policysearch.augment.timm_strings import (  # noqa: E402
    magnitude_scales,
    parse_timm_string,
    timm_magnitude,
    torchvision_magnitude,
)
from policysearch.augment.types import (  # noqa: E402
    STRUCTURES,
    Phase,
    RandAugmentSpec,
    Shared,
    Slot,
    SubPolicies,
    TaskView,
    TrivialAugmentSpec,
    Weighting,
)


def ops_table() -> list[dict[str, Any]]:
    """One row per registered op, for ``policysearch ops``: ``range_at_1`` is the standard
    scale (sequence, subpolicies, randaugment), ``range_wide_at_1`` the wide one
    (trivialaugment)."""
    return [
        {
            "name": op.name,
            "kind": op.kind,
            "signed": op.signed,
            "targets": op.targets,
            "range_at_1": op.range_at_1,
            "range_wide_at_1": op.wide_range,
            "description": op.description,
        }
        for op in OPS.values()
    ]


__all__ = [
    "Phase",
    "AUTOAUGMENT_IMAGENET",
    "BASELINES",
    "OPS",
    "RANDAUGMENT_OPS",
    "SCALES",
    "SCHEMA",
    "STRUCTURES",
    "TORCHVISION_OPS",
    "TRIVIALAUGMENT_OPS",
    "MultiTaskAugment",
    "Op",
    "Policy",
    "RandAugmentSpec",
    "Shared",
    "Slot",
    "SubPolicies",
    "TaskView",
    "TrivialAugmentSpec",
    "Weighting",
    "augments_of",
    "autoaugment_subpolicies",
    "build_gaussian",
    "build_sampled",
    "build_slot",
    "baselines_table",
    "get_baseline",
    "get_op",
    "is_baseline",
    "load_policy",
    "magnitude_scales",
    "ops_table",
    "parse_timm_string",
    "register_baseline",
    "register_op",
    "seed_worker",
    "targets_not_moved",
    "timm_magnitude",
    "torchvision_magnitude",
]
