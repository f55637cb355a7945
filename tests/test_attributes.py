"""The attributes format: CelebA's layout and attributes.csv, read into one multilabel task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from policysearch.data import get_dataset
from policysearch.data.attributes import load
from policysearch.data.splits import LoadOptions
from policysearch.errors import DataError

NAMES = ("Smiling", "Male", "Young")
# CelebA values per image (1 present, -1 absent) and partitions (0 train, 1 val, 2 test).
CELEBA_ROWS = [
    ("000001.jpg", (1, -1, 1), 0),
    ("000002.jpg", (-1, -1, 1), 0),
    ("000003.jpg", (1, 1, -1), 0),
    ("000004.jpg", (-1, 1, 1), 0),
    ("000005.jpg", (1, 1, 1), 1),
    ("000006.jpg", (-1, -1, -1), 2),
]


def _image(path: Path, size: tuple[int, int] = (16, 16), shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[0], size[1], 3), shade, dtype=np.uint8)
    pixels[..., 0] = np.arange(size[1], dtype=np.uint8)[None, :] * 8
    Image.fromarray(pixels).save(path)


def make_celeba(root: Path, *, partition: bool = True, folder: str = "img_align_celeba",
                rows: list[tuple[str, tuple[int, ...], int]] | None = None) -> Path:
    rows = CELEBA_ROWS if rows is None else rows
    lines = [str(len(rows)), " ".join(NAMES) + " "]
    lines += [f"{name}  " + " ".join(f"{v:2d}" for v in values) for name, values, _ in rows]
    root.mkdir(parents=True, exist_ok=True)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    if partition:
        (root / "list_eval_partition.txt").write_text(
            "".join(f"{name} {part}\n" for name, _, part in rows))
    for i, (name, _, _) in enumerate(rows):
        _image(root / folder / name, shade=10 * i)
    return root


def make_csv(root: Path, text: str, images: tuple[str, ...] | None = None) -> Path:
    """attributes.csv from ``text``; an image for every name of its image column (in images/
    unless the name has a folder part) or for ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "attributes.csv").write_text(text)
    if images is None:
        lines = [line.split(",") for line in text.strip().splitlines()]
        column = lines[0].index("image")
        images = tuple(cells[column] for cells in lines[1:] if len(cells) > column)
    for name in images:
        _image(root / name if "/" in name else root / "images" / name)
    return root


def _targets(split) -> dict[str, list[int]]:
    return {Path(r.image).name: r.target.tolist() for r in split.records}


# ----------------------------------------------------------------------------- CelebA layout

def test_celeba_with_partition(tmp_path: Path) -> None:
    ds = load(make_celeba(tmp_path / "celeba"), LoadOptions())
    (task,) = ds.tasks
    assert (task.name, task.kind, task.target_key()) == ("attributes", "multilabel", "attributes")
    assert task.num_classes == 3 and task.class_names == NAMES
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [4, 1, 1]
    assert _targets(ds.split("val")) == {"000005.jpg": [1, 1, 1]}
    sample = ds.split("train")[1]
    assert sample["image"].shape == (16, 16, 3) and sample["image"].dtype == np.uint8
    assert sample["attributes"].dtype == np.int8
    assert sample["attributes"].tolist() == [0, 0, 1]  # CelebA's -1 means absent
    assert set(sample) == {"image", "attributes"}
    assert any("list_eval_partition.txt" in note for note in ds.notes)
    assert not any("carved" in note for note in ds.notes)


