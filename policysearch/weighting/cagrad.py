"""``cagrad``: conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from policysearch.weighting.gradients import GradientWeighting

_EPS = 1e-8


class CAGradWeighting(GradientWeighting):
    """The shared update ``d = g0 + (c ||g0|| / ||g_w||) g_w``, divided by ``1 + c²``, where
    ``g0`` is the mean of the task gradients and ``g_w = Σ w_t g_t`` with ``w`` on the simplex
    minimising ``g_w·g0 + c ||g0|| ||g_w||`` (the dual of the paper's problem, solved with
    SciPy's SLSQP from the uniform start as in the official code). ``c = 0`` gives the mean
    gradient. The division by ``1 + c²`` is the official code's default ``rescale=1``; ``c``
    defaults to 0.5 (official code and LibMTL). Heads get the gradient of the plain sum of the
    losses, as in LibMTL.

    ``weights()`` reports each task's coefficient in the last shared update, times the number
    of tasks (1.0 each for the mean gradient).
    """

    name = "cagrad"

    def __init__(self, tasks: Sequence[str], *, c: float = 0.5,
                 shared: Iterable[torch.Tensor] = (), seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c!r}")
        self.c = float(c)
        self._coefficients = [1.0] * len(self.tasks)

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self._coefficients, strict=True))

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        coefficients = cagrad_coefficients(grads, self.c)
        self._coefficients = (coefficients * len(self.tasks)).tolist()
        return coefficients.to(grads.dtype) @ grads


def cagrad_coefficients(grads: torch.Tensor, c: float) -> torch.Tensor:
    """The coefficients (T) of the task gradients (T×P) in CAGrad's update."""
    count = grads.shape[0]
    gram = (grads.double() @ grads.double().T).cpu().numpy()
    uniform = np.full(count, 1.0 / count)
    if c == 0:
        return torch.from_numpy(uniform).to(grads.device)
    from scipy.optimize import minimize  # SciPy comes with scikit-learn, a dependency

    g0_norm = float(np.sqrt(max(gram.mean(), 0.0) + _EPS))
    radius = c * g0_norm + _EPS
    towards_g0 = gram @ uniform  # (g_t · g0) for every t

    def objective(w: np.ndarray) -> float:
        return float(w @ towards_g0 + radius * np.sqrt(w @ gram @ w + _EPS))

    result = minimize(objective, uniform, bounds=[(0.0, 1.0)] * count,
                      constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum()},))
    w = np.clip(result.x, 0.0, 1.0)
    gw_norm = float(np.sqrt(max(w @ gram @ w, 0.0)))
    coefficients = (uniform + radius / (gw_norm + _EPS) * w) / (1.0 + c * c)
    return torch.from_numpy(coefficients).to(grads.device)
