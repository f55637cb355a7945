"""Density matching (Fast AutoAugment, Lim et al. 2019): score a policy by a trained network's
losses on held-out samples augmented by it, without training under the policy.

Each held-out sample is augmented ``copies`` times (copy ``c`` draws as epoch ``c`` would, so
the copies differ and a re-run draws the same ones); every copy goes through the training
step's forward pass (``training.head_outputs``: each task's head on the view that feeds it, so
a task's own view is scored on that task alone and the shared view on the tasks it feeds), and
each task gives one loss per sample (``Task.sample_losses``). A copy's loss is the weighted sum
over tasks (the study's loss weights); a sample's is its lowest copy's, as Fast AutoAugment
takes the best of several augmented copies; a policy's is the mean over samples. Lower is
better: the policy's augmented samples look like what the network learned. Corpus metrics (mAP,
mIoU) have no per-sample value and take no part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from policysearch.augment import Policy
from policysearch.data.base import Sample
from policysearch.input_pipeline import BatchRequest, PreparedBatches
from policysearch.tasks import Task
from policysearch.training import head_outputs


@dataclass(frozen=True)
class DensityScore:
    """A policy's score: ``loss``, the mean over samples of each one's lowest weighted loss
    over its copies (lower is better), and ``lost``, the share of samples whose every copy lost
    a target the clean sample had (counted at the worst sample's loss)."""

    loss: float
    lost: float


def best_copies(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per sample, the lowest weighted loss over its copies; +inf where every copy lost a
    target.

    ``losses``: C×T×N, the loss of task t on copy c of sample n (NaN: no target); ``weights``:
    T. A task with no target in any copy of a sample (an unlabelled sample) adds nothing to that
    sample; a copy without a target that another copy of the sample has is not a valid copy
    (erasing a label never makes the best copy)."""
    if losses.dim() != 3 or losses.shape[1] != weights.numel():
        raise ValueError(f"expected C×T×N losses with T = {weights.numel()}, got "
                         f"{tuple(losses.shape)}")
    missing = torch.isnan(losses)
    labelled = (~missing).any(dim=0, keepdim=True)  # 1×T×N
    invalid = (missing & labelled).any(dim=1)  # C×N
    total = (torch.nan_to_num(losses, nan=0.0) * weights.view(1, -1, 1)).sum(dim=1)
    total = total.masked_fill(invalid, math.inf)
    return total.min(dim=0).values


def policy_score(best: torch.Tensor) -> DensityScore:
    """The score of a policy from ``best_copies``: the mean, a sample without a valid copy
    counted as the worst valid sample (+inf when none is valid)."""
    finite = torch.isfinite(best)
    lost = float((~finite).float().mean()) if best.numel() else 0.0
    if not bool(finite.any()):
        return DensityScore(loss=math.inf, lost=lost)
    filled = best.masked_fill(~finite, float(best[finite].max()))
    return DensityScore(loss=float(filled.mean()), lost=lost)


class DensityScorer:
    """A trained multi-task network scoring policies on held-out ``samples`` (see the module
    docstring). ``weights``: each task's loss weight (1 for a task left out); ``seed`` keys the
    copies' draws; ``batch_size`` samples go through the network at once."""

    def __init__(self, model: torch.nn.Module, tasks: Sequence[Task],
                 samples: Sequence[Sample], *, weights: Mapping[str, float], seed: int,
                 device: torch.device, copies: int = 5, batch_size: int = 64,
                 amp: bool = False):
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.model = model.eval()
        self.tasks = list(tasks)
        self.samples = samples
        self.weights = torch.tensor([float(weights.get(t.name, 1.0)) for t in self.tasks])
        self.seed = seed
        self.device = device
        self.copies = copies
        self.batch_size = batch_size
        self.amp = amp
        self._batches = PreparedBatches(samples, self.tasks)

    def losses(self, policy: Policy) -> torch.Tensor:
        """C×T×N: task t's loss on copy c of sample n under ``policy`` (its first epoch's
        phase), NaN where the copy has no target for the task."""
        phase = policy.at_epoch(0)
        key = phase.augmentation_key()
        n = len(self.samples)
        out = torch.full((self.copies, len(self.tasks), n), math.nan)
        chunks = [np.arange(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        with torch.no_grad():
            for copy in range(self.copies):
                for chunk in chunks:
                    request = BatchRequest(epoch=copy, indices=tuple(int(i) for i in chunk),
                                           seed=self.seed, phase=phase, key=key)
                    batch = self._batches.prepare(request)
                    outputs = head_outputs(self.model, self.tasks, batch, self.device, self.amp)
                    for t, task in enumerate(self.tasks):
                        values = task.sample_losses(*outputs[task.name])
                        out[copy, t, chunk[0]:chunk[-1] + 1] = values.detach().float().cpu()
        return out

    def score(self, policy: Policy) -> DensityScore:
        """``policy``'s density-matching score on the held-out samples."""
        return policy_score(best_copies(self.losses(policy), self.weights))
