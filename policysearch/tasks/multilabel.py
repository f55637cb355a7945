"""Multi-label attributes (CelebA-style): pooled coarsest feature → MLP → K logits; masked BCE.

The target is a K-vector per sample: 1 present, 0 absent, -1 unknown. Unknown entries, and every
entry of a sample without the target, count in neither the loss nor any metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_average_precision,
    binary_f1_score,
)

from policysearch.data.base import Sample
from policysearch.errors import DataError
from policysearch.tasks.base import MetricInfo, as_tensor, per_sample_mean, register_task_kind
from policysearch.tasks.classification import PooledTask

UNKNOWN = -1  # target entry without a label; ignored by loss and metrics


class MultilabelEvaluator:
    """Per-attribute accuracy, F1 and average precision over the known entries of a split.

    Probabilities and targets of the labelled samples are kept until ``compute`` (N×K floats:
    under 4 MB for CelebA's 20k validation images × 40 attributes), because average precision
    needs every score and a macro mean must skip attributes without known entries.

    - ``mean_acc``: accuracy at probability 0.5 per attribute, averaged over the attributes with
      at least one known entry (CelebA's convention).
    - ``macro_f1``: F1 per attribute over the same attributes; an attribute with no known
      positive and none predicted has every known entry right and scores 1 (sklearn's
      ``zero_division=1``), not 0.
    - ``map``: average precision (step-wise, as sklearn) averaged over the attributes with at
      least one known positive (AP is undefined without one).
    """

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.probs: list[Tensor] = []
        self.targets: list[Tensor] = []

    def update(self, output: Tensor, targets: Tensor) -> None:
        targets = targets.detach().cpu().long()
        labelled = (targets != UNKNOWN).any(dim=1)
        if labelled.any():
            probs = torch.sigmoid(output.detach().float()).cpu()
            self.probs.append(probs[labelled])
            self.targets.append(targets[labelled])

    def compute(self) -> dict[str, float]:
        if not self.probs:
            return {"mean_acc": 0.0, "macro_f1": 0.0, "map": 0.0}
        probs, targets = torch.cat(self.probs), torch.cat(self.targets)
        acc, f1, ap = [], [], []
        for k in range(self.num_labels):
            p, t = probs[:, k], targets[:, k]
            known = t != UNKNOWN
            if not known.any():
                continue
            p, t = p[known], t[known]
            acc.append(float(binary_accuracy(p, t)))
            f1.append(float(binary_f1_score(p, t, zero_division=1)))
            if (t == 1).any():
                ap.append(float(binary_average_precision(p, t)))
        return {"mean_acc": _mean(acc), "macro_f1": _mean(f1), "map": _mean(ap)}


def _mean(values: list[float]) -> float:
    # No attribute qualifies: 0 (Δm% then leaves the reference out with a warning), never NaN.
    return sum(values) / len(values) if values else 0.0


class MultilabelTask(PooledTask):
    """K binary attributes per image; ``spec.num_classes`` is K.

    Primary metrics (Δm%): ``mean_acc`` and ``map``. ``mean_acc`` is the number CelebA
    multi-task papers report, so results compare with the literature; but on imbalanced
    attributes it rewards predicting the majority and it moves only when a score crosses 0.5.
    ``map`` is threshold-free and weighs rare attributes as much as common ones, so together they
    see both the decisions and the ranking. ``macro_f1`` is reported but not primary: it too
    depends on the 0.5 threshold, and on rare attributes it jumps between 0 and 1, which would
    add noise rather than information to Δm%.
    """

    kind = "multilabel"
    metrics = (
        MetricInfo("mean_acc", higher_is_better=True, primary=True),
        MetricInfo("macro_f1", higher_is_better=True, primary=False),
        MetricInfo("map", higher_is_better=True, primary=True),
    )
    min_classes = 1

    @property
    def num_labels(self) -> int:
        """K, the number of attributes (``num_classes``)."""
        return self.num_classes

    def collate(self, samples: Sequence[Sample]) -> Tensor:
        """B×K float32 in {1, 0, -1}; a sample without the target is all -1 (unknown)."""
        key = self.spec.target_key()
        rows = []
        for s in samples:
            v = s.get(key)
            rows.append(torch.full((self.num_labels,), float(UNKNOWN)) if v is None
                        else self._check(as_tensor(v, torch.float32).reshape(-1), key))
        return torch.stack(rows)

    def _check(self, row: Tensor, key: str) -> Tensor:
        if row.numel() != self.num_labels:
            raise DataError(f"task {self.name!r}: {row.numel()} attributes, expected "
                            f"{self.num_labels}", field=key)
        if not ((row == 1) | (row == 0) | (row == UNKNOWN)).all():
            raise DataError(f"task {self.name!r}: attribute values must be 1 (present), "
                            "0 (absent) or -1 (unknown)", field=key)
        return row

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        """Binary cross-entropy with logits, mean over the known entries of the batch."""
        known = targets != UNKNOWN
        if not known.any():
            return output.sum() * 0.0  # keeps the graph for weightings that need it
        return F.binary_cross_entropy_with_logits(output[known], targets[known].to(output.dtype))

    def has_target(self, targets: Tensor) -> bool:
        return bool((targets != UNKNOWN).any())

    def sample_losses(self, output: Tensor, targets: Tensor) -> Tensor:
        """Binary cross-entropy per sample, mean over its known entries; NaN where it has none."""
        entries = F.binary_cross_entropy_with_logits(output.float(), targets.float(),
                                                     reduction="none")
        return per_sample_mean(entries, targets != UNKNOWN)

    def evaluator(self) -> MultilabelEvaluator:
        return MultilabelEvaluator(self.num_labels)


register_task_kind(MultilabelTask)
