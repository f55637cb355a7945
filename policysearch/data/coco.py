"""The COCO instances format (``coco:PATH``): detection, semantic segmentation and presence.

Layout: ``PATH/annotations/instances_<split>*.json`` (``instances_train2017.json``,
``instances_val2017.json``, …; the split is the name's prefix after ``instances_``: train, val
or test) and each split's images in ``PATH/<name>/`` or ``PATH/images/<name>/`` where
``<name>`` is the part after ``instances_`` (else the one folder there starting with the
split's name). A file without ``"annotations"`` (and every ``image_info_*.json``, COCO's test
image lists) is unlabelled: left out, with a note. A missing val or test split is carved by
``splits.assemble`` (notes say how).

Tasks, over the categories of all files sorted by COCO id and mapped to 0..K-1 (COCO's ids
are not contiguous; names kept in ``TaskSpec.class_names``):

* ``objects`` (detection): ``boxes`` from ``bbox`` [x, y, w, h] as pixel x1, y1, x2, y2
  (clipped to the image), ``box_labels`` the category indices;
* ``seg`` (segmentation, when any annotation has a segmentation): ``mask`` 0 = background,
  1 + category index. Polygons and RLE are decoded as pycocotools' ``annToMask`` does. Every
  region of an image is painted in one order, largest area first (ties in file order), so a
  smaller object on top of a larger one stays visible: an object paints its class; a crowd
  region, and the box of an annotation without a (usable) segmentation, paint 255 (ignore);
* ``present`` (multilabel): ``attributes`` K-vector (int64), 1 for each category with at
  least one non-crowd annotation in the image, else 0.

Crowd annotations give neither boxes nor presence, only ignore pixels. A box of zero width or
height (COCO train2017 has two) is dropped and counted in the notes; its object still counts as
present. Polygons of fewer than
three points have no area and are dropped (as detectron2 does). Instance masks are not
produced (``LoadOptions`` has no option asking for them).

Checks: structural problems of a file (not a JSON object, a bad ``categories`` or ``images``
entry id, an annotation of an unknown ``image_id``) stop the load. A bad annotation (unknown
``category_id``, a box more than 1 px beyond the image, a polygon beyond the
image, an RLE of another size, …) or image entry marks its image bad: the up-front check raises
it (``DataError`` naming the JSON file and the record, e.g. ``annotations[12] (id 901)``), and
``--skip-bad-samples`` leaves that image out. The check also reads each image's header: a
missing or unreadable file, or a size other than the JSON's width/height, is an error.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from policysearch.data.base import Sample, TaskSpec
from policysearch.data.files import image_size_of, read_image, read_json
from policysearch.data.splits import SPLITS, FileDataset, LoadOptions, assemble
from policysearch.errors import DataError

IGNORE = 255
BORDER_TOLERANCE = 1.0  # pixels a box or polygon may reach beyond the image (rounding)
PREFIX = "instances_"

Segmentation = list[np.ndarray] | dict[str, Any] | None  # polygons, RLE, or none usable


class _Bad(Exception):
    """A problem of one annotation or image entry; becomes a DataError naming the record."""


@dataclass(slots=True)
class _Object:
    category: int  # the COCO category id
    box: tuple[float, float, float, float] | None  # x1, y1, x2, y2 clipped; None: zero size
    segmentation: Segmentation
    crowd: bool


@dataclass(slots=True)
class _Image:
    path: Path
    height: int
    width: int
    source: str  # the annotation file
    where: str  # its record there, e.g. "images[3] (id 5)"
    objects: list[_Object] = field(default_factory=list)
    error: DataError | None = None  # the first problem of the image or its annotations


def load(path: Path, options: LoadOptions) -> FileDataset:
    """The COCO dataset at ``path`` (layout, tasks and checks: see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError("dataset folder not found", source=str(root))
    notes: list[str] = []
    names: dict[int, str] = {}
    named_in: dict[int, str] = {}
    records: dict[str, list[_Image]] = {}
    for split, file in _annotation_files(root, notes).items():
        data = read_json(file)
        if not isinstance(data, dict):
            raise DataError('must be a JSON object with "images", "annotations" and '
                            '"categories"', source=str(file))
        if "annotations" not in data:
            notes.append(f'{file.name}: no "annotations" (unlabelled split), left out')
            continue
        categories = _categories(data, str(file))
        for cid, name in categories.items():
            if names.setdefault(cid, name) != name:
                raise DataError(f"category id {cid} is named {name!r} here but "
                                f"{names[cid]!r} in {named_in[cid]}", source=str(file),
                                field="categories")
            named_in.setdefault(cid, file.name)
        records[split] = _read_split(data, str(file), categories,
                                     _image_folder(root, split, file))
    if "train" not in records:
        raise DataError(f'no labelled training split: expected annotations/{PREFIX}train*.json '
                        'with "annotations"', source=str(root))
    if not names:
        raise DataError('no categories in "categories"', source=str(root / "annotations"))
    ids = sorted(names)
    index = {cid: k for k, cid in enumerate(ids)}
    class_names = tuple(names[cid] for cid in ids)
    with_mask = any(o.segmentation is not None
                    for recs in records.values() for r in recs for o in r.objects)
    tasks = [TaskSpec("objects", "detection", num_classes=len(ids), class_names=class_names)]
    if with_mask:
        tasks.append(TaskSpec("seg", "segmentation", num_classes=len(ids) + 1,
                              class_names=("background", *class_names)))
    else:
        notes.append("no annotation has a segmentation: the seg task is left out")
    tasks.append(TaskSpec("present", "multilabel", num_classes=len(ids),
                          class_names=class_names))
    degenerate = sum(1 for recs in records.values() for r in recs for o in r.objects
                     if o.box is None and not o.crowd)
    if degenerate:
        notes.append(f"{degenerate} boxes of zero width or height dropped (their objects still "
                     "count as present)")
    dataset = assemble("coco", tasks, records, _loader(index, with_mask), _check, options,
                       source=str(root))
    dataset.notes[:0] = notes
    return dataset


# --- layout ----------------------------------------------------------------------------------


def _annotation_files(root: Path, notes: list[str]) -> dict[str, Path]:
    folder = root / "annotations"
    if not folder.is_dir():
        raise DataError(f"no annotations/ folder (expected annotations/{PREFIX}train2017.json "
                        "and the like)", source=str(root))
    files: dict[str, list[Path]] = {}
    for file in sorted(folder.glob(f"{PREFIX}*.json")):
        name = file.stem[len(PREFIX):]
        split = next((s for s in SPLITS if name.startswith(s)), None)
        if split is None:
            notes.append(f"{file.name}: not a train, val or test split, left out")
            continue
        files.setdefault(split, []).append(file)
    notes.extend(f"{file.name}: image list without annotations (unlabelled), left out"
                 for file in sorted(folder.glob("image_info_*.json")))
    for split, found in files.items():
        if len(found) > 1:
            raise DataError(f"several annotation files for split {split!r} "
                            f"({', '.join(f.name for f in found)}): keep one",
                            source=str(folder))
    return {split: found[0] for split, found in files.items()}


def _image_folder(root: Path, split: str, annotation_file: Path) -> Path:
    name = annotation_file.stem[len(PREFIX):]
    bases = [base for base in (root, root / "images") if base.is_dir()]
    for base in bases:
        if (base / name).is_dir():
            return base / name
    found = sorted(p for base in bases for p in base.iterdir()
                   if p.is_dir() and p.name.startswith(split))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"no image folder for split {split!r}: expected {name}/ or "
                        f"images/{name}/", source=str(root))
    listed = ", ".join(str(p.relative_to(root)) for p in found)
    raise DataError(f"several image folders could hold split {split!r} ({listed}): name "
                    f"one {name}/", source=str(root))


