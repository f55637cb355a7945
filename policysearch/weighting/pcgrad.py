"""``pcgrad``: projecting conflicting gradients (Yu et al., "Gradient surgery for multi-task
learning", NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from policysearch.weighting.gradients import GradientWeighting


class PCGradWeighting(GradientWeighting):
    """For each task ``i``, its gradient on the shared parameters is projected, one other task
    ``j`` at a time in a random order, onto the normal plane of ``g_j`` whenever
    ``g_i·g_j < 0``; the shared update is the *sum* of the projected gradients (Algorithm 1).

    The order comes from a CPU ``torch.Generator`` seeded with the trial seed, so a run is
    reproducible. Heads get the gradient of the plain sum of the losses.
    """

    name = "pcgrad"

    def __init__(self, tasks: Sequence[str], *, shared: Iterable[torch.Tensor] = (),
                 seed: int = 0, device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        self.generator = torch.Generator().manual_seed(self.seed)

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        return pcgrad_combine(grads, self.generator)


def pcgrad_project(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each task's gradient (row of the T×P ``grads``) with its conflicts projected away."""
    count = grads.shape[0]
    sq_norms = (grads * grads).sum(dim=1)
    projected = grads.clone()
    for i in range(count):
        for j in torch.randperm(count, generator=generator).tolist():
            if j == i or sq_norms[j] <= 0:
                continue
            dot = torch.dot(projected[i], grads[j])
            if dot < 0:
                projected[i] -= dot / sq_norms[j] * grads[j]
    return projected


def pcgrad_combine(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PCGrad's update: the sum of the projected task gradients."""
    return pcgrad_project(grads, generator).sum(dim=0)
