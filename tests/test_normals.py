"""Surface normals under geometric ops: resampled with the image, vectors turned with it, unit
length, zero where pixels come from outside (policysearch.augment.normals)."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policysearch.augment import Policy, Slot, TrivialAugmentSpec
from policysearch.augment.normals import (
    RULES,
    Rule,
    frame_of,
    orthogonal_part,
    register_rule,
    turn,
)
from policysearch.augment.ops import OPS, Op
from policysearch.errors import UserError

H = W = 96
TASKS = {"normals": "normals", "depth": "depth"}
SLOPE = (0.6, -0.4)  # depth change per pixel along x (right) and y (down)


def _plane_sample(slope: tuple[float, float] = SLOPE) -> dict:
    """A flat tilted plane seen straight on: depth d = 200 + a x + b y and its normal field
    (-a, -b, 1)/|.| (x right, y down, pixel units), the same at every pixel."""
    a, b = slope
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = (200.0 + a * (xx - W / 2) + b * (yy - H / 2)).astype(np.float32)
    normal = np.array([-a, -b, 1.0]) / math.hypot(a, b, 1.0)
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return {"image": image, "depth": depth,
            "normals": np.tile(normal.astype(np.float32), (H, W, 1))}


def _normal_of_fitted_plane(depth: np.ndarray) -> np.ndarray:
    """The normal of the plane least-squares fitted to the valid (> 0) depth pixels."""
    ys, xs = np.nonzero(depth > 0)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    (a, b, _), *_ = np.linalg.lstsq(design, depth[ys, xs].astype(np.float64), rcond=None)
    return np.array([-a, -b, 1.0]) / math.hypot(a, b, 1.0)


def _angles_deg(normals: np.ndarray, expected: np.ndarray) -> np.ndarray:
    cos = np.clip(normals @ expected, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def _run(shared: object, seed: int, sample: dict | None = None) -> dict:
    return Policy(tasks=TASKS, shared=shared).transform(seed=seed)(sample or _plane_sample())[
        "shared"]


def _assert_plane_normals(out: dict) -> np.ndarray:
    """The output normals equal the normals of the output depth's plane (angle < 1°) wherever
    depth is valid, and are zero exactly where it is not. Returns that plane's normal."""
    depth, normals = out["depth"], out["normals"]
    valid = depth > 0
    assert valid.sum() > 0.2 * H * W
    np.testing.assert_array_equal(np.linalg.norm(normals, axis=-1) > 0, valid)
    expected = _normal_of_fitted_plane(depth)
    assert _angles_deg(normals[valid].astype(np.float64), expected).max() < 1.0
    return expected


# --- the analytic cases of the issue: flat tilted plane under flips and rotations ------------


def test_hflip_and_vflip_mirror_the_plane_exactly() -> None:
    sample = _plane_sample()
    n = sample["normals"][0, 0]
    flipped = _run((Slot("hflip", 1.0, 0.0),), 0)
    np.testing.assert_allclose(flipped["normals"], np.tile([-n[0], n[1], n[2]], (H, W, 1)),
                               atol=1e-6)
    _assert_plane_normals(flipped)
    upside = _run((Slot("vflip", 1.0, 0.0),), 0)
    np.testing.assert_allclose(upside["normals"], np.tile([n[0], -n[1], n[2]], (H, W, 1)),
                               atol=1e-6)
    _assert_plane_normals(upside)


@settings(max_examples=25, deadline=None)
@given(m=st.floats(0.05, 1.0), seed=st.integers(0, 2**31 - 1))
def test_rotation_turns_the_plane_normals_by_exactly_its_angle(m: float, seed: int) -> None:
    out = _run((Slot("rotate", 1.0, m),), seed)
    expected = _assert_plane_normals(out)
    # Analytically: the x-y part turns by ±30·m degrees, z unchanged.
    n0 = _plane_sample()["normals"][0, 0].astype(np.float64)
    turned = math.degrees(math.atan2(expected[1], expected[0]) - math.atan2(n0[1], n0[0]))
    turned = (turned + 180.0) % 360.0 - 180.0
    assert abs(abs(turned) - 30.0 * m) < 1.0
    assert expected[2] == pytest.approx(n0[2], abs=0.01)


