"""The plain folder format (``folder:PATH``): dataset.yaml, all task kinds, splits, partial
labels and the one-line errors of bad data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from policysearch.data import get_dataset
from policysearch.data.folder import load
from policysearch.data.splits import LoadOptions
from policysearch.errors import DataError

H, W = 16, 20
SEG = ["background", "road", "car"]
OBJ = ["car", "person"]
TASKS: list[dict[str, Any]] = [
    {"name": "seg", "kind": "segmentation", "folder": "masks", "classes": SEG},
    {"name": "depth", "kind": "depth", "folder": "depth", "scale": 0.001},
    {"name": "normals", "kind": "normals", "folder": "normals"},
    {"name": "objects", "kind": "detection", "folder": "boxes", "classes": OBJ},
    {"name": "scene", "kind": "classification", "file": "labels.csv",
     "classes": ["indoor", "outdoor"]},
    {"name": "tags", "kind": "multilabel", "file": "tags.csv", "classes": ["sunny", "rainy"]},
]


def write_image(path: Path, value: int, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def write_yaml(root: Path, config: dict[str, Any]) -> Path:
    path = root / "dataset.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build(root: Path, n: int = 10, tasks: list[dict[str, Any]] | None = None,
          **config: Any) -> Path:
    """A dataset of ``n`` images ``img0``…; img0 has no mask and no box file, img1 no CSV
    rows: both are unlabelled for those tasks."""
    for k in range(n):
        stem = f"img{k}"
        write_image(root / "images" / f"{stem}.png", 10 * k)
        if k != 0:
            mask = np.zeros((H, W), dtype=np.uint8)
            mask[: H // 2] = 1
            mask[-2:, -3:] = 2
            mask[0, 0] = 255
            write_mask(root / "masks" / f"{stem}.png", mask)
            boxes = [{"box": [1, 2, 9, 12], "label": "car"},
                     {"box": [10.5, 0, 20.5, 16], "label": 1}]
            (root / "boxes").mkdir(exist_ok=True)
            (root / "boxes" / f"{stem}.json").write_text(json.dumps(boxes))
        (root / "depth").mkdir(exist_ok=True)
        if k % 2:
            np.save(root / "depth" / f"{stem}.npy", np.full((H, W), 2000.0 + k, np.float32))
        else:
            Image.fromarray(np.full((H, W), 1500 + k, dtype=np.uint16)).save(
                root / "depth" / f"{stem}.png")
        (root / "normals").mkdir(exist_ok=True)
        normals = np.zeros((H, W, 3), np.float32)
        normals[..., 2] = 2.0  # not unit length: the loader normalises
        normals[0, 0] = 0.0  # invalid pixel
        np.save(root / "normals" / f"{stem}.npy", normals)
    rows = [f"img{k},{'indoor' if k % 2 else 1}" for k in range(n) if k != 1]
    (root / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    tag_rows = [f"img{k}.png,1,{'' if k % 3 else 0}" for k in range(n) if k != 1]
    (root / "tags.csv").write_text("image,sunny,rainy\n" + "\n".join(tag_rows) + "\n")
    write_yaml(root, {"images": "images", **config, "tasks": tasks or TASKS})
    return root


def all_samples(ds: Any) -> dict[str, dict[str, Any]]:
    """Every sample of every split, by the grey value of its image (10 × index)."""
    return {f"img{int(s['image'][0, 0, 0]) // 10}": s
            for split in ("train", "val", "test") for s in ds.split(split)}


def test_all_task_kinds_load_into_sample_dicts(tmp_path: Path) -> None:
    ds = load(build(tmp_path), LoadOptions())
    assert [(t.name, t.kind, t.num_classes) for t in ds.tasks] == [
        ("seg", "segmentation", 3), ("depth", "depth", 0), ("normals", "normals", 0),
        ("objects", "detection", 2), ("scene", "classification", 2), ("tags", "multilabel", 2)]
    assert ds.tasks[0].class_names == tuple(SEG)
    assert ds.name == tmp_path.name
    samples = all_samples(ds)
    assert sorted(samples) == sorted(f"img{k}" for k in range(10))
    s = samples["img3"]
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
    assert s["mask"].dtype == np.int64 and s["mask"].shape == (H, W)
    assert s["mask"][1, 1] == 1 and s["mask"][-1, -1] == 2 and s["mask"][0, 0] == 255
    assert s["depth"].dtype == np.float32 and s["depth"].shape == (H, W)
    assert s["depth"][0, 0] == pytest.approx(2.003)  # .npy × scale
    assert samples["img4"]["depth"][5, 5] == pytest.approx(1.504)  # 16-bit PNG × scale
    assert s["normals"].dtype == np.float32
    np.testing.assert_allclose(s["normals"][5, 5], [0, 0, 1])
    np.testing.assert_array_equal(s["normals"][0, 0], [0, 0, 0])
    np.testing.assert_allclose(s["boxes"], [[1, 2, 9, 12], [10.5, 0, 20, 16]])  # clipped
    assert s["boxes"].dtype == np.float32
    np.testing.assert_array_equal(s["box_labels"], [0, 1])
    assert s["label"] == 0 and samples["img2"]["label"] == 1  # class name / class index
    np.testing.assert_array_equal(s["attributes"], [1, 0])
    np.testing.assert_array_equal(samples["img4"]["attributes"], [1, -1])


def test_partial_labels_leave_keys_out_and_are_counted_in_notes(tmp_path: Path) -> None:
    ds = load(build(tmp_path), LoadOptions())
    samples = all_samples(ds)
    assert "mask" not in samples["img0"] and "boxes" not in samples["img0"]
    assert "box_labels" not in samples["img0"] and "depth" in samples["img0"]
    assert "label" not in samples["img1"] and "attributes" not in samples["img1"]
    assert "seg: 1 of 10 images unlabelled" in ds.notes
    assert "objects: 1 of 10 images unlabelled" in ds.notes
    assert "scene: 1 of 10 images unlabelled" in ds.notes
    assert not any(note.startswith(("depth:", "normals:")) for note in ds.notes)


def test_empty_label_cell_is_unlabelled_and_empty_box_list_is_labelled(tmp_path: Path) -> None:
    root = build(tmp_path)
    (root / "labels.csv").write_text("image,label\nimg2,\nimg3,outdoor\n")
    (root / "boxes" / "img2.json").write_text("[]")
    samples = all_samples(load(root, LoadOptions()))
    assert "label" not in samples["img2"] and samples["img3"]["label"] == 1
    assert samples["img2"]["boxes"].shape == (0, 4)
    assert samples["img2"]["box_labels"].shape == (0,)


def test_yolo_boxes(tmp_path: Path) -> None:
    tasks = [{"name": "objects", "kind": "detection", "folder": "yolo", "format": "yolo",
              "classes": OBJ}]
    root = build(tmp_path, n=4, tasks=tasks)
    (root / "yolo").mkdir()
    for k in range(4):
        (root / "yolo" / f"img{k}.txt").write_text("0 0.5 0.5 0.5 0.25\n\n1 0.25 0.5 0.5 1.0\n")
    (root / "yolo" / "classes.txt").write_text("car\nperson\n")  # YOLO tools write one
    s = all_samples(load(root, LoadOptions()))["img2"]
    np.testing.assert_allclose(s["boxes"], [[5, 6, 15, 10], [0, 0, 10, 16]])
    np.testing.assert_array_equal(s["box_labels"], [0, 1])


def test_explicit_split_files(tmp_path: Path) -> None:
    root = build(tmp_path, splits={"train": "splits/train.txt", "val": "splits/val.txt",
                                   "test": "splits/test.txt"})
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("# training images\nimg0\nimg1\nimg2.png\n\nimg3\n")
    (root / "splits" / "val.txt").write_text("img4\nimg5\n")
    (root / "splits" / "test.txt").write_text("img6\n")
    ds = load(root, LoadOptions())
    grey = {split: [int(s["image"][0, 0, 0]) for s in ds.split(split)]
            for split in ("train", "val", "test")}
    assert grey == {"train": [0, 10, 20, 30], "val": [40, 50], "test": [60]}
    assert "3 of 10 images are in no split file and not used" in ds.notes
    assert not any("carved" in note for note in ds.notes)


def test_split_files_without_test_use_val_as_test(tmp_path: Path) -> None:
    root = build(tmp_path, splits={"train": "train.txt", "val": "val.txt"})
    (root / "train.txt").write_text("\n".join(f"img{k}" for k in range(8)))
    (root / "val.txt").write_text("img8\nimg9\n")
    ds = load(root, LoadOptions())
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [7, 1, 2]
    assert any("given val split is used as test" in note for note in ds.notes)
    assert any(note.startswith("val carved from train: 1 of 8") for note in ds.notes)


def test_subfolder_splits_with_flat_and_split_target_folders(tmp_path: Path) -> None:
    root = build(tmp_path, n=6)
    for k, split in enumerate(["train", "train", "train", "train", "val", "test"]):
        (root / "images" / split).mkdir(exist_ok=True)
        (root / "images" / f"img{k}.png").rename(root / "images" / split / f"img{k}.png")
    (root / "masks" / "val").mkdir()
    (root / "masks" / "img4.png").rename(root / "masks" / "val" / "img4.png")
    ds = load(root, LoadOptions())
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [4, 1, 1]
    assert ds.split("val")[0]["mask"].shape == (H, W)
    assert not any("carved" in note for note in ds.notes)


def test_without_splits_val_and_test_are_carved(tmp_path: Path) -> None:
    ds = load(build(tmp_path), LoadOptions(val_fraction=0.2))
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    assert any(note.startswith("test carved from train: 2 of 10") for note in ds.notes)
    assert any(note.startswith("val carved from train: 2 of 8") for note in ds.notes)
    again = load(tmp_path, LoadOptions(val_fraction=0.2))
    assert ([int(s["image"][0, 0, 0]) for s in ds.split("val")]
            == [int(s["image"][0, 0, 0]) for s in again.split("val")])


def test_size_option_and_get_dataset(tmp_path: Path) -> None:
    root = build(tmp_path)
    ds = get_dataset("folder:" + str(root), size=16)
    s = ds.split("train")[0]
    assert s["image"].shape == (16, 16, 3)
    assert s.get("mask", np.zeros((16, 16))).shape == (16, 16)
    assert s["depth"].shape == (16, 16) and s["normals"].shape == (16, 16, 3)
    # A YAML file given directly works as well as its folder.
    assert len(get_dataset("folder:" + str(root / "dataset.yaml")).split("train")) == 8


def test_several_classification_tasks_keep_targets_under_their_names(tmp_path: Path) -> None:
    tasks = [{"name": "scene", "kind": "classification", "file": "labels.csv",
              "classes": ["indoor", "outdoor"]},
             {"name": "weather", "kind": "classification", "file": "labels.csv",
              "column": "weather", "classes": ["dry", "wet"]}]
    root = build(tmp_path, n=4, tasks=tasks)
    (root / "labels.csv").write_text("image,label,weather\n" + "".join(
        f"img{k},indoor,{'wet' if k % 2 else 'dry'}\n" for k in range(4)))
    ds = load(root, LoadOptions())
    assert [t.target_key() for t in ds.tasks] == ["scene", "weather"]
    s = all_samples(ds)["img1"]
    assert s["scene"] == 0 and s["weather"] == 1 and "label" not in s


def test_skip_bad_samples_drops_bad_samples_and_orphan_rows(tmp_path: Path) -> None:
    root = build(tmp_path)
    write_mask(root / "masks" / "img2.png", np.zeros((H + 1, W), np.uint8))
    (root / "labels.csv").write_text("image,label\nimg3,indoor\nimg4,attic\nghost,indoor\n")
    with pytest.raises(DataError):
        load(root, LoadOptions())
    ds = load(root, LoadOptions(skip_bad_samples=True))
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == 8
    assert "img2" not in all_samples(ds) and "img4" not in all_samples(ds)
    assert len(ds.skipped) == 3
    assert ds.skipped[0] == f"{root / 'labels.csv'}: line 4: no image 'ghost' in the images folder"
    assert "2 bad samples skipped (--skip-bad-samples)" in ds.notes
    assert any(note.startswith("1 target files or CSV rows naming no image") for note in ds.notes)


def _break(root: Path, case: str) -> tuple[Path, str]:
    """Damage the dataset at ``root``; the file the error must name and the rest of its line."""
    if case == "mask size":
        write_mask(root / "masks" / "img3.png", np.zeros((H, W + 4), np.uint8))
        return (root / "masks" / "img3.png",
                "size 24×16 differs from its image's 20×16 (width×height)")
    if case == "mask value":
        write_mask(root / "masks" / "img3.png", np.full((H, W), 7, np.uint8))
        return (root / "masks" / "img3.png",
                "mask value 7 is neither a class index (0..2) nor 255 (ignore)")
    if case == "mask colour":
        write_image(root / "masks" / "img3.png", 1)
        return (root / "masks" / "img3.png",
                "a mask must be a single-channel image of class indices, got mode 'RGB'")
    if case == "depth shape":
        np.save(root / "depth" / "img3.npy", np.zeros((H, W, 2), np.float32))
        return root / "depth" / "img3.npy", "depth must be H×W, got shape (16, 20, 2)"
    if case == "normals shape":
        np.save(root / "normals" / "img3.npy", np.zeros((H, W), np.float32))
        return root / "normals" / "img3.npy", "normals must be H×W×3, got shape (16, 20)"
    if case == "box outside":
        (root / "boxes" / "img3.json").write_text('[{"box": [0, 0, 5, 5], "label": "car"},'
                                                  ' {"box": [2, 3, 22, 9], "label": "car"}]')
        return (root / "boxes" / "img3.json",
                "[1]: box [2, 3, 22, 9] lies outside the 20×16 image (more than 1 px beyond "
                "its border)")
    if case == "box class":
        (root / "boxes" / "img3.json").write_text('[{"box": [0, 0, 5, 5], "label": "bus"}]')
        return (root / "boxes" / "img3.json",
                "[0].label: unknown class 'bus'; classes: car, person")
    if case == "box empty":
        (root / "boxes" / "img3.json").write_text('[{"box": [5, 0, 5, 5], "label": "car"}]')
        return root / "boxes" / "img3.json", "[0]: box [5, 0, 5, 5] is empty (needs x1 < x2 " \
                                             "and y1 < y2)"
    if case == "box json":
        (root / "boxes" / "img3.json").write_text('[{"box": [0, 0, 5, 5], "label": "car"},\n')
        return root / "boxes" / "img3.json", "line 2: invalid JSON: Expecting value"
    if case == "image unreadable":
        (root / "images" / "img3.png").write_bytes(b"not an image")
        return root / "images" / "img3.png", "not an image file (cannot identify its format)"
    if case == "csv class":
        (root / "labels.csv").write_text("image,label\nimg2,indoor\nimg3,attic\n")
        return root / "labels.csv", "line 3: unknown class 'attic' in column 'label'; " \
                                    "classes: indoor, outdoor"
    if case == "csv index":
        (root / "labels.csv").write_text("image,label\nimg3,2\n")
        return root / "labels.csv", "line 2: unknown class '2' in column 'label'; " \
                                    "classes: indoor, outdoor"
    if case == "csv orphan":
        (root / "labels.csv").write_text("image,label\nimg3,indoor\nimg99,indoor\n")
        return root / "labels.csv", "line 3: no image 'img99' in the images folder"
    if case == "csv twice":
        (root / "labels.csv").write_text("image,label\nimg3,indoor\nimg3,outdoor\n")
        return root / "labels.csv", "line 3: image 'img3' is listed twice (first on line 2)"
    if case == "csv column":
        (root / "tags.csv").write_text("image,sunny,rainy_\nimg3,1,0\n")
        return root / "tags.csv", "line 1: no column 'rainy' (the header has image, sunny, " \
                                  "rainy_)"
    if case == "csv fields":
        (root / "labels.csv").write_text("image,label\nimg3,indoor,extra\n")
        return root / "labels.csv", "line 2: the number of fields differs from the header's (2)"
    if case == "multilabel value":
        (root / "tags.csv").write_text("image,sunny,rainy\nimg3,yes,0\n")
        return root / "tags.csv", "line 2: column 'sunny' must be 1, 0 or empty (unknown), " \
                                  "got 'yes'"
    if case == "orphan mask":
        write_mask(root / "masks" / "stray.png", np.zeros((H, W), np.uint8))
        return root / "masks" / "stray.png", "names no image (no stray.* in the images folder)"
    assert case == "stem twice"
    write_image(root / "images" / "img3.jpg", 0)
    return root / "images", "two files share the stem 'img3': img3.jpg and img3.png"


BAD_CASES = ["mask size", "mask value", "mask colour", "depth shape", "normals shape",
             "box outside", "box class", "box empty", "box json", "image unreadable",
             "csv class", "csv index", "csv orphan", "csv twice", "csv column", "csv fields",
             "multilabel value", "orphan mask", "stem twice"]
AT_LOAD_TIME = {"mask value", "mask colour"}  # found when the pixels are decoded


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    root = build(tmp_path)
    path, message = _break(root, case)
    if case in AT_LOAD_TIME:
        ds = load(root, LoadOptions())
        with pytest.raises(DataError) as info:
            all_samples(ds)
    else:
        with pytest.raises(DataError) as info:
            load(root, LoadOptions())
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)


def test_yolo_line_errors(tmp_path: Path) -> None:
    tasks = [{"name": "objects", "kind": "detection", "folder": "yolo", "format": "yolo",
              "classes": OBJ}]
    root = build(tmp_path, n=2, tasks=tasks)
    (root / "yolo").mkdir()
    (root / "yolo" / "img0.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"img0\.txt: line 2: unknown class 2; classes: car, "):
        load(root, LoadOptions())
    (root / "yolo" / "img0.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(DataError, match=r"img0\.txt: line 1: expected 'class_index cx cy w h', "
                                        r"got '0 0.5 0.5 0.1'$"):
        load(root, LoadOptions())
    (root / "yolo" / "img0.txt").write_text("0 0.9 0.5 0.4 0.2\n")  # right edge at 1.1 × 20
    with pytest.raises(DataError, match=r"line 1: box \[14, 6.4, 22, 9.6\] lies outside"):
        load(root, LoadOptions())


def test_split_file_errors(tmp_path: Path) -> None:
    root = build(tmp_path, splits={"train": "train.txt", "val": "val.txt"})
    (root / "train.txt").write_text("img0\nimg1\n")
    (root / "val.txt").write_text("img2\nimg1\n")
    with pytest.raises(DataError) as info:
        load(root, LoadOptions())
    assert str(info.value) == f"{root / 'val.txt'}: line 2: image 'img1' is listed twice " \
                              "(also in train)"
    (root / "val.txt").write_text("img2\nimg42\n")
    with pytest.raises(DataError, match=r"val\.txt: line 2: no image 'img42' in the images"):
        load(root, LoadOptions())
    (root / "val.txt").unlink()
    with pytest.raises(DataError, match=r"dataset\.yaml: splits\.val: split file not found: "):
        load(root, LoadOptions())


def test_task_without_any_labelled_image_is_an_error(tmp_path: Path) -> None:
    root = build(tmp_path, n=3)
    for k in range(1, 3):
        (root / "masks" / f"img{k}.png").rename(root / "masks" / f"mask_img{k}.png")
    with pytest.raises(DataError) as info:
        load(root, LoadOptions(skip_bad_samples=True))
    assert str(info.value) == (f"{root / 'dataset.yaml'}: tasks[0]: no image of the dataset is "
                               "labelled by the files in masks (their names must be the image "
                               "stems)")


def _seg(**extra: Any) -> dict[str, Any]:
    return {"name": "seg", "kind": "segmentation", "folder": "masks", "classes": SEG, **extra}


YAML_CASES = [
    ({"images": "images", "tasks": [_seg(colour="red")]}, "tasks[0].colour: unknown key"),
    ({"images": "images", "tasks": [_seg(), {"name": "d", "kind": "depth",
                                             "folder": "depth", "scale": -1}]},
     "tasks[1].scale: Input should be greater than 0"),
    ({"images": "images"}, "tasks: required key is missing"),
    ({"images": "images", "tasks": []}, "tasks: List should have at least 1 item after "
                                        "validation, not 0"),
    ({"images": "images", "tasks": [_seg(kind="pose")]},
     "tasks[0].kind: unknown task kind 'pose'; known: segmentation, depth, normals, "
     "detection, classification, multilabel"),
    ({"images": "images", "tasks": [{"name": "seg", "folder": "masks"}]},
     "tasks[0].kind: required key is missing (one of segmentation, depth, normals, detection, "
     "classification, multilabel)"),
    ({"images": "images", "tasks": [_seg(classes=["a", "b", "a"])]},
     "tasks[0].classes: lists class 'a' twice"),
    ({"images": "images", "tasks": [_seg(name="my seg")]},
     "tasks[0].name: String should match pattern '^[A-Za-z_][A-Za-z0-9_-]*$'"),
    ({"images": "images", "tasks": [_seg(), _seg(name="seg2")]},
     "tasks[1].kind: a second segmentation task (tasks[0] is one); only one task per spatial "
     "kind (segmentation, depth, normals, detection) is possible since the augmentation moves "
     "one target of each"),
    ({"images": "images", "tasks": [_seg(), {"name": "seg", "kind": "depth",
                                             "folder": "depth"}]},
     "tasks[1].name: two tasks are named 'seg'"),
    ({"images": "images", "tasks": [_seg(folder="nowhere")]},
     "tasks[0].folder: folder not found: {root}/nowhere"),
    ({"images": "pics", "tasks": [_seg()]}, "images: images folder not found: {root}/pics"),
    ({"images": "images", "splits": {"val": "v.txt"}, "tasks": [_seg()]},
     "splits.train: required key is missing"),
    ({"images": "images", "tasks": [
        {"name": "label", "kind": "classification", "file": "labels.csv", "classes": ["a", "b"]},
        {"name": "other", "kind": "classification", "file": "labels.csv", "classes": ["a", "b"]}
    ]}, "tasks[0].name: 'label' is a sample key; with several classification tasks each is "
        "stored under its name, so pick another name"),
]


@pytest.mark.parametrize(("config", "message"), YAML_CASES)
def test_yaml_errors_name_the_file_and_field(tmp_path: Path, config: dict[str, Any],
                                             message: str) -> None:
    root = build(tmp_path, n=2)
    yaml_path = write_yaml(root, config)
    with pytest.raises(DataError) as info:
        load(root, LoadOptions())
    assert str(info.value) == f"{yaml_path}: {message.format(root=root)}"


def test_unparsable_or_missing_yaml(tmp_path: Path) -> None:
    (tmp_path / "dataset.yaml").write_text("tasks: [unclosed\n")
    with pytest.raises(DataError, match=r"dataset\.yaml: line \d+: invalid YAML"):
        load(tmp_path, LoadOptions())
    (tmp_path / "dataset.yaml").write_text("- just a list\n")
    with pytest.raises(DataError, match=r"dataset\.yaml: must be a YAML mapping"):
        load(tmp_path, LoadOptions())
    with pytest.raises(DataError, match=r"empty: no dataset\.yaml here"):
        load(tmp_path / "empty", LoadOptions())
