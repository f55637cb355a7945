"""The multi-task network: one shared encoder, one head per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from policysearch.errors import UserError
from policysearch.models.encoders import make_encoder
from policysearch.tasks.base import Task


class MultiTaskNet(nn.Module):
    """Shared ``encoder`` (features fine→coarse) and ``heads`` keyed by task name.

    ``forward`` runs the encoder once and every head; ``features`` and ``head_forward`` let a
    training loop run the encoder once per distinct augmented view and each head on its view.
    """

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module]):
        super().__init__()
        reserved = dir(nn.ModuleDict())
        for name in heads:
            if not name or "." in name or name in reserved:
                raise UserError(f"task name {name!r} cannot name a network head (empty, "
                                "contains '.', or a reserved attribute)", field="tasks")
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))

    def features(self, images: Tensor) -> list[Tensor]:
        """Multi-scale encoder features of a B×3×H×W batch, fine→coarse."""
        return list(self.encoder(images))

    def head_forward(self, task_name: str, features: Sequence[Tensor]) -> Any:
        """The output of one task's head on precomputed features."""
        return self.heads[task_name](features)

    def forward(self, images: Tensor) -> dict[str, Any]:
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}


def build_network(tasks: Sequence[Task], encoder_name: str | nn.Module = "small",
                  weights: str | Path | None = None, **encoder_kw: Any) -> MultiTaskNet:
    """The network for ``tasks``: a registered encoder (or an encoder module with ``channels``
    and ``strides`` attributes) and each task's head."""
    if isinstance(encoder_name, nn.Module):
        encoder = encoder_name
    else:
        encoder = make_encoder(encoder_name, weights=weights, **encoder_kw)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"duplicate task names: {', '.join(names)}", field="tasks")
    channels, strides = tuple(encoder.channels), tuple(encoder.strides)
    heads = {t.name: t.make_head(channels, strides) for t in tasks}
    return MultiTaskNet(encoder, heads)
