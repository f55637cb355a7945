"""The op registry: an op name and a magnitude in [0, 1] become an albumentations transform.

Magnitude follows AutoAugment's convention: it is the *exact* strength, mapped linearly onto the
op's published range at magnitude 1 (``Op.range_at_1``). A signed op (rotate, shear, translate,
scale, the enhance ops, hue) applies ``+strength`` or ``-strength`` with probability 1/2 each;
``crop`` is the one op whose strength is sampled (the magnitude bounds how small the crop may get).

Geometric ops move the image and every spatial target (masks with nearest interpolation, boxes,
depth); pixels that come from outside the image get ``FILL_IMAGE`` in the image and
``FILL_MASK`` (255, the ignore index) in every mask-type target. Photometric ops change only the
image. Every transform is a stock albumentations one, so a policy serializes with ``A.save`` and
loads with plain ``A.load``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import albumentations as A
import cv2

from policysearch.errors import UserError

FILL_IMAGE = 0
FILL_MASK = 255
# RandomResizedCrop needs its output size at construction; the real size is set per input by
# ``set_output_size`` (MultiTaskAugment does it from the image shape).
PLACEHOLDER_SIZE = (1, 1)

OpKind = Literal["geometric", "photometric"]
Factory = Callable[[float], A.BasicTransform]


@dataclass(frozen=True)
class Op:
    """A named augmentation.

    ``factory(m)`` returns an albumentations transform with ``p=1`` applying exactly strength
    ``m`` (the ``+`` sign for signed ops); ``negative_factory(m)`` the ``-`` sign.
    ``fills_outside``: the op can bring in pixels from outside the image (affine warps).
    ``sized``: the transform resizes to a fixed output size that must be set to the input size
    (see ``set_output_size``).
    """

    name: str
    kind: OpKind
    signed: bool
    description: str
    range_at_1: str
    factory: Factory
    negative_factory: Factory | None = None
    fills_outside: bool = False
    sized: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"op name {self.name!r} must be lower_snake_case")
        if self.kind not in ("geometric", "photometric"):
            raise ValueError(f"op {self.name!r}: kind must be 'geometric' or 'photometric'")
        if self.signed != (self.negative_factory is not None):
            raise ValueError(f"op {self.name!r}: a signed op needs a negative_factory, and only it")

    @property
    def targets(self) -> str:
        """The sample keys the op changes, for listings."""
        return "image, mask, boxes, depth" if self.kind == "geometric" else "image"


OPS: dict[str, Op] = {}


def register_op(op: Op, *, replace: bool = False) -> Op:
    """Add ``op`` to ``OPS`` (the extension point for users' own ops)."""
    if op.name in OPS and not replace:
        raise ValueError(f"op {op.name!r} is already registered")
    OPS[op.name] = op
    return op


def get_op(name: str, *, source: str | None = None, field: str | None = None) -> Op:
    """The registered op called ``name``; ``UserError`` naming ``source``/``field`` if none."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise UserError(
            f"unknown op {name!r}; run 'policysearch ops' to list them", source=source, field=field
        ) from None


def build_slot(
    op: str, p: float, magnitude: float, *, size: tuple[int, int] | None = None
) -> A.BasicTransform:
    """One slot as an albumentations transform applied with probability ``p``.

    A signed op becomes ``OneOf([+strength, -strength], p=p)``: exact strength, random sign.
    ``size`` (height, width) sets the output size of sized ops (crop); without it they keep a
    placeholder until ``set_output_size`` is called.
    """
    spec = get_op(op)
    m = float(magnitude)
    if spec.negative_factory is not None:
        transform: A.BasicTransform = A.OneOf(
            [spec.factory(m), spec.negative_factory(m)], p=float(p)
        )
    else:
        transform = spec.factory(m)
        transform.p = float(p)
    if size is not None:
        set_output_size(transform, size)
    return transform


def set_output_size(transform: Any, size: tuple[int, int]) -> int:
    """Set the output size of every random-resized crop inside ``transform``; returns how many."""
    found = 0
    if isinstance(transform, A.RandomResizedCrop):
        transform.size = (int(size[0]), int(size[1]))
        found += 1
    for child in getattr(transform, "transforms", ()):
        found += set_output_size(child, size)
    return found


# --- factories ---------------------------------------------------------------------------------


def _affine(**kwargs: Any) -> A.Affine:
    return A.Affine(
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=FILL_IMAGE,
        fill_mask=FILL_MASK,
        p=1.0,
        **kwargs,
    )


def _rotate(m: float, sign: int) -> A.Affine:
    deg = sign * 30.0 * m
    return _affine(rotate=(deg, deg))


def _shear(m: float, sign: int, axis: str) -> A.Affine:
    # The shear *factor* is linear in m; Affine takes the angle whose tangent is that factor.
    deg = sign * math.degrees(math.atan(0.3 * m))
    other = "y" if axis == "x" else "x"
    # Both axes explicit: Affine's dict form defaults a missing axis to 1 degree, not 0.
    return _affine(shear={axis: (deg, deg), other: (0.0, 0.0)})


def _translate(m: float, sign: int, axis: str) -> A.Affine:
    frac = sign * 0.45 * m
    other = "y" if axis == "x" else "x"
    return _affine(translate_percent={axis: (frac, frac), other: (0.0, 0.0)})


def _scale(m: float, sign: int) -> A.Affine:
    s = 1.0 + sign * 0.5 * m
    return _affine(scale=(s, s), keep_ratio=True)


def _crop(m: float) -> A.RandomResizedCrop:
    return A.RandomResizedCrop(
        size=PLACEHOLDER_SIZE,
        scale=(1.0 - 0.9 * m, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        interpolation=cv2.INTER_LINEAR,
        # cv2's INTER_NEAREST resize is not centre-aligned (masks would drift from the image by
        # up to half a zoomed pixel); NEAREST_EXACT is, like the linear image resize.
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
        p=1.0,
    )


def _jitter(m: float, sign: int, which: str) -> A.ColorJitter:
    # ColorJitter skips a factor of exactly 1 (hue 0), so only ``which`` changes the image.
    args: dict[str, tuple[float, float]] = {
        "brightness": (1.0, 1.0),
        "contrast": (1.0, 1.0),
        "saturation": (1.0, 1.0),
        "hue": (0.0, 0.0),
    }
    value = sign * 0.25 * m if which == "hue" else 1.0 + sign * 0.9 * m
    args[which] = (value, value)
    return A.ColorJitter(**args, p=1.0)


def _sharpness(m: float, sign: int) -> A.BasicTransform:
    factor_minus_1 = 0.9 * m
    if sign > 0:
        # PIL's Sharpness(f) is I + (f-1)(I - SMOOTH), SMOOTH = [[1,1,1],[1,5,1],[1,1,1]]/13,
        # i.e. I + (f-1)/13 * [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]: Sharpen's kernel with
        # lightness 1 and alpha (f-1)/13, exactly.
        alpha = factor_minus_1 / 13.0
        return A.Sharpen(alpha=(alpha, alpha), lightness=(1.0, 1.0), method="kernel", p=1.0)
    # Blurring toward SMOOTH has no stock transform; a 3x3 Gaussian with the same per-axis
    # variance as PIL's blended kernel (6(1-f)/13) stands in for it.
    var = 6.0 * factor_minus_1 / 13.0
    sigma = 1e-6
    if var > 0:
        q = var / (2.0 * (1.0 - var))
        sigma = math.sqrt(-1.0 / (2.0 * math.log(q)))
    return A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(sigma, sigma), p=1.0)


def _posterize(m: float) -> A.BasicTransform:
    bits = int(8 - 4 * m)
    if bits >= 8:  # 8 bits is the identity, which Posterize refuses
        return A.NoOp(p=1.0)
    return A.Posterize(num_bits=bits, p=1.0)


def _solarize(m: float) -> A.Solarize:
    t = 1.0 - m  # fraction of 255: pixels >= t*255 are inverted
    return A.Solarize(threshold_range=(t, t), p=1.0)


def _blur(m: float) -> A.GaussianBlur:
    sigma = max(2.0 * m, 1e-6)  # the kernel size follows PIL: int(3.5 sigma)*2 + 1
    return A.GaussianBlur(blur_limit=0, sigma_limit=(sigma, sigma), p=1.0)


def _noise(m: float) -> A.GaussNoise:
    std = 0.2 * m
    return A.GaussNoise(std_range=(std, std), mean_range=(0.0, 0.0), per_channel=True, p=1.0)


def _cutout(m: float) -> A.CoarseDropout:
    side = 0.4 * m
    return A.CoarseDropout(
        num_holes_range=(1, 1),
        hole_height_range=(side, side),
        hole_width_range=(side, side),
        fill=FILL_IMAGE,
        fill_mask=None,  # masks (and depth) keep their values under the hole
        p=1.0,
    )


def _signed(fn: Callable[..., A.BasicTransform], **kw: Any) -> dict[str, Factory]:
    return {"factory": partial(fn, sign=1, **kw), "negative_factory": partial(fn, sign=-1, **kw)}


def _register_builtin_ops() -> None:
    geo, photo = "geometric", "photometric"
    reg = register_op
    reg(Op("identity", photo, False, "no change", "-", lambda m: A.NoOp(p=1.0)))
    reg(Op("hflip", geo, False, "mirror left-right (magnitude unused)", "-",
           lambda m: A.HorizontalFlip(p=1.0)))
    reg(Op("vflip", geo, False, "mirror top-bottom (magnitude unused)", "-",
           lambda m: A.VerticalFlip(p=1.0)))
    reg(Op("rotate", geo, True, "rotate about the centre by 30*m degrees", "±30°",
           **_signed(_rotate), fills_outside=True))
    for axis in ("x", "y"):
        reg(Op(f"shear_{axis}", geo, True,
               f"shear along {axis} by factor 0.3*m (angle atan(0.3*m))", "±0.3 (±16.7°)",
               **_signed(_shear, axis=axis), fills_outside=True))
    for axis, side in (("x", "width"), ("y", "height")):
        reg(Op(f"translate_{axis}", geo, True,
               f"shift along {axis} by 0.45*m of the {side} (whole pixels)", "±0.45 of the side",
               **_signed(_translate, axis=axis), fills_outside=True))
    reg(Op("scale", geo, True, "zoom about the centre by factor 1±0.5*m", "×0.5 .. ×1.5",
           **_signed(_scale), fills_outside=True))
    reg(Op("crop", geo, False,
           "random-resized crop back to the input size; crop area sampled in [1-0.9*m, 1] of the "
           "image, aspect in [3/4, 4/3] (the one op whose strength is sampled)",
           "area ≥ 0.1", _crop, sized=True))
    for name in ("brightness", "contrast", "saturation"):
        reg(Op(name, photo, True, f"enhance {name} by factor 1±0.9*m", "×0.1 .. ×1.9",
               **_signed(_jitter, which=name)))
    reg(Op("hue", photo, True, "shift hue by 0.25*m of the hue circle (90*m degrees)",
           "±0.25 (±90°)", **_signed(_jitter, which="hue")))
    reg(Op("sharpness", photo, True,
           "PIL sharpness factor 1+0.9*m (exact); the - sign blurs with a 3x3 Gaussian of the "
           "same variance as PIL's factor 1-0.9*m", "×0.1 .. ×1.9", **_signed(_sharpness)))
    reg(Op("posterize", photo, False, "keep int(8-4*m) bits per channel", "4 bits", _posterize))
    reg(Op("solarize", photo, False, "invert pixels >= 255*(1-m)", "threshold 0", _solarize))
    reg(Op("equalize", photo, False, "histogram equalization (PIL; magnitude unused)", "-",
           lambda m: A.Equalize(mode="pil", by_channels=True, p=1.0)))
    reg(Op("autocontrast", photo, False, "stretch each channel to 0..255 (magnitude unused)", "-",
           lambda m: A.AutoContrast(cutoff=0, method="pil", p=1.0)))
    reg(Op("invert", photo, False, "255 - pixel (magnitude unused)", "-",
           lambda m: A.InvertImg(p=1.0)))
    reg(Op("blur", photo, False, "Gaussian blur with sigma 2*m pixels", "sigma 2 px", _blur))
    reg(Op("noise", photo, False, "additive Gaussian noise, std 0.2*m of 255, per channel",
           "std 0.2 (51/255)", _noise))
    reg(Op("cutout", photo, False,
           "erase one hole of 0.4*m of each side to black; image only (mask, depth, boxes kept)",
           "0.4 of the side", _cutout))


_register_builtin_ops()
