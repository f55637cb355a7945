"""policysearch: search data-augmentation policies and loss weights for multi-task vision.

Importing the package imports neither torch, optuna nor ray; ``load_policy`` and ``Policy``
come from the augment package, which needs only albumentations. The search entry points
import their heavy dependencies when called. The Python API (``search``, ``results``,
``export``, ``report``, ``benchmark``, ``preview``, ``show``, ``check``, ``init``,
``spaces``, ``ops``, ``records``) is one call per CLI command; it lives in ``policysearch.api``.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

from policysearch.api import (  # noqa: E402
    benchmark,
    check,
    export,
    init,
    ops,
    preview,
    records,
    report,
    results,
    search,
    show,
    spaces,
)
from policysearch.augment import Policy, Slot, Weighting, get_baseline, load_policy  # noqa: E402
from policysearch.errors import DataError, UserError  # noqa: E402


class _Package(types.ModuleType):
    """Keeps the API functions that share a submodule's name (search, export, preview,
    report, show) bound: importing ``policysearch.search.driver`` would otherwise rebind
    ``policysearch.search`` to the subpackage. Submodules stay importable by name."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and isinstance(
                self.__dict__.get(name), types.FunctionType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "DataError",
    "Policy",
    "Slot",
    "UserError",
    "Weighting",
    "__version__",
    "benchmark",
    "check",
    "export",
    "get_baseline",
    "init",
    "load_policy",
    "ops",
    "preview",
    "records",
    "report",
    "results",
    "search",
    "show",
    "spaces",
]
