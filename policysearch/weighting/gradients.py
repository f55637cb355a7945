"""Per-task gradients of the shared parameters, and ``GradientWeighting``, the base of the
gradient-surgery methods (PCGrad, CAGrad)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence

import torch

from policysearch.errors import UserError
from policysearch.weighting.base import Weighting


def require_shared(weighting: Weighting) -> None:
    """Gradient methods cannot work without trainable shared parameters."""
    if not weighting.shared:
        raise UserError(f"{weighting.name} needs trainable shared (encoder) parameters",
                        field="weighting.method")


def task_gradients(losses: Sequence[torch.Tensor],
                   shared: Sequence[torch.Tensor]) -> torch.Tensor:
    """A T×P matrix: row t is the flattened gradient of ``losses[t]`` on ``shared``.

    One backward pass per loss (as LibMTL does): every other parameter accumulates the
    ordinary gradient of the *sum* of the losses, while the shared parameters' ``.grad`` is
    left as it was before the call.
    """
    before = [p.grad for p in shared]
    for p in shared:
        p.grad = None
    rows = []
    for i, loss in enumerate(losses):
        if loss.requires_grad:  # a constant loss (no graph) has a zero gradient
            loss.backward(retain_graph=i < len(losses) - 1)
        rows.append(torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in shared
        ]))
        for p in shared:
            p.grad = None
    for p, grad in zip(shared, before, strict=True):
        p.grad = grad
    return torch.stack(rows)


def add_to_grads(shared: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Add a flat gradient ``vector`` to the ``.grad`` of ``shared``, in order."""
    offset = 0
    for p in shared:
        n = p.numel()
        piece = vector[offset:offset + n].view_as(p).to(p.dtype)
        p.grad = piece.clone() if p.grad is None else p.grad + piece
        offset += n


class GradientWeighting(Weighting):
    """Replaces the shared parameters' gradient by ``combine`` of the per-task gradients.

    Heads get the gradient of the unweighted sum of the losses; ``weights()`` defaults to 1.0
    per task (these methods reshape gradients rather than weigh losses).
    """

    def __init__(self, tasks: Sequence[str], *, shared: Iterable[torch.Tensor] = (),
                 seed: int = 0, device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        require_shared(self)

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}

    @abstractmethod
    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        """The shared update direction (P) from the per-task gradients (T×P)."""

    def backward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = self._stack(losses)
        total = stacked.sum()
        if not torch.isfinite(total):
            return total.detach()
        grads = task_gradients([losses[t] for t in self.tasks], self.shared)
        add_to_grads(self.shared, self.combine(grads))
        return total.detach()
