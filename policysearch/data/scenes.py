"""The built-in ``scenes`` dataset: small perspective renderings of 3-D objects in a room.

Made to differ in kind from ``shapes`` (flat 2-D shapes pasted on a texture), so that a policy
tuned on one does not carry over to the other by construction; it is the evidence protocol's
third dataset. Each RGB image (``size`` x ``size``, 64 by default) is ray-cast, one ray per
pixel centre, through a pinhole camera (60 degree horizontal field of view) at ``CAMERA_HEIGHT``
above a floor, pitched down by ``CAMERA_PITCH`` degrees, facing a back wall ``WALL_DISTANCE``
away. Floor and wall carry procedural textures (tiles, stripes or value noise in two random
colours, laid in world coordinates so that the floor's recede in perspective). 1-5 objects of
four classes -- box (turned about the vertical), sphere, cylinder and cone (both upright) --
rest on the floor at random positions and depths with non-overlapping footprints. Every
surface is lit by one random directional light, Lambertian with an ambient term (no shadows);
a per-pixel z-buffer (nearest analytic ray-primitive hit) resolves occlusion. Targets:

* ``label`` -- class of the largest *visible* object (most visible pixels); scenes where it is
  tiny or hardly larger than the next object are redrawn, as in ``shapes``;
* ``mask`` -- semantic mask, 0 = floor and wall, 1 + class for visible object pixels;
* ``boxes`` / ``box_labels`` -- tight boxes (x1, y1, x2, y2; x2/y2 exclusive) of each object's
  visible pixels, objects with fewer than ``MIN_BOX_PIXELS`` visible pixels left out;
* ``depth`` -- the z-buffer: metric depth along the camera's optical axis, in the units of the
  scene (the camera stands 1.2-1.8 above the floor, the wall is 9-13 away);
* ``normals`` (only with ``normals=True``) -- unit surface normals of the visible surfaces in
  policysearch's axes (x right, y down, z out of the image, towards the viewer), exact from the
  geometry. Off by default: the default search spaces then see the same four tasks as on
  ``shapes`` (same task names), and a fifth head would make every trial dearer.

Samples are deterministic in (seed, split, index): sample ``i`` of a split is drawn from its
own ``numpy.random.default_rng`` seeded with (salt, split seed, split id, i), so it does not
depend on the split's length. The split seed is ``seed`` for train and val and ``test_seed``
(default: ``seed``) for test: a fresh test split can be drawn later with another ``test_seed``
while train and val stay exactly as they were. A split is generated once and cached as one
``.npz`` file (``policysearch.data.cache``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policysearch.data import scene_arrays
from policysearch.data.base import Sample, TaskSpec
from policysearch.data.cache import cache_file, cached
from policysearch.data.generated import GeneratedDataset, check_int, check_split, sample_rng
from policysearch.data.scene_arrays import MIN_BOX_PIXELS, NormalsSceneSplit, SceneSplit

__all__ = [
    "CAMERA_HEIGHT",
    "CAMERA_PITCH",
    "CLASSES",
    "FOCAL",
    "MIN_BOX_PIXELS",
    "VERSION",
    "WALL_DISTANCE",
    "Camera",
    "Scene",
    "ScenesDataset",
    "generate_split",
    "render_scene",
    "view_rays",
]

# Bump whenever the generator's output changes: it is part of every cache file's name.
VERSION = 1

CLASSES: tuple[str, ...] = ("box", "sphere", "cylinder", "cone")
CAMERA_HEIGHT = (1.2, 1.8)
CAMERA_PITCH = (10.0, 22.0)  # degrees below the horizontal
WALL_DISTANCE = (9.0, 13.0)
FOCAL = 0.5 / np.tan(np.radians(30.0))  # focal length in image sides: 60 degrees across

_SALT = 0x5CE7E5  # keeps these seed sequences apart from other users of (seed, ...)
_N_OBJECTS_P = (0.25, 0.25, 0.2, 0.15, 0.15)  # chances of 1..5 objects
_MAIN_RADIUS, _RADIUS = (0.7, 1.1), (0.3, 0.65)  # footprint radii: the first object, the others
_MAIN_DEPTH, _NEAREST = 5.0, 2.5  # the first object stands nearer than this; all beyond that
_GAP = 0.05  # least distance between two footprints


@dataclass(frozen=True)
class Camera:
    """The pinhole camera: ``height`` above the floor, ``pitch`` (radians) below the horizontal,
    ``focal`` in pixels; world axes x right, y down, z forward (horizontal), origin at the
    camera."""

    height: float
    pitch: float
    focal: float

    def to_world(self, v: np.ndarray) -> np.ndarray:
        """Vectors (..., 3) from camera axes (x right, y down, z along the view) to world axes."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.stack([v[..., 0], c * v[..., 1] + s * v[..., 2],
                         -s * v[..., 1] + c * v[..., 2]], axis=-1)

    def to_camera(self, v: np.ndarray) -> np.ndarray:
        """The inverse of ``to_world``."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.stack([v[..., 0], c * v[..., 1] - s * v[..., 2],
                         s * v[..., 1] + c * v[..., 2]], axis=-1)


def view_rays(size: int, focal: float) -> np.ndarray:
    """H x W x 3 camera-axes ray directions through the pixel centres, z component 1 (so a
    hit at ray parameter t lies at depth t)."""
    offsets = (np.arange(size) + 0.5 - size / 2) / focal
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    return np.stack([xx, yy, np.ones_like(xx)], axis=-1)


# --------------------------------------------------------------------------------------------
# Ray-primitive intersections. Each takes world ray directions d (P x 3) from the origin and
# returns the ray parameter of the nearest front hit (inf where none) and the world unit
# normals there (P x 3; anything where there is no hit).

Hit = tuple[np.ndarray, np.ndarray]


def _nearest_root(a: np.ndarray, b: np.ndarray, c: float | np.ndarray) -> np.ndarray:
    """The smaller root of a t^2 + b t + c (a > 0), inf where there is none."""
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    return np.where((disc >= 0) & (a > 1e-12), t, np.inf)


def _sphere(d: np.ndarray, centre: np.ndarray, radius: float) -> Hit:
    t = _nearest_root((d * d).sum(1), -2 * d @ centre, float(centre @ centre) - radius**2)
    return t, (d * np.where(np.isfinite(t), t, 0)[:, None] - centre) / radius


def _cap(d: np.ndarray, cx: float, cz: float, top: float, radius: float) -> np.ndarray:
    """The ray parameter of the hits on the horizontal disc at height ``top`` (world y)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = top / d[:, 1]
    inside = (t > 0) & ((t * d[:, 0] - cx) ** 2 + (t * d[:, 2] - cz) ** 2 <= radius**2)
    return np.where(inside, t, np.inf)


