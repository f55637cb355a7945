"""Property tests that pin the geometry of the geometric ops (issue 22, point 5).

The sample: one filled rectangle (mask class 1, bright pixels, its own normal vector N_IN; the
background has N_OUT) and its exact box. Its depth is each pixel's own address (1 + x + W·y;
0 means "came from outside"), so an output's depth says, per pixel, which input pixel it was
read from: the warp that actually ran, measured without asking albumentations. Everything is
checked against that map:

- boxes: flips and translations move the box exactly; scale and crop to the scaled coordinates
  (within float32 rounding); rotation and shear give the bounding box of the moved corners,
  which encloses every object pixel of the output mask. A box is kept or dropped by the
  project's rule (``compile.BOX_MIN_VISIBILITY``, ``BOX_MIN_SIDE``), and never kept for an
  object that is no longer visible;
- random compositions of two or three ops: the same as the ops applied one after another, each
  step moving mask, depth, normals and box consistently (same support, pixel for pixel);
- normals, the camera convention of docs/architecture.md: each op turns the vectors by the
  rotation (reflection) of the polar decomposition of its local linear map, computed here by an
  SVD of the measured map, independently of policysearch.augment.normals.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policysearch.augment import Policy, Slot
from policysearch.augment.compile import BOX_MIN_SIDE, BOX_MIN_VISIBILITY
from policysearch.augment.ops import OPS
from tests.test_ops import EDGE_BAND, H, W, assert_targets_follow
from tests.test_ops import _sample as object_sample

TASKS = {"seg": "segmentation", "det": "detection", "depth": "depth", "normals": "normals"}
N_IN = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
N_OUT = np.array([-0.6, 0.2, 0.5]) / np.linalg.norm([-0.6, 0.2, 0.5])  # another z: z never turns
CENTRE = np.array([W / 2, H / 2])  # of the image, in edge coordinates (pixel i spans [i, i+1))
TIE = 0.04  # px: OpenCV maps coordinates in fixed point (1/32 px), so near-ties go either way

GEOMETRIC = sorted(n for n, op in OPS.items() if op.kind == "geometric")
WARPS = ("elastic", "grid_distortion")  # no global linear map: a Jacobian per pixel
AFFINE = tuple(n for n in GEOMETRIC if n not in WARPS)
# Ops whose box, mask and depth move by whole pixels: the box is exact and equals the pixel
# extent of the object.
WHOLE_PIXELS = ("hflip", "vflip", "translate_x", "translate_y")

# (x1, y1, w, h) of the rectangle: anywhere, from 6 px to half the side.
rects = st.integers(6, 32).flatmap(lambda w: st.integers(6, 32).flatmap(
    lambda h: st.tuples(st.integers(0, W - w), st.integers(0, H - h), st.just(w), st.just(h))))


def _sample(x1: int, y1: int, w: int, h: int) -> dict:
    """``tests.test_ops._sample``'s rectangle, with depth = pixel address and two normals."""
    sample = object_sample(np.random.default_rng(0), x1, y1, w, h, False)
    yy, xx = np.mgrid[0:H, 0:W]
    sample["depth"] = (1 + xx + W * yy).astype(np.float32)
    inside = sample["mask"] == 1
    sample["normals"] = np.where(inside[..., None], N_IN, N_OUT).astype(np.float32)
    return sample


def _run(ops: list[tuple[str, float]], seed: int, sample: dict, *, at: int = 0) -> dict:
    """``sample`` through a policy of ``ops`` (one slot each, p = 1), ``at`` identity slots
    before them: a slot's draws are keyed by its position (policysearch.augment.draws), so op
    ``k`` of a composition run alone at position ``k`` draws exactly what it drew there."""
    slots = [Slot("identity", 1.0, 0.0)] * at + [Slot(name, 1.0, m) for name, m in ops]
    return Policy(tasks=TASKS, shared=tuple(slots)).transform(seed=seed)(sample, index=0)[
        "shared"]


