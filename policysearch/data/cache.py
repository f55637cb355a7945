"""The on-disk cache of generated splits (``shapes``, ``scenes``): one ``.npz`` file per split,
named by the dataset, the generator's version and a hash of its parameters."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_file", "cached", "default_cache_dir", "read_cache", "write_cache"]

Arrays = dict[str, np.ndarray]


def default_cache_dir() -> Path:
    """``$POLICYSEARCH_CACHE`` if set, else ``~/.cache/policysearch``."""
    env = os.environ.get("POLICYSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "policysearch"


def cache_file(directory: Path | None, name: str, version: int, split: str,
               params: Mapping[str, Any]) -> Path:
    """``<directory>/<name>-v<version>-<split>-<hash of params>.npz`` (``directory`` None:
    :func:`default_cache_dir`)."""
    digest = hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:12]
    return (directory or default_cache_dir()) / f"{name}-v{version}-{split}-{digest}.npz"


def cached(path: Path, keys: Sequence[str], valid: Callable[[Arrays], bool],
           generate: Callable[[], Arrays]) -> Arrays:
    """The arrays of ``path`` when it holds ``valid`` ones, else ``generate()``'s, written there."""
    arrays = read_cache(path, keys)
    if arrays is None or not valid(arrays):
        arrays = generate()
        write_cache(path, arrays)
    return arrays


def read_cache(path: Path, keys: Sequence[str]) -> Arrays | None:
    """The arrays ``keys`` of a cache file (those it has), or None when it is missing or
    unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys if key in data.files}
    except Exception:  # corrupt, truncated, wrong format: regenerate
        return None


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically; a failure only costs the cache (warning)."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        contents: dict[str, Any] = arrays  # numpy's stub takes a key for its allow_pickle
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **contents)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as err:
        warnings.warn(f"could not write the dataset cache {path}: {err}", stacklevel=4)
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