def _cylinder(d: np.ndarray, cx: float, cz: float, radius: float, bottom: float,
              top: float) -> Hit:
    """An upright cylinder between world heights ``top`` < ``bottom`` (y points down)."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    t_side = _nearest_root(a, -2 * (d[:, 0] * cx + d[:, 2] * cz), cx**2 + cz**2 - radius**2)
    y = t_side * d[:, 1]
    t_side = np.where((y >= top) & (y <= bottom), t_side, np.inf)
    t_cap = _cap(d, cx, cz, top, radius)
    t = np.minimum(t_side, t_cap)
    p = d * np.where(np.isfinite(t), t, 0)[:, None]
    side = np.stack([(p[:, 0] - cx) / radius, np.zeros_like(t), (p[:, 2] - cz) / radius], 1)
    return t, np.where((t_cap < t_side)[:, None], np.array([0.0, -1.0, 0.0]), side)


def _cone(d: np.ndarray, cx: float, cz: float, radius: float, bottom: float,
          apex: float) -> Hit:
    """An upright cone, base (not drawn: it lies on the floor) at ``bottom``, tip at ``apex``."""
    k2 = (radius / (bottom - apex)) ** 2
    a = d[:, 0] ** 2 + d[:, 2] ** 2 - k2 * d[:, 1] ** 2
    b = -2 * (d[:, 0] * cx + d[:, 2] * cz) + 2 * k2 * d[:, 1] * apex
    c = cx**2 + cz**2 - k2 * apex**2
    disc = b * b - 4 * a * c
    best = np.full(len(d), np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        for sign in (-1.0, 1.0):  # a may be negative: both roots may be the nearer one
            t = (-b + sign * np.sqrt(disc)) / (2 * a)
            y = t * d[:, 1]
            ok = (disc >= 0) & (np.abs(a) > 1e-12) & (t > 0) & (y >= apex) & (y <= bottom)
            best = np.where(ok & (t < best), t, best)
    p = d * np.where(np.isfinite(best), best, 0)[:, None]
    grad = np.stack([p[:, 0] - cx, -k2 * (p[:, 1] - apex), p[:, 2] - cz], 1)
    return best, grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)


def _box(d: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float) -> Hit:
    """A box of half-extents ``half`` turned by ``yaw`` about the vertical."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # local -> world
    origin = rot.T @ -centre
    local = d @ rot
    with np.errstate(invalid="ignore", divide="ignore"):
        t1 = (-half - origin) / local
        t2 = (half - origin) / local
    near = np.minimum(t1, t2)
    t_near = near.max(1)  # the slab method: the ray is inside all three slabs in between
    hit = (t_near <= np.maximum(t1, t2).min(1)) & (t_near > 0)
    axis = near.argmax(1)
    normal = np.zeros_like(local)
    rows = np.arange(len(d))
    normal[rows, axis] = -np.sign(local[rows, axis])
    return np.where(hit, t_near, np.inf), normal @ rot.T


