"""Encoders and the multi-task network."""

from __future__ import annotations

from policysearch.models.encoders import (
    ENCODERS,
    Encoder,
    MobileNetV3Encoder,
    ResNet18Encoder,
    ResNetEncoder,
    SmallCNN,
    TimmEncoder,
    load_weights,
    make_encoder,
    register_encoder,
)
from policysearch.models.network import MultiTaskNet, build_network

__all__ = [
    "ENCODERS",
    "Encoder",
    "MobileNetV3Encoder",
    "MultiTaskNet",
    "ResNet18Encoder",
    "ResNetEncoder",
    "SmallCNN",
    "TimmEncoder",
    "build_network",
    "load_weights",
    "make_encoder",
    "register_encoder",
]
