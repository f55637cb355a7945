"""The built-in ``multidigits`` dataset: two real handwritten digits per canvas, overlapping.

MultiMNIST-style canvases built from the 1,797 8x8 digits that ship with scikit-learn
(``sklearn.datasets.load_digits``, 16 grey levels; packaged data, nothing is downloaded).
Every ``size`` x ``size`` RGB canvas (32 by default) holds two digits, each upsampled
bilinearly to ``digit_side(size)`` (about 0.55 x ``size``) pixels:

* the *left* digit's box starts ``x`` pixels from the left edge (``x`` random, within the
  room the pair leaves); the *right* digit's box starts further right so that the two boxes
  overlap by 30-55 % of their width. The ink fills about 6 of the 8 columns, so the digits'
  ink columns overlap in about half of the canvases, by up to about 30 % of the narrower
  digit's width (rarely more), and their strokes cross in about a quarter;
* each digit gets its own vertical jitter of up to 10 % of ``size`` around the centre;
* the two intensities (0-1) are combined with ``max``; the canvas is
  ``background + (colour - background) * intensity`` with a dark grey background (0-20) and
  a faint per-canvas tint of white (each channel 80-100 %), the same for both digits.

Tasks and targets of a sample dict:

* ``left_digit`` / ``right_digit`` -- classification, 10 classes, under the keys
  ``left_digit`` and ``right_digit``: the value of the digit placed on the left / right;
* ``seg`` -- segmentation under ``mask`` (H x W int64), 11 classes: 0 background and
  1 + digit value on the strokes of each digit. A stroke pixel is one where the digit's
  upsampled intensity exceeds ``STROKE_THRESHOLD``; pixels on the strokes of both digits
  are 255 (ignore), since either answer is right.

Horizontal flips are harmful by construction: they mirror the digits *and* swap the two
positions, while ``left_digit`` / ``right_digit`` keep naming what was left / right before
the flip, so a search should learn to avoid ``hflip`` on this dataset. The dataset declares
it unsafe (``unsafe_ops``): the default space, which adapts to its dataset, leaves it out.

Splits use disjoint source digits: the 1,797 digits are divided once, per class, by a fixed
permutation into pools of 60 % (train), 20 % (val) and 20 % (test) -- the same for every
``seed`` -- so test canvases show only handwriting never seen in training. A canvas draws
two different digits of its split's pool. The source indices (into ``load_digits()``) of a
sample are under ``source`` as ``(left, right)``; that key is not a target and passes
through augmentation untouched.

Samples are deterministic in (seed, split, index): sample ``i`` of a split is drawn from its
own ``numpy.random.default_rng`` seeded with (salt, seed, split id, i), so it does not depend
on the split's length. A split is generated in memory on first use (under a second per 1,000
canvases, after scikit-learn's import of a second or two); nothing is cached on disk, so
``cache_dir`` is accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policysearch.data.base import Sample, SampleSequence, TaskSpec
from policysearch.data.generated import (
    SPLITS,
    ArraySplit,
    GeneratedDataset,
    read_only,
    sample_rng,
)

__all__ = [
    "DIGITS",
    "POOL_FRACTIONS",
    "SPLITS",
    "STROKE_THRESHOLD",
    "Layout",
    "MultiDigitsDataset",
    "MultiDigitsSplit",
    "compose",
    "digit_side",
    "draw_layout",
    "generate_split",
    "load_source",
    "source_pools",
    "upsample",
]

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
POOL_FRACTIONS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}
STROKE_THRESHOLD = 0.5  # upsampled intensity (0-1) above which a pixel is on a stroke

_SALT = 0xD161705  # keeps these seed sequences apart from other users of (seed, ...)
_POOL_SEED = 20240607  # the fixed permutation dividing the source digits into pools
_SIDE_FRACTION = 0.55  # digit side / canvas side
_OVERLAP = (0.3, 0.55)  # overlap of the two digit boxes, as a fraction of their width
_JITTER = 0.1  # largest vertical offset from the centre, as a fraction of the canvas side
_BACKGROUND = (0.0, 20.0)  # grey level of the background
_TINT = (0.8, 1.0)  # per-channel factor of the white digit colour


# --------------------------------------------------------------------------------------------
# Source digits


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float32 scaled to 0-1, labels (1797,) int64."""
    from sklearn.datasets import load_digits  # slow import (scipy): only when data is needed

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32) / 16.0
    return images, np.asarray(digits.target, dtype=np.int64)


