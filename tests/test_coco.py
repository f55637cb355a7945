"""The COCO format (``coco:PATH``): layout, category mapping, targets, checks and splits."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from policysearch.data import get_dataset
from policysearch.data.coco import load
from policysearch.data.splits import LoadOptions
from policysearch.errors import DataError

H, W = 40, 56
# Listed out of id order: the mapping must sort them by id (3, 7, 90 -> 0, 1, 2).
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 7, "name": "dog"},
              {"id": 3, "name": "cat"}]
CAT, DOG, TOOTHBRUSH = 0, 1, 2
# pycocotools 2.0.x under NumPy 2 (its annToMask, used here as the reference)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _square(x1: int, y1: int, x2: int, y2: int) -> list[int]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def _region(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[top:bottom, left:right] = 1
    return m


def _rle(m: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(m: np.ndarray) -> dict[str, Any]:
    """COCO's crowd format: run lengths over the column-major pixels, starting with zeros."""
    flat = m.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = [0, *changes.tolist(), flat.size]
    counts = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if flat[0] == 1:
        counts.insert(0, 0)
    return {"size": [H, W], "counts": counts}


def _ann(ann_id: int, image_id: int, category: int, bbox: list[float], segmentation: Any,
         crowd: int = 0) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": bbox,
            "segmentation": segmentation, "iscrowd": crowd, "area": bbox[2] * bbox[3]}


def _images(*names_ids: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"id": i, "file_name": n, "width": W, "height": H} for n, i in names_ids]


def coco_dicts() -> dict[str, dict[str, Any]]:
    """Annotation files by split folder: a.png holds a dog polygon, a toothbrush RLE on top of
    it (smaller) and a crowd of cats (uncompressed RLE); b.png has no annotations."""
    train = {
        "images": _images(("a.png", 1), ("b.png", 2), ("c.png", 3), ("d.png", 4),
                          ("e.png", 5)),
        "categories": CATEGORIES,
        "annotations": [
            _ann(901, 1, 7, [4, 4, 36, 26], [_square(4, 4, 40, 30)]),
            _ann(902, 1, 90, [30, 10, 20, 10], _rle(_region(10, 20, 30, 50))),
            _ann(903, 1, 3, [2, 32, 18, 6], _uncompressed_rle(_region(32, 38, 2, 20)), 1),
            _ann(904, 3, 3, [10, 5, 20, 20], [[10, 5, 30, 25, 10, 25]]),
            _ann(905, 4, 7, [0, 0, 56, 40], [_square(0, 0, 56, 40)]),
            _ann(906, 5, 7, [5, 5, 10, 10], [_square(5, 5, 15, 15)]),
        ],
    }
    val = {
        "images": _images(("v1.png", 11), ("v2.png", 12)),
        "categories": CATEGORIES,
        "annotations": [
            _ann(911, 11, 90, [1, 1, 8, 8], [_square(1, 1, 9, 9)]),
            _ann(912, 12, 3, [20, 10, 10, 10], [_square(20, 10, 30, 20)]),
        ],
    }
    return {"train2017": train, "val2017": val}