def _sources(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output pixel of a run of ``_sample``: whether it was read from inside the image, and
    the column and row it was read from."""
    valid = depth > 0
    code = np.where(valid, depth, 1).astype(np.int64) - 1
    return valid, code % W, code // W


# --- maps: x' = L x + g in edge coordinates -------------------------------------------------


def _fitted_map(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The affine map that ran, least-squares fitted to the read-back addresses (nearest
    sampling rounds each by under half a pixel; over thousands of pixels the fit is within
    ~0.01 px), forward, in edge coordinates."""
    valid, sx, sy = _sources(depth)
    ys, xs = np.nonzero(valid)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    target = np.stack([sx[valid], sy[valid]], axis=1).astype(np.float64)
    back, *_ = np.linalg.lstsq(design, target, rcond=None)  # centre coords: s = B p + b
    lin = np.linalg.inv(back[:2].T)
    offset = -lin @ back[2]
    return lin, offset + 0.5 - lin @ np.array([0.5, 0.5])


def _about_centre(lin: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)
                  ) -> tuple[np.ndarray, np.ndarray]:
    return lin, CENTRE - lin @ CENTRE + np.asarray(shift)


def _candidates(name: str, m: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The maps an affine op at magnitude ``m`` may apply: its + and - sign (one each is drawn),
    x right and y down, about the image centre."""
    if name == "hflip":
        return [_about_centre(np.diag([-1.0, 1.0]))]
    if name == "vflip":
        return [_about_centre(np.diag([1.0, -1.0]))]
    out = []
    for sign in (1.0, -1.0):
        if name == "rotate":
            t = math.radians(sign * 30.0 * m)  # counter-clockwise on screen for +
            out.append(_about_centre(np.array([[math.cos(t), math.sin(t)],
                                               [-math.sin(t), math.cos(t)]])))
        elif name == "shear_x":
            out.append(_about_centre(np.array([[1.0, -sign * 0.3 * m], [0.0, 1.0]])))
        elif name == "shear_y":
            out.append(_about_centre(np.array([[1.0, 0.0], [-sign * 0.3 * m, 1.0]])))
        elif name == "scale":
            out.append(_about_centre((1.0 + sign * 0.5 * m) * np.eye(2)))
        elif name in ("translate_x", "translate_y"):
            px = sign * int(0.45 * m * (W if name == "translate_x" else H))  # whole pixels
            out.append(_about_centre(np.eye(2), (px, 0.0) if name == "translate_x" else (0.0, px)))
    return out


def _maps_of(name: str, m: float, depth: np.ndarray, turned: tuple[np.ndarray, np.ndarray]
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The maps an affine op may have applied in the run whose output depth is ``depth``,
    best first: each a candidate
    that predicts, for every output pixel, the pixel it was read from (the one under its
    centre mapped back: nearest sampling; either one at a tie). A crop's window is random: read
    off a fit and rounded to whole pixels. A tiny rotation or shear may read the same pixels
    either way: then the candidate that best explains ``turned`` (the normals before and after,
    at the valid pixels), then the one nearest the fit."""
    valid, sx, sy = _sources(depth)
    fitted = _fitted_map(depth)
    ys, xs = np.nonzero(valid)
    centres = np.stack([xs + 0.5, ys + 0.5], axis=1)
    read = np.stack([sx[valid], sy[valid]], axis=1)

    def misses(c: tuple[np.ndarray, np.ndarray]) -> int:
        back = (centres - c[1]) @ np.linalg.inv(c[0]).T
        # A centre within OpenCV's fixed-point step (1/32 px) of a pixel edge is a tie.
        low, high = np.floor(back - TIE).astype(np.int64), np.floor(back + TIE).astype(np.int64)
        return int(((read < low) | (read > high)).any(axis=1).sum())

    if name == "crop":
        # A window of whole pixels [cx, cx + cw) × [cy, cy + ch), resized to the image.
        lin, offset = fitted
        cw0, ch0 = round(W / lin[0, 0]), round(H / lin[1, 1])
        candidates = []
        for cw in (cw0 - 1, cw0, cw0 + 1):
            for ch in (ch0 - 1, ch0, ch0 + 1):
                cx0, cy0 = round(-offset[0] * cw / W), round(-offset[1] * ch / H)
                candidates += [(np.diag([W / cw, H / ch]), np.array([-cx * W / cw, -cy * H / ch]))
                               for cx in (cx0 - 1, cx0, cx0 + 1) for cy in (cy0 - 1, cy0, cy0 + 1)]
    else:
        candidates = _candidates(name, m)
    corners = np.array([[0.0, 0.0], [W, 0.0], [0.0, H], [W, H]])
    before, after = turned

    def rank(c: tuple[np.ndarray, np.ndarray]) -> tuple[int, float, float]:
        residual = float(np.abs(_turned(before, _rotation_part(c[0])) - after).max(initial=0.0))
        distance = float(np.abs(corners @ (c[0] - fitted[0]).T + c[1] - fitted[1]).max())
        return misses(c), residual, distance

    ranks = [rank(c) for c in candidates]
    order = sorted(range(len(candidates)), key=ranks.__getitem__)
    best = ranks[order[0]]
    assert best[0] == 0, (name, m, candidates[order[0]], best)
    # Every candidate that explains pixels and normals as well: a zoom by 1 ± 0.01 reads the
    # same pixels either way, and turns no vector.
    return [candidates[i] for i in order if ranks[i][0] == 0 and ranks[i][1] < best[1] + 1e-6]


def _moved_box(box: np.ndarray, lin: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The bounding box of the moved corners of ``box`` (x1, y1, x2, y2), not clipped."""
    x1, y1, x2, y2 = box
    pts = np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]) @ lin.T + offset
    return np.array([*pts.min(axis=0), *pts.max(axis=0)])


def _clip(box: np.ndarray) -> np.ndarray:
    return np.clip(box, 0.0, [W, H, W, H])


def _kept_by_rule(moved: np.ndarray) -> bool | None:
    """The project's box rule on the moved, unclipped box: kept when at least 30% of its area
    stays in the image and both clipped sides are 2 px or more. None within rounding of a
    threshold (the measured map is exact to ~0.01 px, not to the bit)."""
    clipped = _clip(moved)
    area = (moved[2] - moved[0]) * (moved[3] - moved[1])
    cw, ch = max(0.0, clipped[2] - clipped[0]), max(0.0, clipped[3] - clipped[1])
    visible = cw * ch / area
    if (abs(visible - BOX_MIN_VISIBILITY) < 0.01 or abs(cw - BOX_MIN_SIDE) < 0.05
            or abs(ch - BOX_MIN_SIDE) < 0.05):
        return None
    return visible >= BOX_MIN_VISIBILITY and cw >= BOX_MIN_SIDE and ch >= BOX_MIN_SIDE


def _pixel_box(mask: np.ndarray) -> np.ndarray | None:
    """The extent (edge coordinates) of the object's pixels, None when none is visible."""
    ys, xs = np.nonzero(mask == 1)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def assert_box_encloses(box: np.ndarray, mask: np.ndarray, *, tol: float) -> None:
    """Every object pixel's centre lies in ``box`` (within ``tol``): nearest sampling reads a
    pixel as object when its centre maps into the moved rectangle, so the centres, not the
    whole pixels, are inside the moved corners."""
    ys, xs = np.nonzero(mask == 1)
    assert len(xs), "a box is kept for an object that is no longer visible"
    x1, y1, x2, y2 = box
    assert x1 - tol <= xs.min() + 0.5 and xs.max() + 0.5 <= x2 + tol, (box, xs.min(), xs.max())
    assert y1 - tol <= ys.min() + 0.5 and ys.max() + 0.5 <= y2 + tol, (box, ys.min(), ys.max())


# --- rotations, by an SVD (independent of policysearch.augment.normals) ----------------------


def _rotation_part(lin: np.ndarray) -> np.ndarray:
    """The orthogonal factor U·Vᵀ of the polar decomposition of each 2×2 map in ``lin``."""
    u, _, vt = np.linalg.svd(lin)
    return u @ vt


def _turned(normals: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """``normals`` (..., 3) with x–y turned by ``rot`` ((2, 2) or (..., 2, 2)); z kept."""
    out = np.array(normals, dtype=np.float64)
    out[..., :2] = np.einsum("...ij,...j->...i", rot, out[..., :2])
    return out


def _local_rotation(depth: np.ndarray, r: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel of a warp, the rotation part of its forward Jacobian, from a
    least-squares plane through the read-back addresses of the (2r+1)² pixels around it; and
    where that is defined (the whole window read from inside the image)."""
    valid, sx, sy = _sources(depth)
    k = 2 * r + 1
    d = np.arange(-r, r + 1, dtype=np.float64)
    kx = np.tile(d, (k, 1)) / (k * float((d * d).sum()))  # correlation: Σ dx·s / Σ dx²
    full = cv2.erode(valid.astype(np.uint8), np.ones((k, k), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    back = np.empty((H, W, 2, 2))
    for row, src in enumerate((sx, sy)):
        s = src.astype(np.float64)
        back[..., row, 0] = cv2.filter2D(s, -1, kx)
        back[..., row, 1] = cv2.filter2D(s, -1, kx.T)
    # The forward map is the inverse: its rotation part is the transpose of the back map's.
    return np.swapaxes(_rotation_part(back), -1, -2), full


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between the x–y parts of ``a`` and ``b``."""
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    dot = a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]
    return np.degrees(np.abs(np.arctan2(cross, dot)))


# --- one op: every target moved by the map that ran ------------------------------------------


def check_step(name: str, m: float, before: dict, after: dict, addresses: np.ndarray, *,
               phantom: bool = False, slack: float = 0.01) -> bool:
    """``after`` is ``before`` under op ``name``; ``addresses`` the output depth of the same
    draw on a ``_sample`` (which input pixel each output pixel was read from). Mask, depth and
    normals follow that map pixel for pixel, normals turned by the rotation part of the op's
    local map; the box is the moved box by the project's rule."""
    # Returns whether ``after``'s box is a phantom: kept by a warp for an object that left
    # the image (``test_a_warp_drops_the_box_of_an_object_it_moves_out``); ``phantom``: ``before``'s
    # is one, and no box rule holds for it. ``slack``: how far (px) object pixels may stick out
    # of the box, 0.01 for one op on the exact box (see the call in the composition test).
    valid, sx, sy = _sources(addresses)
    mask, depth, normals = after["mask"], after["depth"], after["normals"]
    # Outside pixels: ignore in the mask, invalid depth, zero normals.
    np.testing.assert_array_equal(mask[~valid], 255)
    np.testing.assert_array_equal(depth[~valid], 0.0)
    np.testing.assert_array_equal(normals[~valid], 0.0)
    # Inside: the value of the pixel it was read from, in every target.
    np.testing.assert_array_equal(mask[valid], before["mask"][sy, sx][valid])
    np.testing.assert_array_equal(depth[valid], before["depth"][sy, sx][valid])
    source_normals = before["normals"][sy, sx]
    known = valid & (np.linalg.norm(source_normals, axis=-1) > 0)
    np.testing.assert_array_equal(normals[valid & ~known], 0.0)
    length = np.linalg.norm(normals[known], axis=-1)
    np.testing.assert_allclose(length, 1.0, atol=1e-5)  # unit length kept
    np.testing.assert_allclose(normals[known][:, 2], source_normals[known][:, 2], atol=1e-5)

    moved = None
    if name == "grid_distortion" and m == 0:  # a NoOp (ops._grid_distortion)
        name = "identity"
    if name in WARPS:
        rot, full = _local_rotation(addresses, r=3)
        where = known & full
        expected = _turned(source_normals[where], rot[where])
        err = _angles_deg(normals[where], expected)
        if len(err):
            # The measured Jacobian is a 7×7 fit of addresses rounded to whole pixels (1-2° of
            # noise), wrong where the warp folds (elastic at magnitude 1 on 64 px turns the
            # vectors by 10-30° on median, by up to 150° near its folds).
            assert np.median(err) < 2.5 and np.percentile(err, 90) < 6.0, (
                name, np.median(err), np.percentile(err, 90))
    else:
        maps = [(np.eye(2), np.zeros(2))] if name == "identity" else _maps_of(
            name, m, addresses, (source_normals[known], normals[known]))
        np.testing.assert_allclose(normals[known], _turned(source_normals[known],
                                                           _rotation_part(maps[0][0])), atol=1e-5)
        if len(before["boxes"]):
            # The box tells apart maps that read the same pixels: the one it fits best.
            got = after["boxes"][0] if len(after["boxes"]) else None
            moves = [_moved_box(before["boxes"][0], lin, offset) for lin, offset in maps]
            moved = moves[0] if got is None else min(
                moves, key=lambda b: float(np.abs(_clip(b) - got).max()))

    if not len(before["boxes"]):
        assert not len(after["boxes"])
        return False
    kept = len(after["boxes"]) == 1
    if phantom:
        return kept
    box = after["boxes"][0] if kept else None
    if moved is not None:
        rule = _kept_by_rule(moved)
        assert rule is None or kept == rule, (moved, after["boxes"])
        if box is not None:
            # Exactly the bounding box of the moved corners, clipped: no larger.
            np.testing.assert_allclose(box, _clip(moved), atol=0.05)
    else:
        # A warp moves a box as albumentations 2.0.8's remap_bboxes does: the box rasterised
        # with its right and bottom edges inclusive (one pixel more), warped like the mask and
        # read back as the first and last pixel *indices* (one pixel less): the box is exactly
        # the pixels read from that raster, within a pixel of the object's extent.
        x1, y1, x2, y2 = (min(max(round(v), 0), side - 1)
                          for v, side in zip(before["boxes"][0], (W, H, W, H), strict=True))
        raster = valid & (x1 <= sx) & (sx <= x2) & (y1 <= sy) & (sy <= y2)
        ys, xs = np.nonzero(raster)
        if not len(xs):
            if kept:  # the box's raster left the image: albumentations keeps the box as it was
                np.testing.assert_array_equal(box, before["boxes"][0])
            return kept
        region = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)
        # grid_distortion reads its last row and column at exactly H and W: the mask's
        # replicated border gives them the last pixel, the box raster's constant border nothing.
        edge = name == "grid_distortion" and (region[2] == W - 1 or region[3] == H - 1)
        sides = region[2:] - region[:2]
        if sides.min() >= BOX_MIN_SIDE + edge or sides.min() < BOX_MIN_SIDE:
            assert kept == (sides.min() >= BOX_MIN_SIDE), (region, after["boxes"])
        if box is not None:
            np.testing.assert_allclose(box, region, atol=1.0 if edge else 0.0)
    if _pixel_box(mask) is None:
        if name in WARPS:  # its raster, a pixel wider than the box, may outlive the object
            return kept
        assert not kept, "a box is kept for an object that is no longer visible"
    if box is not None:
        assert_box_encloses(box, mask, tol=max(slack, 2.0) if name in WARPS else slack)
    return False


# --- single ops -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AFFINE)
@settings(max_examples=20, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), rect=rects)
# An object at the right edge: a shift of 28 px leaves 6 of 16 columns (37.5%) visible, or none.
@example(m=1.0, seed=0, rect=(48, 20, 16, 16))
@example(m=1.0, seed=1, rect=(48, 20, 16, 16))
def test_an_affine_op_moves_the_box_exactly(name: str, m: float, seed: int,
                                            rect: tuple[int, int, int, int]) -> None:
    """Flips, translations: the exact moved box, equal to the object's pixels. Scale, crop:
    the scaled coordinates (float32), the object's pixels within a pixel of it (nearest
    sampling). Rotation, shear: the bounding box of the moved corners, enclosing every object
    pixel. Kept or dropped by the project's rule; dropped when the object is gone."""
    sample = _sample(*rect)
    out = _run([(name, m)], seed, sample)
    check_step(name, m, sample, out, out["depth"])
    if not len(out["boxes"]):
        return
    box, pixels = out["boxes"][0], _pixel_box(out["mask"])
    assert pixels is not None
    if name in WHOLE_PIXELS:
        np.testing.assert_array_equal(box, pixels)
    elif name in ("scale", "crop"):
        np.testing.assert_allclose(box, pixels, atol=1.0)


def test_the_box_check_refuses_a_full_frame_box() -> None:
    """The checks above are not the old enclosure test that any box containing the object
    passed."""
    sample = _sample(10, 12, 16, 20)
    out = _run([("rotate", 0.5)], 0, sample)
    out["boxes"] = np.array([[0.0, 0.0, W, H]], np.float32)
    with pytest.raises(AssertionError):
        check_step("rotate", 0.5, sample, out, out["depth"])


@pytest.mark.parametrize("name", WARPS)
@settings(max_examples=10, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), rect=rects)
def test_a_warp_moves_every_target_with_its_pixels(name: str, m: float, seed: int,
                                                   rect: tuple[int, int, int, int]) -> None:
    sample = _sample(*rect)
    out = _run([(name, m)], seed, sample)
    check_step(name, m, sample, out, out["depth"])


