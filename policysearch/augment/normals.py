"""Surface normals under geometric ops: the map is resampled *and* its vectors turn with it.

A normal map is H×W×3 float32, unit vectors (zero vectors mark pixels without a normal), with
x along the image's columns (right), y along its rows (down) and z out of the image plane.
albumentations resamples the map as mask channels (nearest, like every target); this module
then turns the vectors: it reads the geometric transforms that actually ran, in order, from
albumentations' ``applied_transforms`` (``Compose(save_applied_params=True)``), takes each one's
local linear map (2×2, or one per output pixel for warps such as ``elastic``) and its
orthogonal factor (polar decomposition), and applies the product of those factors to each
vector's x–y part. So a horizontal flip negates x, a rotation by θ rotates (x, y) by θ, and a
zoom, a crop or the stretch of a shear leave the vectors alone: the camera convention of
docs/architecture.md ("Geometry of the augmentation"). z is never changed; vectors are
renormalised to unit length.

``RULES`` maps an albumentations class name to its rule; warps whose parameters carry
``map_x``/``map_y`` (every ``BaseDistortion``) need none. ``register_rule`` adds one for a
user's own geometric transform. Imports neither torch, optuna nor ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from albumentations.augmentations.geometric.distortion import BaseDistortion
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import ImageOnlyTransform

# Transforms that take masks but move no pixel (cutout erases image pixels in place).
STILL = frozenset({"NoOp", "CoarseDropout"})

Frame = np.ndarray  # (2, 2), or (H, W, 2, 2): a linear map per output pixel
Shape = tuple[int, int]


@dataclass(frozen=True)
class Rule:
    """How one geometric transform moves normals.

    ``linear(params, out_shape)``: its linear map from input to output pixel axes, (2, 2) or
    (H, W, 2, 2) per output pixel. ``warp(field, params, out_shape)``: a per-pixel field
    (H, W, C) float32 resampled like the image (nearest), for composing with earlier warps.
    """

    linear: Callable[[Mapping[str, Any], Shape], Frame]
    warp: Callable[[np.ndarray, Mapping[str, Any], Shape], np.ndarray]


RULES: dict[str, Rule] = {}


def register_rule(class_name: str, rule: Rule, *, replace: bool = False) -> Rule:
    """Teach the normals step an albumentations transform class (for a user's own op)."""
    if class_name in RULES and not replace:
        raise ValueError(f"a normals rule for {class_name!r} is already registered")
    RULES[class_name] = rule
    return rule


def moves_pixels(transform: Any) -> bool:
    """Whether a leaf albumentations transform can move pixels (and so normals)."""
    if isinstance(transform, ImageOnlyTransform):
        return False
    return type(transform).__name__ not in STILL


def unsupported(transforms: Sequence[Any]) -> list[str]:
    """Class names of the leaf transforms in ``transforms`` that move pixels but have no rule."""
    missing: list[str] = []
    for t in transforms:
        if isinstance(t, BaseCompose):  # ColorJitter's .transforms are functions, not leaves
            missing += unsupported(t.transforms)
            continue
        name = type(t).__name__
        if moves_pixels(t) and name not in RULES and not isinstance(t, BaseDistortion):
            missing.append(name)
    return missing


def frame_of(applied: Sequence[tuple[str, Mapping[str, Any]]], out_shape: Shape) -> Frame:
    """The product of the orthogonal parts (rotations, reflections) of the local linear maps of
    the transforms in ``applied`` (albumentations' ``applied_transforms``, in the order they
    ran), from input to output pixel axes.

    Global (2, 2) while every map is global; (H, W, 2, 2) once a warp made it vary.
    """
    frame: Frame = np.eye(2)
    shapes = [tuple(p["shape"][:2]) for _, p in applied if "shape" in p]
    step = 0
    for name, params in applied:
        if "shape" in params:
            step += 1
        rule = _rule(name, params)
        if rule is None:
            continue
        # The output of this step is the input of the next one that recorded its shape.
        after = shapes[step] if step < len(shapes) else out_shape
        # Each transform turns the vectors by the rotation of its own map: composing the maps
        # first would let two stretches (two shears, a shear and a crop's aspect change) turn
        # the vectors although neither does, and a task view would turn them otherwise than
        # the same ops in one view.
        linear = orthogonal_part(rule.linear(params, after))
        if frame.ndim == 4:
            h, w = frame.shape[:2]
            moved = rule.warp(frame.reshape(h, w, 4).astype(np.float32), params, after)
            frame = moved.reshape(*moved.shape[:2], 2, 2).astype(np.float64)
        frame = np.matmul(linear, frame)
    return frame


def orthogonal_part(frame: Frame) -> Frame:
    """The rotation (or reflection) R of the polar decomposition frame = R·S, S symmetric
    positive semi-definite; the identity where the frame is zero (pixels from outside)."""
    a, b = frame[..., 0, 0], frame[..., 0, 1]
    c, d = frame[..., 1, 0], frame[..., 1, 1]
    reflect = a * d - b * c < 0
    # Rotation by atan2(c - b, a + d); a reflection R = Rot(θ)·diag(1, -1), θ = atan2(c + b, a - d).
    theta = np.where(reflect, np.arctan2(c + b, a - d), np.arctan2(c - b, a + d))
    cos, sin = np.cos(theta), np.sin(theta)
    sign = np.where(reflect, -1.0, 1.0)
    out = np.empty(frame.shape, dtype=np.float64)
    out[..., 0, 0], out[..., 0, 1] = cos, -sin * sign
    out[..., 1, 0], out[..., 1, 1] = sin, cos * sign
    return out


def _orthogonal_2x2(frame: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """``orthogonal_part`` of one 2×2 map, in plain floats (a NumPy call per entry costs more
    than the arithmetic)."""
    (a, b), (c, d) = frame.tolist()
    if a == d == 1.0 and b == c == 0.0:
        return (1.0, 0.0), (0.0, 1.0)
    if a * d - b * c < 0:
        theta = math.atan2(c + b, a - d)
        cos, sin = math.cos(theta), math.sin(theta)
        return (cos, sin), (sin, -cos)
    theta = math.atan2(c - b, a + d)
    cos, sin = math.cos(theta), math.sin(theta)
    return (cos, -sin), (sin, cos)


def turn(normals: np.ndarray, frame: Frame, invalid: np.ndarray | None = None) -> np.ndarray:
    """``normals`` (H×W×3, already resampled) with their x–y parts turned by the orthogonal part
    of ``frame`` and renormalised; a new float32 array. Zero vectors stay zero, and ``invalid``
    pixels become zero."""
    n = np.array(normals, dtype=np.float32, copy=True)
    x, y = normals[..., 0], normals[..., 1]
    if frame.ndim == 2:
        (r00, r01), (r10, r11) = _orthogonal_2x2(frame)
        if (r00, r01, r10, r11) != (1.0, 0.0, 0.0, 1.0):
            n[..., 0] = r00 * x + r01 * y
            n[..., 1] = r10 * x + r11 * y
    else:
        rot = orthogonal_part(frame).astype(np.float32)
        n[..., 0] = rot[..., 0, 0] * x + rot[..., 0, 1] * y
        n[..., 1] = rot[..., 1, 0] * x + rot[..., 1, 1] * y
    norm = np.sqrt((n * n) @ np.ones(3, dtype=np.float32))[..., None]  # fastest |n| in NumPy
    n /= np.maximum(norm, np.float32(1e-12))  # exact zeros stay zero
    if invalid is not None:
        n[invalid] = 0.0
    return n


def _rule(name: str, params: Mapping[str, Any]) -> Rule | None:
    if name in RULES:
        return RULES[name]
    if "map_x" in params and "map_y" in params:
        return _DISTORTION
    return None  # moves nothing (checked up front by ``unsupported``)


# --- rules -----------------------------------------------------------------------------------


def _constant(matrix: list[list[float]]) -> Callable[[Mapping[str, Any], Shape], Frame]:
    value = np.array(matrix, dtype=np.float64)
    return lambda params, shape: value


def _affine_linear(params: Mapping[str, Any], shape: Shape) -> Frame:
    # ``matrix`` maps input pixel coordinates to output ones (cv2.warpAffine's forward map).
    return np.asarray(params["matrix"], dtype=np.float64)[:2, :2]


def _affine_warp(field: np.ndarray, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
    matrix = np.asarray(params["matrix"], dtype=np.float64)[:2]
    return _channels(cv2.warpAffine(field, matrix, (shape[1], shape[0]), flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0), field)


def _crop_box(params: Mapping[str, Any]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in params["crop_coords"])
    return x1, y1, x2, y2


def _crop_linear(params: Mapping[str, Any], shape: Shape) -> Frame:
    x1, y1, x2, y2 = _crop_box(params)
    return np.diag([shape[1] / max(1, x2 - x1), shape[0] / max(1, y2 - y1)])


def _crop_warp(field: np.ndarray, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
    x1, y1, x2, y2 = _crop_box(params)
    part = np.ascontiguousarray(field[y1:y2, x1:x2])
    return _channels(cv2.resize(part, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT),
                     field)


def _map_jacobian_inverse(params: Mapping[str, Any], shape: Shape) -> Frame:
    # Output pixel (x, y) reads input (map_x, map_y): the derivative of that read-back map,
    # inverted, is the forward linear map at each output pixel.
    map_x = np.asarray(params["map_x"], dtype=np.float64)
    map_y = np.asarray(params["map_y"], dtype=np.float64)
    jac = np.empty((*map_x.shape, 2, 2))
    jac[..., 0, 1], jac[..., 0, 0] = np.gradient(map_x)  # d/dy (rows), d/dx (columns)
    jac[..., 1, 1], jac[..., 1, 0] = np.gradient(map_y)
    det = jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    inv = np.empty_like(jac)
    inv[..., 0, 0], inv[..., 1, 1] = jac[..., 1, 1] / det, jac[..., 0, 0] / det
    inv[..., 0, 1], inv[..., 1, 0] = -jac[..., 0, 1] / det, -jac[..., 1, 0] / det
    return inv


def _map_warp(field: np.ndarray, params: Mapping[str, Any], shape: Shape) -> np.ndarray:
    map_x = np.asarray(params["map_x"], dtype=np.float32)
    map_y = np.asarray(params["map_y"], dtype=np.float32)
    return _channels(cv2.remap(field, map_x, map_y, interpolation=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_REPLICATE), field)


def _channels(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """cv2 drops a trailing channel axis of size 1; keep the field's shape."""
    return out.reshape(*out.shape[:2], *like.shape[2:])


_DISTORTION = Rule(_map_jacobian_inverse, _map_warp)


def _register_builtin_rules() -> None:
    register_rule("HorizontalFlip", Rule(_constant([[-1, 0], [0, 1]]),
                                         lambda f, p, s: np.ascontiguousarray(f[:, ::-1])))
    register_rule("VerticalFlip", Rule(_constant([[1, 0], [0, -1]]),
                                       lambda f, p, s: np.ascontiguousarray(f[::-1])))
    register_rule("Affine", Rule(_affine_linear, _affine_warp))
    register_rule("RandomResizedCrop", Rule(_crop_linear, _crop_warp))


_register_builtin_rules()

__all__ = ["RULES", "Rule", "frame_of", "moves_pixels", "orthogonal_part", "register_rule",
           "turn", "unsupported"]
