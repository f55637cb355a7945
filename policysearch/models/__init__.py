"""Encoders and the multi-task network."""

from __future__ import annotations

from policysearch.models.encoders import (
    ENCODERS,
    Encoder,
    ResNet18Encoder,
    SmallCNN,
    make_encoder,
    register_encoder,
)
from policysearch.models.network import MultiTaskNet, build_network

__all__ = [
    "ENCODERS",
    "Encoder",
    "MultiTaskNet",
    "ResNet18Encoder",
    "SmallCNN",
    "build_network",
    "make_encoder",
    "register_encoder",
]
