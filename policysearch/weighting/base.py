"""The interface every loss-weighting method implements.

A weighting owns the backward pass: gradient methods (GradNorm, PCGrad, CAGrad) need per-task
gradients of the shared parameters, so turning losses into gradients is its job rather than the
training loop's. What ``run_trial`` does with one, in order:

1. ``make_weighting(method, tasks, weights, params, shared=encoder parameters, seed=trial
   seed, device=…)``;
2. adds ``parameters()`` (learnable, e.g. uncertainty's log-variances) to its optimizer, in a
   group without weight decay;
3. every step: ``optimizer.zero_grad()``, ``backward(losses)``, ``optimizer.step()``;
4. after every epoch: ``end_epoch(epoch, mean loss per task)``;
5. ``weights()`` for logs and for ``TrialResult.weights``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import torch


class Weighting(ABC):
    """Combines per-task losses into parameter gradients.

    ``shared``: the shared (encoder) parameters, which gradient methods treat per task;
    task-specific (head) parameters always get the ordinary gradients of the weighted sum.
    ``seed`` seeds any randomness (same seed, same numbers on the CPU). ``device``: where
    learnable weighting tensors live (default: that of ``shared``, else the CPU).
    """

    name: ClassVar[str]

    def __init__(self, tasks: Sequence[str], *, shared: Iterable[torch.Tensor] = (),
                 seed: int = 0, device: torch.device | str | None = None):
        self.tasks = list(tasks)
        self.shared = [p for p in shared if p.requires_grad]
        self.seed = int(seed)
        if device is None:
            device = self.shared[0].device if self.shared else "cpu"
        self.device = torch.device(device)

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """The current weight of each task (for logs and results)."""

    def parameters(self) -> list[torch.Tensor]:
        """Learnable tensors the training loop adds to its optimizer (none by default)."""
        return []

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        """Called after each training epoch with the epoch's mean (unweighted) loss per task."""
        return None

    def backward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Backpropagate the combined loss; returns it (detached) for logging.

        A non-finite loss is returned without a backward pass: the caller stops the trial.
        """
        w = self.weights()
        total = torch.stack([w[t] * losses[t] for t in self.tasks]).sum()
        if torch.isfinite(total):
            total.backward()
        return total.detach()

    def _stack(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The losses as one vector in the order of ``self.tasks``."""
        return torch.stack([losses[t] for t in self.tasks])
