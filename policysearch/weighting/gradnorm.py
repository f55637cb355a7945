"""``gradnorm``: gradient normalisation (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from policysearch.weighting.base import Weighting
from policysearch.weighting.gradients import require_shared

_EPS = 1e-8
_MIN_WEIGHT = 1e-4


class GradNormWeighting(Weighting):
    """Learnable weights ``w_t`` (starting at 1) trained so that the gradient norm of each
    weighted loss on the last shared layer, ``G_t = ||∇_W w_t L_t||``, approaches
    ``mean(G) · r_t^alpha``, where ``r_t = L̃_t / mean(L̃)`` is the task's relative inverse
    training rate and ``L̃_t = L_t / L_t(0)``. The paper's ``L_grad = Σ_t |G_t - target_t|``
    (target held constant) is minimised with its own Adam (learning rate ``lr``) after each
    step's backward pass; the weights are then renormalised to sum to the number of tasks.
    The network itself trains on ``Σ_t w_t L_t`` with the current weights.

    "Last shared layer" is the last shared parameter tensor of two or more dimensions (the last
    convolution or linear weight of the encoder). Defaults: ``alpha`` 1.5 (the paper's NYUv2
    value, also LibMTL's). The paper leaves the weights' learning rate open; 0.025 moves them
    within a short trial. Deviations: weights are kept ≥ 1e-4 before renormalising, and a task
    whose first loss is 0 (no labels in the first batch) takes its first positive loss as
    ``L_t(0)``.
    """

    name = "gradnorm"

    def __init__(self, tasks: Sequence[str], *, alpha: float = 1.5, lr: float = 0.025,
                 shared: Iterable[torch.Tensor] = (), seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        require_shared(self)
        matrices = [p for p in self.shared if p.dim() >= 2]
        self.layer = matrices[-1] if matrices else self.shared[-1]
        self.alpha = float(alpha)
        self._w = torch.ones(len(self.tasks), device=self.device, requires_grad=True)
        self._optimizer = torch.optim.Adam([self._w], lr=lr)
        self._initial: torch.Tensor | None = None

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self._w.detach().tolist(), strict=True))

    def backward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = self._stack(losses)
        w = self._w.detach()
        total = (w * stacked).sum()
        if not torch.isfinite(total):
            return total.detach()
        current = stacked.detach()
        if self._initial is None:
            self._initial = current.clone()
        self._initial = torch.where(self._initial > 0, self._initial, current)
        norms = torch.stack([self._grad_norm(losses[t]) for t in self.tasks])
        total.backward()
        self._update(norms, current)
        return total.detach()

    def _grad_norm(self, loss: torch.Tensor) -> torch.Tensor:
        """``||∇_W L_t||`` on the last shared layer (constant: GradNorm only moves ``w``)."""
        if not loss.requires_grad:
            return torch.zeros((), device=self.device)
        (grad,) = torch.autograd.grad(loss, [self.layer], retain_graph=True, allow_unused=True)
        if grad is None:
            return torch.zeros((), device=self.device)
        return grad.detach().float().norm()

    def _update(self, norms: torch.Tensor, current: torch.Tensor) -> None:
        assert self._initial is not None
        inverse_rate = current / self._initial.clamp_min(_EPS)
        relative = inverse_rate / inverse_rate.mean().clamp_min(_EPS)
        g = self._w * norms
        target = (g.mean() * relative.pow(self.alpha)).detach()
        grad_loss = (g - target).abs().sum()
        self._optimizer.zero_grad(set_to_none=True)
        grad_loss.backward()
        self._optimizer.step()
        with torch.no_grad():
            self._w.clamp_(min=_MIN_WEIGHT)
            self._w.mul_(len(self.tasks) / self._w.sum())