# --------------------------------------------------------------------------------------------
# Rendering


def _noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cells: int) -> np.ndarray:
    """Smooth periodic value noise in [0, 1] at (u, v), in grid cells (bilinear)."""
    grid = rng.uniform(size=(cells, cells))
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    i0, j0 = u0.astype(np.int64) % cells, v0.astype(np.int64) % cells
    i1, j1 = (i0 + 1) % cells, (j0 + 1) % cells
    top = grid[j0, i0] * (1 - fu) + grid[j0, i1] * fu
    bottom = grid[j1, i0] * (1 - fu) + grid[j1, i1] * fu
    return top * (1 - fv) + bottom * fv


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Albedo (P x 3, 0-1) of a random procedural texture at surface coordinates (u, v)."""
    c0 = rng.uniform(0.15, 0.9, size=3)
    c1 = np.clip(c0 + rng.normal(0, 0.3, size=3), 0.05, 1.0)
    tile = rng.uniform(0.4, 1.2)
    kind = int(rng.integers(3))
    if kind == 0:  # tiles
        t = (np.floor(u / tile) + np.floor(v / tile)) % 2
    elif kind == 1:  # stripes at a random angle
        phi = rng.uniform(0, np.pi)
        t = np.floor((u * np.cos(phi) + v * np.sin(phi)) / tile) % 2
    else:  # value noise
        t = _noise(rng, u / tile, v / tile, 8)
    t = t * 0.85 + 0.15 * _noise(rng, u * 3, v * 3, 16)  # fine variation on every kind
    return c0 + (c1 - c0) * t[:, None]


def _object_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """A random albedo, away from the room's mean and the other objects where possible."""
    best, best_dist = avoid[0], -1.0
    for _ in range(12):
        colour = rng.uniform(0.05, 1.0, size=3)
        dist = min(float(np.linalg.norm(colour - a)) for a in avoid)
        if dist > 0.45:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


@dataclass
class Scene:
    """One rendered scene: its sample dict and what the renderer knows.

    ``camera``: the camera it was seen through; ``instance`` (H x W uint8): 0 for floor and
    wall, ``k + 1`` for the visible pixels of object ``k``; ``classes``: the objects' classes;
    ``surface`` (n x H x W float): each object's own depth wherever its surface covers a pixel,
    occluded or not (inf elsewhere); ``visible``: the visible pixel counts; ``normals``
    (H x W x 3): the visible surfaces' normals, whether or not the sample carries them.
    """

    sample: Sample
    camera: Camera
    instance: np.ndarray
    classes: np.ndarray
    surface: np.ndarray
    visible: np.ndarray
    normals: np.ndarray


def _place(rng: np.random.Generator, n: int, wall: float) -> list[tuple[float, float, float]]:
    """Footprints (x, z, radius) on the floor in view, apart from each other; a later object
    that finds no room after a few tries is left out."""
    placed: list[tuple[float, float, float]] = []
    for k in range(n):
        radius = rng.uniform(*(_MAIN_RADIUS if k == 0 else _RADIUS))
        for _ in range(20):
            z = rng.uniform(_NEAREST, _MAIN_DEPTH if k == 0 else wall - 1.5)
            x = rng.uniform(-0.75, 0.75) * 0.5 * z / FOCAL
            if all(np.hypot(x - px, z - pz) >= radius + pr + _GAP for px, pz, pr in placed):
                placed.append((x, z, radius))
                break
    return placed


