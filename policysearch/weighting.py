"""Loss weighting: one small class per method; the weighting owns the backward pass.

Gradient methods (GradNorm, PCGrad, …) need per-task gradients, which is why ``backward`` is
the weighting's job rather than the training loop's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import torch

from policysearch.errors import UserError


class Weighting(ABC):
    """Combines per-task losses into one objective and runs its backward pass."""

    name: str

    def __init__(self, tasks: Sequence[str]):
        self.tasks = list(tasks)

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """The current weight of each task (for logs and results)."""

    def backward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Backpropagate the combined loss; returns it (detached) for logging."""
        w = self.weights()
        total = sum(w[name] * loss for name, loss in losses.items())
        assert isinstance(total, torch.Tensor)
        total.backward()
        return total.detach()


class StaticWeighting(Weighting):
    """Fixed weights per task (searched by the engine); missing tasks weigh 1.0."""

    name = "static"

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise UserError(f"weights for unknown tasks: {', '.join(sorted(unknown))}",
                            field="weighting.weights")
        self._weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)


class EqualWeighting(StaticWeighting):
    """Every task weighs 1.0."""

    name = "equal"

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None):
        super().__init__(tasks, None)


WEIGHTINGS: dict[str, Callable[..., Weighting]] = {}


def register_weighting(cls: type[Weighting]) -> type[Weighting]:
    WEIGHTINGS[cls.name] = cls
    return cls


register_weighting(StaticWeighting)
register_weighting(EqualWeighting)


def make_weighting(method: str, tasks: Sequence[str],
                   weights: Mapping[str, float] | None = None) -> Weighting:
    if method not in WEIGHTINGS:
        known = ", ".join(sorted(WEIGHTINGS))
        raise UserError(f"unknown weighting method {method!r} (known: {known})",
                        field="weighting.method")
    return WEIGHTINGS[method](tasks, weights)
