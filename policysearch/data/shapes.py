"""The built-in ``shapes`` dataset: procedurally generated multi-task scenes.

Each RGB scene (``size`` x ``size``, 64 by default) holds 1-4 objects of four classes
(circle, square, triangle, star) on a textured background, painted far-to-near so that
nearer objects occlude farther ones. Every sample carries the targets of four tasks:

* ``label`` -- class of the largest *visible* object (most visible pixels);
* ``mask`` -- semantic mask, 0 = background, 1 + class for visible object pixels;
* ``boxes`` / ``box_labels`` -- tight boxes (x1, y1, x2, y2; x2/y2 exclusive) of each object's
  visible pixels, objects with fewer than ``MIN_BOX_PIXELS`` visible pixels left out;
* ``depth`` -- positive depth: a slanted background plane (about 9 at the top, 6 at the
  bottom) and objects at about 1.5-5.3, each occluder nearer than what it hides.

Samples are deterministic in (seed, split, index): sample ``i`` of a split is drawn from its
own ``numpy.random.default_rng`` seeded with (salt, seed, split id, i), so it does not depend
on the split's length. A split is generated once and cached as one ``.npz`` file
(``policysearch.data.cache``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from policysearch.data import scene_arrays
from policysearch.data.base import Sample, TaskSpec
from policysearch.data.cache import cache_file, cached, default_cache_dir
from policysearch.data.generated import SPLITS, GeneratedDataset, check_split, sample_rng
from policysearch.data.scene_arrays import MIN_BOX_PIXELS, SceneSplit

__all__ = [
    "CLASSES",
    "MIN_BOX_PIXELS",
    "SPLITS",
    "Scene",
    "VERSION",
    "ShapesDataset",
    "ShapesSplit",
    "default_cache_dir",
    "generate_split",
    "render_scene",
]

# Bump whenever the generator's output changes: it is part of every cache file's name.
VERSION = 5

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")

_SALT = 0x5A4E5  # keeps these seed sequences apart from other users of (seed, ...)
_Z_NEAR, _Z_FAR = 1.5, 5.0  # object base depths
_Z_GAP = 0.65  # minimal gap between base depths: > 2 x the largest in-object deviation (0.21)
_Z_SLOPE = 0.1  # largest depth change per circumradius across an object
_REL_CLIP = 1.5  # relative coordinates (in circumradii) are clipped to this for the slope
# Circumradius factor per class (circle, square, triangle, star): comparable areas.
_CLASS_SCALE = np.array([0.85, 0.95, 1.15, 1.1])


# --------------------------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background (float RGB, 0-255) and its depth plane (float32)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    # Linear gradient between two random colours in a random direction.
    c0 = rng.uniform(30, 225, size=3).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 35, size=3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    img = c0 + (c1 - c0) * t[..., None]
    # Low-frequency colour noise: a small random grid upsampled smoothly.
    k = int(rng.integers(3, 7))
    grid = np.clip(128 + 50 * rng.standard_normal((k, k, 3)), 0, 255).astype(np.uint8)
    noise = np.asarray(Image.fromarray(grid, "RGB").resize((size, size), Image.BICUBIC))
    img += (noise.astype(np.float32) - 128.0) * rng.uniform(0.1, 0.3)
    # Optional stripes or checkerboard in a third palette colour.
    pattern = rng.choice(3, p=(0.6, 0.2, 0.2))  # 0 none, 1 stripes, 2 checker
    if pattern:
        period = rng.uniform(4, 16) / size  # in units of the side
        if pattern == 1:
            phi = rng.uniform(0, np.pi)
            wave = (xx * np.cos(phi) + yy * np.sin(phi)) / period
            on = (np.floor(wave + rng.uniform()) % 2).astype(np.float32)
        else:
            on = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
        c2 = rng.uniform(0, 255, size=3).astype(np.float32)
        alpha = rng.uniform(0.05, 0.12)
        img += alpha * on[..., None] * (c2 - img)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)  # fine grain
    # Depth: a floor/wall plane, far at the top and near at the bottom, slightly tilted.
    top = rng.uniform(8.5, 9.5)
    bottom = rng.uniform(5.8, 6.4)
    tilt = rng.uniform(-0.3, 0.3)
    depth = top + (bottom - top) * yy + tilt * (xx - 0.5) * 2
    return img, depth.astype(np.float32)


def _vertices(cls: int, cx: float, cy: float, r: float, theta: float) -> list[tuple[float, float]]:
    """Polygon vertices of a square (1), triangle (2) or star (3) of circumradius ``r``."""
    if cls == 1:
        angles = theta + np.arange(4) * (np.pi / 2)
        radii = np.full(4, r)
    elif cls == 2:
        angles = theta + np.arange(3) * (2 * np.pi / 3)
        radii = np.full(3, r)
    else:
        angles = theta + np.arange(10) * (np.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, r, 0.5 * r)
    xs = cx + radii * np.cos(angles)
    ys = cy + radii * np.sin(angles)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def _shape_mask(cls: int, cx: float, cy: float, r: float, theta: float, size: int) -> np.ndarray:
    """Boolean H x W coverage of one object (no anti-aliasing)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        draw.polygon(_vertices(cls, cx, cy, r, theta), fill=1)
    return np.asarray(canvas, dtype=bool)


