"""The data layer shared by every file format: readers, resizing, lazy splits, carving, the
dataset registry and the image-size options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from policysearch.cli import parse_image_size
from policysearch.config import Budget
from policysearch.data import FORMATS, get_dataset, register_format
from policysearch.data.base import TaskSpec
from policysearch.data.files import (
    image_size_of,
    list_images,
    read_depth,
    read_image,
    read_json,
    read_mask,
    read_npy,
)
from policysearch.data.resize import resize_sample
from policysearch.data.splits import FileDataset, LazySplit, LoadOptions, assemble, carve
from policysearch.errors import DataError, UserError

# --- readers -----------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_read_image_converts_to_rgb_uint8(tmp_path: Path) -> None:
    grey = _png(tmp_path / "g.png", np.full((5, 7), 9, np.uint8))
    rgba = _png(tmp_path / "a.png", np.full((5, 7, 4), 200, np.uint8))
    for path in (grey, rgba):
        img = read_image(path)
        assert img.shape == (5, 7, 3) and img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
    assert image_size_of(grey) == (5, 7)


def test_read_mask_keeps_palette_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    img = Image.fromarray(indices, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    img.save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, indices)
    _png(tmp_path / "rgb.png", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match=r"rgb\.png: a mask must be a single-channel image"):
        read_mask(tmp_path / "rgb.png")


def test_read_depth_from_16_bit_png_and_npy(tmp_path: Path) -> None:
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    Image.fromarray(mm).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_depth(tmp_path / "d.png", scale=0.001),
                               [[0.0, 1.0], [2.5, 65.535]], rtol=1e-6)
    np.save(tmp_path / "d.npy", np.ones((2, 3, 1), np.float64))
    depth = read_depth(tmp_path / "d.npy")
    assert depth.shape == (2, 3) and depth.dtype == np.float32
    np.save(tmp_path / "bad.npy", np.ones((2, 3, 2)))
    with pytest.raises(DataError, match=r"bad\.npy: depth must be H×W"):
        read_depth(tmp_path / "bad.npy")


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^.*nope\.png: file not found$"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.png: not an image file"):
        read_image(tmp_path / "text.png")
    good = _png(tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                         dtype=np.uint8))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.png: corrupt image"):
        read_image(truncated)
    (tmp_path / "a.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"a\.json: line 2: invalid JSON"):
        read_json(tmp_path / "a.json")
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"pickle\.npy: not a readable \.npy array"):
        read_npy(tmp_path / "pickle.npy")
    with pytest.raises(DataError, match="folder not found"):
        list_images(tmp_path / "missing")


# --- resizing ----------------------------------------------------------------------------------


def _sample() -> dict:
    image = np.zeros((20, 40, 3), np.uint8)
    mask = np.zeros((20, 40), np.int64)
    mask[5:15, 10:30] = 3
    mask[0, 0] = 255
    image[mask == 3] = 200
    normals = np.zeros((20, 40, 3), np.float32)
    normals[..., 2] = 1.0
    inst = (mask == 3)[None].astype(np.uint8)
    return {"image": image, "mask": mask, "depth": np.where(mask == 3, 2.0, 0.0).astype(np.float32),
            "normals": normals, "boxes": np.array([[10, 5, 30, 15], [0, 0, 1, 1]], np.float32),
            "box_labels": np.array([4, 5]), "instance_masks": np.concatenate([inst, inst * 0]),
            "label": 7}


def test_resize_moves_every_target_and_keeps_labels_unblended() -> None:
    out = resize_sample(_sample(), (10, 20))
    assert out["image"].shape == (10, 20, 3) and out["label"] == 7
    assert out["mask"].dtype == np.int64 and set(np.unique(out["mask"])) <= {0, 3, 255}
    np.testing.assert_array_equal(out["depth"] == 2.0, out["mask"] == 3)
    assert set(np.unique(out["depth"])) == {0.0, 2.0}  # invalid stays invalid, never blended
    np.testing.assert_array_equal(out["normals"][..., 2], 1.0)
    # The 1×1 box shrinks under 1 px: dropped with its label and instance mask.
    np.testing.assert_allclose(out["boxes"], [[5, 2.5, 15, 7.5]])
    assert out["box_labels"].tolist() == [4]
    assert out["instance_masks"].shape == (1, 10, 20)
    np.testing.assert_array_equal(out["instance_masks"][0] == 1, out["mask"] == 3)


def test_resize_to_the_same_size_is_a_copy_of_the_dict() -> None:
    sample = _sample()
    out = resize_sample(sample, (20, 40))
    assert out is not sample and out["image"] is sample["image"]


# --- splits ------------------------------------------------------------------------------------


def test_carve_is_deterministic_disjoint_and_complete() -> None:
    rest, carved = carve(50, 0.2, seed=3)
    assert len(carved) == 10 and len(rest) == 40
    assert sorted([*rest, *carved]) == list(range(50))
    again = carve(50, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], carved)
    assert not np.array_equal(carve(50, 0.2, seed=4)[1], carved)
    assert len(carve(2, 0.01, 0)[1]) == 1 and len(carve(1, 0.5, 0)[1]) == 0


def _records_dataset(records: dict, options: LoadOptions, bad: set[int] = frozenset()
                     ) -> FileDataset:
    def check(r: int) -> None:
        if r in bad:
            raise DataError("broken", source=f"img{r}.png")

    def load(r: int) -> dict:
        return {"image": np.full((8, 6, 3), r, np.uint8), "label": r % 2}

    return assemble("toy", [TaskSpec("c", "classification", num_classes=2)], records, load, check,
                    options, source="toy/")


def test_assemble_uses_val_as_test_and_carves_val_from_train() -> None:
    ds = _records_dataset({"train": list(range(20)), "val": [100, 101]},
                          LoadOptions(val_fraction=0.25, seed=1))
    assert [s["image"][0, 0, 0] for s in ds.split("test")] == [100, 101]
    train = {int(s["image"][0, 0, 0]) for s in ds.split("train")}
    val = {int(s["image"][0, 0, 0]) for s in ds.split("val")}
    assert len(val) == 5 and not train & val and train | val == set(range(20))
    assert ds.notes[0] == "no labelled test split: the given val split is used as test"
    assert ds.notes[1].startswith("val carved from train: 5 of 20 samples (25%, seed 1")


def test_assemble_with_train_only_carves_test_then_val() -> None:
    ds = _records_dataset({"train": list(range(40))}, LoadOptions(val_fraction=0.1))
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 32, "val": 4, "test": 4}
    assert [n.split(":")[0] for n in ds.notes] == ["test carved from train",
                                                   "val carved from train"]


def test_bad_records_stop_or_are_skipped_and_counted() -> None:
    records = {"train": list(range(10)), "val": [20, 21], "test": [30]}
    with pytest.raises(DataError, match=r"^img3\.png: broken$"):
        _records_dataset(records, LoadOptions(), bad={3})
    ds = _records_dataset(records, LoadOptions(skip_bad_samples=True), bad={3, 21})
    assert len(ds.split("train")) == 9 and len(ds.split("val")) == 1
    assert ds.skipped == ["img3.png: broken", "img21.png: broken"]
    assert ds.notes == ["2 bad samples skipped (--skip-bad-samples)"]


def test_lazy_split_resizes_caches_and_protects_its_samples() -> None:
    calls = []

    def load(r: int) -> dict:
        calls.append(r)
        return {"image": np.full((8, 6, 3), r, np.uint8), "mask": np.zeros((8, 6), np.int64)}

    split = LazySplit([1, 2, 3], load, size=(4, 3))
    first = split[0]
    assert first["image"].shape == (4, 3, 3) and first["mask"].shape == (4, 3)
    assert not first["image"].flags.writeable
    first["extra"] = 1  # a caller's own dict: the cache is not affected
    assert "extra" not in split[0] and calls == [1]
    assert [s["image"][0, 0, 0] for s in split[1:]] == [2, 3] and split[-1]["image"][0, 0, 0] == 3
    with pytest.raises(IndexError):
        split[3]
    tiny = LazySplit([1, 2], load, cache_bytes=0)
    tiny[0], tiny[0]
    assert calls[-2:] == [1, 1]  # no room in the cache: decoded again


def test_load_options_refuse_unknown_keys_and_bad_fractions() -> None:
    assert LoadOptions.make(size=32).size == (32, 32)
    with pytest.raises(UserError, match="unknown dataset option 'sise'"):
        LoadOptions.make(sise=32)
    with pytest.raises(UserError, match="dataset_options.val_fraction: must be between 0 and 1"):
        LoadOptions.make(val_fraction=1.0)


# --- the registry ------------------------------------------------------------------------------


def test_dataset_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="unknown dataset format 'cocoa'; known: attributes:PATH"):
        get_dataset("cocoa:/x")
    with pytest.raises(UserError, match="coco: needs a path"):
        get_dataset("coco:")
    with pytest.raises(UserError,
                       match="unknown dataset 'shape'; known: multidigits, scenes, shapes"):
        get_dataset("shape")
    seen = {}

    def loader(path: Path, options: LoadOptions) -> str:
        seen.update(path=path, options=options)
        return "loaded"

    monkeypatch.setitem(FORMATS, "toy", FORMATS.get("toy", loader))
    register_format("toy", loader)
    assert get_dataset(f"toy:{tmp_path}", size=[24, 32], seed=5) == "loaded"
    assert seen["path"] == tmp_path and seen["options"].size == (24, 32)
    assert seen["options"].seed == 5


# --- image size options ------------------------------------------------------------------------


def test_image_size_is_one_side_or_height_and_width() -> None:
    assert parse_image_size("64") == 64 and parse_image_size("288x384") == (288, 384)
    assert parse_image_size("288×384") == (288, 384) and parse_image_size(None) is None
    for bad in ("x", "1x2x3", "big"):
        with pytest.raises(UserError, match="--image-size: expected S or HxW"):
            parse_image_size(bad)
    assert Budget(image_size=[288, 384]).image_size == (288, 384)
    assert Budget(image_size=[48, 48]).image_size == 48
    with pytest.raises(ValueError, match="between 16 and 4096"):
        Budget(image_size=[8, 300])


def test_a_registered_task_kind_without_a_key_is_a_user_error() -> None:
    from policysearch.data.base import TaskSpec
    from policysearch.errors import UserError

    assert TaskSpec("objects", "count", key="count").target_key() == "count"
    with pytest.raises(UserError, match="needs key="):
        TaskSpec("objects", "count").target_key()
