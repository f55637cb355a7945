"""Shared encoders: ``forward(x) -> list[Tensor]`` of multi-scale features, fine→coarse.

Each encoder declares ``channels`` and ``strides`` (relative to the input) of the features it
returns. ``ENCODERS`` maps names to factories; ``make_encoder(name, weights)`` builds one (or any
``timm:<model>`` when timm is installed) and optionally loads a local state-dict file. Every
encoder starts randomly initialised: nothing here downloads anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from policysearch.errors import UserError

TIMM_PREFIX = "timm:"


class Encoder(nn.Module):
    """Base of the shared encoders: multi-scale features with declared channels and strides."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def weight_names(self, key: str) -> list[str]:
        """Names under which this encoder's state-dict entry ``key`` may appear in a weights
        file, best first (a wrapper maps its keys to the wrapped library's own names)."""
        return [key]


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


RESNET_DEPTHS = (18, 34, 50)


class ResNetEncoder(Encoder):
    """torchvision's ResNet trunk of ``depth`` 18, 34 or 50 (randomly initialised), returning
    layer1..layer4 at strides 4, 8, 16, 32 with channels (64, 128, 256, 512), four times that
    for the bottleneck ResNet-50. Parameter names are torchvision's, so a torchvision state
    dict of the same depth loads (its ``fc.*`` classifier is skipped)."""

    def __init__(self, depth: int = 18) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise UserError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth!r}",
                            field="encoder")
        from torchvision import models

        net = getattr(models, f"resnet{depth}")(weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4
        )
        expansion = type(net.layer1[0]).expansion  # 1 for BasicBlock, 4 for Bottleneck
        self.channels = tuple(width * expansion for width in (64, 128, 256, 512))
        self.strides = (4, 8, 16, 32)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c2, c3, c4, self.layer4(c4)]


class ResNet18Encoder(ResNetEncoder):
    """``ResNetEncoder(18)`` (the class name ``make_encoder("resnet18")`` has always built)."""

    def __init__(self) -> None:
        super().__init__(18)


def _block_stride(block: nn.Module) -> int:
    stride = 1
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            stride *= module.stride[0]
    return stride


class MobileNetV3Encoder(Encoder):
    """torchvision's MobileNetV3 ``features`` (randomly initialised), size ``small`` or
    ``large``. Each level is the output of the *last* block at its stride, i.e. of the block
    just before the next stride-2 block, and the stride-32 level is the final 1×1 convolution:

    - small: ``features[1, 3, 8, 12]``, channels (16, 24, 48, 576), strides (4, 8, 16, 32);
    - large: ``features[3, 6, 12, 16]``, channels (24, 40, 112, 960), strides (4, 8, 16, 32).

    The stride-2 stem output is not returned. Parameter names are torchvision's
    (``features.*``), so a torchvision state dict loads (its ``classifier.*`` is skipped).
    """

    def __init__(self, size: Literal["small", "large"] = "small") -> None:
        super().__init__()
        if size not in ("small", "large"):
            raise UserError(f"MobileNetV3 size must be 'small' or 'large', got {size!r}",
                            field="encoder")
        from torchvision import models

        net = getattr(models, f"mobilenet_v3_{size}")(weights=None)
        self.size = size
        self.features = net.features
        cumulative, levels = 1, []
        for index, block in enumerate(self.features):
            cumulative *= _block_stride(block)
            is_last = index == len(self.features) - 1
            if cumulative >= 4 and (is_last or _block_stride(self.features[index + 1]) > 1):
                levels.append((index, cumulative, block.out_channels))
        self.levels = tuple(index for index, _, _ in levels)
        self.strides = tuple(stride for _, stride, _ in levels)
        self.channels = tuple(int(channels) for _, _, channels in levels)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self.levels:
                features.append(x)
        return features


# Arguments of timm.create_model that would fetch or load weights behind load_weights' back.
_TIMM_REFUSED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                 "features_only")


class TimmEncoder(Encoder):
    """A timm model as ``timm.create_model(model_name, pretrained=False, features_only=True,
    **kw)``; channels and strides come from its ``feature_info``. Levels finer than
    ``min_stride`` (timm's stride-2 stem level, by default) are computed but not returned, so
    the heads work at stride 4 like with the other encoders.

    A state dict of the full timm model (``timm.create_model(model_name).state_dict()``) loads:
    the feature wrapper's names are mapped back to the model's and its head is skipped.
    """

    def __init__(self, model_name: str, min_stride: int = 4, **kw: Any) -> None:
        super().__init__()
        full_name = f"{TIMM_PREFIX}{model_name}"
        refused = [key for key in _TIMM_REFUSED if key in kw]
        if refused:
            raise UserError(f"encoder {full_name!r} does not take {', '.join(refused)}: "
                            "encoders start randomly initialised; pass a local weights file",
                            field="encoder")
        try:
            import timm
        except ImportError as err:
            raise UserError(f"encoder {full_name!r} needs timm: pip install "
                            "'policysearch[timm]'", field="encoder") from err
        if not model_name or not timm.is_model(model_name):
            raise UserError(f"unknown timm model {model_name!r} (see timm.list_models())",
                            field="encoder")
        try:
            self.body = timm.create_model(model_name, pretrained=False, features_only=True,
                                          **kw)
        except Exception as err:  # e.g. a model without features_only support, a bad kwarg
            raise UserError(f"cannot build encoder {full_name!r} ({_first_sentence(err)})",
                            field="encoder") from err
        self.model_name = model_name
        info = self.body.feature_info
        strides, channels = list(info.reduction()), list(info.channels())
        keep = [i for i, stride in enumerate(strides) if stride >= min_stride]
        self.levels = tuple(keep or [len(strides) - 1])
        self.strides = tuple(int(strides[i]) for i in self.levels)
        self.channels = tuple(int(channels[i]) for i in self.levels)
        # Some models (Swin, …) yield B×H×W×C maps, which timm's wrapper passes on as they are.
        output_fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last = str(getattr(output_fmt, "value", output_fmt)) == "NHWC"

    def forward(self, x: Tensor) -> list[Tensor]:
        features = list(self.body(x))
        features = [features[i] for i in self.levels]
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features

    def weight_names(self, key: str) -> list[str]:
        names = [key]
        name = key.removeprefix("body.")
        # FeatureGetterNet keeps the model under `model.`, FeatureHookNet under `body.`.
        inner = [name] + [name.removeprefix(p) for p in ("model.", "body.") if name.startswith(p)]
        for candidate in inner:
            names.append(candidate)
            # FeatureListNet flattens the model's top-level Sequentials: `stages.0` → `stages_0`.
            first, dot, rest = candidate.partition(".")
            for i, char in enumerate(first):
                if char == "_":
                    names.append(f"{first[:i]}.{first[i + 1:]}{dot}{rest}")
        return list(dict.fromkeys(names))


