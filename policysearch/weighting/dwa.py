"""``dwa``: dynamic weight average (Liu, Johns & Davison, "End-to-end multi-task learning with
attention", CVPR 2019)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from policysearch.weighting.base import Weighting


class DWAWeighting(Weighting):
    """``w_t = K exp(r_t / T) / Σ_k exp(r_k / T)`` with ``r_t = L_t(e-1) / L_t(e-2)``, the
    ratio of the last two epochs' mean training losses; ``K`` tasks, so the weights sum to
    ``K``; every weight is 1.0 during the first two epochs (paper and LibMTL).

    Deviation: a ratio whose older loss is not positive and finite (a task without labels in
    an epoch) counts as 1.0 instead of dividing by zero.
    """

    name = "dwa"

    def __init__(self, tasks: Sequence[str], *, temperature: float = 2.0,
                 shared: Iterable[torch.Tensor] = (), seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.history: list[dict[str, float]] = []
        self._weights = {t: 1.0 for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.history.append({t: float(mean_losses[t]) for t in self.tasks})
        if len(self.history) >= 2:
            self._weights = dwa_weights(self.history[-1], self.history[-2], self.temperature)


def dwa_weights(last: Mapping[str, float], before: Mapping[str, float],
                temperature: float) -> dict[str, float]:
    """DWA's weights from the mean losses of the last epoch and of the one before it."""
    ratios = {}
    for task, now in last.items():
        old = before[task]
        ok = math.isfinite(old) and old > 0 and math.isfinite(now)
        ratios[task] = now / old if ok else 1.0
    top = max(ratios.values())  # subtract the maximum: a numerically safe softmax
    exps = {t: math.exp((r - top) / temperature) for t, r in ratios.items()}
    norm = sum(exps.values())
    return {t: len(exps) * e / norm for t, e in exps.items()}