def test_celeba_without_partition_carves_val_and_test(tmp_path: Path) -> None:
    ds = load(make_celeba(tmp_path / "celeba", partition=False), LoadOptions(val_fraction=0.2))
    sizes = [len(ds.split(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 6 and sizes[1] >= 1 and sizes[2] >= 1
    names = [Path(r.image).name for s in ("train", "val", "test") for r in ds.split(s).records]
    assert sorted(names) == [row[0] for row in CELEBA_ROWS]
    assert any("val carved" in note for note in ds.notes)
    assert any("test carved" in note for note in ds.notes)


@pytest.mark.parametrize("folder", ["images", "img_align_celeba/img_align_celeba"])
def test_celeba_other_image_folders(tmp_path: Path, folder: str) -> None:
    ds = load(make_celeba(tmp_path / "c", folder=folder), LoadOptions())
    assert ds.split("test")[0]["image"].shape == (16, 16, 3)


def test_celeba_without_image_folder(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "c", folder="pictures")
    with pytest.raises(DataError, match=r"no image folder: looked for .*img_align_celeba/"
                                        r".*images/"):
        load(root, LoadOptions())


# ----------------------------------------------------------------------------- CSV layout

def test_csv_zero_one_file_reads_minus_one_and_empty_as_unknown(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "d", "image,sunny,rainy\na.png,1,0\nb.png,-1,1\nc.png,,0\n"
                                    "d.png,0,\n")
    ds = load(root, LoadOptions())
    found = {}
    for split in ("train", "val", "test"):
        found.update(_targets(ds.split(split)))
    assert found == {"a.png": [1, 0], "b.png": [-1, 1], "c.png": [-1, 0], "d.png": [0, -1]}
    assert ds.tasks[0].class_names == ("sunny", "rainy")
    assert any("values 1/0" in note for note in ds.notes)


def test_csv_one_minus_one_file_reads_minus_one_as_absent(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "d", "image,sunny,rainy,split\na.png,1,-1,train\n"
                                    "b.png,-1,,TRAIN\nc.png,,1,val\nd.png,1,1,test\n")
    ds = load(root, LoadOptions())
    assert _targets(ds.split("train")) == {"a.png": [1, 0], "b.png": [0, -1]}
    assert _targets(ds.split("val")) == {"c.png": [-1, 1]}
    assert _targets(ds.split("test")) == {"d.png": [1, 1]}
    assert any("1/-1" in note for note in ds.notes)
    assert any("split column" in note for note in ds.notes)
    assert ds.split("val")[0]["attributes"].tolist() == [-1, 1]


def test_csv_image_paths(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "d", "split,image,x\ntrain,faces/a.png,1\ntrain,b.png,0\n"
                                    "test,faces/c.png,1\n", images=())
    for name, shade in (("faces/a.png", 10), ("images/b.png", 20), ("faces/c.png", 30),
                        ("b.png", 99)):
        _image(root / name, shade=shade)
    ds = load(root, LoadOptions())

    def shades(split: str) -> set[int]:
        return {int(sample["image"][0, 0, 1]) for sample in ds.split(split)}

    # A path is relative to the folder; a bare name is looked up in images/ ...
    assert shades("test") == {30}
    assert shades("train") | shades("val") == {10, 20}
    # ... or, without an images/ folder, in the folder itself.
    (root / "images" / "b.png").unlink()
    (root / "images").rmdir()
    ds = load(root, LoadOptions())
    assert shades("train") | shades("val") == {10, 99}


def test_csv_preferred_when_both_layouts_are_present(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "c")
    make_csv(root, "image,only\n000001.jpg,1\n000002.jpg,0\n000003.jpg,1\n", images=())
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        _image(root / "images" / name)
    ds = load(root, LoadOptions())
    assert ds.tasks[0].class_names == ("only",)
    assert "using attributes.csv" in ds.notes[0]


def test_neither_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load(tmp_path / "empty", LoadOptions())
    assert str(err.value) == (f"{tmp_path / 'empty'}: no attribute table: looked for "
                              "list_attr_celeba.txt (CelebA layout) and attributes.csv")


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        load(tmp_path / "missing", LoadOptions())


# ----------------------------------------------------------------------------- bad data

def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


CELEBA = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"

# (case, how to break a CelebA folder, file the error names, rest of the one-line message)
CELEBA_CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("missing image", lambda r: (r / "img_align_celeba" / "000002.jpg").unlink(), CELEBA,
     "line 4 (000002.jpg): image {root}/img_align_celeba/000002.jpg: file not found"),
    ("unreadable image", lambda r: (r / "img_align_celeba" / "000003.jpg").write_bytes(
        b"not really a jpeg"), CELEBA,
     "line 5 (000003.jpg): image {root}/img_align_celeba/000003.jpg: not an image file "
     "(cannot identify its format)"),
    ("short row", lambda r: _replace(r / CELEBA, "000004.jpg  -1  1  1", "000004.jpg  -1  1"),
     CELEBA, "line 6: expected an image name and 3 values, found 2 values"),
    ("long row", lambda r: _replace(r / CELEBA, "000004.jpg  -1  1  1", "000004.jpg -1 1 1 1"),
     CELEBA, "line 6: expected an image name and 3 values, found 4 values"),
    ("bad value", lambda r: _replace(r / CELEBA, "000003.jpg   1  1 -1", "000003.jpg 1 0 -1"),
     CELEBA, "line 5, column Male: value '0' is not one of 1, -1"),
    ("not a number", lambda r: _replace(r / CELEBA, "000003.jpg   1  1 -1", "000003.jpg 1 y -1"),
     CELEBA, "line 5, column Male: value 'y' is not one of 1, -1"),
    ("duplicate image", lambda r: _replace(r / CELEBA, "000005.jpg", "000002.jpg"), CELEBA,
     "line 7: image '000002.jpg' is listed twice (first on line 4)"),
    ("duplicate attribute", lambda r: _replace(r / CELEBA, "Young", "Male"), CELEBA,
     "line 2: column name 'Male' appears twice"),
    ("no attributes", lambda r: _replace(r / CELEBA, "Smiling Male Young", ""), CELEBA,
     "line 2: no attribute names"),
    ("wrong count", lambda r: _replace(r / CELEBA, "6\n", "7\n"), CELEBA,
     "line 1: says 7 images but the table has 6 rows"),
    ("count not a number", lambda r: _replace(r / CELEBA, "6\n", "six\n"), CELEBA,
     "line 1: expected the number of images, found 'six'"),
    ("unknown partition", lambda r: _replace(r / PARTITION, "000005.jpg 1", "000005.jpg 3"),
     PARTITION, "line 5: unknown partition '3'; expected 0 (train), 1 (val) or 2 (test)"),
    ("partition without an image", lambda r: _replace(r / PARTITION, "000006.jpg 2\n", ""),
     PARTITION, "has no line for image '000006.jpg' (list_attr_celeba.txt line 8); 1 images "
     "of the table are missing"),
    ("duplicate partition", lambda r: _replace(r / PARTITION, "000006.jpg", "000001.jpg"),
     PARTITION, "line 6: image '000001.jpg' is listed twice (first on line 1)"),
]


@pytest.mark.parametrize(("case", "damage", "file", "message"), CELEBA_CASES,
                         ids=[c[0] for c in CELEBA_CASES])
def test_celeba_bad_data(tmp_path: Path, case: str, damage: Callable[[Path], None], file: str,
                         message: str) -> None:
    root = make_celeba(tmp_path / "celeba")
    damage(root)
    with pytest.raises(DataError) as err:
        load(root, LoadOptions())
    line = str(err.value)
    assert "\n" not in line
    assert line == f"{root / file}: " + message.format(root=root)


GOOD_CSV = "image,a,b,split\nx.png,1,0,train\ny.png,0,1,train\nz.png,1,1,test\n"
CSV_CASES = [
    ("short row", GOOD_CSV.replace("y.png,0,1,train", "y.png,0,1"),
     "line 3: has 3 values but the header has 4"),
    ("long row", GOOD_CSV.replace("y.png,0,1,train", "y.png,0,1,,train"),
     "line 3: has 5 values but the header has 4"),
    ("bad value", GOOD_CSV.replace("z.png,1,1", "z.png,1,yes"),
     "line 4, column b: value 'yes' is not one of 1, 0, -1 or empty"),
    ("duplicate image", GOOD_CSV.replace("z.png", "x.png"),
     "line 4: image 'x.png' is listed twice (first on line 2)"),
    ("unknown split", GOOD_CSV.replace("test", "testing"),
     "line 4, column split: unknown split 'testing'; expected train, val, test"),
    ("empty attribute name", GOOD_CSV.replace("image,a,b", "image,a,"),
     "line 1: column 3 has an empty name"),
    ("duplicate attribute", GOOD_CSV.replace("image,a,b", "image,a,a"),
     "line 1: column name 'a' appears twice"),
    ("no image column", GOOD_CSV.replace("image,", "file,"),
     "line 1: no column 'image' (the header has file, a, b, split)"),
    ("no attributes", "image,split\nx.png,train\n",
     "line 1: no attribute columns (only image and split)"),
    ("empty image name", GOOD_CSV.replace("y.png", ""), "line 3, column image: empty image name"),
    ("missing image", GOOD_CSV.replace("z.png", "w.png"),
     "line 4 (w.png): image {root}/images/w.png: file not found"),
]


@pytest.mark.parametrize(("case", "text", "message"), CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_bad_data(tmp_path: Path, case: str, text: str, message: str) -> None:
    root = make_csv(tmp_path / "d", text, images=("x.png", "y.png", "z.png"))
    with pytest.raises(DataError) as err:
        load(root, LoadOptions())
    line = str(err.value)
    assert "\n" not in line
    assert line == f"{root / 'attributes.csv'}: " + message.format(root=root)


def test_truncated_image_is_found_when_read(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "c")
    path = root / "img_align_celeba" / "000006.jpg"
    path.write_bytes(path.read_bytes()[:-20])  # the header survives, the pixels do not
    ds = load(root, LoadOptions())
    with pytest.raises(DataError, match=rf"^{root / CELEBA}: line 8 \(000006.jpg\): image "
                                        rf"{path}: corrupt image"):
        ds.split("test")[0]


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("bad", ["2", "yes"])  # an integer, and a value that is none
def test_skip_bad_samples(tmp_path: Path, bad: str) -> None:
    root = make_celeba(tmp_path / "c")
    (root / "img_align_celeba" / "000002.jpg").unlink()
    _replace(root / CELEBA, "000003.jpg   1  1 -1", f"000003.jpg 1 {bad} -1")
    ds = load(root, LoadOptions(skip_bad_samples=True))
    assert _targets(ds.split("train")) == {"000001.jpg": [1, 0, 1], "000004.jpg": [0, 1, 1]}
    assert [s["attributes"].tolist() for s in ds.split("train")] == [[1, 0, 1], [0, 1, 1]]
    assert len(ds.skipped) == 2
    assert "000002.jpg: file not found" in ds.skipped[0]
    assert f"line 5, column Male: value '{bad}'" in ds.skipped[1]
    assert any("2 bad samples skipped" in note for note in ds.notes)


def test_size_option_resizes_images_only(tmp_path: Path) -> None:
    ds = load(make_celeba(tmp_path / "c"), LoadOptions.make(size=(8, 12)))
    sample = ds.split("val")[0]
    assert sample["image"].shape == (8, 12, 3)
    assert sample["attributes"].tolist() == [1, 1, 1]


def test_images_of_different_sizes_need_the_size_option(tmp_path: Path) -> None:
    root = make_celeba(tmp_path / "c")
    _image(root / "img_align_celeba" / "000004.jpg", size=(20, 16))
    with pytest.raises(DataError) as err:
        load(root, LoadOptions())
    assert str(err.value) == (f"{root / CELEBA}: line 6 (000004.jpg): image "
                              f"{root / 'img_align_celeba' / '000004.jpg'} is 16×20 but the "
                              "first image is 16×16 (width×height); give an image size to "
                              "resize them")
    ds = load(root, LoadOptions.make(size=16))
    assert ds.split("train")[3]["image"].shape == (16, 16, 3)


def test_get_dataset(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "d", GOOD_CSV)
    ds = get_dataset("attributes:" + str(root), size=16)
    assert ds.tasks[0].kind == "multilabel"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [1, 1, 1]
    assert ds.split("test")[0]["image"].shape == (16, 16, 3)
    assert ds.split("test")[0]["attributes"].tolist() == [1, 1]