def _first_sentence(err: BaseException) -> str:
    line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {line.split('. ')[0]}"[:120]


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UserError(f"encoder weights file not found: {path}", source=str(path),
                        field="weights")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # corrupt, not a tensor file, or pickled code
        raise UserError("not a weights file that torch.load(weights_only=True) can read "
                        f"({_first_sentence(err)})", source=str(path), field="weights") from err
    # Training checkpoints keep the weights beside the optimizer state, epoch, …
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise UserError("not a state dict (expected a mapping of names to tensors)",
                        source=str(path), field="weights")
    # Prefixes added by DistributedDataParallel and torch.compile.
    tensors = {str(k).removeprefix("module.").removeprefix("_orig_mod."): v
               for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise UserError("not a state dict (it holds no tensors)", source=str(path),
                        field="weights")
    return tensors


def _listed(keys: list[str], limit: int = 3) -> str:
    more = f", … ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(encoder: nn.Module, weights: str | Path, *, label: str | None = None) -> None:
    """Load a local state-dict file (or a checkpoint holding one under ``state_dict`` or
    ``model``) into ``encoder``.

    Every encoder weight must be in the file with its shape (BatchNorm's
    ``num_batches_tracked`` counters may be absent). File entries under a top-level module the
    encoder lacks — a classifier head such as torchvision's ``fc.*``/``classifier.*`` or timm's
    ``head.*``/``conv_head.*`` — are skipped; any other extra entry is an error. ``label``
    names the encoder in error messages (default: its class name).
    """
    path = Path(weights).expanduser()
    state = _read_state_dict(path)
    own = encoder.state_dict()
    names = getattr(encoder, "weight_names", lambda key: [key])
    matched: dict[str, Tensor] = {}
    used: set[str] = set()
    roots: set[str] = set()
    missing, wrong_shape = [], []
    for key, value in own.items():
        candidates = names(key)
        roots.update(name.partition(".")[0] for name in candidates)
        found = next((name for name in candidates if name in state), None)
        if found is None:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        used.add(found)
        if state[found].shape != value.shape:
            wrong_shape.append(f"{key} {tuple(state[found].shape)} ≠ {tuple(value.shape)}")
        else:
            matched[key] = state[found]
    unexpected = [k for k in state if k not in used and k.partition(".")[0] in roots]
    problems = []
    if missing and not matched and not wrong_shape:
        problems.append(f"none of its {len(missing)} weights is in the file, e.g. "
                        f"{missing[0]}; another architecture?")
    elif missing:
        problems.append(f"missing {len(missing)} of {len(own)} weights: {_listed(missing)}")
    if wrong_shape:
        problems.append(f"shapes differ (file ≠ encoder): {_listed(wrong_shape)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if problems:
        raise UserError(f"does not fit encoder {label or type(encoder).__name__} "
                        f"({'; '.join(problems)})", source=str(path), field="weights")
    encoder.load_state_dict(matched, strict=False)


ENCODERS: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str, factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
    """Register an encoder factory (a class or function returning an ``Encoder``)."""
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"encoder names starting with {TIMM_PREFIX!r} are timm's")
    ENCODERS[name] = factory
    return factory


def make_encoder(name: str, weights: str | Path | None = None, **kw: Any) -> Encoder:
    """Build the encoder registered as ``name``, or ``timm:<model name>`` (``kw`` go to
    ``timm.create_model``); ``weights`` is an optional local state-dict file."""
    if name.startswith(TIMM_PREFIX):
        encoder: Encoder = TimmEncoder(name.removeprefix(TIMM_PREFIX), **kw)
    else:
        factory = ENCODERS.get(name)
        if factory is None:
            known = ", ".join(sorted(ENCODERS))
            raise UserError(f"unknown encoder {name!r}; known: {known}, or "
                            f"{TIMM_PREFIX}<model name> with timm installed", field="encoder")
        encoder = factory(**kw)
    if weights is not None:
        load_weights(encoder, weights, label=name)
    return encoder


register_encoder("small", SmallCNN)
register_encoder("resnet18", ResNet18Encoder)
for _depth in RESNET_DEPTHS[1:]:
    register_encoder(f"resnet{_depth}", functools.partial(ResNetEncoder, _depth))
for _size in ("small", "large"):
    register_encoder(f"mobilenet_v3_{_size}", functools.partial(MobileNetV3Encoder, _size))
