"""Reading the files datasets are made of; every problem is a ``DataError`` naming the file.

Images decode to H×W×3 uint8 RGB (grey and palette images converted, alpha dropped; EXIF
orientation is *not* applied, so that masks stored in the same pixel grid stay aligned). Masks
decode to H×W int64 class indices (palette PNGs give their indices, not colours). Depth comes
from a 16-bit PNG (times ``scale``, e.g. 1/1000 for millimetres) or a ``.npy`` file; 0 means
invalid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from policysearch.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise DataError("is a directory, not an image", source=str(path)) from None
    except UnidentifiedImageError:
        raise DataError("not an image file (cannot identify its format)",
                        source=str(path)) from None
    except OSError as err:
        raise DataError(f"cannot read: {err.strerror or err}", source=str(path)) from None


def image_size_of(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels."""
    with _open(path) as img:
        width, height = img.size
    return int(height), int(width)


def _decode(path: Path, mode: str | None) -> np.ndarray:
    try:
        with _open(path) as img:
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            return np.asarray(img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data
        reason = str(err).splitlines()[0] if str(err) else "cannot decode"
        raise DataError(f"corrupt image: {reason}", source=str(path)) from None


def read_image(path: Path) -> np.ndarray:
    """An H×W×3 uint8 RGB image."""
    return np.ascontiguousarray(_decode(path, "RGB"))


def read_mask(path: Path) -> np.ndarray:
    """An H×W int64 mask of class indices from a single-channel (L, P, I or I;16) PNG."""
    with _open(path) as img:
        mode = img.mode
    if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise DataError(f"a mask must be a single-channel image of class indices, got mode "
                        f"{mode!r}", source=str(path))
    arr = _decode(path, None)
    return np.ascontiguousarray(arr.astype(np.int64))


def read_depth(path: Path, scale: float = 1.0) -> np.ndarray:
    """An H×W float32 depth map from a 16-bit PNG (× ``scale``) or a ``.npy`` file."""
    if path.suffix.lower() == ".npy":
        arr = read_npy(path)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise DataError(f"depth must be H×W, got shape {arr.shape}", source=str(path))
        return np.ascontiguousarray(arr.astype(np.float32) * np.float32(scale))
    arr = _decode(path, None)
    if arr.ndim != 2:
        raise DataError("depth must be a single-channel (16-bit) PNG or a .npy file",
                        source=str(path))
    depth = arr.astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray(np.where(np.isfinite(depth), depth, 0.0).astype(np.float32))


def read_npy(path: Path) -> np.ndarray:
    """A NumPy array from a ``.npy`` file (no pickles)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError("file not found", source=str(path)) from None
    except (OSError, ValueError) as err:
        raise DataError(f"not a readable .npy array: {str(err).splitlines()[0]}",
                        source=str(path)) from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A text file's contents; a missing or undecodable file is a DataError naming it."""
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataError("file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read as {encoding} text: {err}", source=str(path)) from None


def read_json(path: Path) -> Any:
    """Parsed JSON; a missing or invalid file is a DataError naming it (and the line)."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", source=str(path),
                        field=f"line {err.lineno}") from None


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        raise DataError("folder not found", source=str(folder))
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
