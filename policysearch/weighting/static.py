"""``static``: fixed per-task weights (the engine searches them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from policysearch.errors import UserError
from policysearch.weighting.base import Weighting


class StaticWeighting(Weighting):
    """Fixed weights per task; a task left out weighs 1.0."""

    name = "static"

    def __init__(self, tasks: Sequence[str], *, weights: Mapping[str, float] | None = None,
                 shared: Iterable[torch.Tensor] = (), seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise UserError(f"weights for unknown tasks: {', '.join(sorted(unknown))}",
                            field="weighting.weights")
        self._weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)
