"""The plain folder format for one's own data (``--dataset folder:PATH``).

``PATH`` is a folder holding ``dataset.yaml`` (or the path of that YAML file itself; its folder
is then the root). Paths in the YAML are relative to the root (absolute paths work too)::

    # PATH/dataset.yaml
    name: streets                 # optional; default: the folder's name
    images: images                # folder of images; a file's stem is its sample id
    splits:                       # optional, see "Splits" below
      train: splits/train.txt     # one image stem per line ('#' comments, blank lines ignored)
      val: splits/val.txt         # optional
      test: splits/test.txt       # optional
    tasks:                        # one or more
      - {name: seg, kind: segmentation, folder: masks, classes: [background, road, car]}
      - {name: depth, kind: depth, folder: depth, scale: 0.001}
      - {name: normals, kind: normals, folder: normals}
      - {name: objects, kind: detection, folder: boxes, format: json, classes: [car, person]}
      - {name: scene, kind: classification, file: labels.csv, classes: [indoor, outdoor]}
      - {name: tags, kind: multilabel, file: tags.csv, classes: [sunny, rainy]}
    unsafe_ops: [hflip]           # optional: ops that change what the labels mean (here: if
                                  # left and right mattered); an adapting space leaves them out

Every key is checked: an unknown key, a missing required one or a bad value stops the load
with one line naming the YAML file and the key (``dataset.yaml: tasks[1].scale: unknown key``).

Images: the image files directly inside ``images`` (.jpg .jpeg .png .bmp .tif .tiff .webp),
decoded to RGB. Two images may not share a stem.

Tasks: ``name`` (letters, digits, ``_`` and ``-``; unique) and ``kind``, then by kind:

- ``segmentation``: ``folder`` of ``<stem>.png`` (or .bmp/.tif/.tiff) single-channel masks of
  class indices 0..len(classes)-1, 255 = ignore; ``classes`` (at least 2, background
  included if the masks have one). Same size as the image.
- ``depth``: ``folder`` of ``<stem>.png`` (16-bit; or .tif/.tiff) or ``<stem>.npy`` (H×W)
  depth maps; ``scale`` (default 1) multiplies the stored values (0.001 for millimetres);
  0, NaN and infinity mean invalid; a negative depth is an error.
- ``normals``: ``folder`` of ``<stem>.npy`` H×W×3 surface normals in policysearch's
  convention: x right, y down, z out of the image plane; a zero (or non-finite) vector means
  invalid; others are scaled to unit length on load.
- ``detection``: ``folder`` of per-image box files and ``classes`` (object classes, no
  background). ``format: json`` (default): ``<stem>.json`` holding a list of
  ``{"box": [x1, y1, x2, y2], "label": "car"}`` in pixels (``label`` a class name or index;
  other keys ignored). ``format: yolo``: ``<stem>.txt`` with one ``class_index cx cy w h`` line
  per box, normalised to 0..1 (a ``classes.txt`` in the folder is ignored). An empty list or
  file means "labelled, no objects". A box may reach 1 pixel beyond the border (it is clipped);
  further out, empty, or of an unknown class, it is an error.
- ``classification``: ``file``, a CSV with a header row, an ``image`` column (the image's stem
  or file name) and the label in column ``column`` (default ``label``): a class name or a
  0-based class index; an empty cell means unlabelled. ``classes``: at least 2.
- ``multilabel``: ``file``, a CSV with an ``image`` column and one column per class named as
  in ``classes``: ``1`` present, ``0`` absent, empty (or ``-1``) unknown. Other columns are
  ignored, so several tasks may share one CSV.

Only one task of each spatial kind (segmentation, depth, normals, detection) is allowed: the
augmentation moves the sample keys ``mask``, ``depth``, ``normals`` and ``boxes``. Several
classification (or multilabel) tasks may coexist; each then keeps its target under its own
task name instead of ``label`` (``attributes``).

Partial labels: an image without a target file (or CSV row) for a task is simply unlabelled for
that task (its sample lacks the key); the notes count them per task. A task with no labelled
image at all is an error. A target file or CSV row naming no image is an error (with
``--skip-bad-samples`` it is ignored and listed among the skipped). Every sample is checked
before training (image and target headers readable, sizes equal, box files parsed, CSV labels
known); a bad one is an error naming the file (and line or item), or with
``--skip-bad-samples`` is left out. Mask values and undecodable pixel data are found when a
sample is first read.

Splits, in order of precedence: ``splits`` in the YAML (``train`` required; a stem may be in
one split only; images in no split file are not used, and a note says how many); else
subfolders ``images/train``, ``images/val``, ``images/test`` (target folders may be flat or
have the same subfolders); else every image is train. A missing val (test) split is carved
from train, deterministically by seed, and the notes say so (``policysearch.data.splits``).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from policysearch.config import read_yaml
from policysearch.data.base import TARGET_KEYS, Sample, TaskSpec
from policysearch.data.files import (
    IMAGE_SUFFIXES,
    image_size_of,
    list_images,
    read_depth,
    read_image,
    read_json,
    read_mask,
    read_npy,
    read_text,
)
from policysearch.data.splits import SPLITS, FileDataset, LoadOptions, assemble
from policysearch.errors import DataError, UserError

YAML_NAME = "dataset.yaml"
IGNORE = 255
BORDER_SLACK = 1.0  # pixels a box may reach beyond the image border before it is an error
SPATIAL_KINDS = ("segmentation", "depth", "normals", "detection")
RESERVED_KEYS = frozenset({"image", "instance_masks", *(k for ks in TARGET_KEYS.values()
                                                          for k in ks)})

HW = tuple[int, int]


# ----------------------------------------------------------------------------- the YAML schema

def _unique(names: list[str]) -> list[str]:
    seen = set()
    for i, name in enumerate(names):
        if not name.strip():
            raise ValueError(f"class name {i} is empty")
        if name in seen:
            raise ValueError(f"lists class {name!r} twice")
        seen.add(name)
    return names


ClassNames = Annotated[list[str], AfterValidator(_unique)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Task(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    kind: str

    def spec(self, key: str = "") -> TaskSpec:
        raise NotImplementedError


class _FolderTask(_Task):
    """A task with one target file per image in ``folder``."""

    folder: str
    suffixes: ClassVar[tuple[str, ...]] = ()

    def file_suffixes(self) -> tuple[str, ...]:
        return self.suffixes

    def check(self, path: Path, hw: HW) -> None:
        """Cheap up-front check of one target file against its image's (H, W)."""
        _check_size(path, image_size_of(path), hw)

    def load(self, path: Path, hw: HW) -> Sample:
        raise NotImplementedError