def write_coco(root: Path, dicts: dict[str, dict[str, Any]]) -> Path:
    """COCO's layout: annotations/instances_<folder>.json; train images in <folder>/, the
    others in images/<folder>/ (both places are looked in)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for folder, data in dicts.items():
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
        images = root / folder if folder.startswith("train") else root / "images" / folder
        images.mkdir(parents=True, exist_ok=True)
        for entry in data["images"]:
            pixels = rng.integers(0, 256, (entry["height"], entry["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / entry["file_name"])
    return root


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco", coco_dicts())


def _all_samples(dataset: Any) -> dict[str, dict[str, Any]]:
    """Samples by image file name, over every split."""
    out = {}
    for split in ("train", "val", "test"):
        part = dataset.split(split)
        for i, record in enumerate(part.records):
            out[record.path.name] = part[i]
    return out


def test_categories_sorted_by_id_and_named(coco: Path) -> None:
    dataset = load(coco, LoadOptions())
    tasks = {t.name: t for t in dataset.tasks}
    assert [t.kind for t in dataset.tasks] == ["detection", "segmentation", "multilabel"]
    assert tasks["objects"].num_classes == 3
    assert tasks["objects"].class_names == ("cat", "dog", "toothbrush")
    assert tasks["seg"].num_classes == 4
    assert tasks["seg"].class_names == ("background", "cat", "dog", "toothbrush")
    assert tasks["present"].num_classes == 3
    assert tasks["present"].target_key() == "attributes"


def test_boxes_are_pixel_corners_without_crowds(coco: Path) -> None:
    samples = _all_samples(load(coco, LoadOptions()))
    a = samples["a.png"]
    assert a["image"].shape == (H, W, 3) and a["image"].dtype == np.uint8
    np.testing.assert_allclose(a["boxes"], [[4, 4, 40, 30], [30, 10, 50, 20]])
    assert a["boxes"].dtype == np.float32
    assert a["box_labels"].tolist() == [DOG, TOOTHBRUSH]
    assert a["box_labels"].dtype == np.int64
    b = samples["b.png"]
    assert b["boxes"].shape == (0, 4) and b["box_labels"].shape == (0,)


def _expected_mask(annotation_file: Path, image_id: int) -> np.ndarray:
    """pycocotools' annToMask per annotation, painted largest area first; crowds = 255."""
    api = COCO(str(annotation_file))
    index = {cid: k for k, cid in enumerate(sorted(api.getCatIds()))}
    anns = api.loadAnns(api.getAnnIds(imgIds=[image_id], iscrowd=None))
    masks = [api.annToMask(a) for a in anns]
    order = sorted(range(len(anns)), key=lambda n: -int(masks[n].sum()))
    out = np.zeros((H, W), dtype=np.int64)
    for n in order:
        out[masks[n] == 1] = 255 if anns[n]["iscrowd"] else 1 + index[anns[n]["category_id"]]
    return out


def test_mask_is_pycocotools_masks_painted_largest_first(coco: Path) -> None:
    samples = _all_samples(load(coco, LoadOptions()))
    train_file = coco / "annotations" / "instances_train2017.json"
    mask = samples["a.png"]["mask"]
    assert mask.dtype == np.int64 and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, _expected_mask(train_file, 1))
    assert mask[25, 10] == 1 + DOG
    assert mask[15, 35] == 1 + TOOTHBRUSH  # smaller object over the larger dog stays visible
    assert mask[15, 45] == 1 + TOOTHBRUSH
    assert (mask[32:38, 2:20] == 255).all()  # the crowd region is ignored
    assert mask[0, 0] == 0 and mask[39, 55] == 0
    np.testing.assert_array_equal(samples["c.png"]["mask"], _expected_mask(train_file, 3))
    assert not samples["b.png"]["mask"].any()


def test_present_is_multi_hot_of_non_crowd_categories(coco: Path) -> None:
    samples = _all_samples(load(coco, LoadOptions()))
    # a.png: a dog and a toothbrush; its cats are a crowd only
    assert samples["a.png"]["attributes"].tolist() == [0, 1, 1]
    assert samples["c.png"]["attributes"].tolist() == [1, 0, 0]
    assert samples["b.png"]["attributes"].tolist() == [0, 0, 0]


def test_annotation_without_segmentation_masks_its_box_as_ignore(tmp_path: Path) -> None:
    dicts = coco_dicts()
    del dicts["train2017"]["annotations"][0]["segmentation"]
    samples = _all_samples(load(write_coco(tmp_path, dicts), LoadOptions()))
    mask = samples["a.png"]["mask"]
    assert (mask[4:10, 4:40] == 255).all()
    assert mask[15, 35] == 1 + TOOTHBRUSH  # smaller, painted after the box
    assert samples["a.png"]["box_labels"].tolist() == [DOG, TOOTHBRUSH]


def test_no_segmentation_at_all_leaves_seg_out(tmp_path: Path) -> None:
    dicts = coco_dicts()
    for data in dicts.values():
        for ann in data["annotations"]:
            ann["segmentation"] = []
    dataset = load(write_coco(tmp_path, dicts), LoadOptions())
    assert [t.name for t in dataset.tasks] == ["objects", "present"]
    assert "no annotation has a segmentation: the seg task is left out" in dataset.notes
    assert "mask" not in dataset.split("train")[0]


def _names(part: Any) -> list[str]:
    return [r.path.name for r in part.records]