def source_pools(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint sorted source indices per split: per class, a fixed permutation cut into
    ``POOL_FRACTIONS`` (independent of the dataset seed)."""
    rng = np.random.default_rng([_SALT, _POOL_SEED])
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for cls in range(len(DIGITS)):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_train = round(POOL_FRACTIONS["train"] * len(members))
        n_val = round(POOL_FRACTIONS["val"] * len(members))
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train:n_train + n_val])
        parts["test"].append(members[n_train + n_val:])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def upsample(images: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of (N, h, w) images to (N, side, side) float32 (pixel centres aligned
    as in PIL / ``align_corners=False``, edges clamped)."""

    def weights(n_in: int) -> np.ndarray:
        src = np.clip((np.arange(side) + 0.5) * n_in / side - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (src - lo).astype(np.float32)
        w = np.zeros((side, n_in), dtype=np.float32)
        np.add.at(w, (np.arange(side), lo), 1 - frac)
        np.add.at(w, (np.arange(side), hi), frac)
        return w

    rows, cols = weights(images.shape[1]), weights(images.shape[2])
    return rows @ images.astype(np.float32) @ cols.T


# --------------------------------------------------------------------------------------------
# Rendering


def digit_side(size: int) -> int:
    """Side in pixels of each upsampled digit on a ``size`` canvas (at least 8)."""
    return max(8, round(_SIDE_FRACTION * size))


@dataclass(frozen=True)
class Layout:
    """Where the two digits go: ``side`` of each digit, top-left corners ``(x, y)``."""

    side: int
    left: tuple[int, int]
    right: tuple[int, int]


def draw_layout(rng: np.random.Generator, size: int) -> Layout:
    """Random placement of a left and a right digit on a ``size`` canvas (module docstring)."""
    side = digit_side(size)
    overlap = round(rng.uniform(*_OVERLAP) * side)
    overlap = min(side - 1, max(overlap, 2 * side - size))  # the pair must fit across
    span = 2 * side - overlap
    x_left = int(rng.integers(0, size - span + 1))
    centre = (size - side) // 2
    jitter = min(centre, round(_JITTER * size))

    def y() -> int:
        return int(np.clip(centre + rng.integers(-jitter, jitter + 1), 0, size - side))

    return Layout(side, (x_left, y()), (x_left + side - overlap, y()))


def compose(left: np.ndarray, right: np.ndarray, labels: tuple[int, int], layout: Layout,
            size: int) -> tuple[np.ndarray, np.ndarray]:
    """Place two ``layout.side``-square digit intensities (0-1) on a ``size`` canvas.

    Returns the combined intensity (H x W float32, max of the two) and the mask (H x W
    uint8): 0 background, 1 + label on each digit's strokes, 255 where both have strokes.
    """
    side = layout.side
    mask = np.zeros((size, size), dtype=np.uint8)
    intensity = np.zeros((size, size), dtype=np.float32)
    strokes = []
    for digit, label, (x, y) in zip((left, right), labels, (layout.left, layout.right),
                                    strict=True):
        canvas = np.zeros((size, size), dtype=np.float32)
        canvas[y:y + side, x:x + side] = digit
        np.maximum(intensity, canvas, out=intensity)
        stroke = canvas > STROKE_THRESHOLD
        mask[stroke] = 1 + int(label)
        strokes.append(stroke)
    mask[strokes[0] & strokes[1]] = 255
    return intensity, mask


def _colourise(rng: np.random.Generator, intensity: np.ndarray) -> np.ndarray:
    background = rng.uniform(*_BACKGROUND)
    colour = 255.0 * rng.uniform(*_TINT, size=3)
    image = background + (colour - background) * intensity[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_split(seed: int, split: str, n: int, size: int, digits: np.ndarray,
                   labels: np.ndarray, pool: np.ndarray) -> dict[str, np.ndarray]:
    """The ``n`` canvases of ``split`` as stacked arrays.

    ``digits``: all source digits upsampled to ``digit_side(size)``; ``pool``: the source
    indices this split draws from. Keys: ``images`` (N,H,W,3) uint8, ``masks`` (N,H,W)
    uint8, ``left`` / ``right`` (N,) int64 labels, ``sources`` (N,2) int64.
    """
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    sources = np.empty((n, 2), dtype=np.int64)
    for i in range(n):
        rng = sample_rng(_SALT, seed, split, i)
        pair = rng.choice(pool, size=2, replace=False)
        layout = draw_layout(rng, size)
        intensity, masks[i] = compose(digits[pair[0]], digits[pair[1]],
                                      (int(labels[pair[0]]), int(labels[pair[1]])),
                                      layout, size)
        images[i] = _colourise(rng, intensity)
        sources[i] = pair
    return {"images": images, "masks": masks, "left": labels[sources[:, 0]],
            "right": labels[sources[:, 1]], "sources": sources}


# --------------------------------------------------------------------------------------------
# Dataset


class MultiDigitsSplit(ArraySplit, SampleSequence):
    """One split of ``multidigits``: a sequence of fresh sample dicts over stacked arrays.

    Every ``__getitem__`` returns new arrays, so callers may modify them freely. The stacked
    arrays are read-only attributes (``images``, ``masks``, ``left``, ``right``,
    ``sources``) for vectorised use.
    """

    ARRAYS = ("images", "masks", "left", "right", "sources")

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.images, self.masks, self.left, self.right, self.sources = read_only(
            arrays, ("images", "masks", "left", "right", "sources"), copy=True)

    def __len__(self) -> int:
        return len(self.left)

    def _get(self, i: int) -> Sample:
        return {
            "image": self.images[i].copy(),
            "left_digit": int(self.left[i]),
            "right_digit": int(self.right[i]),
            "mask": self.masks[i].astype(np.int64),
            "source": (int(self.sources[i, 0]), int(self.sources[i, 1])),
        }


class MultiDigitsDataset(GeneratedDataset[MultiDigitsSplit]):
    """The built-in ``multidigits`` dataset (see the module docstring).

    The source digits are loaded on the first ``split`` call; splits are generated in memory.
    """

    name = "multidigits"
    tasks: tuple[TaskSpec, ...] = (
        TaskSpec("left_digit", "classification", num_classes=10, class_names=DIGITS,
                 key="left_digit"),
        TaskSpec("right_digit", "classification", num_classes=10, class_names=DIGITS,
                 key="right_digit"),
        TaskSpec("seg", "segmentation", num_classes=11, class_names=("background",) + DIGITS,
                 key="mask"),
    )
    # A horizontal flip swaps the digits' places while left_digit/right_digit keep naming the
    # old ones (see the module docstring): an adapted space leaves it out.
    unsafe_ops: tuple[str, ...] = ("hflip",)

    def __init__(self, seed: int = 0, size: int = 32, n_train: int = 1000, n_val: int = 300,
                 n_test: int = 500, cache_dir: str | Path | None = None):
        super().__init__(seed, size, n_train, n_val, n_test)
        self.cache_dir = cache_dir  # accepted for interface parity; nothing is cached
        self._source: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None

    def _make_split(self, name: str) -> MultiDigitsSplit:
        """Generated in memory."""
        digits, labels, pools = self._load_source()
        return MultiDigitsSplit(generate_split(self.seed, name, self.counts[name], self.size,
                                               digits, labels, pools[name]))

    def _load_source(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if self._source is None:
            images, labels = load_source()
            self._source = (upsample(images, digit_side(self.size)), labels,
                            source_pools(labels))
        return self._source
