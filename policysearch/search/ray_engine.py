"""Ray Tune engine (``--engine ray``). (Being built.)"""

from __future__ import annotations

from typing import Any

from policysearch.errors import UserError


def optimize_ray(space: Any, **kwargs: Any) -> Any:
    raise UserError("engine 'ray' is not available in this version (available: optuna)",
                    field="--engine")
