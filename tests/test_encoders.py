"""Shared encoders: declared levels, local torchvision/timm weights, errors, no downloads."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from policysearch.errors import UserError
from policysearch.models import ENCODERS, Encoder, MobileNetV3Encoder, make_encoder

SIZE = 64


def _has_timm() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch weights (or open a connection) fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an encoder tried to download weights")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", refuse,
                        raising=False)
    if _has_timm():
        monkeypatch.setattr("timm.models._builder.load_pretrained", refuse, raising=False)


def features_of(encoder: nn.Module) -> list[torch.Tensor]:
    encoder.eval()
    with torch.no_grad():
        return encoder(torch.randn(2, 3, SIZE, SIZE))


def check_levels(encoder: nn.Module) -> list[torch.Tensor]:
    feats = features_of(encoder)
    assert len(feats) == len(encoder.channels) == len(encoder.strides)
    for f, c, s in zip(feats, encoder.channels, encoder.strides, strict=True):
        assert f.shape == (2, c, SIZE // s, SIZE // s)
    return feats


def save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


TIMM_NAMES = ["timm:resnet18"] if _has_timm() else []


# The levels the docstrings promise (MobileNetV3: the last block at each stride).
DECLARED = {
    "small": ((32, 64, 64), (4, 8, 16)),
    "resnet18": ((64, 128, 256, 512), (4, 8, 16, 32)),
    "resnet34": ((64, 128, 256, 512), (4, 8, 16, 32)),
    "resnet50": ((256, 512, 1024, 2048), (4, 8, 16, 32)),
    "mobilenet_v3_small": ((16, 24, 48, 576), (4, 8, 16, 32)),
    "mobilenet_v3_large": ((24, 40, 112, 960), (4, 8, 16, 32)),
    "timm:resnet18": ((64, 128, 256, 512), (4, 8, 16, 32)),
}
MOBILENET_BLOCKS = {"mobilenet_v3_small": (1, 3, 8, 12), "mobilenet_v3_large": (3, 6, 12, 16)}


def test_builtin_encoders_are_registered() -> None:
    assert {"small", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small",
            "mobilenet_v3_large"} <= set(ENCODERS)


@pytest.mark.parametrize("name", sorted(ENCODERS) + TIMM_NAMES)
def test_every_encoder_yields_its_declared_levels(name: str, no_downloads: None) -> None:
    encoder = make_encoder(name)
    assert isinstance(encoder, Encoder)
    assert list(encoder.strides) == sorted(encoder.strides)  # fine→coarse
    if name in DECLARED:
        assert (encoder.channels, encoder.strides) == DECLARED[name]
    if name in MOBILENET_BLOCKS:
        assert isinstance(encoder, MobileNetV3Encoder)
        assert encoder.levels == MOBILENET_BLOCKS[name]
    check_levels(encoder)


@pytest.mark.parametrize("name", ["resnet34", "resnet50", "mobilenet_v3_small",
                                  "mobilenet_v3_large"])
def test_torchvision_state_dict_loads(name: str, tmp_path: Path) -> None:
    from torchvision import models

    reference = getattr(models, name)(weights=None).eval()  # with its classifier
    path = save(reference.state_dict(), tmp_path / f"{name}.pth")
    encoder = make_encoder(name, weights=path)
    ref_state = reference.state_dict()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        if name.startswith("mobilenet"):
            expected = reference.features(x)
        else:
            r = reference
            expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
        assert torch.allclose(encoder.eval()(x)[-1], expected)


def test_checkpoints_and_prefixed_state_dicts_load(tmp_path: Path) -> None:
    from torchvision.models import mobilenet_v3_small

    state = mobilenet_v3_small(weights=None).state_dict()
    probe = "features.4.block.1.0.weight"
    without_counters = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    for i, payload in enumerate([
        {"state_dict": state, "epoch": 3},  # a Lightning/timm-style checkpoint
        {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},  # torchvision references
        {f"module.{k}": v for k, v in state.items()},  # saved from DistributedDataParallel
        without_counters,
    ]):
        encoder = make_encoder("mobilenet_v3_small", weights=save(payload, tmp_path / f"{i}.pt"))
        assert torch.equal(encoder.state_dict()[probe], state[probe]), i


@pytest.fixture(scope="module")
def wrong_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from torchvision.models import mobilenet_v3_large, resnet18

    tmp_path = tmp_path_factory.mktemp("wrong")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    return {
        "missing": tmp_path / "absent.pth",
        "other architecture": save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth"),
        "other size": save(mobilenet_v3_large(weights=None).state_dict(), tmp_path / "mbl.pth"),
        "text": text,
        "no tensors": save({"epoch": 3, "note": "x"}, tmp_path / "meta.pth"),
        "a list": save([torch.zeros(2)], tmp_path / "list.pth"),
    }


@pytest.mark.parametrize("case", ["missing", "other architecture", "other size", "text",
                                  "no tensors", "a list"])
def test_unfit_weights_are_one_line_user_errors(case: str,
                                                wrong_files: dict[str, Path]) -> None:
    path = wrong_files[case]
    with pytest.raises(UserError) as info:
        make_encoder("mobilenet_v3_small", weights=path)
    assert info.value.source == str(path) and info.value.field == "weights"
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_deeper_resnet_state_dict_does_not_load_into_a_shallower_one(tmp_path: Path) -> None:
    from torchvision.models import resnet34

    path = save(resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(UserError, match=r"resnet34\.pth.*unexpected layer1\.2\."):
        make_encoder("resnet18", weights=path)
    with pytest.raises(UserError, match=r"resnet34\.pth.*shapes differ"):
        make_encoder("resnet50", weights=path)


def test_unknown_encoder_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as info:
        make_encoder("vgg11")
    message = str(info.value)
    assert info.value.field == "encoder" and "'vgg11'" in message
    for name in ENCODERS:
        assert name in message
    assert "timm:" in message


def test_timm_missing_is_a_user_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'policysearch\[timm\]'"):
        make_encoder("timm:resnet18")


@pytest.fixture
def timm_module() -> Any:
    # The `timm` extra, which scripts/setup.sh always installs: imported, never skipped, so
    # that a set-up without it fails here (tests/conftest.py fails a skip in CI anyway).
    import timm

    return timm


def test_timm_resnet18_levels_follow_feature_info(timm_module: Any) -> None:
    every = make_encoder("timm:resnet18", min_stride=1)
    info = every.body.feature_info
    assert every.channels == tuple(info.channels()) == (64, 64, 128, 256, 512)
    assert every.strides == tuple(info.reduction()) == (2, 4, 8, 16, 32)
    check_levels(every)
    default = make_encoder("timm:resnet18")  # the stride-2 stem level left out
    assert default.channels == (64, 128, 256, 512) and default.strides == (4, 8, 16, 32)


# resnet18: same names; convnext_atto: Sequentials flattened (`stages.0` → `stages_0`);
# mobilenetv3_small_050: its own feature class, a head of conv_head + classifier.
@pytest.mark.parametrize("model_name", ["resnet18", "convnext_atto", "mobilenetv3_small_050"])
def test_timm_model_state_dict_loads_into_the_features_model(
        model_name: str, tmp_path: Path, timm_module: Any, no_downloads: None) -> None:
    full = timm_module.create_model(model_name, pretrained=False).eval()
    path = save(full.state_dict(), tmp_path / f"{model_name}.pth")  # head included
    encoder = make_encoder(f"timm:{model_name}", weights=path).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = full.forward_features(x)
        assert torch.allclose(encoder(x)[-1], expected, atol=1e-5)


def test_timm_rejects_other_weights_and_names(tmp_path: Path, timm_module: Any) -> None:
    from torchvision.models import mobilenet_v3_small

    path = save(mobilenet_v3_small(weights=None).state_dict(), tmp_path / "mbs.pth")
    with pytest.raises(UserError, match=r"mbs\.pth.*another architecture"):
        make_encoder("timm:resnet18", weights=path)
    with pytest.raises(UserError, match="no_such_net") as info:
        make_encoder("timm:no_such_net")
    assert info.value.field == "encoder"
    with pytest.raises(UserError, match="pretrained"):
        make_encoder("timm:resnet18", pretrained=True)


def test_a_network_trains_on_a_timm_encoder(timm_module: Any) -> None:
    from policysearch.data.base import TaskSpec
    from policysearch.models import build_network
    from policysearch.tasks import make_task

    tasks = [make_task(TaskSpec("seg", "segmentation", num_classes=3))]
    net = build_network(tasks, "timm:resnet18")
    out = net(torch.randn(2, 3, SIZE, SIZE))["seg"]
    assert out.shape == (2, 3, SIZE, SIZE)
    out.mean().backward()
    grad = net.encoder.body.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_timm_channels_last_features_come_back_channels_first(timm_module: Any) -> None:
    encoder = make_encoder("timm:mambaout_femto")  # its stages yield B×H×W×C maps
    assert encoder.channels_last
    check_levels(encoder)
