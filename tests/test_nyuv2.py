"""``nyuv2:PATH`` (policysearch.data.nyuv2): the MTAN/LibMTL .npy layout, its targets, the normals'
axes, splits, the checks of bad files and resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policysearch.data import LoadOptions, get_dataset
from policysearch.data.nyuv2 import CLASS_NAMES, IGNORE, axes_matrix, load, to_pixel_axes
from policysearch.errors import DataError, UserError

H, W = 24, 32


def _sample(seed: int) -> dict[str, np.ndarray]:
    """One sample as MTAN stores it: float image in [0, 1], float labels -1..12, H×W×1 depth
    (0 = missing), unit normals (zero = missing)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(-1, 13, (H, W)).astype(np.float32)
    depth = rng.uniform(0.5, 8.0, (H, W, 1)).astype(np.float32)
    depth[0, :3] = 0.0
    normal = rng.normal(size=(H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[1, :2] = 0.0
    return {"image": rng.uniform(0, 1, (H, W, 3)).astype(np.float32), "label": label,
            "depth": depth, "normal": normal}


def _write(root: Path, split: str, index: int, sample: dict[str, np.ndarray]) -> None:
    for kind, arr in sample.items():
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{index}.npy", arr)


@pytest.fixture
def nyu(tmp_path: Path) -> Path:
    root = tmp_path / "nyuv2"
    for i in range(6):
        _write(root, "train", i, _sample(i))
    for i in range(3):
        _write(root, "val", i, _sample(100 + i))
    return root


def _opts(**kwargs) -> LoadOptions:
    return LoadOptions.make(**kwargs)


def test_tasks_targets_and_dtypes(nyu: Path) -> None:
    ds = load(nyu, _opts())
    assert [(t.name, t.kind) for t in ds.tasks] == [
        ("seg", "segmentation"), ("depth", "depth"), ("normals", "normals")]
    seg = ds.tasks[0]
    assert seg.num_classes == 13 and seg.class_names == CLASS_NAMES and seg.ignore_index == 255
    assert CLASS_NAMES[4] == "floor" and CLASS_NAMES[11] == "wall"

    # val becomes test in file order, so test[0] is val/0.npy
    raw = _sample(100)
    sample = ds.split("test")[0]
    assert set(sample) == {"image", "mask", "depth", "normals"}
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (H, W, 3)
    np.testing.assert_array_equal(sample["image"],
                                  np.rint(raw["image"] * 255).astype(np.uint8))
    assert sample["mask"].dtype == np.int64 and sample["mask"].shape == (H, W)
    expected = raw["label"].astype(np.int64)
    expected[expected == -1] = IGNORE
    np.testing.assert_array_equal(sample["mask"], expected)
    assert set(np.unique(sample["mask"])) <= set(range(13)) | {IGNORE}
    assert sample["depth"].dtype == np.float32 and sample["depth"].shape == (H, W)
    np.testing.assert_array_equal(sample["depth"], raw["depth"][..., 0])
    assert (sample["depth"][0, :3] == 0).all()
    assert sample["normals"].dtype == np.float32 and sample["normals"].shape == (H, W, 3)
    # stored normals are already x right, y down, z towards the viewer: kept as they are
    np.testing.assert_allclose(sample["normals"], raw["normal"], atol=1e-6)
    assert (sample["normals"][1, :2] == 0).all()


def test_normals_conversion_on_a_known_field() -> None:
    # A floor seen from a camera at eye height: its normal points up in the picture and a
    # little towards the camera. Stored in a y-up frame it reads (0, +0.6, 0.8).
    field = np.zeros((4, 5, 3), dtype=np.float32)
    field[:2] = (0.0, 0.6, 0.8)          # floor
    field[2] = (-1.0, 0.0, 0.0)          # a wall facing left
    field[3, :2] = (0.0, 0.0, 2.0)       # facing the camera, not unit length
    field[3, 2:] = 0.0                   # missing
    out = to_pixel_axes(field, axes_matrix(("right", "up", "out")))
    np.testing.assert_allclose(out[:2], np.broadcast_to((0.0, -0.6, 0.8), (2, 5, 3)), atol=1e-6)
    np.testing.assert_allclose(out[2], np.broadcast_to((-1.0, 0.0, 0.0), (5, 3)), atol=1e-6)
    np.testing.assert_allclose(out[3, :2], np.broadcast_to((0.0, 0.0, 1.0), (2, 3)), atol=1e-6)
    assert (out[3, 2:] == 0).all()
    # channels may also come in another order (e.g. BGR-decoded z, y, x)
    swapped = to_pixel_axes(field[..., ::-1], axes_matrix(("out", "down", "right")))
    np.testing.assert_allclose(swapped[:2], np.broadcast_to((0.0, 0.6, 0.8), (2, 5, 3)),
                               atol=1e-6)


def test_normal_axes_option_of_load(nyu: Path) -> None:
    flipped = load(nyu, _opts(), normal_axes=("left", "up", "out")).split("test")[0]
    np.testing.assert_allclose(flipped["normals"][..., :2],
                               -_sample(100)["normal"][..., :2], atol=1e-6)
    with pytest.raises(UserError, match="normal_axes: .*right/left.*got \\('right', 'right'"):
        load(nyu, _opts(), normal_axes=("right", "right", "out"))


def test_splits_and_notes(nyu: Path) -> None:
    ds = load(nyu, _opts(val_fraction=0.34))
    sizes = {name: len(ds.split(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 2, "test": 3}
    assert any("val split is used as test" in n for n in ds.notes)
    assert any(n.startswith("val carved from train: 2 of 6") for n in ds.notes)
    assert ds.skipped == []
    # carving is deterministic and train/val are disjoint
    again = load(nyu, _opts(val_fraction=0.34))
    for split in ("train", "val"):
        for a, b in zip(ds.split(split), again.split(split), strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
    train_images = {s["image"].tobytes() for s in ds.split("train")}
    assert not train_images & {s["image"].tobytes() for s in ds.split("val")}


def test_indices_sorted_numerically_and_val_optional(tmp_path: Path) -> None:
    root = tmp_path / "nyu"
    for i in (10, 2, 1):
        _write(root, "train", i, _sample(i))
    ds = load(root, _opts(val_fraction=0.34))
    assert {r.index for s in ("train", "val", "test") for r in ds.split(s).records} == {
        "1", "2", "10"}
    assert any("test carved from train" in n for n in ds.notes)
    # limit takes samples in index order: 1 and 2, not 1 and 10
    limited = load(root, _opts(limit=2))
    assert {r.index for s in ("train", "val", "test") for r in limited.split(s).records} == {
        "1", "2"}


def _bad(nyu: Path, split: str, kind: str, index: int = 2) -> Path:
    return nyu / split / kind / f"{index}.npy"


@pytest.mark.parametrize(("break_it", "kind", "message"), [
    (lambda p: p.unlink(), "label",
     "file not found: the label of image 2 is missing"),
    (lambda p: p.unlink(), "normal",
     "file not found: the normal of image 2 is missing"),
    (lambda p: p.write_bytes(b"not numpy at all"), "depth", "not a readable .npy array"),
    (lambda p: p.write_bytes(b""), "image", "not a readable .npy array"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "normal", "not a readable .npy array"),
    (lambda p: np.save(p, np.zeros((H, W - 2), np.float32)), "label",
     "shape \\(24, 30\\) does not match its image 2.npy of shape \\(24, 32, 3\\)"),
    (lambda p: np.save(p, np.zeros((H, W, 3), np.float32)), "depth", "shape \\(24, 32, 3\\)"),
    (lambda p: np.save(p, np.zeros((H, W), np.float32)), "image",
     "an image must be H×W×3, got shape \\(24, 32\\)"),
    (lambda p: np.save(p, np.zeros((H, W, 3), np.uint8)), "image",
     "an image must hold floats in \\[0, 1\\], got dtype uint8"),
])
def test_bad_files_fail_up_front_naming_the_file(nyu: Path, break_it, kind: str,
                                                  message: str) -> None:
    path = _bad(nyu, "train", kind)
    break_it(path)
    with pytest.raises(DataError, match=message) as info:
        load(nyu, _opts())
    line = str(info.value)
    assert "\n" not in line and line.startswith(str(path) + ": ")
    assert info.value.source == str(path)


@pytest.mark.parametrize(("kind", "arr", "message"), [
    ("label", np.full((H, W), 13, np.float32), "labels must be whole numbers in -1..12 .*13"),
    ("label", np.full((H, W), 2.5, np.float32), "found 2.5"),
    ("image", np.full((H, W, 3), 255.0, np.float32),
     "image values must lie in \\[0, 1\\], found 255..255"),
    ("image", np.full((H, W, 3), -0.2, np.float32), "found -0.2"),
    ("depth", np.full((H, W, 1), -1.0, np.float32), "depth must be ≥ 0"),
    ("normal", np.full((H, W, 3), 5.0, np.float32), "normal components must lie in"),
])
def test_bad_values_fail_when_decoded_naming_the_file(nyu: Path, kind: str, arr: np.ndarray,
                                                       message: str) -> None:
    path = _bad(nyu, "val", kind, index=1)
    np.save(path, arr)
    ds = load(nyu, _opts())  # headers are fine: the up-front check passes
    ds.split("test")[0]
    with pytest.raises(DataError, match=message) as info:
        ds.split("test")[1]
    assert str(info.value).startswith(str(path) + ": ") and "\n" not in str(info.value)


def test_image_values_within_tolerance_are_clipped(nyu: Path) -> None:
    image = np.full((H, W, 3), 1.0005, np.float32)
    image[0, 0] = -0.0005
    np.save(_bad(nyu, "val", "image", index=0), image)
    sample = load(nyu, _opts()).split("test")[0]
    assert sample["image"][0, 0].tolist() == [0, 0, 0] and sample["image"][1, 1, 0] == 255


def test_skip_bad_samples(nyu: Path) -> None:
    _bad(nyu, "train", "depth", 1).unlink()
    _bad(nyu, "val", "label", 2).write_bytes(b"garbage")
    ds = load(nyu, _opts(skip_bad_samples=True, val_fraction=0.25))
    assert len(ds.split("train")) + len(ds.split("val")) == 5
    assert len(ds.split("test")) == 2
    assert len(ds.skipped) == 2
    assert any(s.startswith(str(_bad(nyu, "train", "depth", 1))) for s in ds.skipped)
    assert any("2 bad samples skipped" in n for n in ds.notes)
    for split in ("train", "val", "test"):
        for sample in ds.split(split):
            assert sample["image"].shape == (H, W, 3)


def test_images_of_differing_sizes_need_a_size(nyu: Path) -> None:
    other = _sample(7)
    other = {k: v[:20] for k, v in other.items()}
    _write(nyu, "train", 9, other)
    with pytest.raises(DataError, match="size 20×32 differs from the other images' 24×32"):
        load(nyu, _opts())
    ds = load(nyu, _opts(size=(12, 16)))
    assert {s["image"].shape for s in ds.split("train")} == {(12, 16, 3)}


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="NYUv2 folder not found") as info:
        load(tmp_path / "nowhere", _opts())
    assert info.value.source == str(tmp_path / "nowhere")
    (tmp_path / "empty" / "val" / "image").mkdir(parents=True)
    with pytest.raises(DataError, match="train/image/"):
        load(tmp_path / "empty", _opts())
    (tmp_path / "empty" / "train" / "image").mkdir(parents=True)
    with pytest.raises(DataError, match="no training samples found"):
        load(tmp_path / "empty", _opts())


def test_resize_keeps_targets_valid(nyu: Path) -> None:
    ds = load(nyu, _opts(size=16))
    for sample in ds.split("train"):
        assert sample["image"].shape == (16, 16, 3) and sample["image"].dtype == np.uint8
        assert sample["mask"].shape == (16, 16) and sample["mask"].dtype == np.int64
        assert set(np.unique(sample["mask"])) <= set(range(13)) | {IGNORE}
        assert sample["depth"].shape == (16, 16) and (sample["depth"] >= 0).all()
        length = np.linalg.norm(sample["normals"], axis=-1)
        valid = length > 0
        assert valid.mean() > 0.9
        np.testing.assert_allclose(length[valid], 1.0, atol=1e-5)


def test_get_dataset(nyu: Path) -> None:
    ds = get_dataset("nyuv2:" + str(nyu), size=16)
    assert ds.name == "nyuv2"
    assert [t.name for t in ds.tasks] == ["seg", "depth", "normals"]
    sample = ds.split("val")[0]
    assert sample["image"].shape == (16, 16, 3) and sample["normals"].shape == (16, 16, 3)
    assert len(ds.split("test")) == 3
