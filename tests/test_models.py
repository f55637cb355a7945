"""Encoders and the multi-task network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from policysearch.data.base import TaskSpec
from policysearch.errors import UserError
from policysearch.models import (
    ENCODERS,
    MultiTaskNet,
    ResNet18Encoder,
    SmallCNN,
    build_network,
    make_encoder,
)
from policysearch.tasks import make_task

SPECS = (
    TaskSpec("shape", "classification", num_classes=4),
    TaskSpec("seg", "segmentation", num_classes=4),
    TaskSpec("objects", "detection", num_classes=4),
    TaskSpec("depth", "depth"),
)


def check_features(encoder: nn.Module, size: int = 64) -> None:
    feats = encoder(torch.randn(2, 3, size, size))
    assert len(feats) == len(encoder.channels) == len(encoder.strides)
    for f, c, s in zip(feats, encoder.channels, encoder.strides, strict=True):
        assert f.shape == (2, c, size // s, size // s)


def test_registry() -> None:
    assert {"small", "resnet18"} <= set(ENCODERS)
    with pytest.raises(UserError) as info:
        make_encoder("vit-huge")
    assert info.value.field == "encoder" and "vit-huge" in str(info.value)


def test_small_cnn_shapes() -> None:
    enc = make_encoder("small")
    assert isinstance(enc, SmallCNN)
    assert enc.strides == (4, 8, 16) and enc.channels == (32, 64, 64)
    check_features(enc)
    wide = make_encoder("small", width=8)
    assert wide.channels == (16, 32, 32)
    check_features(wide)


def test_resnet18_shapes() -> None:
    enc = make_encoder("resnet18")
    assert enc.strides == (4, 8, 16, 32) and enc.channels == (64, 128, 256, 512)
    check_features(enc)


def test_resnet18_loads_a_local_torchvision_state_dict(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    reference = resnet18(weights=None)  # with its fc.* classifier, as torchvision saves it
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    enc = make_encoder("resnet18", weights=str(path))
    assert isinstance(enc, ResNet18Encoder)
    assert torch.equal(enc.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(enc.conv1.weight, reference.conv1.weight)


def test_missing_or_unfit_weights_are_user_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="nope.pth"):
        make_encoder("resnet18", weights=missing)
    small = tmp_path / "small.pth"
    torch.save(SmallCNN().state_dict(), small)
    with pytest.raises(UserError, match="small.pth"):
        make_encoder("resnet18", weights=small)
    enc = make_encoder("small", weights=small)  # its own state dict loads
    assert isinstance(enc, SmallCNN)


def test_network_forward_features_and_heads() -> None:
    tasks = [make_task(s) for s in SPECS]
    net = build_network(tasks)
    net.eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = net(images)
        feats = net.features(images)
        seg_again = net.head_forward("seg", feats)
    assert set(out) == {"shape", "seg", "objects", "depth"}
    assert out["shape"].shape == (3, 4)
    assert out["seg"].shape == (3, 4, 64, 64)
    assert out["objects"]["heatmap"].shape == (3, 4, 16, 16)
    assert out["depth"].shape == (3, 1, 64, 64) and (out["depth"] > 0).all()
    assert torch.equal(seg_again, out["seg"])


def test_four_task_network_is_small() -> None:
    net = build_network([make_task(s) for s in SPECS])
    n = sum(p.numel() for p in net.parameters())
    assert 150_000 <= n <= 300_000, n


def test_network_with_resnet18_and_custom_encoder() -> None:
    tasks = [make_task(s) for s in SPECS]
    out = build_network(tasks, "resnet18")(torch.randn(2, 3, 64, 64))
    assert out["seg"].shape == (2, 4, 64, 64) and out["objects"]["size"].shape == (2, 2, 16, 16)

    class Coarse(nn.Module):  # a user's encoder: finest stride 8
        channels = (8, 16)
        strides = (8, 16)

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=8, padding=1)
            self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            a = self.a(x)
            return [a, self.b(a)]

    out = build_network(tasks, Coarse())(torch.randn(2, 3, 64, 64))
    assert out["seg"].shape == (2, 4, 64, 64) and out["depth"].shape == (2, 1, 64, 64)
    assert out["objects"]["heatmap"].shape == (2, 4, 16, 16)  # neck upsampled to stride 4


def test_bad_task_names_are_user_errors() -> None:
    with pytest.raises(UserError):
        build_network([make_task(SPECS[0]), make_task(SPECS[0])])
    with pytest.raises(UserError):
        build_network([make_task(TaskSpec("train", "classification", num_classes=2))])
    with pytest.raises(UserError):
        MultiTaskNet(SmallCNN(), {"a.b": nn.Identity()})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_network_and_losses_on_gpu() -> None:
    import numpy as np

    tasks = [make_task(s) for s in SPECS]
    net = build_network(tasks).to("cuda")
    rng = np.random.default_rng(0)
    samples = [{"image": np.zeros((64, 64, 3), np.uint8), "label": 1,
                "mask": rng.integers(0, 4, (64, 64)), "depth": np.ones((64, 64), np.float32),
                "boxes": np.array([[4, 4, 30, 40]], np.float32), "box_labels": np.array([2])}
               for _ in range(2)]
    out = net(torch.randn(2, 3, 64, 64, device="cuda"))
    for task in tasks:
        targets = task.to_device(task.collate(samples), "cuda")
        loss = task.loss(out[task.name], targets)
        assert loss.device.type == "cuda" and torch.isfinite(loss)
        ev = task.evaluator()
        ev.update(out[task.name], targets)
        assert all(np.isfinite(v) for v in ev.compute().values())