# --- the annotation file ---------------------------------------------------------------------


def _entries(data: dict[str, Any], key: str, source: str) -> list[Any]:
    entries = data.get(key)
    if not isinstance(entries, list):
        raise DataError(f'"{key}" must be a list', source=source, field=key)
    return entries


def _where(key: str, i: int, entry: Any) -> str:
    if isinstance(entry, dict) and "id" in entry:
        return f"{key}[{i}] (id {entry['id']!r})"
    return f"{key}[{i}]"


def _categories(data: dict[str, Any], source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for i, cat in enumerate(_entries(data, "categories", source)):
        where = _where("categories", i, cat)
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DataError('must be an object with an integer "id"', source=source,
                            field=where)
        if not isinstance(cat.get("name"), str):
            raise DataError('needs a "name" (a string)', source=source, field=where)
        if cat["id"] in out:
            raise DataError(f"category id {cat['id']} appears twice", source=source,
                            field=where)
        out[cat["id"]] = cat["name"]
    return out


def _read_split(data: dict[str, Any], source: str, categories: dict[int, str],
                folder: Path) -> list[_Image]:
    images: dict[int | str, _Image] = {}
    for i, entry in enumerate(_entries(data, "images", source)):
        where = _where("images", i, entry)
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if not _is_id(image_id):
            raise DataError('must be an object with an "id" (integer or string)',
                            source=source, field=where)
        if image_id in images:
            raise DataError(f"image id {image_id!r} appears twice", source=source, field=where)
        image = _Image(folder, 0, 0, source, where)
        try:
            image.path, image.height, image.width = _image_entry(entry, folder)
        except _Bad as bad:
            image.error = DataError(str(bad), source=source, field=where)
        images[image_id] = image
    for i, ann in enumerate(_entries(data, "annotations", source)):
        where = _where("annotations", i, ann)
        if not isinstance(ann, dict):
            raise DataError("must be an object", source=source, field=where)
        image_id = ann.get("image_id")
        image = images.get(image_id) if _is_id(image_id) else None
        if image is None:
            raise DataError(f'image_id {image_id!r} is not in "images"', source=source,
                            field=where)
        if image.error is not None:
            continue
        try:
            image.objects.append(_object(ann, categories, image.height, image.width))
        except _Bad as bad:
            image.error = DataError(str(bad), source=source, field=where)
    return list(images.values())


def _image_entry(entry: dict[str, Any], folder: Path) -> tuple[Path, int, int]:
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise _Bad('needs a "file_name"')
    height, width = entry.get("height"), entry.get("width")
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise _Bad(f'needs positive integers "width" and "height", got {width!r} and '
                   f"{height!r}")
    return folder / file_name, height, width


def _object(ann: dict[str, Any], categories: dict[int, str], height: int,
            width: int) -> _Object:
    category = ann.get("category_id")
    if not _is_int(category) or category not in categories:
        raise _Bad(f'category_id {category!r} is not in "categories"')
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise _Bad(f'"iscrowd" must be 0 or 1, got {crowd!r}')
    box = _box(ann.get("bbox"), height, width)
    segmentation = _segmentation(ann.get("segmentation"), height, width)
    return _Object(category, box, segmentation, bool(crowd))


def _box(bbox: Any, height: int, width: int) -> tuple[float, float, float, float] | None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and _finite_sum(bbox)):
        raise _Bad(f"bbox must be 4 numbers [x, y, width, height], got {_short(bbox)}")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        # COCO train2017 itself has two boxes of height 0 (annotations 918 and 2206849): the
        # box is dropped (counted in the notes), the instance still counts as present.
        return None
    tol = BORDER_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise _Bad(f"bbox {bbox} reaches beyond the image (width {width}, height {height}) "
                   "by more than 1 px")
    return max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))