def _objects(rng: np.random.Generator, d: np.ndarray, floor: float, wall: float,
             ) -> tuple[np.ndarray, list[Hit]]:
    """Random objects standing on the floor (world height ``floor``): classes and hits."""
    n = int(rng.choice(len(_N_OBJECTS_P), p=_N_OBJECTS_P)) + 1
    footprints = _place(rng, n, wall)
    classes = rng.integers(0, len(CLASSES), size=len(footprints))
    hits = []
    for cls, (x, z, r) in zip(classes, footprints, strict=True):
        if cls == 0:
            half = np.array([rng.uniform(0.45, 0.7) * r, rng.uniform(0.4, 0.9) * r,
                             rng.uniform(0.45, 0.7) * r])
            hits.append(_box(d, np.array([x, floor - half[1], z]), half,
                             rng.uniform(0, np.pi / 2)))
        elif cls == 1:
            radius = rng.uniform(0.7, 1.0) * r
            hits.append(_sphere(d, np.array([x, floor - radius, z]), radius))
        elif cls == 2:
            radius = rng.uniform(0.6, 0.9) * r
            hits.append(_cylinder(d, x, z, radius, floor, floor - rng.uniform(0.8, 2.0) * r))
        else:
            hits.append(_cone(d, x, z, rng.uniform(0.7, 1.0) * r, floor,
                              floor - rng.uniform(1.2, 2.2) * r))
    return classes.astype(np.int64), hits


def _room(rng: np.random.Generator, d: np.ndarray, height: float, wall: float,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The floor and back wall along world rays ``d``: ray parameters, albedo and world normals
    (P, P x 3, P x 3)."""
    with np.errstate(divide="ignore"):
        t_floor = np.where(d[:, 1] > 0, height / d[:, 1], np.inf)
    t_wall = wall / d[:, 2]  # every ray reaches the wall: the pitch keeps d_z > 0
    on_floor = t_floor < t_wall
    t_room = np.minimum(t_floor, t_wall)
    p = d * t_room[:, None]
    # Floor textured in (x, z), wall in (x, y): both in world units, so the floor's recede.
    albedo = np.where(on_floor[:, None], _texture(rng, p[:, 0], p[:, 2]),
                      _texture(rng, p[:, 0], p[:, 1]))
    normals = np.where(on_floor[:, None], np.array([0.0, -1.0, 0.0]),
                       np.array([0.0, 0.0, -1.0]))
    return t_room, albedo, normals


def _shade(rng: np.random.Generator, albedo: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Float RGB (P x 3, about 0-255) under a random directional light: Lambertian with an
    ambient term, a faint tint and grain."""
    light = np.array([rng.uniform(-1, 1), -rng.uniform(0.6, 1.5), rng.uniform(-1.0, 0.5)])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.25, 0.45)
    tint = rng.uniform(0.85, 1.0, size=3)
    shade = ambient + (1 - ambient) * np.clip(normals @ light, 0, None)
    return 255 * albedo * shade[:, None] * tint + rng.normal(0, 3, size=albedo.shape)


def _try_scene(rng: np.random.Generator, size: int) -> Scene:
    """One candidate scene."""
    camera = Camera(rng.uniform(*CAMERA_HEIGHT), np.radians(rng.uniform(*CAMERA_PITCH)),
                    FOCAL * size)
    wall = rng.uniform(*WALL_DISTANCE)
    d = camera.to_world(view_rays(size, camera.focal).reshape(-1, 3))
    t_room, albedo, normals = _room(rng, d, camera.height, wall)
    classes, hits = _objects(rng, d, camera.height, wall)
    surface = np.stack([t for t, _ in hits]) if hits else np.zeros((0, len(d)))
    depth_all = np.vstack([t_room[None], surface])
    instance = depth_all.argmin(0)  # the z-buffer: 0 the room, k + 1 object k
    depth = depth_all[instance, np.arange(len(d))]
    avoid = [albedo.mean(0)]
    for k, (_, normal) in enumerate(hits):
        shown = instance == k + 1
        colour = _object_colour(rng, avoid)
        avoid.append(colour)
        normals[shown] = normal[shown]
        albedo[shown] = colour * (1 + 0.06 * rng.standard_normal((int(shown.sum()), 1)))
    img = _shade(rng, albedo, normals)
    n = len(classes)
    inst = instance.reshape(size, size).astype(np.uint8)
    visible, boxes, box_labels = scene_arrays.object_boxes(inst, classes)
    mask = np.concatenate([[0], classes + 1])[instance].reshape(size, size).astype(np.uint8)
    cam_normals = camera.to_camera(normals) * np.array([1.0, 1.0, -1.0])  # z towards the viewer
    sample: Sample = {
        "image": np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(size, size, 3),
        "label": int(classes[int(np.argmax(visible))]) if n else 0,
        "mask": mask,
        "boxes": boxes,
        "box_labels": box_labels,
        "depth": depth.reshape(size, size).astype(np.float32),
    }
    return Scene(sample, camera, inst, classes, surface.reshape(n, size, size), visible,
                 cam_normals.reshape(size, size, 3).astype(np.float32))


