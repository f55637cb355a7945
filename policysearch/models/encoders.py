"""Shared encoders: ``forward(x) -> list[Tensor]`` of multi-scale features, fine→coarse.

Each encoder declares ``channels`` and ``strides`` (relative to the input) of the features it
returns. ``ENCODERS`` maps names to factories; ``make_encoder(name, weights)`` builds one and
optionally loads a local state-dict file. Nothing here downloads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from policysearch.errors import UserError


class Encoder(nn.Module):
    """Base of the shared encoders: multi-scale features with declared channels and strides."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(Encoder):
    """A tiny CNN that trains fast on a CPU: stem (stride 2), then three stages of two 3×3
    convolutions, the first with stride 2; widths ``w, 2w, 4w, 4w`` at strides 2, 4, 8, 16.

    Returns the features at strides (4, 8, 16) with channels (2w, 4w, 4w).
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stem = _conv_bn_relu(3, w, stride=2)
        widths = (w, 2 * w, 4 * w, 4 * w)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(cin, cout, stride=2), _conv_bn_relu(cout, cout))
            for cin, cout in zip(widths[:-1], widths[1:], strict=True)
        )
        self.channels = widths[1:]
        self.strides = (4, 8, 16)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResNet18Encoder(Encoder):
    """torchvision's ResNet-18 trunk (randomly initialised) returning layer1..layer4, strides
    4, 8, 16, 32. Its parameter names match torchvision's, so a torchvision ``resnet18``
    state dict loads into it (the ``fc.*`` entries are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.channels = (64, 128, 256, 512)
        self.strides = (4, 8, 16, 32)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c2, c3, c4, self.layer4(c4)]


def load_weights(encoder: nn.Module, weights: str | Path) -> None:
    """Load a local state-dict file into ``encoder`` (classifier ``fc.*`` entries ignored)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"encoder weights file not found: {path}", source=str(path),
                        field="weights")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # corrupt or not a tensor file
        raise UserError(f"cannot read encoder weights: {err}", source=str(path),
                        field="weights") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError("not a state dict", source=str(path), field="weights")
    own = encoder.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in own or not k.startswith("fc.")}
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise UserError(f"state dict does not fit the encoder: {str(err).splitlines()[-1]}",
                        source=str(path), field="weights") from err
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise UserError(f"state dict does not fit the encoder ({'; '.join(problems)})",
                        source=str(path), field="weights")


ENCODERS: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str, factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
    """Register an encoder factory (a class or function returning an ``Encoder``)."""
    ENCODERS[name] = factory
    return factory


def make_encoder(name: str, weights: str | Path | None = None, **kw: Any) -> Encoder:
    """Build the encoder registered as ``name``; ``weights`` is an optional local state dict."""
    factory = ENCODERS.get(name)
    if factory is None:
        known = ", ".join(sorted(ENCODERS))
        raise UserError(f"unknown encoder {name!r}; known: {known}", field="encoder")
    encoder = factory(**kw)
    if weights is not None:
        load_weights(encoder, weights)
    return encoder


register_encoder("small", SmallCNN)
register_encoder("resnet18", ResNet18Encoder)