def _segmentation(segm: Any, height: int, width: int) -> Segmentation:
    if segm is None or segm == []:
        return None
    if isinstance(segm, list):
        return _polygons(segm, height, width)
    if isinstance(segm, dict):
        return _rle(segm, height, width)
    raise _Bad('segmentation must be a list of polygons or an RLE object {"size", "counts"}')


def _polygons(segm: list[Any], height: int, width: int) -> list[np.ndarray] | None:
    tol = BORDER_TOLERANCE
    polygons = []
    for k, poly in enumerate(segm):
        if not (isinstance(poly, list) and len(poly) % 2 == 0 and _finite_sum(poly)):
            raise _Bad(f"segmentation polygon {k} must be a flat list of x, y numbers")
        if len(poly) < 6:  # fewer than three points: no area
            continue
        xs, ys = poly[0::2], poly[1::2]
        if min(xs) < -tol or min(ys) < -tol or max(xs) > width + tol or max(ys) > height + tol:
            raise _Bad(f"segmentation polygon {k} reaches beyond the image (width {width}, "
                       f"height {height}) by more than 1 px")
        polygons.append(np.asarray(poly, dtype=np.float64))  # a quarter of a list's memory
    return polygons or None


def _rle(segm: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise _Bad('segmentation RLE needs "size": [height, width]')
    if size != [height, width]:
        raise _Bad(f"segmentation RLE size {size} disagrees with the image size "
                   f"[{height}, {width}] (height, width)")
    if isinstance(counts, list):  # uncompressed, as COCO stores crowd regions
        if not (all(_is_int(c) and c >= 0 for c in counts) and sum(counts) == height * width):
            raise _Bad("segmentation RLE counts must be non-negative integers summing to "
                       f"height × width = {height * width}")
    elif not isinstance(counts, str):
        raise _Bad('segmentation RLE "counts" must be a string or a list of integers')
    return segm


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


def _finite_sum(values: list[Any]) -> bool:
    """Whether ``values`` are all finite numbers, cheaply: sum() refuses non-numbers (a list
    of strings concatenates, which isfinite refuses) and any NaN or infinity makes the total
    non-finite."""
    try:
        return math.isfinite(sum(values))
    except (TypeError, OverflowError):
        return False


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- samples ---------------------------------------------------------------------------------


def _check(record: _Image) -> None:
    if record.error is not None:
        raise record.error
    _check_size(record, image_size_of(record.path))


def _check_size(record: _Image, size: tuple[int, int]) -> None:
    if size != (record.height, record.width):
        raise DataError(f"image is {size[0]}×{size[1]} but the annotation file says "
                        f"{record.height}×{record.width} (height×width; "
                        f"{Path(record.source).name} {record.where})", source=str(record.path))


def _loader(index: dict[int, int], with_mask: bool) -> Callable[[_Image], Sample]:
    # A partial, not a closure: loader worker processes may receive it pickled.
    return functools.partial(_load_sample, index=index, with_mask=with_mask)


def _load_sample(record: _Image, *, index: dict[int, int], with_mask: bool) -> Sample:
    image = read_image(record.path)
    _check_size(record, image.shape[:2])
    objects = [o for o in record.objects if not o.crowd]
    present = np.zeros(len(index), dtype=np.int64)
    present[[index[o.category] for o in objects]] = 1
    boxed = [o for o in objects if o.box is not None]
    sample: Sample = {
        "image": image,
        "boxes": np.array([o.box for o in boxed], dtype=np.float32).reshape(-1, 4),
        "box_labels": np.array([index[o.category] for o in boxed], dtype=np.int64),
        "attributes": present,
    }
    if with_mask:
        sample["mask"] = _semantic_mask(record, index)
    return sample


def _semantic_mask(record: _Image, index: dict[int, int]) -> np.ndarray:
    """The H×W int64 mask of one image: regions painted largest first (module docstring)."""
    h, w = record.height, record.width
    regions = []
    for n, obj in enumerate(record.objects):
        if obj.segmentation is None:
            if obj.box is None:  # nothing to paint
                continue
            x1, y1, x2, y2 = obj.box
            area = (x2 - x1) * (y2 - y1)
            region: Any = (math.floor(y1), math.ceil(y2), math.floor(x1), math.ceil(x2))
        else:
            region = _to_rle(obj.segmentation, h, w)
            area = float(mask_utils.area(region))
        value = (IGNORE if obj.crowd or obj.segmentation is None
                 else 1 + index[obj.category])
        regions.append((-area, n, region, value))
    mask = np.zeros((h, w), dtype=np.int64)
    for _, _, region, value in sorted(regions, key=lambda r: (r[0], r[1])):
        if isinstance(region, tuple):
            top, bottom, left, right = region
            mask[top:bottom, left:right] = value
        else:
            mask[_decode(region)] = value
    return mask


def _decode(rle: dict[str, Any]) -> np.ndarray:
    with warnings.catch_warnings():
        # pycocotools 2.0.x under NumPy 2 warns about __array__'s copy keyword on every decode
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _to_rle(segmentation: list[np.ndarray] | dict[str, Any], h: int, w: int) -> dict[str, Any]:
    # As pycocotools' COCO.annToRLE: polygons merged into one RLE, uncompressed RLE compressed.
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, h, w)
    return segmentation