def _object_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """A random colour, away from the background mean and the other objects where possible."""
    best, best_dist = None, -1.0
    for _ in range(12):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        dist = min(float(np.linalg.norm(colour - a)) for a in avoid)
        if dist > 110:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    assert best is not None
    return best


@dataclass
class Scene:
    """One rendered scene: its sample dict and what the renderer knows about its objects.

    ``instance`` (H x W uint8) holds 0 for background and ``k + 1`` for the visible pixels of
    object ``k``; ``classes``, ``z`` (base depth) and ``coverage`` (n x H x W bool, the full
    shape before occlusion) describe the objects, ``visible`` their visible pixel counts.
    """

    sample: Sample
    instance: np.ndarray
    classes: np.ndarray
    z: np.ndarray
    coverage: np.ndarray
    visible: np.ndarray


def _try_scene(rng: np.random.Generator, size: int) -> Scene:
    """One candidate scene."""
    img, depth = _background(rng, size)
    n = int(rng.choice(4, p=(0.35, 0.3, 0.2, 0.15))) + 1
    classes = rng.integers(0, len(CLASSES), size=n)
    # One main object of 35-55% of the side and smaller ones of 15-35%, scaled per class so that
    # the classes' areas are comparable: the largest object is clear enough to learn from a few
    # hundred images, while the others still occlude it and carry their own targets.
    diameters = rng.uniform(0.15, 0.35, size=n)
    diameters[0] = rng.uniform(0.35, 0.55)
    radii = diameters * size / 2 * _CLASS_SCALE[classes]
    # Base depths with a minimal gap so that in-object slopes cannot reorder overlaps.
    spread = (_Z_FAR - _Z_NEAR) - (n - 1) * _Z_GAP
    zs = _Z_NEAR + np.sort(rng.uniform(0, spread, size=n)) + np.arange(n) * _Z_GAP
    zs = rng.permutation(zs)
    centres = np.zeros((n, 2))
    for k in range(n):
        lo, hi = 0.6 * radii[k], size - 0.6 * radii[k]
        if k > 0 and rng.uniform() < 0.6:  # place next to an earlier object: occlusion
            j = int(rng.integers(0, k))
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.3, 1.0) * (radii[j] + radii[k])
            centres[k] = centres[j] + dist * np.array([np.cos(ang), np.sin(ang)])
        else:
            centres[k] = rng.uniform(lo, hi, size=2)
        centres[k] = np.clip(centres[k], lo, hi)
    avoid = [img.reshape(-1, 3).mean(axis=0)]
    instance = np.zeros((size, size), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    coverage = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for k in np.argsort(-zs, kind="stable"):  # far to near
        cls = int(classes[k])
        cx, cy = float(centres[k, 0]), float(centres[k, 1])
        r = float(radii[k])
        cover = _shape_mask(cls, cx, cy, r, rng.uniform(0, 2 * np.pi), size)
        coverage[k] = cover
        colour = _object_colour(rng, avoid)
        avoid.append(colour)
        rel_x = np.clip((xx[cover] + 0.5 - cx) / r, -_REL_CLIP, _REL_CLIP)
        rel_y = np.clip((yy[cover] + 0.5 - cy) / r, -_REL_CLIP, _REL_CLIP)
        gx, gy = rng.uniform(-1, 1, size=2) * (_Z_SLOPE / np.sqrt(2))
        depth[cover] = zs[k] + gx * rel_x + gy * rel_y
        # Shading: the nearer side a little brighter, plus fine colour noise.
        shade = 1.0 + rng.uniform(0.1, 0.3) * (-(gx * rel_x + gy * rel_y) / _Z_SLOPE)
        img[cover] = colour[None, :] * shade[:, None] + rng.normal(0, 4, size=(rel_x.size, 3))
        instance[cover] = k + 1
        mask[cover] = cls + 1
    visible, boxes, box_labels = scene_arrays.object_boxes(instance, classes)
    sample: Sample = {
        "image": np.clip(np.rint(img), 0, 255).astype(np.uint8),
        "label": int(classes[int(np.argmax(visible))]),
        "mask": mask,
        "boxes": boxes,
        "box_labels": box_labels,
        "depth": depth,
    }
    return Scene(sample, instance, classes.astype(np.int64), zs, coverage, visible)


def render_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """Draw one scene from ``rng``.

    Scenes whose largest visible object is tiny, or hardly larger than the next one, are
    redrawn, so that the classification label (class of the largest visible object) is clear.
    """
    for _ in range(100):
        scene = _try_scene(rng, size)
        if scene_arrays.clear_label(scene.visible, size):
            break
    return scene


def generate_split(seed: int, split: str, n: int, size: int = 64) -> dict[str, np.ndarray]:
    """Generate the ``n`` samples of ``split`` as stacked arrays (the cache file's content;
    keys in ``policysearch.data.scene_arrays``)."""
    check_split(split)
    return scene_arrays.stack([render_scene(sample_rng(_SALT, seed, split, i), size).sample
                               for i in range(n)])


# --------------------------------------------------------------------------------------------
# Dataset


ShapesSplit = SceneSplit  # one split of ``shapes`` (see ``policysearch.data.scene_arrays``)


class ShapesDataset(GeneratedDataset[SceneSplit]):
    """The built-in ``shapes`` dataset (see the module docstring).

    Splits are generated on first use and cached under ``cache_dir`` (default
    :func:`default_cache_dir`); a missing, corrupt or stale cache file is regenerated.
    """

    name = "shapes"
    tasks: tuple[TaskSpec, ...] = (
        TaskSpec("shape", "classification", num_classes=4, class_names=CLASSES),
        TaskSpec("seg", "segmentation", num_classes=5, class_names=("background",) + CLASSES),
        TaskSpec("objects", "detection", num_classes=4, class_names=CLASSES),
        TaskSpec("depth", "depth"),
    )

    def __init__(self, seed: int = 0, size: int = 64, n_train: int = 400, n_val: int = 200,
                 n_test: int = 500, cache_dir: str | Path | None = None):
        super().__init__(seed, size, n_train, n_val, n_test)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None

    def cache_path(self, split: str) -> Path:
        """The cache file of ``split`` (named by a hash of the generator's parameters)."""
        check_split(split)
        params = {"version": VERSION, "seed": self.seed, "size": self.size, "split": split,
                  "n": self.counts[split]}
        return cache_file(self.cache_dir, "shapes", VERSION, split, params)

    def _make_split(self, name: str) -> SceneSplit:
        """Loaded from the cache, or generated and cached."""
        n = self.counts[name]
        return SceneSplit(cached(
            self.cache_path(name), scene_arrays.KEYS,
            lambda arrays: scene_arrays.valid(arrays, n, self.size),
            lambda: generate_split(self.seed, name, n, self.size)))
