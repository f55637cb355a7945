"""The op registry: every op has a case, moves targets with the image (or leaves them alone),
and applies exactly the strength its magnitude says."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policysearch.augment import (
    OPS,
    Policy,
    Slot,
    TrivialAugmentSpec,
    build_gaussian,
    build_sampled,
    build_slot,
    get_op,
    ops_table,
)
from policysearch.augment.ops import PLACEHOLDER_SIZE, Op, register_op, set_output_size
from policysearch.errors import UserError

H = W = 64
TASKS = {"seg": "segmentation", "det": "detection", "depth": "depth"}
BRIGHT = 140  # threshold between the dark background (<= 60) and the object (>= 200)
TILT = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])  # normals of the sample


def _deg_shear(m: float) -> float:
    return math.degrees(math.atan(0.3 * m))


def _affine_params(t: A.Affine) -> dict:
    return {
        "rotate": t.rotate,
        "shear": t.shear,
        "scale": t.scale,
        "translate_percent": t.translate_percent or {"x": (0.0, 0.0), "y": (0.0, 0.0)},
    }


def _pair(v: float) -> tuple[float, float]:
    return (pytest.approx(v), pytest.approx(v))


def _affine_expect(rotate=0.0, shear=(0.0, 0.0), scale=1.0, tx=0.0, ty=0.0):  # noqa: ANN001, ANN202
    return {
        "rotate": _pair(rotate),
        "shear": {"x": _pair(shear[0]), "y": _pair(shear[1])},
        "scale": {"x": _pair(scale), "y": _pair(scale)},
        "translate_percent": {"x": _pair(tx), "y": _pair(ty)},
    }


def _jitter(t: A.ColorJitter) -> dict:
    return {"brightness": t.brightness, "contrast": t.contrast, "saturation": t.saturation,
            "hue": t.hue}


def _jitter_expect(which: str, value: float) -> dict:
    base = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    base[which] = value
    return {k: _pair(v) for k, v in base.items()}


# One case per registered op: its kind and, for the + sign at magnitude m, the albumentations
# class and the parameters it must carry (the exact mapping of the magnitude).
CASES: dict[str, tuple[str, type, object]] = {
    "identity": ("photometric", A.NoOp, None),
    "hflip": ("geometric", A.HorizontalFlip, None),
    "vflip": ("geometric", A.VerticalFlip, None),
    "rotate": ("geometric", A.Affine,
               lambda m: (_affine_params, _affine_expect(rotate=30 * m))),
    "shear_x": ("geometric", A.Affine,
                lambda m: (_affine_params, _affine_expect(shear=(_deg_shear(m), 0.0)))),
    "shear_y": ("geometric", A.Affine,
                lambda m: (_affine_params, _affine_expect(shear=(0.0, _deg_shear(m))))),
    "translate_x": ("geometric", A.Affine,
                    lambda m: (_affine_params, _affine_expect(tx=0.45 * m))),
    "translate_y": ("geometric", A.Affine,
                    lambda m: (_affine_params, _affine_expect(ty=0.45 * m))),
    "scale": ("geometric", A.Affine,
              lambda m: (_affine_params, _affine_expect(scale=1 + 0.5 * m))),
    "grid_distortion": ("geometric", (A.GridDistortion, A.NoOp),
                        lambda m: (lambda t: (getattr(t, "distort_limit", (0.0, 0.0)),
                                              getattr(t, "num_steps", 5)),
                                   ((pytest.approx(-0.5 * m), pytest.approx(0.5 * m)), 5))),
    "elastic": ("geometric", A.ThinPlateSpline,
                lambda m: (lambda t: (t.scale_range, t.num_control_points),
                           (_pair(0.3 * m), 4))),
    "crop": ("geometric", (A.RandomResizedCrop, A.NoOp),
             lambda m: (lambda t: {"scale": getattr(t, "scale", (1.0, 1.0)),
                                   "ratio": getattr(t, "ratio", (0.75, 4 / 3))},
                        {"scale": (pytest.approx(1 - 0.9 * m), 1.0),
                         "ratio": (pytest.approx(0.75), pytest.approx(4 / 3))})),
    "brightness": ("photometric", A.ColorJitter,
                   lambda m: (_jitter, _jitter_expect("brightness", 1 + 0.9 * m))),
    "contrast": ("photometric", A.ColorJitter,
                 lambda m: (_jitter, _jitter_expect("contrast", 1 + 0.9 * m))),
    "saturation": ("photometric", A.ColorJitter,
                   lambda m: (_jitter, _jitter_expect("saturation", 1 + 0.9 * m))),
    "hue": ("photometric", A.ColorJitter, lambda m: (_jitter, _jitter_expect("hue", 0.25 * m))),
    "sharpness": ("photometric", A.Sharpen,
                  lambda m: (lambda t: {"alpha": t.alpha, "lightness": t.lightness},
                             {"alpha": _pair(0.9 * m / 13), "lightness": _pair(1.0)})),
    "posterize": ("photometric", (A.Posterize, A.NoOp),
                  lambda m: (lambda t: getattr(t, "num_bits", (8, 8)),
                             (8 - round(4 * m), 8 - round(4 * m)))),
    "solarize": ("photometric", A.Solarize,
                 lambda m: (lambda t: t.threshold_range, _pair(1 - m))),
    "equalize": ("photometric", A.Equalize, None),
    "autocontrast": ("photometric", A.AutoContrast, None),
    "invert": ("photometric", A.InvertImg, None),
    "blur": ("photometric", A.GaussianBlur,
             lambda m: (lambda t: t.sigma_limit, _pair(max(2 * m, 1e-6)))),
    "noise": ("photometric", A.GaussNoise,
              lambda m: (lambda t: t.std_range, _pair(0.2 * m))),
    "cutout": ("photometric", A.CoarseDropout,
               lambda m: (lambda t: (t.num_holes_range, t.hole_height_range, t.hole_width_range,
                                     t.fill_mask),
                          ((1, 1), _pair(0.4 * m), _pair(0.4 * m), None))),
}

GEOMETRIC = sorted(n for n, c in CASES.items() if c[0] == "geometric")
PHOTOMETRIC = sorted(n for n, c in CASES.items() if c[0] == "photometric")
SIGNED = sorted(n for n, op in OPS.items() if op.signed)


def test_every_registered_op_has_a_case() -> None:
    assert set(CASES) == set(OPS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kind_class_and_parameter_mapping(name: str) -> None:
    kind, cls, expect = CASES[name]
    op = get_op(name)
    assert op.kind == kind
    for m in (0.0, 0.3, 0.5, 1.0):
        t = op.factory(m)
        assert isinstance(t, cls) and t.p == 1.0
        if expect is not None:
            read, wanted = expect(m)
            assert read(t) == wanted, (name, m)
        if op.signed:
            neg = op.negative_factory(m)
            assert type(neg) is type(t) or name == "sharpness"


# At magnitude 0 an op whose magnitude counts changes nothing; solarize still inverts pure
# white (threshold 255, torchvision's bin 0).
AT_ZERO_CHANGES = {"solarize"}


@pytest.mark.parametrize("name", sorted(n for n in OPS if OPS[n].uses_magnitude))
def test_magnitude_zero_is_the_identity(name: str) -> None:
    image = np.random.default_rng(1).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    image[0, 0] = 255
    aug = Policy(tasks={"c": "classification"}, shared=(Slot(name, 1.0, 0.0),)).transform(seed=0)
    same = [np.array_equal(aug({"image": image})["shared"]["image"], image) for _ in range(20)]
    assert not any(same) if name in AT_ZERO_CHANGES else all(same)


@pytest.mark.parametrize("name", SIGNED)
def test_signed_ops_are_one_of_both_signs(name: str) -> None:
    slot = build_slot(name, 0.7, 0.4)
    assert isinstance(slot, A.OneOf) and slot.p == 0.7
    assert slot.transforms_ps == [0.5, 0.5]


@pytest.mark.parametrize("name", sorted(n for n in OPS if not OPS[n].signed))
def test_unsigned_ops_carry_the_slot_probability(name: str) -> None:
    assert build_slot(name, 0.3, 0.6).p == 0.3


def test_unknown_op_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown op 'zoom'; run 'policysearch ops'") as err:
        get_op("zoom", source="p.yaml", field="shared[1].op")
    assert str(err.value).startswith("p.yaml: shared[1].op: ")


def test_register_op_refuses_duplicates_and_bad_ops() -> None:
    with pytest.raises(ValueError):
        register_op(OPS["rotate"])
    with pytest.raises(ValueError):
        Op("bad", "geometric", True, "signed without negative", "-", lambda m: A.NoOp())


def test_ops_table_lists_every_op() -> None:
    rows = ops_table()
    assert [r["name"] for r in rows] == list(OPS)
    for row in rows:
        assert set(row) >= {"name", "kind", "signed", "range_at_1", "range_wide_at_1",
                            "description"}
        assert row["range_at_1"] and row["range_wide_at_1"] and row["description"]
    wide = {r["name"]: r["range_wide_at_1"] for r in rows}
    assert wide["rotate"] == "±135°" and wide["posterize"] == "2 bits"
    assert wide["scale"] == {r["name"]: r["range_at_1"] for r in rows}["scale"]


def test_crop_output_size_is_set() -> None:
    t = build_slot("crop", 1.0, 0.5)
    assert t.size == PLACEHOLDER_SIZE
    assert set_output_size(t, (40, 50)) == 1 and t.size == (40, 50)
    assert build_slot("crop", 1.0, 0.5, size=(8, 9)).size == (8, 9)


# --- behaviour on a synthetic sample -----------------------------------------------------------


def _sample(rng: np.random.Generator, x1: int, y1: int, w: int, h: int, ellipse: bool) -> dict:
    image = rng.integers(0, 61, size=(H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), dtype=np.int64)
    if ellipse:
        yy, xx = np.mgrid[0:H, 0:W]
        cx, cy = x1 + (w - 1) / 2, y1 + (h - 1) / 2
        inside = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1.0
        mask[inside] = 1
    else:
        mask[y1:y1 + h, x1:x1 + w] = 1
    obj = mask == 1
    image[obj] = rng.integers(200, 256, size=(int(obj.sum()), 3), dtype=np.uint8)
    ys, xs = np.nonzero(obj)
    boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float32)
    depth = np.where(obj, 2.0, 8.0).astype(np.float32)
    normals = np.tile(TILT.astype(np.float32), (H, W, 1))
    return {"image": image, "mask": mask, "boxes": boxes, "box_labels": np.array([7]),
            "depth": depth, "normals": normals, "instance_masks": obj[None].astype(np.uint8),
            "label": 3, "meta": "kept"}


objects = st.tuples(
    st.integers(4, 36), st.integers(4, 36), st.integers(16, 26), st.integers(16, 26), st.booleans()
)


def _run(name: str, m: float, seed: int, sample: dict) -> dict:
    policy = Policy(tasks=TASKS, shared=(Slot(name, 1.0, m),))
    return policy.transform(seed=seed)(sample)["shared"]


def _erode(a: np.ndarray) -> np.ndarray:
    """Pixels whose whole 3x3 neighbourhood is set (the border counts as unset)."""
    p = np.pad(a, 1, constant_values=False)
    out = np.ones_like(a)
    for dy in range(3):
        for dx in range(3):
            out &= p[dy:dy + a.shape[0], dx:dx + a.shape[1]]
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("name", GEOMETRIC)
@settings(max_examples=25, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), obj=objects)
def test_geometric_ops_move_every_target_with_the_image(name: str, m: float, seed: int,
                                                       obj: tuple) -> None:
    sample = _sample(np.random.default_rng(seed), *obj)
    out = _run(name, m, seed, sample)
    if not OPS[name].fills_outside:
        assert not (out["mask"] == 255).any()
    assert_targets_follow(sample, out, band=EDGE_BAND.get(name, 1))


# Width (pixels) of the band along the object's edge where the linearly interpolated image may
# disagree with the nearest-sampled mask: 1 everywhere but under albumentations' GridDistortion,
# which repeats a row (column) at every cell boundary, so a half-blended edge row can be doubled.
EDGE_BAND = {"grid_distortion": 2}


def assert_targets_follow(sample: dict, out: dict, *, image_aligned: bool = True,
                          band: int = 1) -> None:
    """The targets of ``out`` (a view of a ``_sample``) moved with its image: dtypes, shapes
    and contiguity kept; depth, normals and the instance mask follow the mask exactly; boxes
    enclose the object pixels; with ``image_aligned`` (no photometric op ran) the bright object
    pixels match the mask."""
    image, mask, depth, normals = out["image"], out["mask"], out["depth"], out["normals"]
    instances = out["instance_masks"]
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    assert mask.dtype == np.int64 and depth.dtype == np.float32
    assert normals.dtype == np.float32 and normals.shape == (H, W, 3)
    assert instances.dtype == np.uint8 and instances.shape[1:] == (H, W)
    assert out["boxes"].dtype == np.float32 and out["boxes"].shape[1:] == (4,)
    assert out["box_labels"].dtype == sample["box_labels"].dtype
    for arr in (image, mask, depth, normals, instances, out["boxes"]):
        assert arr.flags["C_CONTIGUOUS"]
    assert out["label"] == 3 and out["meta"] == "kept"

    assert set(np.unique(mask)) <= {0, 1, 255}
    # Depth follows the mask exactly (both nearest): object 2.0, background 8.0, outside 0.0.
    np.testing.assert_array_equal(depth == 2.0, mask == 1)
    np.testing.assert_array_equal(depth == 8.0, mask == 0)
    np.testing.assert_array_equal(depth == 0.0, mask == 255)
    # Normals: zero vectors exactly outside, unit vectors elsewhere with z unchanged (ops turn
    # them in the image plane only).
    length = np.linalg.norm(normals, axis=-1)
    np.testing.assert_array_equal(length == 0, mask == 255)
    np.testing.assert_allclose(length[mask != 255], 1.0, atol=1e-5)
    np.testing.assert_allclose(normals[..., 2][mask != 255], TILT[2], atol=1e-5)
    # The instance mask is kept exactly when its box is, and covers the object's pixels.
    assert len(instances) == len(out["boxes"])
    if len(instances):
        np.testing.assert_array_equal(instances[0] == 1, mask == 1)

    obj_px = mask == 1
    if image_aligned:
        bright = image.max(axis=2) > BRIGHT
        # Away from the object's edge (3x3 neighbourhood all object / all not object) the image
        # and the mask agree exactly; overall, edges included, IoU >= 0.9 unless the object is
        # small (shrunk, or mostly out of the frame), where edges dominate.
        inside, outside = obj_px, ~obj_px
        for _ in range(band):
            inside, outside = _erode(inside), _erode(outside)
        assert bright[inside].all()
        assert not bright[outside].any()
        # The interpolated edge ring may disagree: about 2 of the 4s edge pixels per unit of
        # side s, so IoU >= 1 - 2/s, which is >= 0.9 from s = 20 (400 pixels) on.
        if obj_px.sum() >= 400:
            assert _iou(obj_px, bright) >= 0.9
    if len(out["boxes"]):
        assert out["box_labels"].tolist() == [7]
        x1, y1, x2, y2 = out["boxes"][0]
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        ys, xs = np.nonzero(obj_px)
        if len(xs):
            tol = 1.5
            assert x1 - tol <= xs.min() and xs.max() + 1 <= x2 + tol
            assert y1 - tol <= ys.min() and ys.max() + 1 <= y2 + tol
    else:
        assert out["box_labels"].shape == (0,)


@pytest.mark.parametrize("name", PHOTOMETRIC)
@settings(max_examples=25, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), obj=objects)
def test_photometric_ops_change_only_the_image(name: str, m: float, seed: int,
                                               obj: tuple) -> None:
    sample = _sample(np.random.default_rng(seed), *obj)
    out = _run(name, m, seed, sample)
    assert out["image"].dtype == np.uint8 and out["image"].shape == (H, W, 3)
    for key in ("mask", "depth", "normals", "instance_masks", "boxes", "box_labels"):
        assert out[key].dtype == sample[key].dtype
        np.testing.assert_array_equal(out[key], sample[key])
    assert out["label"] == 3 and out["meta"] == "kept"


@pytest.mark.parametrize("after_flip", [False, True])
def test_cutout_erases_the_image_but_never_the_targets(after_flip: bool) -> None:
    # After a geometric op the targets do go through albumentations: the hole must still not
    # shrink or drop boxes, nor touch mask or depth.
    sample = _sample(np.random.default_rng(0), 30, 30, 12, 12, False)
    sample["image"][:] = 255
    slots = (Slot("hflip", 1.0, 1.0),) if after_flip else ()
    aug = Policy(tasks=TASKS, shared=(*slots, Slot("cutout", 1.0, 1.0))).transform(seed=1)
    expect = {k: sample[k] for k in ("mask", "depth", "boxes")}
    if after_flip:
        expect["mask"], expect["depth"] = sample["mask"][:, ::-1], sample["depth"][:, ::-1]
        expect["boxes"] = np.array([[W - 42, 30, W - 30, 42]], np.float32)
    covered = 0
    for _ in range(20):
        out = aug(sample)["shared"]
        hole = (out["image"] == 0).all(axis=2)
        side = int(0.4 * H)
        assert hole.sum() == side * side
        covered += hole[30:42].any()
        for key, value in expect.items():
            np.testing.assert_array_equal(out[key], value)
        assert out["box_labels"].tolist() == [7]
    assert covered  # some holes did fall on the object


# --- exact strength, random sign ---------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNED)
def test_signed_ops_apply_exact_strength_with_both_signs(name: str) -> None:
    m = 0.6
    op = get_op(name)
    image = _sample(np.random.default_rng(3), 12, 16, 24, 20, True)["image"]
    plus = A.Compose([op.factory(m)], seed=0)(image=image)["image"]
    minus = A.Compose([op.negative_factory(m)], seed=0)(image=image)["image"]
    assert not np.array_equal(plus, minus)
    aug = A.Compose([build_slot(name, 1.0, m)], seed=5)
    seen = set()
    for _ in range(40):
        out = aug(image=image)["image"]
        if np.array_equal(out, plus):
            seen.add("+")
        elif np.array_equal(out, minus):
            seen.add("-")
        else:
            pytest.fail(f"{name}: output is neither the + nor the - strength")
    assert seen == {"+", "-"}


def _moved_point(name: str, m: float, seed: int, point: tuple[float, float]) -> tuple:
    aug = A.Compose([build_slot(name, 1.0, m)], keypoint_params=A.KeypointParams(format="xy"),
                    seed=seed)
    out = aug(image=np.zeros((H, W, 3), np.uint8), keypoints=np.array([point], np.float32))
    return tuple(out["keypoints"][0][:2])


def test_rotate_half_magnitude_rotates_by_exactly_15_degrees() -> None:
    cx, cy = W / 2 - 0.5, H / 2 - 0.5  # albumentations' image centre
    angles = set()
    for seed in range(30):
        x, y = _moved_point("rotate", 0.5, seed, (cx + 20.0, cy))
        assert math.hypot(x - cx, y - cy) == pytest.approx(20.0, abs=1e-3)
        angles.add(round(math.degrees(math.atan2(y - cy, x - cx)), 3))
    assert angles == {15.0, -15.0}


def test_translate_and_shear_move_points_by_the_exact_amount() -> None:
    cx, cy = W / 2 - 0.5, H / 2 - 0.5
    shifts = {_moved_point("translate_x", 1.0, s, (cx, cy))[0] - cx for s in range(30)}
    assert {round(v, 3) for v in shifts} == {28.0, -28.0}  # int(0.45 * 64) pixels
    dys = {_moved_point("translate_y", 0.5, s, (cx, cy))[1] - cy for s in range(30)}
    assert {round(v, 3) for v in dys} == {14.0, -14.0}  # int(0.225 * 64)
    # shear_x: a point 10 px below the centre moves along x by 0.3*m*10.
    dxs = {_moved_point("shear_x", 1.0, s, (cx, cy + 10))[0] - cx for s in range(30)}
    assert {round(abs(v), 3) for v in dxs} == {3.0} and len(dxs) == 2
    scales = {_moved_point("scale", 0.4, s, (cx + 10, cy))[0] - cx for s in range(30)}
    assert {round(v, 3) for v in scales} == {12.0, 8.0}  # zoom 1 ± 0.2


def test_crop_resizes_back_to_the_input_size_within_its_area_range() -> None:
    aug = Policy(tasks=TASKS, shared=(Slot("crop", 1.0, 1.0),)).transform(seed=0)
    sample = _sample(np.random.default_rng(0), 10, 10, 20, 20, False)
    for size in ((H, W), (40, 56)):
        s = {k: v for k, v in sample.items() if k not in ("boxes", "normals", "instance_masks")}
        s["image"] = np.ascontiguousarray(sample["image"][: size[0], : size[1]])
        s["mask"] = np.ascontiguousarray(sample["mask"][: size[0], : size[1]])
        s["depth"] = np.ascontiguousarray(sample["depth"][: size[0], : size[1]])
        out = aug(s)["shared"]
        assert out["image"].shape[:2] == size and out["mask"].shape == size


# --- scales and sampled strengths --------------------------------------------------------------


WIDE_AT_1 = {
    "rotate": (_affine_params, _affine_expect(rotate=135)),
    "shear_x": (_affine_params, _affine_expect(shear=(math.degrees(math.atan(0.99)), 0.0))),
    # 32 px whatever the image size, as torchvision's TrivialAugmentWide
    "translate_y": (lambda t: (t.translate_px, t.translate_percent),
                    ({"x": _pair(0.0), "y": _pair(32.0)}, None)),
    "brightness": (_jitter, _jitter_expect("brightness", 1.99)),
    "saturation": (_jitter, _jitter_expect("saturation", 1.99)),
    "sharpness": (lambda t: t.alpha, _pair(0.99 / 13)),
    "posterize": (lambda t: t.num_bits, (2, 2)),
    "solarize": (lambda t: t.threshold_range, _pair(0.0)),
}


@pytest.mark.parametrize("name", sorted(WIDE_AT_1))
def test_wide_scale_at_magnitude_1_follows_trivialaugment_wide(name: str) -> None:
    read, wanted = WIDE_AT_1[name]
    t = build_slot(name, 1.0, 1.0, scale="wide")
    plus = t.transforms[0] if isinstance(t, A.OneOf) else t
    assert read(plus) == wanted


@pytest.mark.parametrize("name", ["scale", "hue", "blur", "noise", "cutout", "crop"])
def test_ops_trivialaugment_wide_lacks_keep_their_standard_range(name: str) -> None:
    std = build_slot(name, 1.0, 0.7).to_dict()
    assert build_slot(name, 1.0, 0.7, scale="wide").to_dict() == std
    assert OPS[name].wide_range == OPS[name].range_at_1


def test_posterize_rounds_like_torchvision() -> None:
    # torchvision: 8 - round(k / ((bins - 1) / 4)) bits for bin k; ours 8 - round(4 m).
    for bins in (10, 31):
        for k in range(bins):
            t = build_slot("posterize", 1.0, k / (bins - 1))
            bits = getattr(t, "num_bits", (8, 8))[0]
            assert bits == 8 - round(k / ((bins - 1) / 4)), (bins, k)


def test_sampled_signed_op_is_one_symmetric_range() -> None:
    t = build_sampled("rotate", 0.0, 1.0, scale="wide", p=0.4)
    assert isinstance(t, A.Affine) and t.rotate == (-135.0, 135.0) and t.p == 0.4
    t = build_sampled("rotate", 0.5, 1.0)  # |strength| in [15, 30] degrees, random sign
    assert isinstance(t, A.OneOf) and t.transforms_ps == [0.5, 0.5]
    assert [c.rotate for c in t.transforms] == [(15.0, 30.0), (-30.0, -15.0)]
    t = build_sampled("solarize", 0.0, 1.0)
    assert isinstance(t, A.Solarize) and t.threshold_range == (0.0, 1.0)
    assert isinstance(build_sampled("hflip"), A.HorizontalFlip)
    sharp = build_sampled("sharpness", 0.0, 1.0, scale="wide")
    assert [type(c).__name__ for c in sharp.transforms] == ["GaussianBlur", "Sharpen"]
    assert sharp.transforms_ps == [0.5, 0.5]
    with pytest.raises(ValueError):
        build_sampled("rotate", 0.6, 0.5)


def test_sampled_posterize_weighs_each_bit_count() -> None:
    # Wide: removed = round(6 u), u ~ U[0, 1] -> 0 and 6 get 1/12, 1..5 get 1/6 each.
    t = build_sampled("posterize", 0.0, 1.0, scale="wide")
    assert [getattr(c, "num_bits", (8, 8))[0] for c in t.transforms] == [8, 7, 6, 5, 4, 3, 2]
    np.testing.assert_allclose(t.transforms_ps, [1 / 12] + [1 / 6] * 5 + [1 / 12])


def test_gaussian_magnitude_is_a_histogram_of_the_clipped_normal() -> None:
    t = build_gaussian("rotate", 0.9, 0.1)
    assert isinstance(t, A.OneOf) and t.p == 1.0
    assert sum(t.transforms_ps) == pytest.approx(1.0)
    # The first child is the clipped upper tail: exact strength 1 (±30°), P(N > 1) = 0.159.
    tail = t.transforms[0]
    assert [c.rotate for c in tail.transforms] == [(30.0, 30.0), (-30.0, -30.0)]
    assert t.transforms_ps[0] == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=1e-3)
    exact = build_gaussian("rotate", 0.4, 0.0, p=0.3)
    assert exact.to_dict() == build_slot("rotate", 0.3, 0.4).to_dict()
    assert isinstance(build_gaussian("equalize", 0.5, 0.2), A.Equalize)


def test_an_op_without_ranged_factory_is_sampled_on_levels(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    op = Op("my_gamma", "photometric", False, "gamma", "x", lambda m: A.RandomGamma(
        gamma_limit=(100 + 50 * m, 100 + 50 * m), p=1.0))
    monkeypatch.setitem(OPS, "my_gamma", op)
    t = build_sampled("my_gamma", 0.0, 1.0, scale="wide")
    assert isinstance(t, A.OneOf) and len(t.transforms) == 31
    assert t.transforms[-1].gamma_limit == (150.0, 150.0)
    assert op.wide_range == "x"


@pytest.mark.parametrize("name", GEOMETRIC)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), obj=objects)
def test_geometric_ops_on_the_wide_scale_move_every_target(name: str, seed: int,
                                                            obj: tuple) -> None:
    sample = _sample(np.random.default_rng(seed), *obj)
    policy = Policy(tasks=TASKS, shared=TrivialAugmentSpec(ops=(name,)))
    out = policy.transform(seed=seed)(sample)["shared"]
    assert_targets_follow(sample, out, band=EDGE_BAND.get(name, 1))


def test_the_readme_op_table_is_the_registry() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {m[0]: tuple(m[1:]) for m in re.findall(
        r"^\| `(\w+)` \| (geometric|photometric) \| (.*?) \| (.*?) \|$", readme, re.M)}
    assert rows == {r["name"]: (r["kind"], r["range_at_1"], r["range_wide_at_1"])
                    for r in ops_table()}
