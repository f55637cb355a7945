"""The multi-label attributes format (``--dataset attributes:PATH``): images and a table of
binary attributes per image, CelebA-style. One task, ``attributes`` (kind multilabel), whose
target is an int8 K-vector: 1 present, 0 absent, -1 unknown.

Two layouts of ``PATH`` are read (``attributes.csv`` wins when both are there; a note says so):

1. CelebA's own: ``list_attr_celeba.txt`` (line 1: the number of images; line 2: the attribute
   names; then ``000001.jpg  -1  1 ...`` per image, whitespace-separated, values 1 / -1),
   optionally ``list_eval_partition.txt`` (``000001.jpg 0``: 0 train, 1 val, 2 test; then it
   must list every image of the table), images in ``img_align_celeba/`` (also the doubly nested
   ``img_align_celeba/img_align_celeba/`` of some downloads) or ``images/``.
2. ``attributes.csv`` with a header ``image,<attr1>,<attr2>,...`` and an optional ``split``
   column (train / val / test). Values 1 / 0, or 1 / -1 as in CelebA, decided per file: when
   any cell is 0 the file is 1/0 and -1 means unknown, else -1 means absent. An empty cell is
   unknown. An image name without a folder part is looked up in ``images/`` (when that folder
   exists); a path (``faces/a.jpg``) is relative to ``PATH``.

Errors name the table file and the line (and column): a short or long row, a duplicated image,
an unknown split, duplicated or empty attribute names stop the load. A value outside the
allowed ones, a missing or unreadable image fail that sample's up-front check, so
``--skip-bad-samples`` can leave it out; so does, when no image size is given, an image whose
size differs from the first one's. Without split information val and test are carved from
train (``policysearch.data.splits.assemble``); the notes say so.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd

from policysearch.data.base import Sample, TaskSpec
from policysearch.data.files import image_size_of, read_image, read_text
from policysearch.data.splits import SPLITS, FileDataset, LoadOptions, assemble
from policysearch.errors import DataError

CELEBA_TABLE = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CSV_TABLE = "attributes.csv"
CELEBA_IMAGE_DIRS = ("img_align_celeba/img_align_celeba", "img_align_celeba", "images")
CSV_IMAGE_DIR = "images"
PARTITIONS = {"0": "train", "1": "val", "2": "test"}
TASK_NAME = "attributes"
UNKNOWN = -1
_T = TypeVar("_T")
_BAD = 99  # marks a value outside the mapping while targets are computed


class _Record(NamedTuple):
    """One row of the table: its image, target (or the error of a bad value) and place."""

    image: str
    target: np.ndarray | DataError
    table: Path
    line: int
    name: str  # as the table writes it

    @property
    def where(self) -> str:
        return f"line {self.line} ({self.name})"


@dataclass
class _Table:
    """A parsed, structurally valid table: names, per-row records by split, notes."""

    names: tuple[str, ...]
    records: dict[str, list[_Record]]
    notes: list[str]


def load(path: Path, options: LoadOptions) -> FileDataset:
    """The dataset in folder ``path`` (either layout, see the module docstring)."""
    if not path.is_dir():
        raise DataError("not a folder (expected a folder holding an attribute table)",
                        source=str(path))
    csv_path, celeba_path = path / CSV_TABLE, path / CELEBA_TABLE
    if csv_path.is_file():
        table = _read_csv(path, csv_path)
        if celeba_path.is_file():
            table.notes.insert(0, f"both {CSV_TABLE} and {CELEBA_TABLE} found: using {CSV_TABLE}")
        source = csv_path
    elif celeba_path.is_file():
        table = _read_celeba(path, celeba_path)
        source = celeba_path
    else:
        raise DataError(f"no attribute table: looked for {CELEBA_TABLE} (CelebA layout) and "
                        f"{CSV_TABLE}", source=str(path))
    spec = TaskSpec(TASK_NAME, "multilabel", num_classes=len(table.names),
                    class_names=table.names, key="attributes")
    dataset = assemble(f"attributes:{path}", [spec], table.records, _load_sample,
                       _checker(options), options, source=str(source))
    dataset.notes[:0] = table.notes
    return dataset


# ----------------------------------------------------------------------------- CelebA layout

def _read_celeba(root: Path, table: Path) -> _Table:
    text = read_text(table, encoding="utf-8-sig")
    lines = text.splitlines()
    if len(lines) < 2:
        raise DataError("expected the number of images on line 1 and the attribute names on "
                        "line 2", source=str(table))
    count_text = lines[0].strip()
    if not count_text.isdigit():
        raise DataError(f"expected the number of images, found {count_text!r}",
                        source=str(table), field="line 1")
    names = lines[1].split()
    _check_names(names, table, "line 2")
    line_numbers = np.asarray([n for n, row in enumerate(lines[2:], start=3) if row.strip()],
                              dtype=np.int64)
    parsed = _celeba_rows_fast(table, text, len(names), line_numbers)
    if parsed is None:
        parsed = _celeba_rows_exact(table, lines, len(names), line_numbers)
    if int(count_text) != len(line_numbers):
        raise DataError(f"says {int(count_text)} images but the table has {len(line_numbers)} "
                        "rows", source=str(table), field="line 1")
    parsed.check_unique()
    ints = parsed.values.dtype == np.int8
    targets, errors = parsed.targets(names, {1: 1, -1: 0} if ints else {"1": 1, "-1": 0},
                                     "1, -1")

    notes = [f"CelebA layout: {CELEBA_TABLE}, {len(names)} attributes, values 1/-1"]
    splits = None
    partition = root / CELEBA_PARTITION
    if partition.is_file():
        splits = _read_partition(partition, parsed)
        notes.append(f"splits from {CELEBA_PARTITION}")
    folder = f"{_celeba_images(root)}{os.sep}"
    images = [folder + name for name in parsed.images]
    return _Table(tuple(names), parsed.records(images, targets, errors, splits), notes)


def _celeba_rows_fast(table: Path, text: str, k: int, line_numbers: np.ndarray
                      ) -> _Rows | None:
    """The rows through pandas' C parser with int8 values (CelebA has 200k rows); None when
    a row is not an image name and ``k`` integers, so that the exact reader says where."""
    try:
        frame = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, skiprows=2,
                            names=range(k + 1), index_col=False, quoting=csv.QUOTE_NONE,
                            keep_default_na=False,
                            dtype={0: object, **dict.fromkeys(range(1, k + 1), "int8")})
    except (ValueError, OverflowError, pd.errors.ParserError):
        return None
    if len(frame) != len(line_numbers):
        return None
    return _Rows(table, frame[0], line_numbers,
                 frame.iloc[:, 1:].to_numpy(dtype=np.int8))


def _celeba_rows_exact(table: Path, lines: list[str], k: int, line_numbers: np.ndarray
                       ) -> _Rows:
    """The rows split one by one: a row of the wrong length is an error naming its line."""
    rows = []
    for n in line_numbers:
        parts = lines[n - 1].split()
        if len(parts) != k + 1:
            raise DataError(f"expected an image name and {k} values, found "
                            f"{len(parts) - 1} values", source=str(table), field=f"line {n}")
        rows.append(parts)
    values = np.asarray(rows, dtype=object).reshape(len(rows), k + 1)
    return _Rows(table, pd.Series(values[:, 0], dtype=object), line_numbers, values[:, 1:])


def _read_partition(path: Path, rows: _Rows) -> list[str]:
    """The split of each row of the table from CelebA's partition file."""
    split_of: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, text in enumerate(read_text(path, encoding="utf-8-sig").splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"expected 'image partition', found {len(parts)} values",
                            source=str(path), field=f"line {n}")
        name, value = parts
        if value not in PARTITIONS:
            raise DataError(f"unknown partition {value!r}; expected 0 (train), 1 (val) or "
                            "2 (test)", source=str(path), field=f"line {n}")
        if name in first_line:
            raise DataError(f"image {name!r} is listed twice (first on line "
                            f"{first_line[name]})", source=str(path), field=f"line {n}")
        first_line[name] = n
        split_of[name] = PARTITIONS[value]
    splits = rows.images.map(split_of)
    missing = splits.isna().to_numpy()
    if missing.any():
        i = int(np.argmax(missing))
        raise DataError(f"has no line for image {rows.images.iloc[i]!r} ({rows.table.name} "
                        f"line {rows.lines[i]}); {int(missing.sum())} images of the table "
                        "are missing", source=str(path))
    return splits.tolist()