def test_no_labelled_test_split_val_is_test_and_val_is_carved(coco: Path) -> None:
    (coco / "annotations" / "image_info_test2017.json").write_text(
        json.dumps({"images": [], "categories": CATEGORIES}))
    (coco / "annotations" / "instances_test2017.json").write_text(
        json.dumps({"images": [], "categories": CATEGORIES}))
    dataset = load(coco, LoadOptions())
    assert _names(dataset.split("test")) == ["v1.png", "v2.png"]
    train, val = _names(dataset.split("train")), _names(dataset.split("val"))
    assert len(val) == 1 and len(train) == 4
    assert sorted(train + val) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert sorted(dataset.notes[:2]) == [
        "image_info_test2017.json: image list without annotations (unlabelled), left out",
        'instances_test2017.json: no "annotations" (unlabelled split), left out',
    ]
    assert "no labelled test split: the given val split is used as test" in dataset.notes
    assert any(n.startswith("val carved from train: 1 of 5") for n in dataset.notes)


def test_labelled_test_split_is_kept(tmp_path: Path) -> None:
    dicts = coco_dicts()
    dicts["test2017"] = copy.deepcopy(dicts["val2017"])
    dataset = load(write_coco(tmp_path, dicts), LoadOptions())
    assert len(dataset.split("train")) == 5
    assert len(dataset.split("val")) == 2 and len(dataset.split("test")) == 2
    assert dataset.notes == []


Mutation = Callable[[dict[str, dict[str, Any]]], None]
FileEdit = Callable[[Path], None]


def _set_ann(i: int, key: str, value: Any) -> Mutation:
    def edit(dicts: dict[str, dict[str, Any]]) -> None:
        dicts["train2017"]["annotations"][i][key] = value
    return edit


def _write_image(name: str, height: int, width: int) -> FileEdit:
    def edit(root: Path) -> None:
        Image.new("RGB", (width, height)).save(root / "train2017" / name)
    return edit