@pytest.mark.parametrize("shared", [
    TrivialAugmentSpec(ops=("rotate",)),  # wide: up to ±135°, angle drawn per sample
    (Slot("rotate", 1.0, 0.8), Slot("hflip", 1.0, 0.0), Slot("translate_y", 1.0, 0.2)),
    (Slot("hflip", 1.0, 0.0), Slot("rotate", 1.0, 0.6), Slot("vflip", 1.0, 0.0)),
], ids=["wide-rotate", "rotate-hflip-translate", "hflip-rotate-vflip"])
def test_rigid_sequences_keep_normals_those_of_the_moved_plane(shared: object) -> None:
    aug = Policy(tasks=TASKS, shared=shared).transform(seed=3)
    sample = _plane_sample()
    for _ in range(15):
        _assert_plane_normals(aug(sample)["shared"])


# --- every geometric op ----------------------------------------------------------------------


GEOMETRIC = sorted(n for n, op in OPS.items() if op.kind == "geometric")


@pytest.mark.parametrize("name", GEOMETRIC)
@settings(max_examples=10, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_every_geometric_op_keeps_unit_normals_turned_in_the_image_plane(name: str, m: float,
                                                                        seed: int) -> None:
    sample = _plane_sample()
    n0 = sample["normals"][0, 0]
    out = _run((Slot(name, 1.0, m),), seed, sample)
    normals, valid = out["normals"], out["depth"] > 0
    length = np.linalg.norm(normals, axis=-1)
    np.testing.assert_array_equal(length > 0, valid)
    np.testing.assert_allclose(length[valid], 1.0, atol=1e-5)
    np.testing.assert_allclose(normals[..., 2][valid], n0[2], atol=1e-5)
    if name in ("scale", "crop", "translate_x", "translate_y", "grid_distortion"):
        # Zoom, crop, shift and axis-aligned stretches tilt no surface: vectors unchanged.
        np.testing.assert_allclose(normals[valid], np.broadcast_to(n0, normals[valid].shape),
                                   atol=1e-5)


def test_zero_vectors_stay_zero() -> None:
    sample = _plane_sample()
    sample["normals"][:10] = 0.0  # no normal known there
    out = _run((Slot("hflip", 1.0, 0.0), Slot("rotate", 1.0, 0.5)), 4, sample)
    moved_holes = out["normals"][np.linalg.norm(out["normals"], axis=-1) == 0]
    assert len(moved_holes) >= 10 * W * 0.5
    np.testing.assert_array_equal(_run((Slot("vflip", 1.0, 0.0),), 0, sample)["normals"][-10:],
                                  0.0)


def test_task_view_turns_the_shared_view_once_more() -> None:
    policy = Policy(tasks=TASKS, shared=(Slot("rotate", 1.0, 0.5),),
                    per_task={"normals": (Slot("hflip", 1.0, 0.0),)})
    views = policy.transform(seed=2)(_plane_sample())
    shared, own = views["shared"]["normals"], views["normals"]["normals"]
    np.testing.assert_allclose(own[:, ::-1] * [-1, 1, 1], shared, atol=1e-6)


def test_photometric_views_leave_normals_untouched() -> None:
    sample = _plane_sample()
    out = _run((Slot("contrast", 1.0, 0.5), Slot("cutout", 1.0, 1.0)), 0, sample)
    assert out["normals"] is sample["normals"]


# --- the frame: composition and polar decomposition ------------------------------------------


def _rot(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


@pytest.mark.parametrize(("matrix", "expected"), [
    (2.0 * _rot(25), _rot(25)),  # zoomed rotation: the rotation
    (_rot(-70) @ np.diag([1.5, 0.7]), _rot(-70)),  # anisotropic stretch after... is removed
    (np.diag([-1.0, 1.0]), np.diag([-1.0, 1.0])),  # a mirror stays a mirror
    (np.diag([3.0, 0.5]), np.eye(2)),  # axis-aligned stretch: no turn
    (np.zeros((2, 2)), np.eye(2)),  # pixels from outside: identity, never NaN
])
def test_orthogonal_part(matrix: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(orthogonal_part(matrix), expected, atol=1e-12)


def test_orthogonal_part_of_a_shear_is_its_polar_rotation() -> None:
    shear = np.array([[1.0, 0.3], [0.0, 1.0]])
    rot = orthogonal_part(shear)
    np.testing.assert_allclose(rot @ rot.T, np.eye(2), atol=1e-12)
    stretch = rot.T @ shear  # the rest must be symmetric positive definite
    np.testing.assert_allclose(stretch, stretch.T, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(stretch) > 0)


def _rotation_maps(deg: float, shape: tuple[int, int]) -> dict:
    """albumentations-style remap maps (output pixel reads input (map_x, map_y)) of a rotation
    by ``deg`` about the centre."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    back = _rot(-deg)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    map_x = back[0, 0] * (xx - cx) + back[0, 1] * (yy - cy) + cx
    map_y = back[1, 0] * (xx - cx) + back[1, 1] * (yy - cy) + cy
    return {"shape": (h, w, 3), "map_x": map_x.astype(np.float32),
            "map_y": map_y.astype(np.float32)}


def test_a_warp_map_is_read_as_output_to_input() -> None:
    frame = frame_of([("ElasticTransform", _rotation_maps(20.0, (32, 40)))], (32, 40))
    assert frame.shape == (32, 40, 2, 2)
    np.testing.assert_allclose(orthogonal_part(frame[5:-5, 5:-5]),
                               np.broadcast_to(_rot(20.0), (22, 30, 2, 2)), atol=1e-4)


def test_a_warp_then_a_flip_composes_per_pixel() -> None:
    applied = [("ThinPlateSpline", _rotation_maps(20.0, (32, 40))),
               ("HorizontalFlip", {"shape": (32, 40, 3)})]
    frame = frame_of(applied, (32, 40))
    np.testing.assert_allclose(orthogonal_part(frame[5:-5, 5:-5]),
                               np.broadcast_to(np.diag([-1.0, 1.0]) @ _rot(20.0),
                                               (22, 30, 2, 2)), atol=1e-4)
    normals = np.tile(np.float32([0.6, 0.0, 0.8]), (32, 40, 1))
    turned = turn(normals, frame)[10, 10]
    np.testing.assert_allclose(turned, [-0.6 * math.cos(math.radians(20)),
                                        0.6 * math.sin(math.radians(20)), 0.8], atol=1e-4)


def test_photometric_entries_are_skipped() -> None:
    applied = [("ColorJitter", {"shape": (8, 8, 3), "brightness": 1.2}),
               ("VerticalFlip", {"shape": (8, 8, 3)})]
    np.testing.assert_array_equal(frame_of(applied, (8, 8)), np.diag([1.0, -1.0]))


# --- user ops without a rule -----------------------------------------------------------------


def test_a_geometric_op_without_rule_is_refused_until_one_is_registered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    op = Op("transpose", "geometric", False, "swap axes", "-", lambda m: A.Transpose(p=1.0))
    monkeypatch.setitem(OPS, "transpose", op)
    policy = Policy(tasks=TASKS, shared=(Slot("transpose", 1.0, 0.0),))
    with pytest.raises(UserError, match="cannot follow albumentations Transpose") as err:
        policy.transform()
    assert str(err.value).startswith("tasks.normals: ")
    # Without a normals task the policy builds, but a sample carrying normals is refused.
    seg_only = Policy(tasks={"depth": "depth"}, shared=(Slot("transpose", 1.0, 0.0),))
    with pytest.raises(UserError, match="Transpose"):
        seg_only.transform(seed=0)(_plane_sample())

    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    monkeypatch.setitem(RULES, "Transpose", Rule(lambda p, s: swap,
                                                 lambda f, p, s: np.swapaxes(f, 0, 1).copy()))
    out = policy.transform(seed=0)(_plane_sample())["shared"]
    _assert_plane_normals(out)
    with pytest.raises(ValueError, match="already registered"):
        register_rule("Transpose", RULES["Transpose"])


def test_mismatched_normals_are_a_user_error() -> None:
    sample = _plane_sample()
    sample["normals"] = sample["normals"][:, :, :2]
    with pytest.raises(UserError, match=r"^normals: shape \(96, 96, 2\) does not fit the image "
                                        r"96×96 \(expected H×W×3\)"):
        _run((Slot("hflip", 1.0, 0.0),), 0, sample)


@settings(max_examples=40, deadline=None)
@given(entries=st.lists(st.floats(-3.0, 3.0), min_size=4, max_size=4))
def test_a_global_frame_turns_like_the_same_frame_at_every_pixel(entries: list[float]) -> None:
    matrix = np.array(entries).reshape(2, 2)
    normals = np.random.default_rng(0).normal(size=(6, 7, 3)).astype(np.float32)
    normals[0, 0] = 0.0
    field = np.broadcast_to(matrix, (6, 7, 2, 2)).copy()
    np.testing.assert_allclose(turn(normals, matrix), turn(normals, field), atol=1e-5)
    out = turn(normals, matrix)
    np.testing.assert_array_equal(out[0, 0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(out.reshape(-1, 3)[1:], axis=1), 1.0, atol=1e-5)