def _celeba_images(root: Path) -> Path:
    for name in CELEBA_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"no image folder: looked for {', '.join(d + '/' for d in CELEBA_IMAGE_DIRS)}",
                    source=str(root))


# ----------------------------------------------------------------------------- CSV layout

def _read_csv(root: Path, table: Path) -> _Table:
    reader = csv.reader(read_text(table, encoding="utf-8-sig").splitlines(),
                        skipinitialspace=True)
    header: list[str] = []
    header_line = 0
    rows, line_numbers = [], []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if not header:
            header, header_line = [cell.strip() for cell in row], reader.line_num
            continue
        if len(row) != len(header):
            raise DataError(f"has {len(row)} values but the header has {len(header)}",
                            source=str(table), field=f"line {reader.line_num}")
        rows.append(row)
        line_numbers.append(reader.line_num)
    if not header:
        raise DataError("empty: expected a header 'image,<attribute>,...'", source=str(table))
    where = f"line {header_line}"
    _check_names(header, table, where)
    if "image" not in header:
        raise DataError(f"no column 'image' (the header has {', '.join(header)})",
                        source=str(table), field=where)
    names = [name for name in header if name not in ("image", "split")]
    if not names:
        raise DataError("no attribute columns (only image and split)", source=str(table),
                        field=where)
    if not rows:
        raise DataError("lists no image", source=str(table))
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame["image"] = frame["image"].str.strip()
    parsed = _Rows(table, frame["image"], np.asarray(line_numbers, dtype=np.int64),
                   frame[names].to_numpy(dtype=object))
    empty = (parsed.images == "").to_numpy()
    if empty.any():
        raise DataError("empty image name", source=str(table),
                        field=f"line {parsed.lines[np.argmax(empty)]}, column image")
    parsed.check_unique()

    if "0" in set(pd.unique(parsed.values.ravel())):
        mapping = {"1": 1, "0": 0, "-1": UNKNOWN, "": UNKNOWN}
        notes = [f"{CSV_TABLE}: {len(names)} attributes, values 1/0; -1 and empty cells mean "
                 "unknown"]
    else:
        mapping = {"1": 1, "-1": 0, "": UNKNOWN}
        notes = [f"{CSV_TABLE}: {len(names)} attributes, values 1/-1 (-1 = absent, as in "
                 "CelebA); empty cells mean unknown"]
    targets, errors = parsed.targets(names, mapping, "1, 0, -1 or empty")

    splits = None
    if "split" in header:
        split = frame["split"].str.lower()
        unknown = (~split.isin(SPLITS)).to_numpy()
        if unknown.any():
            i = int(np.argmax(unknown))
            raise DataError(f"unknown split {frame['split'].iloc[i]!r}; expected "
                            f"{', '.join(SPLITS)}", source=str(table),
                            field=f"line {parsed.lines[i]}, column split")
        splits = split.tolist()
        notes.append(f"splits from the split column of {CSV_TABLE}")
    # A bare name lives in images/ (when there is one); a path is relative to the root.
    folder = str(root / CSV_IMAGE_DIR) if (root / CSV_IMAGE_DIR).is_dir() else str(root)
    images = [os.path.join(str(root) if "/" in name or os.sep in name else folder, name)
              for name in parsed.images]
    return _Table(tuple(names), parsed.records(images, targets, errors, splits), notes)


