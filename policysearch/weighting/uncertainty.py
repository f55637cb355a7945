"""``uncertainty``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from policysearch.weighting.base import Weighting


class UncertaintyWeighting(Weighting):
    """Learnable log-variances ``s_t`` (one per task, starting at 0):
    ``loss = Σ_t exp(-s_t) L_t + s_t``.

    This is the commonly used form of Kendall et al.'s objective (eq. 7 with ``s = log σ²``):
    the paper's regression terms carry ``1/(2σ²)`` and ``log σ`` — a factor ½ on both, which
    only rescales the gradients — and its classification terms are approximated the same way.
    ``s_t`` settles at ``log L_t``, so a task with a larger loss gets a smaller weight
    ``exp(-s_t)``. The training loop adds ``s`` to its optimizer (no weight decay).
    """

    name = "uncertainty"

    def __init__(self, tasks: Sequence[str], *, shared: Iterable[torch.Tensor] = (),
                 seed: int = 0, device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        self.log_vars = torch.nn.Parameter(torch.zeros(len(self.tasks), device=self.device))

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_vars]

    def weights(self) -> dict[str, float]:
        values = torch.exp(-self.log_vars.detach()).tolist()
        return dict(zip(self.tasks, values, strict=True))

    def backward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s = self.log_vars
        total = (torch.exp(-s) * self._stack(losses) + s).sum()
        if torch.isfinite(total):
            total.backward()
        return total.detach()