def render_scene(rng: np.random.Generator, size: int = 64, *, normals: bool = False) -> Scene:
    """Draw one scene from ``rng``; with ``normals`` its sample carries them.

    Scenes whose largest visible object is tiny, or hardly larger than the next one, are
    redrawn, so that the classification label (class of the largest visible object) is clear.
    """
    for _ in range(100):
        scene = _try_scene(rng, size)
        if scene_arrays.clear_label(scene.visible, size):
            break
    if normals:
        scene.sample["normals"] = scene.normals.copy()
    return scene


def generate_split(seed: int, split: str, n: int, size: int = 64, *,
                   normals: bool = False) -> dict[str, np.ndarray]:
    """Generate the ``n`` samples of ``split`` from the split seed ``seed`` as stacked arrays
    (the cache file's content; keys in ``policysearch.data.scene_arrays``)."""
    check_split(split)
    return scene_arrays.stack([
        render_scene(sample_rng(_SALT, seed, split, i), size, normals=normals).sample
        for i in range(n)])


# --------------------------------------------------------------------------------------------
# Dataset


class ScenesDataset(GeneratedDataset[SceneSplit]):
    """The built-in ``scenes`` dataset (see the module docstring).

    ``test_seed`` seeds the test split alone (default: ``seed``); ``normals`` adds the surface
    normals task. Splits are generated on first use and cached under ``cache_dir`` (default
    ``policysearch.data.cache.default_cache_dir``); a missing, corrupt or stale cache file is
    regenerated.
    """

    name = "scenes"

    def __init__(self, seed: int = 0, size: int = 64, n_train: int = 400, n_val: int = 200,
                 n_test: int = 500, cache_dir: str | Path | None = None, *,
                 test_seed: int | None = None, normals: bool = False):
        super().__init__(seed, size, n_train, n_val, n_test)
        self.test_seed = self.seed if test_seed is None else check_int(
            test_seed, "test_seed", 0, "a non-negative integer")
        self.normals = bool(normals)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.tasks = (
            TaskSpec("shape", "classification", num_classes=4, class_names=CLASSES),
            TaskSpec("seg", "segmentation", num_classes=5, class_names=("background",) + CLASSES),
            TaskSpec("objects", "detection", num_classes=4, class_names=CLASSES),
            TaskSpec("depth", "depth"),
        ) + ((TaskSpec("normals", "normals"),) if self.normals else ())

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, test_seed={self.test_seed}, normals={self.normals})"

    def split_seed(self, split: str) -> int:
        """The seed ``split`` is generated from: ``test_seed`` for test, else ``seed``."""
        check_split(split)
        return self.test_seed if split == "test" else self.seed

    def cache_path(self, split: str) -> Path:
        """The cache file of ``split`` (named by a hash of the generator's parameters)."""
        params = {"version": VERSION, "seed": self.split_seed(split), "size": self.size,
                  "split": split, "n": self.counts[split], "normals": self.normals}
        return cache_file(self.cache_dir, "scenes", VERSION, split, params)

    def _make_split(self, name: str) -> SceneSplit:
        """Loaded from the cache, or generated and cached."""
        n = self.counts[name]
        keys = scene_arrays.NORMALS_KEYS if self.normals else scene_arrays.KEYS
        arrays = cached(
            self.cache_path(name), keys,
            lambda arrays: scene_arrays.valid(arrays, n, self.size, normals=self.normals),
            lambda: generate_split(self.split_seed(name), name, n, self.size,
                                   normals=self.normals))
        return NormalsSceneSplit(arrays) if self.normals else SceneSplit(arrays)