# ----------------------------------------------------------------------------- shared parts

def _check_names(names: list[str], table: Path, where: str) -> None:
    if not names:
        raise DataError("no attribute names", source=str(table), field=where)
    seen: set[str] = set()
    for i, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"column {i} has an empty name", source=str(table), field=where)
        if name in seen:
            raise DataError(f"column name {name!r} appears twice", source=str(table),
                            field=where)
        seen.add(name)


@dataclass
class _Rows:
    """The data rows of a table: image names, file line numbers and the N×K values (strings,
    or int8 from the fast CelebA reader)."""

    table: Path
    images: pd.Series
    lines: np.ndarray
    values: np.ndarray

    def check_unique(self) -> None:
        again = self.images.duplicated().to_numpy()
        if again.any():
            i = int(np.argmax(again))
            name = self.images.iloc[i]
            first = self.lines[int(np.argmax((self.images == name).to_numpy()))]
            raise DataError(f"image {name!r} is listed twice (first on line {first})",
                            source=str(self.table), field=f"line {self.lines[i]}")

    def targets(self, names: list[str], mapping: dict[Any, int], allowed: str
                ) -> tuple[np.ndarray, dict[int, DataError]]:
        """The N×K int8 targets and, by row index, the error of a row holding a bad value."""
        codes, uniques = pd.factorize(self.values.ravel())
        lookup = np.array([mapping.get(u, _BAD) for u in uniques], dtype=np.int16)
        mapped = lookup[codes].reshape(self.values.shape)
        bad = mapped == _BAD
        targets = np.where(bad, UNKNOWN, mapped).astype(np.int8)
        errors: dict[int, DataError] = {}
        for i in np.flatnonzero(bad.any(axis=1)):
            j = int(np.argmax(bad[i]))
            errors[int(i)] = DataError(
                f"value {str(self.values[i, j])!r} is not one of {allowed}",
                source=str(self.table), field=f"line {self.lines[i]}, column {names[j]}")
        targets.flags.writeable = False
        return targets, errors

    def records(self, images: list[str], targets: np.ndarray, errors: dict[int, DataError],
                splits: list[str] | None) -> dict[str, list[_Record]]:
        by_split: dict[str, list[_Record]] = {split: [] for split in SPLITS}
        for i, (name, line) in enumerate(zip(self.images, self.lines, strict=True)):
            record = _Record(images[i], errors.get(i, targets[i]), self.table, int(line), name)
            by_split[splits[i] if splits else "train"].append(record)
        return {split: recs for split, recs in by_split.items() if recs}


def _read(record: _Record, reader: Callable[[Path], _T]) -> _T:
    """``reader`` applied to the record's image; a bad value of the row raises its error, and an
    error of the image is raised again as the row's."""
    if isinstance(record.target, DataError):
        raise record.target
    try:
        return reader(Path(record.image))
    except DataError as err:
        raise DataError(f"image {err.source}: {err.message}", source=str(record.table),
                        field=record.where) from None


def _checker(options: LoadOptions) -> Callable[[_Record], None]:
    """The up-front check of a record: a valid row and a readable image header; without
    ``size``, every image the size of the first (batches must stack)."""
    first: list[tuple[int, int]] = []

    def check(record: _Record) -> None:
        hw = _read(record, image_size_of)
        if options.size is not None:
            return
        if not first:
            first.append(hw)
        elif hw != first[0]:
            raise DataError(f"image {record.image} is {hw[1]}×{hw[0]} but the first image is "
                            f"{first[0][1]}×{first[0][0]} (width×height); give an image size "
                            "to resize them", source=str(record.table), field=record.where)
    return check


def _load_sample(record: _Record) -> Sample:
    return {"image": _read(record, read_image), "attributes": record.target}