class SegmentationTask(_FolderTask):
    kind: Literal["segmentation"]
    classes: ClassNames = Field(min_length=2)
    suffixes: ClassVar[tuple[str, ...]] = (".png", ".bmp", ".tif", ".tiff")

    def spec(self, key: str = "") -> TaskSpec:
        return TaskSpec(self.name, self.kind, num_classes=len(self.classes),
                        class_names=tuple(self.classes), ignore_index=IGNORE)

    def load(self, path: Path, hw: HW) -> Sample:
        mask = read_mask(path)
        _check_size(path, mask.shape[:2], hw)
        bad = ((mask >= len(self.classes)) & (mask != IGNORE)) | (mask < 0)
        if bad.any():
            value = int(mask[bad][0])
            raise DataError(f"mask value {value} is neither a class index "
                            f"(0..{len(self.classes) - 1}) nor {IGNORE} (ignore)",
                            source=str(path))
        return {"mask": mask}


class DepthTask(_FolderTask):
    kind: Literal["depth"]
    scale: float = Field(1.0, gt=0, allow_inf_nan=False)
    suffixes: ClassVar[tuple[str, ...]] = (".png", ".tif", ".tiff", ".npy")

    def spec(self, key: str = "") -> TaskSpec:
        return TaskSpec(self.name, self.kind)

    def check(self, path: Path, hw: HW) -> None:
        if path.suffix.lower() != ".npy":
            return super().check(path, hw)
        shape = _npy_shape(path)
        if len(shape) == 3 and shape[2] == 1:
            shape = shape[:2]
        if len(shape) != 2:
            raise DataError(f"depth must be H×W, got shape {shape}", source=str(path))
        _check_size(path, shape, hw)

    def load(self, path: Path, hw: HW) -> Sample:
        depth = read_depth(path, self.scale)
        _check_size(path, depth.shape[:2], hw)
        depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
        if (depth < 0).any():
            raise DataError(f"negative depth {float(depth.min()):g} (0 marks invalid pixels)",
                            source=str(path))
        return {"depth": np.ascontiguousarray(depth)}


