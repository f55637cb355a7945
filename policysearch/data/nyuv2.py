"""``nyuv2:PATH``: the preprocessed NYUv2 of MTAN and LibMTL (Liu et al., "End-to-End Multi-Task
Learning with Attention", CVPR 2019): 13-class segmentation, depth and surface normals.

Layout, as read by lorenmt/mtan ``im2im_pred/create_dataset.py`` and
median-research-group/LibMTL ``examples/nyu/create_dataset.py``::

    PATH/{train,val}/{image,label,depth,normal}/<index>.npy

one array per sample and kind, H×W-last (the loaders move the last axis first):

- ``image`` H×W×3 float RGB in [0, 1] (both loaders feed it to the network as it is, with no
  normalisation); converted here to uint8.
- ``label`` H×W float class indices 0..12, -1 unlabelled (``ignore_index=-1`` in the losses and
  metrics of mtan ``im2im_pred/utils.py`` and LibMTL ``examples/nyu/utils.py``); here int64 with
  -1 → 255. The 13 classes are those of ankurhanda/nyuv2-meta-data, named (in index order) in
  the README of ankurhanda/SceneNetv1.0, whose class 0 is void: MTAN's index = that class − 1.
- ``depth`` H×W×1 float, 0 where missing (both repositories mask ``depth != 0``); metres, as in
  the NYUv2 toolbox (the sources do not state the unit); here H×W float32.
- ``normal`` H×W×3 float unit vectors, zero where missing (both mask ``sum(normal) != 0``; LibMTL
  notes "gt has been normalized"). The mtan README says they are the precomputed normals of
  Eigen & Fergus (cs.nyu.edu/~deigen/dnl). Their axes are stated nowhere in MTAN or LibMTL; we
  take them to be NYU's convention as the Stanford 2D-3D-Semantics paper describes it (quoted in
  alexsax/2D-3D-Semantics issue #13: red = horizontal, more to the right; green = vertical, more
  downwards; blue = towards the camera), consistent with LibMTL's horizontal flip negating
  channel 0 only. That is already policysearch's convention (x right, y down, z out of the image
  plane, towards the viewer), so the default conversion is the identity. A copy stored in other
  axes is read with ``load(path, options, normal_axes=(...))``, e.g. registered under its own
  scheme with ``functools.partial`` (see ``to_pixel_axes``).

Samples are the files of ``image/`` (sorted by index); a sample without its label, depth or
normal file is an error (this format has no partial labels), as are unreadable files, arrays of
the wrong shape or dtype and, when no ``size`` is given, images of differing sizes. Those checks
read only the .npy headers, before the first trial. Values are checked when a sample is decoded
(labels outside -1..12 or not whole numbers, images outside [0, 1] beyond ``TOLERANCE``,
negative depth, normal components outside [-1, 1]): the error names the file. NYUv2 has train
and val only, so ``assemble`` uses val as test and carves val from train (and says so in notes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policysearch.data.base import Sample, TaskSpec
from policysearch.data.splits import FileDataset, LoadOptions, assemble
from policysearch.errors import DataError, UserError

NUM_CLASSES = 13
CLASS_NAMES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting",
               "sofa", "table", "tv", "wall", "window")
IGNORE = 255
TOLERANCE = 1e-3  # how far image values and normal components may stray outside their range
KINDS = ("image", "label", "depth", "normal")
SPLIT_DIRS = ("train", "val")

TASKS = (
    TaskSpec("seg", "segmentation", num_classes=NUM_CLASSES, class_names=CLASS_NAMES,
             ignore_index=IGNORE),
    TaskSpec("depth", "depth"),
    TaskSpec("normals", "normals"),
)

# Where each stored normal channel points, in words; the default is NYU's (see the docstring).
PIXEL_AXES = ("right", "down", "out")
_DIRECTIONS = {"right": (0, 1.0), "left": (0, -1.0), "down": (1, 1.0), "up": (1, -1.0),
               "out": (2, 1.0), "in": (2, -1.0)}


@dataclass(frozen=True)
class Record:
    """One sample: its split folder and index, and the four files that make it."""

    split: str
    index: str
    files: dict[str, Path]


def load(path: Path, options: LoadOptions, *,
         normal_axes: Sequence[str] = PIXEL_AXES) -> FileDataset:
    """The NYUv2 dataset under ``path`` (see the module docstring). ``normal_axes`` says where
    the stored normal channels 0, 1, 2 point: each one of right/left, down/up, out/in (out:
    towards the camera)."""
    matrix = axes_matrix(normal_axes)
    if not path.is_dir():
        raise DataError("NYUv2 folder not found (expected train/ and val/ with image/, label/, "
                        "depth/, normal/ folders of .npy files)", source=str(path))
    # assemble makes the given val split the test split and carves val from train.
    records = {split: _records(path, split) for split in SPLIT_DIRS}
    # A partial, not a closure: loader worker processes may receive it pickled.
    return assemble("nyuv2", TASKS, records, functools.partial(_load, matrix=matrix),
                    _checker(options), options, source=str(path))


def _records(root: Path, split: str) -> list[Record]:
    folder = root / split / "image"
    if not folder.is_dir():
        if split == "train":
            raise DataError("folder not found (NYUv2 needs train/image/ of .npy files)",
                            source=str(folder))
        return []
    stems = [p.stem for p in folder.iterdir() if p.suffix == ".npy" and p.is_file()]
    stems.sort(key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
    return [Record(split, stem, {kind: root / split / kind / f"{stem}.npy" for kind in KINDS})
            for stem in stems]


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file; memory-mapping reads only its header."""
    arr = _read(path, mmap=True)
    shape, dtype = tuple(int(n) for n in arr.shape), arr.dtype
    del arr
    return shape, dtype