@pytest.mark.xfail(strict=True, reason="albumentations 2.0.8's remap_bboxes keeps a box whose "
                   "warped raster is empty at its old place (mask_to_bboxes' fallback), and "
                   "a box whose raster (a pixel wider) outlives the object")
def test_a_warp_drops_the_box_of_an_object_it_moves_out() -> None:
    sample = _sample(0, 0, 6, 6)
    out = _run([("elastic", 1.0)], 1, sample)
    assert not (out["mask"] == 1).any()  # the object left the image
    assert not len(out["boxes"])


# --- normals: the camera convention, in closed form -------------------------------------------


def _rot(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


@pytest.mark.parametrize("name", AFFINE)
@settings(max_examples=10, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_normals_turn_by_the_rotation_part_of_the_op(name: str, m: float, seed: int) -> None:
    """hflip negates x, vflip y; a rotation turns (x, y) by its angle; a shear by the angle of
    its polar rotation, atan(k/2) for factor k; zoom, crop and shifts leave the vectors alone.
    z and unit length never change."""
    sample = _sample(20, 20, 24, 24)
    out = _run([(name, m)], seed, sample)
    valid, sx, sy = _sources(out["depth"])
    source = sample["normals"][sy, sx][valid].astype(np.float64)
    got = out["normals"][valid]
    lin, _ = _maps_of(name, m, out["depth"], (source, got))[0]
    if name in ("hflip", "vflip"):
        turn = lin  # a mirror: the reflection itself
    elif name == "rotate":
        angle = math.degrees(math.atan2(-lin[1, 0], lin[0, 0]))  # on screen, counter-clockwise
        assert abs(abs(angle) - 30.0 * m) < 1e-6
        turn = _rot(-angle)  # y points down: counter-clockwise on screen is -angle in (x, y)
    elif name in ("shear_x", "shear_y"):
        k = lin[0, 1] + lin[1, 0]  # the signed factor
        assert abs(abs(k) - 0.3 * m) < 1e-6
        turn = _rot(math.degrees(math.atan2(-k if name == "shear_x" else k, 2.0)))
    else:  # scale, translate, crop: a positive diagonal map
        turn = np.eye(2)
    np.testing.assert_allclose(turn, _rotation_part(lin), atol=1e-9)  # the closed form is right
    np.testing.assert_allclose(got, _turned(source, turn), atol=1e-5)


# --- compositions -----------------------------------------------------------------------------


def _slack(ops: list[tuple[str, float]]) -> float:
    """How far (px) object pixels may stick out of the box after ``ops``: nothing after one
    op on the exact box; two pixels after more (a box off pixel edges cuts pixels, and nearest
    sampling reads a pixel whose centre maps up to half a scaled pixel outside it, per step; a
    warp reads its box back as pixel indices), and one more per grid_distortion, whose box
    loses the last row and column at the image's edge (albumentations 2.0.8)."""
    if len(ops) == 1 and ops[0][0] not in WARPS:
        return 0.01
    return 2.0 + sum(name == "grid_distortion" for name, _ in ops)


compositions = st.lists(st.tuples(st.sampled_from(GEOMETRIC), st.floats(0.0, 1.0)),
                        min_size=2, max_size=3)


@settings(max_examples=40, deadline=None)
@given(ops=compositions, seed=st.integers(0, 2**31 - 1), rect=rects)
# Two shears: the rotation part of their product is not the product of their rotation parts.
@example(ops=[("shear_x", 1.0), ("shear_y", 1.0)], seed=0, rect=(16, 16, 24, 24))
# A rotation, then a crop that changes the aspect ratio; elastic then shear.
@example(ops=[("rotate", 1.0), ("crop", 1.0), ("hflip", 0.0)], seed=2, rect=(8, 30, 20, 12))
@example(ops=[("elastic", 1.0), ("shear_x", 1.0)], seed=3, rect=(20, 10, 16, 30))
def test_a_composition_is_its_ops_one_after_another(ops: list[tuple[str, float]], seed: int,
                                                    rect: tuple[int, int, int, int]) -> None:
    """Two or three geometric ops in one view give what they give applied one at a time, and
    each step moves mask, depth, normals and box together; at the end the object's pixels are
    exactly those read from the rectangle, in every target, and its box encloses them."""
    sample = _sample(*rect)
    out = _run(ops, seed, sample)

    step, phantom = sample, False
    for k, (name, m) in enumerate(ops):
        alone = _run([(name, m)], seed, sample, at=k)  # the same draw on the address sample
        after = _run([(name, m)], seed, step, at=k)
        phantom = check_step(name, m, step, after, alone["depth"], phantom=phantom,
                             slack=_slack(ops[:k + 1]))
        step = after
    for key in ("image", "mask", "depth", "instance_masks", "box_labels"):
        np.testing.assert_array_equal(out[key], step[key], err_msg=key)
    np.testing.assert_allclose(out["boxes"], step["boxes"], atol=1e-4)
    np.testing.assert_allclose(out["normals"], step["normals"], atol=1e-5)

    # The same support in every target.
    valid, sx, sy = _sources(out["depth"])
    x1, y1, w, h = rect
    from_object = valid & (x1 <= sx) & (sx < x1 + w) & (y1 <= sy) & (sy < y1 + h)
    np.testing.assert_array_equal(out["mask"] == 1, from_object)
    np.testing.assert_array_equal(out["mask"] == 255, ~valid)
    np.testing.assert_array_equal(np.linalg.norm(out["normals"], axis=-1) > 0, valid)
    np.testing.assert_allclose(out["normals"][..., 2][from_object], N_IN[2], atol=1e-5)
    np.testing.assert_allclose(out["normals"][..., 2][valid & ~from_object], N_OUT[2], atol=1e-5)
    if len(out["boxes"]) and not phantom:
        assert_box_encloses(out["boxes"][0], out["mask"], tol=_slack(ops))

    # The image moves with them (the project's own check, on its own sample: same draws; its
    # box, checked above, left out).
    plain = object_sample(np.random.default_rng(seed), *rect, False)
    plain.update(boxes=np.zeros((0, 4), np.float32), box_labels=np.zeros(0, np.int64),
                 instance_masks=np.zeros((0, H, W), np.uint8))
    band = len(ops) + max(EDGE_BAND.get(name, 1) for name, _ in ops) - 1
    assert_targets_follow(plain, _run(ops, seed, plain), band=band)