class NormalsTask(_FolderTask):
    kind: Literal["normals"]
    suffixes: ClassVar[tuple[str, ...]] = (".npy",)

    def spec(self, key: str = "") -> TaskSpec:
        return TaskSpec(self.name, self.kind)

    def check(self, path: Path, hw: HW) -> None:
        shape = _npy_shape(path)
        if len(shape) != 3 or shape[2] != 3:
            raise DataError(f"normals must be H×W×3, got shape {shape}", source=str(path))
        _check_size(path, shape, hw)

    def load(self, path: Path, hw: HW) -> Sample:
        arr = read_npy(path)
        if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"normals must be a numeric H×W×3 array, got shape {arr.shape}",
                            source=str(path))
        _check_size(path, arr.shape, hw)
        normals = arr.astype(np.float32)
        normals[~np.isfinite(normals).all(axis=2)] = 0.0
        length = np.linalg.norm(normals, axis=2, keepdims=True)
        normals = np.where(length > 1e-6, normals / np.maximum(length, 1e-6), 0.0)
        return {"normals": np.ascontiguousarray(normals, dtype=np.float32)}


class DetectionTask(_FolderTask):
    kind: Literal["detection"]
    classes: ClassNames = Field(min_length=1)
    format: Literal["json", "yolo"] = "json"

    def file_suffixes(self) -> tuple[str, ...]:
        return (".json",) if self.format == "json" else (".txt",)

    def spec(self, key: str = "") -> TaskSpec:
        return TaskSpec(self.name, self.kind, num_classes=len(self.classes),
                        class_names=tuple(self.classes))

    def check(self, path: Path, hw: HW) -> None:
        self.load(path, hw)

    def load(self, path: Path, hw: HW) -> Sample:
        parse = self._json if self.format == "json" else self._yolo
        boxes, labels = [], []
        for where, box, label in parse(path, hw):
            boxes.append(_valid_box(box, hw, path, where))
            labels.append(label)
        return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "box_labels": np.asarray(labels, dtype=np.int64)}

    def _class(self, label: Any, path: Path, where: str) -> int:
        if isinstance(label, str) and label in self.classes:
            return self.classes.index(label)
        if isinstance(label, int) and not isinstance(label, bool) and \
                0 <= label < len(self.classes):
            return label
        raise DataError(f"unknown class {label!r}; classes: {', '.join(self.classes)}",
                        source=str(path), field=where)

    def _json(self, path: Path, hw: HW) -> list[tuple[str, list[float], int]]:
        data = read_json(path)
        if not isinstance(data, list):
            raise DataError('must be a JSON list of {"box": [x1, y1, x2, y2], "label": ...}',
                            source=str(path))
        out = []
        for i, item in enumerate(data):
            where = f"[{i}]"
            if not isinstance(item, dict) or "box" not in item or "label" not in item:
                raise DataError('each item must be {"box": [x1, y1, x2, y2], "label": ...}',
                                source=str(path), field=where)
            box = item["box"]
            if not (isinstance(box, list) and len(box) == 4 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                raise DataError(f"box must be 4 numbers [x1, y1, x2, y2], got {box!r}",
                                source=str(path), field=f"{where}.box")
            out.append((where, [float(v) for v in box],
                        self._class(item["label"], path, f"{where}.label")))
        return out

    def _yolo(self, path: Path, hw: HW) -> list[tuple[str, list[float], int]]:
        h, w = hw
        out = []
        for n, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {n}"
            parts = line.split()
            try:
                if len(parts) != 5:
                    raise ValueError
                index = int(parts[0])
                cx, cy, bw, bh = (float(v) for v in parts[1:])
            except ValueError:
                raise DataError(f"expected 'class_index cx cy w h', got {line.strip()!r}",
                                source=str(path), field=where) from None
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            out.append((where, box, self._class(index, path, where)))
        return out


class _CsvTask(_Task):
    file: str

    def parse(self, row: dict[str, str], path: Path, line: int) -> Any:
        """The target of one CSV row; None when it is unlabelled."""
        raise NotImplementedError

    def required_columns(self) -> list[str]:
        raise NotImplementedError


class ClassificationTask(_CsvTask):
    kind: Literal["classification"]
    classes: ClassNames = Field(min_length=2)
    column: str = "label"

    def spec(self, key: str = "") -> TaskSpec:
        return TaskSpec(self.name, self.kind, num_classes=len(self.classes),
                        class_names=tuple(self.classes), key=key)

    def required_columns(self) -> list[str]:
        return [self.column]

    def parse(self, row: dict[str, str], path: Path, line: int) -> int | None:
        value = row[self.column]
        if value == "":
            return None
        if value in self.classes:
            return self.classes.index(value)
        if value.isascii() and value.isdigit() and int(value) < len(self.classes):
            return int(value)
        raise DataError(f"unknown class {value!r} in column {self.column!r}; classes: "
                        f"{', '.join(self.classes)}", source=str(path), field=f"line {line}")


class MultilabelTask(_CsvTask):
    kind: Literal["multilabel"]
    classes: ClassNames = Field(min_length=1)

    def spec(self, key: str = "") -> TaskSpec:
        return TaskSpec(self.name, self.kind, num_classes=len(self.classes),
                        class_names=tuple(self.classes), key=key)

    def required_columns(self) -> list[str]:
        return list(self.classes)

    def parse(self, row: dict[str, str], path: Path, line: int) -> np.ndarray:
        values = {"1": 1, "0": 0, "": -1, "-1": -1}
        out = []
        for name in self.classes:
            cell = row[name]
            if cell not in values:
                raise DataError(f"column {name!r} must be 1, 0 or empty (unknown), got {cell!r}",
                                source=str(path), field=f"line {line}")
            out.append(values[cell])
        return np.asarray(out, dtype=np.int64)


AnyTask = Annotated[SegmentationTask | DepthTask | NormalsTask | DetectionTask
                    | ClassificationTask | MultilabelTask, Field(discriminator="kind")]
KINDS = ("segmentation", "depth", "normals", "detection", "classification", "multilabel")


class SplitFiles(_Strict):
    train: str
    val: str | None = None
    test: str | None = None


def _known_ops(names: list[str]) -> list[str]:
    from policysearch.augment import OPS

    for i, name in enumerate(names):
        if name not in OPS:
            raise ValueError(f"unknown op {name!r} (item {i}); run 'policysearch ops' to list "
                             "them")
    return names


class FolderConfig(_Strict):
    """The contents of ``dataset.yaml`` (see the module docstring)."""

    name: str | None = None
    images: str = "images"
    splits: SplitFiles | None = None
    tasks: list[AnyTask] = Field(min_length=1)
    unsafe_ops: Annotated[list[str], AfterValidator(_known_ops)] = Field(default_factory=list)


# ----------------------------------------------------------------------------- loading

@dataclass(frozen=True)
class _Record:
    stem: str
    image: Path
    targets: dict[str, Any]  # task name → target file (folder tasks), label or DataError (CSV)


def load(path: Path, options: LoadOptions) -> FileDataset:
    """The dataset described by ``PATH/dataset.yaml`` (or the YAML file ``path``)."""
    yaml_path = path / YAML_NAME if path.is_dir() else path
    if not yaml_path.is_file():
        raise DataError(f"no {YAML_NAME} here; the folder format needs one naming the images "
                        "and tasks (see the README, 'Your own data')", source=str(path))
    root = yaml_path.parent
    config = read_config(yaml_path)
    keys = _target_keys(config, yaml_path)
    images, split_stems, notes = _images_and_splits(config, root, yaml_path)

    skipped: list[str] = []
    targets: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(config.tasks):
        if isinstance(task, _FolderTask):
            found, orphans = _folder_targets(task, i, root, yaml_path, images)
        else:
            assert isinstance(task, _CsvTask)
            found, orphans = _csv_targets(task, i, root, yaml_path, images)
        for orphan in orphans:
            if not options.skip_bad_samples:
                raise orphan
            skipped.append(str(orphan))
        targets[task.name] = found

    records = {split: [_Record(stem, images[stem], {name: found[stem]
                                                    for name, found in targets.items()
                                                    if stem in found})
                       for stem in stems]
               for split, stems in split_stems.items()}
    for i, task in enumerate(config.tasks):
        if not any(task.name in r.targets for recs in records.values() for r in recs):
            where = f"the files in {task.folder}" if isinstance(task, _FolderTask) else task.file
            raise DataError(f"no image of the dataset is labelled by {where} (their names must "
                            "be the image stems)", source=str(yaml_path), field=f"tasks[{i}]")

    tasks = {task.name: task for task in config.tasks}
    dataset = assemble(config.name or root.resolve().name,
                       [task.spec(keys[task.name]) for task in config.tasks], records,
                       _loader(tasks, keys), _checker(tasks), options, source=str(yaml_path),
                       peek=functools.partial(_peek_sample, tasks=tasks, keys=keys))
    used = [r for split in dataset.splits.values()
            for r in split.records]  # type: ignore[attr-defined]  # LazySplits
    for task in config.tasks:
        unlabelled = sum(task.name not in r.targets for r in used)
        if unlabelled:
            notes.append(f"{task.name}: {unlabelled} of {len(used)} images unlabelled")
    if skipped:
        notes.append(f"{len(skipped)} target files or CSV rows naming no image ignored "
                     "(--skip-bad-samples)")
    dataset.notes.extend(notes)
    dataset.skipped[:0] = skipped
    dataset.unsafe_ops = tuple(config.unsafe_ops)
    return dataset


def read_config(yaml_path: Path) -> FolderConfig:
    """``dataset.yaml`` validated; any problem is one DataError naming the file and key."""
    try:
        data = read_yaml(yaml_path)
    except UserError as err:
        raise DataError(err.message, source=err.source, field=err.field) from None
    if not isinstance(data, dict):
        raise DataError("must be a YAML mapping with 'images' and 'tasks'", source=str(yaml_path))
    try:
        return FolderConfig.model_validate(data)
    except ValidationError as err:
        raise _yaml_error(err, yaml_path) from None


def _yaml_error(err: ValidationError, yaml_path: Path) -> DataError:
    first = err.errors()[0]
    field, after_index = "", False
    for part in first["loc"]:
        if isinstance(part, int):
            field += f"[{part}]"
            after_index = True
            continue
        if not (after_index and part in KINDS):  # pydantic's step into the union member
            field += f".{part}" if field else str(part)
        after_index = False
    message = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "union_tag_invalid":
        field += ".kind"
        message = f"unknown task kind {first['input'].get('kind')!r}; known: {', '.join(KINDS)}"
    elif kind == "union_tag_not_found":
        field += ".kind"
        message = f"required key is missing (one of {', '.join(KINDS)})"
    return DataError(message, source=str(yaml_path), field=field or None)


def _target_keys(config: FolderConfig, yaml_path: Path) -> dict[str, str]:
    """Each task's sample key ("" = its kind's default); refuses clashes."""
    kinds = Counter(task.kind for task in config.tasks)
    names: set[str] = set()
    seen: dict[str, int] = {}
    keys = {}
    for i, task in enumerate(config.tasks):
        if task.name in names:
            raise DataError(f"two tasks are named {task.name!r}", source=str(yaml_path),
                            field=f"tasks[{i}].name")
        names.add(task.name)
        if task.kind in SPATIAL_KINDS and task.kind in seen:
            raise DataError(f"a second {task.kind} task (tasks[{seen[task.kind]}] is one); only "
                            f"one task per spatial kind ({', '.join(SPATIAL_KINDS)}) is possible "
                            "since the augmentation moves one target of each",
                            source=str(yaml_path), field=f"tasks[{i}].kind")
        seen.setdefault(task.kind, i)
        keys[task.name] = task.name if kinds[task.kind] > 1 else ""
        if keys[task.name] in RESERVED_KEYS:
            raise DataError(f"{task.name!r} is a sample key; with several {task.kind} tasks "
                            "each is stored under its name, so pick another name",
                            source=str(yaml_path), field=f"tasks[{i}].name")
    return keys


def _images_and_splits(config: FolderConfig, root: Path, yaml_path: Path
                       ) -> tuple[dict[str, Path], dict[str, list[str]], list[str]]:
    """Images by stem, the stems of each split, and notes."""
    folder = root / config.images
    if not folder.is_dir():
        raise DataError(f"images folder not found: {folder}", source=str(yaml_path),
                        field="images")
    subfolders = [s for s in SPLITS if (folder / s).is_dir()]
    if config.splits is None and subfolders:
        if "train" not in subfolders:
            raise DataError(f"has {', '.join(s + '/' for s in subfolders)} but no train/",
                            source=str(folder))
        loose = list_images(folder)
        if loose:
            raise DataError(f"images both directly inside and in split subfolders "
                            f"(e.g. {loose[0].name}); move them into {', '.join(subfolders)}/",
                            source=str(folder))
        images: dict[str, Path] = {}
        split_stems = {}
        for split in subfolders:
            found = _by_stem(list_images(folder / split), folder, images)
            images.update(found)
            split_stems[split] = list(found)
        return images, split_stems, []
    images = _by_stem(list_images(folder), folder, {})
    if not images:
        raise DataError(f"no images found (looked for {' '.join(IMAGE_SUFFIXES)})",
                        source=str(folder))
    if config.splits is None:
        return images, {"train": list(images)}, []
    split_stems, owner = {}, {}
    for split in SPLITS:
        name = getattr(config.splits, split)
        if name is not None:
            split_stems[split] = _read_split_file(root / name, split, images, owner, yaml_path)
    unused = len(images) - len(owner)
    notes = [f"{unused} of {len(images)} images are in no split file and not used"] if unused \
        else []
    return images, split_stems, notes


def _by_stem(files: list[Path], folder: Path, taken: dict[str, Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in files:
        other = found.get(file.stem) or taken.get(file.stem)
        if other is not None:
            raise DataError(f"two files share the stem {file.stem!r}: "
                            f"{other.relative_to(folder)} and {file.relative_to(folder)}",
                            source=str(folder))
        found[file.stem] = file
    return found


def _read_split_file(path: Path, split: str, images: dict[str, Path], owner: dict[str, str],
                     yaml_path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"split file not found: {path}", source=str(yaml_path),
                        field=f"splits.{split}")
    stems = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        stem = _stem_of(entry, images)
        if stem is None:
            raise DataError(f"no image {entry!r} in the images folder", source=str(path),
                            field=f"line {n}")
        if stem in owner:
            where = "earlier in this file" if owner[stem] == split else f"in {owner[stem]}"
            raise DataError(f"image {stem!r} is listed twice (also {where})", source=str(path),
                            field=f"line {n}")
        owner[stem] = split
        stems.append(stem)
    if not stems:
        raise DataError("lists no image", source=str(path))
    return stems


def _stem_of(entry: str, images: dict[str, Path]) -> str | None:
    """The image stem an index entry names: a stem, or a file name with its suffix."""
    if entry in images:
        return entry
    name = Path(entry)
    if name.suffix.lower() in IMAGE_SUFFIXES and name.stem in images:
        return name.stem
    return None


def _folder_targets(task: _FolderTask, index: int, root: Path, yaml_path: Path,
                    images: dict[str, Path]) -> tuple[dict[str, Path], list[DataError]]:
    """Target files by image stem, and one error per file naming no image."""
    folder = root / task.folder
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}", source=str(yaml_path),
                        field=f"tasks[{index}].folder")
    files = []
    for sub in (folder, *(folder / s for s in SPLITS if (folder / s).is_dir())):
        files += sorted(p for p in sub.iterdir() if p.is_file()
                        and p.suffix.lower() in task.file_suffixes()
                        and not (isinstance(task, DetectionTask) and p.name == "classes.txt"))
    found = _by_stem(files, folder, {})
    orphans = [DataError(f"names no image (no {stem}.* in the images folder)", source=str(p))
               for stem, p in found.items() if stem not in images]
    return {s: p for s, p in found.items() if s in images}, orphans


def _csv_targets(task: _CsvTask, index: int, root: Path, yaml_path: Path,
                 images: dict[str, Path]) -> tuple[dict[str, Any], list[DataError]]:
    """Labels (or the DataError of a bad label) by image stem, and one error per row naming
    no image."""
    path = root / task.file
    if not path.is_file():
        raise DataError(f"file not found: {path}", source=str(yaml_path),
                        field=f"tasks[{index}].file")
    reader = csv.DictReader(io.StringIO(read_text(path, encoding="utf-8-sig"), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in ("image", *task.required_columns()) if c not in header]
    if missing:
        columns = f"the header has {', '.join(header)}" if header else "no header row"
        raise DataError(f"no column {missing[0]!r} ({columns})", source=str(path),
                        field="line 1")
    reader.fieldnames = header
    found: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    orphans = []
    for row in reader:
        line = reader.line_num
        if None in row or None in row.values():
            raise DataError(f"the number of fields differs from the header's ({len(header)})",
                            source=str(path), field=f"line {line}")
        row = {k: v.strip() for k, v in row.items()}
        stem = _stem_of(row["image"], images)
        if stem is None:
            orphans.append(DataError(f"no image {row['image']!r} in the images folder",
                                     source=str(path), field=f"line {line}"))
            continue
        if stem in first_line:
            raise DataError(f"image {stem!r} is listed twice (first on line "
                            f"{first_line[stem]})", source=str(path), field=f"line {line}")
        first_line[stem] = line
        try:
            value = task.parse(row, path, line)
        except DataError as err:
            value = err  # raised by that sample's check: --skip-bad-samples may drop it
        if value is not None:
            found[stem] = value
    return found, orphans


def _checker(tasks: dict[str, _Task]) -> Callable[[_Record], None]:
    def check(record: _Record) -> None:
        hw = image_size_of(record.image)
        for name, target in record.targets.items():
            task = tasks[name]
            if isinstance(target, DataError):
                raise target
            if isinstance(task, _FolderTask):
                task.check(target, hw)
    return check


def _loader(tasks: dict[str, _Task], keys: dict[str, str]) -> Callable[[_Record], Sample]:
    # A partial, not a closure: loader worker processes may receive it pickled.
    return functools.partial(_load_sample, tasks=tasks, keys=keys)


def _load_sample(record: _Record, *, tasks: dict[str, _Task], keys: dict[str, str]) -> Sample:
    image = read_image(record.image)
    hw = (int(image.shape[0]), int(image.shape[1]))
    sample: Sample = {"image": image}
    for name, target in record.targets.items():
        task = tasks[name]
        if isinstance(target, DataError):
            raise target
        if isinstance(task, _FolderTask):
            sample.update(task.load(target, hw))
        else:
            key = keys[name] or TARGET_KEYS[task.kind][0]
            sample[key] = target.copy() if isinstance(target, np.ndarray) else target
    return sample


def _peek_sample(record: _Record, *, tasks: dict[str, _Task], keys: dict[str, str]) -> Sample:
    """The CSV tasks' targets of ``record`` (class labels, attribute vectors) as its sample
    holds them, without reading its image or target files (``LazySplit.peek``)."""
    sample: Sample = {}
    for name, target in record.targets.items():
        task = tasks[name]
        if isinstance(task, _FolderTask) or isinstance(target, DataError):
            continue
        sample[keys[name] or TARGET_KEYS[task.kind][0]] = target
    return sample


# ----------------------------------------------------------------------------- helpers

def _check_size(path: Path, shape: tuple[int, ...], hw: HW) -> None:
    h, w = int(shape[0]), int(shape[1])
    if (h, w) != hw:
        raise DataError(f"size {w}×{h} differs from its image's {hw[1]}×{hw[0]} (width×height)",
                        source=str(path))


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape of a ``.npy`` array, read from its header (the data stays on disk)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"not a readable .npy array: {str(err).splitlines()[0]}",
                        source=str(path)) from None
    shape = tuple(int(n) for n in arr.shape)
    del arr
    return shape


def _valid_box(box: list[float], hw: HW, path: Path, where: str) -> list[float]:
    h, w = hw
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"box {box} is not finite", source=str(path), field=where)
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"box {_fmt(box)} is empty (needs x1 < x2 and y1 < y2)",
                        source=str(path), field=where)
    s = BORDER_SLACK
    clipped = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w),
               min(max(y2, 0.0), h)]
    if (x1 < -s or y1 < -s or x2 > w + s or y2 > h + s
            or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]):
        raise DataError(f"box {_fmt(box)} lies outside the {w}×{h} image (more than "
                        f"{s:g} px beyond its border)", source=str(path), field=where)
    return clipped


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