TRAIN_JSON = "annotations/instances_train2017.json"
BAD_CASES = {
    "unknown category": (_set_ann(0, "category_id", 5), None, TRAIN_JSON,
                         "annotations[0] (id 901)", 'category_id 5 is not in "categories"'),
    "unknown image": (_set_ann(1, "image_id", 999), None, TRAIN_JSON,
                      "annotations[1] (id 902)", 'image_id 999 is not in "images"'),
    "box not numbers": (_set_ann(0, "bbox", [4, 4, "36", 26]), None, TRAIN_JSON,
                        "annotations[0] (id 901)",
                        "bbox must be 4 numbers [x, y, width, height], got [4, 4, '36', 26]"),
    "box outside": (_set_ann(0, "bbox", [30, 4, 28, 26]), None, TRAIN_JSON,
                    "annotations[0] (id 901)",
                    "bbox [30, 4, 28, 26] reaches beyond the image (width 56, height 40) by "
                    "more than 1 px"),
    "polygon outside": (_set_ann(0, "segmentation", [_square(4, 4, 40, 30), _square(4, 4, 60, 9)]),
                        None, TRAIN_JSON, "annotations[0] (id 901)",
                        "segmentation polygon 1 reaches beyond the image (width 56, height 40)"),
    "rle size": (_set_ann(1, "segmentation", {"size": [20, 56], "counts": "abc"}), None,
                 TRAIN_JSON, "annotations[1] (id 902)",
                 "segmentation RLE size [20, 56] disagrees with the image size [40, 56] "
                 "(height, width)"),
    "missing image": (None, lambda root: (root / "train2017" / "c.png").unlink(),
                      "train2017/c.png", None, "file not found"),
    "unreadable image": (None, lambda root: (root / "train2017" / "c.png").write_bytes(b"no"),
                         "train2017/c.png", None, "not an image file"),
    "image size differs": (None, _write_image("a.png", 48, 56), "train2017/a.png", None,
                           "image is 48×56 but the annotation file says 40×56 (height×width; "
                           "instances_train2017.json images[0] (id 1))"),
    "invalid json": (None, lambda root: (root / TRAIN_JSON).write_text('{"images": ['),
                     TRAIN_JSON, "line 1", "invalid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_data_is_one_line_naming_file_and_record(tmp_path: Path, case: str) -> None:
    mutate, edit_files, source, where, message = BAD_CASES[case]
    dicts = coco_dicts()
    if mutate is not None:
        mutate(dicts)
    root = write_coco(tmp_path, dicts)
    if edit_files is not None:
        edit_files(root)
    with pytest.raises(DataError) as info:
        load(root, LoadOptions())
    err = info.value
    assert err.source == str(root / source)
    assert err.field == where
    assert message in err.message
    assert "\n" not in str(err)


@pytest.mark.parametrize("case", ["missing image", "unknown category"])
def test_skip_bad_samples_leaves_the_image_out_and_counts_it(tmp_path: Path,
                                                              case: str) -> None:
    mutate, edit_files, _, _, message = BAD_CASES[case]
    dicts = coco_dicts()
    if mutate is not None:
        mutate(dicts)
    root = write_coco(tmp_path, dicts)
    if edit_files is not None:
        edit_files(root)
    dataset = load(root, LoadOptions(skip_bad_samples=True))
    assert len(dataset.skipped) == 1 and message in dataset.skipped[0]
    assert "1 bad samples skipped (--skip-bad-samples)" in dataset.notes
    left = _all_samples(dataset)
    assert len(left) == 6
    assert ("c.png" if case == "missing image" else "a.png") not in left


def test_size_option_resizes_image_and_targets(coco: Path) -> None:
    samples = _all_samples(load(coco, LoadOptions.make(size=(20, 28))))
    a = samples["a.png"]
    assert a["image"].shape == (20, 28, 3)
    assert a["mask"].shape == (20, 28) and a["mask"].dtype == np.int64
    assert set(np.unique(a["mask"]).tolist()) <= {0, 1 + DOG, 1 + TOOTHBRUSH, 255}
    np.testing.assert_allclose(a["boxes"], [[2, 2, 20, 15], [15, 5, 25, 10]])
    assert a["box_labels"].tolist() == [DOG, TOOTHBRUSH]


def test_get_dataset_by_scheme(coco: Path) -> None:
    dataset = get_dataset("coco:" + str(coco), size=32)
    sample = dataset.split("train")[0]
    assert sample["image"].shape == (32, 32, 3) and sample["mask"].shape == (32, 32)
    assert [t.name for t in dataset.tasks] == ["objects", "seg", "present"]


def test_layout_errors(tmp_path: Path) -> None:
    dicts = coco_dicts()
    dicts["valminusminival2017"] = copy.deepcopy(dicts["val2017"])
    root = write_coco(tmp_path / "two", dicts)
    with pytest.raises(DataError, match=r"several annotation files for split 'val' "
                       r"\(instances_val2017.json, instances_valminusminival2017.json\)"):
        load(root, LoadOptions())
    root = write_coco(tmp_path / "noimages", coco_dicts())
    for png in (root / "images" / "val2017").iterdir():
        png.unlink()
    (root / "images" / "val2017").rmdir()
    with pytest.raises(DataError, match=r"no image folder for split 'val': expected val2017/ "
                       r"or images/val2017/"):
        load(root, LoadOptions())
    with pytest.raises(DataError, match="dataset folder not found"):
        load(tmp_path / "nowhere", LoadOptions())


@pytest.mark.parametrize("bbox", [[4, 4, 0, 26], [4, 4, 3, -2]])
def test_zero_size_boxes_are_dropped_and_counted(tmp_path: Path, bbox: list[float]) -> None:
    # COCO train2017 has two boxes of height 0: the loader must not stop on them.
    dicts = coco_dicts()
    _set_ann(0, "bbox", bbox)(dicts)
    degenerate = dicts["train2017"]["annotations"][0]
    dataset = load(write_coco(tmp_path, dicts), LoadOptions())
    assert "1 boxes of zero width or height dropped (their objects still count as present)" \
        in dataset.notes
    original = load(write_coco(tmp_path / "orig", coco_dicts()), LoadOptions())
    image_id = degenerate["image_id"]
    names = {img["id"]: img["file_name"] for img in dicts["train2017"]["images"]}
    pairs = list(zip(_find(dataset, names[image_id]), _find(original, names[image_id]),
                     strict=True))
    assert len(pairs) == 1
    for ours, theirs in pairs:
        assert len(ours["boxes"]) == len(theirs["boxes"]) - 1
        np.testing.assert_array_equal(ours["attributes"], theirs["attributes"])


def _find(dataset: Any, file_name: str) -> list[dict[str, Any]]:
    return [s for split in ("train", "val", "test") for s, r in
            zip(dataset.split(split), dataset.split(split).records, strict=True)
            if r.path.name == file_name]