def _read(path: Path, *, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        kind = path.parent.name
        what = "file not found" if kind == "image" else (
            f"file not found: the {kind} of image {path.stem} is missing (every NYUv2 sample "
            f"needs image, label, depth and normal)")
        raise DataError(what, source=str(path))
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"not a readable .npy array: {reason}", source=str(path)) from None


def _checker(options: LoadOptions) -> Callable[[Record], None]:
    """The up-front check of one record: files present, headers readable, shapes agree; with
    no ``size`` option, every image has the size of the first good one."""
    seen: dict[str, tuple[int, int]] = {}

    def check(rec: Record) -> None:
        headers = {kind: _header(rec.files[kind]) for kind in KINDS}
        shape, dtype = headers["image"]
        image = rec.files["image"]
        if len(shape) != 3 or shape[2] != 3:
            raise DataError(f"an image must be H×W×3, got shape {shape}", source=str(image))
        if dtype.kind != "f":
            raise DataError(f"an image must hold floats in [0, 1], got dtype {dtype}",
                            source=str(image))
        hw = shape[:2]
        expected = {"label": (hw,), "depth": ((*hw, 1), hw), "normal": ((*hw, 3),)}
        for kind, shapes in expected.items():
            got, got_dtype = headers[kind]
            if got not in shapes:
                want = " or ".join(str(s) for s in shapes)
                raise DataError(f"shape {got} does not match its image {image.name} of shape "
                                f"{shape}: expected {want}", source=str(rec.files[kind]))
            kinds = ("f", "i", "u") if kind == "label" else ("f",)
            if got_dtype.kind not in kinds:
                raise DataError(f"unexpected dtype {got_dtype} for a {kind} array",
                                source=str(rec.files[kind]))
        if options.size is None:
            first = seen.setdefault("size", (int(hw[0]), int(hw[1])))
            if hw != first:
                raise DataError(f"size {hw[0]}×{hw[1]} differs from the other images' "
                                f"{first[0]}×{first[1]}; give a size (--image-size) to resize "
                                "them all", source=str(image))

    return check


def _load(rec: Record, matrix: np.ndarray) -> Sample:
    arrays = {kind: _read(rec.files[kind]) for kind in KINDS}
    return {
        "image": _image(arrays["image"], rec.files["image"]),
        "mask": _mask(arrays["label"], rec.files["label"]),
        "depth": _depth(arrays["depth"], rec.files["depth"]),
        "normals": _normals(arrays["normal"], rec.files["normal"], matrix),
    }


def _image(arr: np.ndarray, path: Path) -> np.ndarray:
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -TOLERANCE or hi > 1 + TOLERANCE:
        raise DataError(f"image values must lie in [0, 1], found {lo:.4g}..{hi:.4g}",
                        source=str(path))
    return np.ascontiguousarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


def _mask(arr: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(arr)
    bad = values[~np.isin(values, np.arange(-1, NUM_CLASSES))]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
        raise DataError(f"labels must be whole numbers in -1..{NUM_CLASSES - 1} (-1 = "
                        f"unlabelled), found {shown}", source=str(path))
    mask = arr.astype(np.int64)
    mask[mask < 0] = IGNORE
    return np.ascontiguousarray(mask)


def _depth(arr: np.ndarray, path: Path) -> np.ndarray:
    depth = arr.reshape(arr.shape[:2]).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0
    if depth.size and float(depth.min()) < 0:
        raise DataError(f"depth must be ≥ 0 (0 = missing), found {float(depth.min()):.4g}",
                        source=str(path))
    return np.ascontiguousarray(depth)


def _normals(arr: np.ndarray, path: Path, matrix: np.ndarray) -> np.ndarray:
    normals = arr.astype(np.float32)
    normals[~np.isfinite(normals).all(axis=-1)] = 0.0
    peak = float(np.abs(normals).max()) if normals.size else 0.0
    if peak > 1 + TOLERANCE:
        raise DataError(f"normal components must lie in [-1, 1], found {peak:.4g}",
                        source=str(path))
    return to_pixel_axes(normals, matrix)


def axes_matrix(normal_axes: Sequence[str]) -> np.ndarray:
    """The 3×3 matrix taking stored normal channels to policysearch's (x right, y down, z out
    of the image plane); ``normal_axes`` names where each stored channel points."""
    names = tuple(normal_axes)
    hits = [_DIRECTIONS[name] for name in names if name in _DIRECTIONS]
    if len(names) != 3 or len(hits) != 3 or len({axis for axis, _ in hits}) != 3:
        raise UserError(f"normal_axes must name one of right/left, down/up and out/in each, "
                        f"got {names!r}", field="normal_axes")
    matrix = np.zeros((3, 3), dtype=np.float32)
    for channel, (axis, sign) in enumerate(hits):
        matrix[axis, channel] = sign
    return matrix


def to_pixel_axes(normals: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """H×W×3 normals in policysearch's axes, unit length; zero (missing) vectors stay zero."""
    out = normals.astype(np.float32) @ matrix.T
    length = np.linalg.norm(out, axis=-1, keepdims=True)
    valid = length > 1e-6
    out = np.where(valid, out / np.where(valid, length, 1.0), 0.0).astype(np.float32)
    return np.ascontiguousarray(out)
