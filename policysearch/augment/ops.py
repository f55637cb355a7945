"""The op registry: an op name and a magnitude in [0, 1] become an albumentations transform.

Magnitude follows AutoAugment's convention: it is the *exact* strength, mapped linearly onto the
op's range at magnitude 1 (``Op.range_at_1``). A signed op (rotate, shear, translate, scale, the
enhance ops, hue) applies ``+strength`` or ``-strength`` with probability 1/2 each. Three ops
are random by nature and their strength is always sampled, the magnitude bounding it: ``crop``
(how small the crop may get), ``grid_distortion`` and ``elastic`` (how far the warp may move).

Two **scales** give the range at magnitude 1: ``standard`` (AutoAugment / RandAugment, torchvision's
``RandAugment._augmentation_space``) and ``wide`` (torchvision's ``TrivialAugmentWide``: rotate
135°, shear 0.99, translate 32 px, enhance factors 0.01..1.99, posterize down to 2 bits; ops
TrivialAugmentWide lacks keep their standard range). ``Op.range_wide_at_1`` documents it.

Both follow torchvision's tables (a test reads them), with two choices of ours: the standard
translate is 0.45 of the side (AutoAugment's 150 px of 331, rounded; torchvision's 150/331 =
0.4532 shifts under 1 px more below 316 px), and the wide translate is 32 px *whatever the
image size*, as in torchvision: the whole side of a 32×32 image, half of a 64×64 one.

Structures that *sample* the strength (TrivialAugment, RandAugment's ``mstd``) use
``build_sampled`` / ``build_gaussian``: the magnitude is drawn per application through
albumentations' own range parameters (``Affine(rotate=(-a, a))`` draws angle and sign at once),
so the result is still a stock transform that ``A.save``/``A.load`` round-trip.

Geometric ops move the image and every spatial target (masks with nearest interpolation, boxes,
depth); pixels that come from outside the image get ``FILL_IMAGE`` in the image and
``FILL_MASK`` (255, the ignore index) in every mask-type target. Photometric ops change only the
image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
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
Scale = Literal["standard", "wide"]
SCALES: tuple[str, ...] = ("standard", "wide")
Factory = Callable[[float], A.BasicTransform]
# ``ranged(lo, hi, scale)``: p=1 transform whose *signed* magnitude is uniform in [lo, hi]
# (-1 <= lo <= hi <= 1; 0 <= lo for unsigned ops) on ``scale``'s range.
RangedFactory = Callable[[float, float, str], A.BasicTransform]

# Levels used to sample the strength of an op that has no ``ranged`` factory (a user's op):
# torchvision's 31 magnitude bins.
FALLBACK_LEVELS = 31
# Bins of the clipped normal that approximates a magnitude drawn from N(M, mstd).
GAUSSIAN_BINS = 16
_GAUSSIAN_SPAN = 4.0  # bins cover M ± 4 mstd; the mass beyond (6e-5) is dropped


@dataclass(frozen=True)
class Op:
    """A named augmentation.

    ``factory(m)`` returns an albumentations transform with ``p=1`` applying exactly strength
    ``m`` (the ``+`` sign for signed ops); ``negative_factory(m)`` the ``-`` sign.
    ``ranged(lo, hi, scale)``, when given, returns a transform whose signed magnitude is drawn
    uniformly in [lo, hi] on ``scale`` (standard or wide); ops without it are sampled over
    ``FALLBACK_LEVELS`` exact strengths and have no wide range.
    ``range_wide_at_1``: the wide range for listings (defaults to ``range_at_1``).
    ``uses_magnitude``: False for ops the magnitude does not change (flips, equalize, ...).
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
    ranged: RangedFactory | None = None
    range_wide_at_1: str | None = None
    uses_magnitude: bool = True

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
        return "image, mask, boxes, depth, normals" if self.kind == "geometric" else "image"

    @property
    def wide_range(self) -> str:
        """The range at magnitude 1 on the wide scale."""
        return self.range_wide_at_1 or self.range_at_1


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
    op: str,
    p: float,
    magnitude: float,
    *,
    size: tuple[int, int] | None = None,
    scale: str = "standard",
) -> A.BasicTransform:
    """One slot as an albumentations transform applied with probability ``p``.

    A signed op becomes ``OneOf([+strength, -strength], p=p)``: exact strength, random sign.
    ``size`` (height, width) sets the output size of sized ops (crop); without it they keep a
    placeholder until ``set_output_size`` is called. ``scale`` picks the range (an op without
    a ``ranged`` factory has only the standard one).
    """
    spec = get_op(op)
    m = float(magnitude)
    if spec.signed:
        transform: A.BasicTransform = A.OneOf(
            [_exact(spec, m, scale), _exact(spec, m, scale, -1)], p=float(p)
        )
    else:
        transform = _exact(spec, m, scale)
        transform.p = float(p)
    if size is not None:
        set_output_size(transform, size)
    return transform


def build_sampled(
    op: str, lo: float = 0.0, hi: float = 1.0, *, p: float = 1.0, scale: str = "standard"
) -> A.BasicTransform:
    """``op`` with its magnitude drawn uniformly in [lo, hi] per application (random sign for
    signed ops), applied with probability ``p``."""
    spec = get_op(op)
    lo, hi = float(lo), float(hi)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"need 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
    if not spec.uses_magnitude or lo == hi:
        return build_slot(op, p, hi, scale=scale)
    if spec.ranged is None:
        levels = [lo + (hi - lo) * i / (FALLBACK_LEVELS - 1) for i in range(FALLBACK_LEVELS)]
        return A.OneOf([build_slot(op, 1.0, m) for m in levels], p=float(p))
    if not spec.signed:
        transform = spec.ranged(lo, hi, scale)
    elif lo == 0.0:
        transform = spec.ranged(-hi, hi, scale)  # one range: strength and sign drawn at once
    else:
        transform = A.OneOf([spec.ranged(lo, hi, scale), spec.ranged(-hi, -lo, scale)], p=1.0)
    transform.p = float(p)
    return transform


def build_gaussian(
    op: str, magnitude: float, std: float, *, p: float = 1.0, scale: str = "standard"
) -> A.BasicTransform:
    """``op`` with its magnitude drawn per application from N(magnitude, std) clipped to [0, 1]
    (timm's ``mstd``), then a random sign for signed ops; applied with probability ``p``.

    Albumentations samples only uniform ranges, so the normal is a histogram: a ``OneOf`` whose
    children's ``p`` are the probability masses (OneOf picks children in proportion to their
    ``p``): ``GAUSSIAN_BINS`` uniform bins over magnitude ± 4 std, plus exact strengths 0 and 1
    carrying the clipped tails. ``std == 0`` is exact strength (``build_slot``).
    """
    m, s = float(magnitude), float(std)
    spec = get_op(op)
    if s == 0.0 or not spec.uses_magnitude:
        return build_slot(op, p, m, scale=scale)
    children: list[A.BasicTransform] = []
    weights: list[float] = []
    low_tail = _normal_cdf(0.0, m, s)
    high_tail = 1.0 - _normal_cdf(1.0, m, s)
    a, b = max(0.0, m - _GAUSSIAN_SPAN * s), min(1.0, m + _GAUSSIAN_SPAN * s)
    for weight, child in (
        (low_tail, lambda: build_slot(op, 1.0, 0.0, scale=scale)),
        (high_tail, lambda: build_slot(op, 1.0, 1.0, scale=scale)),
    ):
        if weight > 1e-6:
            children.append(child())
            weights.append(weight)
    if b > a:
        edges = [a + (b - a) * i / GAUSSIAN_BINS for i in range(GAUSSIAN_BINS + 1)]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            weight = _normal_cdf(hi, m, s) - _normal_cdf(lo, m, s)
            if weight > 1e-6:
                children.append(build_sampled(op, lo, hi, scale=scale))
                weights.append(weight)
    total = sum(weights)
    for child, weight in zip(children, weights, strict=True):
        child.p = weight / total
    return A.OneOf(children, p=float(p))


def set_output_size(transform: Any, size: tuple[int, int]) -> int:
    """Set the output size of every random-resized crop inside ``transform``; returns how many."""
    found = 0
    if isinstance(transform, A.RandomResizedCrop):
        transform.size = (int(size[0]), int(size[1]))
        found += 1
    for child in getattr(transform, "transforms", ()):
        found += set_output_size(child, size)
    return found


def _exact(spec: Op, m: float, scale: str, sign: int = 1) -> A.BasicTransform:
    """Exact strength ``m`` with ``sign`` on ``scale``."""
    if spec.ranged is not None and scale != "standard":
        return spec.ranged(sign * m, sign * m, scale)
    if sign < 0:
        assert spec.negative_factory is not None
        return spec.negative_factory(m)
    return spec.factory(m)


def _normal_cdf(x: float, mean: float, std: float) -> float:
    return 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))


# --- ranges ------------------------------------------------------------------------------------

# Each op's parameter at magnitude 1, per scale (see the module docstring).
_AT_1: dict[str, dict[str, float]] = {
    "rotate": {"standard": 30.0, "wide": 135.0},  # degrees
    "shear": {"standard": 0.3, "wide": 0.99},  # shear factor
    # standard: a fraction of the side; wide: pixels, whatever the size (TrivialAugmentWide's)
    "translate": {"standard": 0.45, "wide": 32.0},
    "scale": {"standard": 0.5, "wide": 0.5},  # zoom 1 ± x
    "enhance": {"standard": 0.9, "wide": 0.99},  # brightness/contrast/saturation/sharpness
    "hue": {"standard": 0.25, "wide": 0.25},  # fraction of the hue circle
    "posterize": {"standard": 4.0, "wide": 6.0},  # bits removed
    "blur": {"standard": 2.0, "wide": 2.0},  # sigma in pixels
    "noise": {"standard": 0.2, "wide": 0.2},  # std, fraction of 255
    "cutout": {"standard": 0.4, "wide": 0.4},  # hole side, fraction of the side
    "crop": {"standard": 0.9, "wide": 0.9},  # area removed at most
    "grid": {"standard": 0.5, "wide": 0.5},  # grid cell step 1 ± x
    "elastic": {"standard": 0.3, "wide": 0.3},  # TPS control points moved by N(0, x/10 side)
}


def _k(group: str, scale: str) -> float:
    try:
        return _AT_1[group][scale]
    except KeyError:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}") from None


# --- ranged factories: signed magnitude uniform in [lo, hi] ------------------------------------


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


def _rotate(lo: float, hi: float, scale: str) -> A.Affine:
    k = _k("rotate", scale)
    return _affine(rotate=(k * lo, k * hi))


def _shear(lo: float, hi: float, scale: str, *, axis: str) -> A.Affine:
    # The shear *factor* is linear in m; Affine takes the angle whose tangent is that factor
    # (sampled ranges draw the angle uniformly, so the factor is uniform only approximately).
    k = _k("shear", scale)
    a, b = (math.degrees(math.atan(k * v)) for v in (lo, hi))
    other = "y" if axis == "x" else "x"
    # Both axes explicit: Affine's dict form defaults a missing axis to 1 degree, not 0.
    return _affine(shear={axis: (a, b), other: (0.0, 0.0)})


def _translate(lo: float, hi: float, scale: str, *, axis: str) -> A.Affine:
    # Whole pixels, truncated toward 0 as torchvision's int(): Affine truncates the shift it
    # draws from either range.
    k = _k("translate", scale)
    other = "y" if axis == "x" else "x"
    if scale == "wide":
        return _affine(translate_px={axis: (k * lo, k * hi), other: (0.0, 0.0)})
    return _affine(translate_percent={axis: (k * lo, k * hi), other: (0.0, 0.0)})


def _scale(lo: float, hi: float, scale: str) -> A.Affine:
    k = _k("scale", scale)
    return _affine(scale=(1.0 + k * lo, 1.0 + k * hi), keep_ratio=True)


def _crop(lo: float, hi: float, scale: str) -> A.RandomResizedCrop:
    # The crop samples its area anyway; a magnitude range bounds it by its upper end. At 0 the
    # whole image would still be cut to a random aspect ratio now and then: a NoOp instead.
    k = _k("crop", scale)
    if hi == 0:
        return A.NoOp(p=1.0)
    return A.RandomResizedCrop(
        size=PLACEHOLDER_SIZE,
        scale=(1.0 - k * hi, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        interpolation=cv2.INTER_LINEAR,
        # cv2's INTER_NEAREST resize is not centre-aligned (masks would drift from the image by
        # up to half a zoomed pixel); NEAREST_EXACT is, like the linear image resize.
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
        p=1.0,
    )


def _jitter(lo: float, hi: float, scale: str, *, which: str) -> A.ColorJitter:
    # ColorJitter skips a factor of exactly 1 (hue 0), so only ``which`` changes the image.
    args: dict[str, tuple[float, float]] = {
        "brightness": (1.0, 1.0),
        "contrast": (1.0, 1.0),
        "saturation": (1.0, 1.0),
        "hue": (0.0, 0.0),
    }
    if which == "hue":
        k = _k("hue", scale)
        args["hue"] = (k * lo, k * hi)
    else:
        k = _k("enhance", scale)
        args[which] = (1.0 + k * lo, 1.0 + k * hi)
    return A.ColorJitter(**args, p=1.0)


def _sharpen(a: float, b: float) -> A.Sharpen:
    # PIL's Sharpness(f) is I + (f-1)(I - SMOOTH), SMOOTH = [[1,1,1],[1,5,1],[1,1,1]]/13,
    # i.e. I + (f-1)/13 * [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]: Sharpen's kernel with
    # lightness 1 and alpha (f-1)/13, exactly.
    return A.Sharpen(alpha=(a / 13.0, b / 13.0), lightness=(1.0, 1.0), method="kernel", p=1.0)


def _smooth_sigma(f_minus_1: float) -> float:
    # Blurring toward SMOOTH has no stock transform; a 3x3 Gaussian with the same per-axis
    # variance as PIL's blended kernel (6(1-f)/13) stands in for it.
    var = 6.0 * f_minus_1 / 13.0
    if var <= 0:
        return 1e-6
    q = var / (2.0 * (1.0 - var))
    return math.sqrt(-1.0 / (2.0 * math.log(q)))


def _sharpness(lo: float, hi: float, scale: str) -> A.BasicTransform:
    k = _k("enhance", scale)
    # -0.0 is the minus sign at magnitude 0 (negative_factory(0)): a blur of sigma ~0.
    if hi < 0 or (hi == 0 and (lo < 0 or math.copysign(1.0, hi) < 0)):
        return A.GaussianBlur(blur_limit=(3, 3),
                              sigma_limit=(_smooth_sigma(-k * hi), _smooth_sigma(-k * lo)), p=1.0)
    if lo >= 0:
        return _sharpen(k * lo, k * hi)
    # The range crosses 0: blur or sharpen in proportion to each side's length.
    minus, plus = _sharpness(lo, 0.0, scale), _sharpness(0.0, hi, scale)
    minus.p, plus.p = -lo / (hi - lo), hi / (hi - lo)
    return A.OneOf([minus, plus], p=1.0)


def _bits(removed: int) -> A.BasicTransform:
    if removed <= 0:  # 8 bits is the identity, which Posterize refuses
        return A.NoOp(p=1.0)
    return A.Posterize(num_bits=8 - removed, p=1.0)


def _posterize(lo: float, hi: float, scale: str) -> A.BasicTransform:
    # Bits removed = round(k*m), rounded like torchvision's bins. Over a range, each whole
    # number of bits gets the share of [lo, hi] that rounds to it.
    k = _k("posterize", scale)
    first, last = round(k * lo), round(k * hi)
    if first == last:
        return _bits(first)
    children = []
    for r in range(first, last + 1):
        a, b = max(lo, (r - 0.5) / k), min(hi, (r + 0.5) / k)
        if b > a:
            child = _bits(r)
            child.p = (b - a) / (hi - lo)
            children.append(child)
    return A.OneOf(children, p=1.0)


def _solarize(lo: float, hi: float, scale: str) -> A.Solarize:
    # Threshold as a fraction of 255: pixels >= 255*(1-m) are inverted.
    return A.Solarize(threshold_range=(1.0 - hi, 1.0 - lo), p=1.0)


def _blur(lo: float, hi: float, scale: str) -> A.GaussianBlur:
    k = _k("blur", scale)
    # blur_limit=0: the kernel size follows PIL, int(3.5 sigma)*2 + 1.
    return A.GaussianBlur(blur_limit=0, sigma_limit=(max(k * lo, 1e-6), max(k * hi, 1e-6)),
                          p=1.0)


def _noise(lo: float, hi: float, scale: str) -> A.GaussNoise:
    k = _k("noise", scale)
    return A.GaussNoise(std_range=(k * lo, k * hi), mean_range=(0.0, 0.0), per_channel=True,
                        p=1.0)


def _cutout(lo: float, hi: float, scale: str) -> A.CoarseDropout:
    # Over a range, height and width are drawn independently (CoarseDropout's own sampling).
    k = _k("cutout", scale)
    return A.CoarseDropout(
        num_holes_range=(1, 1),
        hole_height_range=(k * lo, k * hi),
        hole_width_range=(k * lo, k * hi),
        fill=FILL_IMAGE,
        fill_mask=None,  # masks (and depth) keep their values under the hole
        p=1.0,
    )


def _grid_distortion(lo: float, hi: float, scale: str) -> A.GridDistortion:
    # Each of the 5+1 grid steps per axis is drawn in 1 ± k*m (the distortion is random by
    # nature: the magnitude bounds it, like crop's); normalized keeps the grid on the image.
    # albumentations 2.0.8 maps the last row and column to exactly H and W (one past the last
    # pixel): a replicated border turns them into copies of their neighbours instead of black,
    # invalid lines. Nothing else samples outside, so no pixel needs the outside fill.
    # Its grid also repeats one row (column) at each cell boundary, so even a zero distortion
    # resamples the image slightly: magnitude 0 is a NoOp instead.
    limit = _k("grid", scale) * hi
    if limit == 0:
        return A.NoOp(p=1.0)
    return A.GridDistortion(
        num_steps=5,
        distort_limit=(-limit, limit),
        normalized=True,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_REPLICATE,
        p=1.0,
    )


def _elastic(lo: float, hi: float, scale: str) -> A.ThinPlateSpline:
    # A smooth random warp whose strength is a fraction of the image side, so one magnitude
    # means the same at every image size (ElasticTransform's alpha and sigma are pixels): a
    # thin-plate spline through a 4x4 grid of control points, each moved by N(0, s/10) of the
    # side with s = k*m (ThinPlateSpline draws s uniformly in scale_range). The spline amplifies
    # the control points' moves: pixels move ~0.47*s of the side on average (measured), so k =
    # 0.3, the top of albumentations' "moderate" range, keeps magnitude 1 at ~14% of the side.
    k = _k("elastic", scale)
    return A.ThinPlateSpline(
        scale_range=(k * lo, k * hi),
        num_control_points=4,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=FILL_IMAGE,
        # A 4-tuple: albumentations remaps many-channel masks in chunks of 4, and cv2 reads a
        # scalar border value as (v, 0, 0, 0), which would fill only every 4th channel.
        fill_mask=(float(FILL_MASK),) * 4,
        p=1.0,
    )


def _fixed(make: Callable[[], A.BasicTransform]) -> RangedFactory:
    return lambda lo, hi, scale: make()


def _builtin(name: str, kind: str, description: str, std: str, wide: str | None,
             ranged: RangedFactory, *, signed: bool = False, uses_magnitude: bool = True,
             fills_outside: bool = False, sized: bool = False) -> Op:
    def factory(m: float) -> A.BasicTransform:
        return ranged(m, m, "standard")

    def negative(m: float) -> A.BasicTransform:
        return ranged(-m, -m, "standard")

    return register_op(Op(
        name, kind, signed, description, std,  # type: ignore[arg-type]
        factory=factory, negative_factory=negative if signed else None,
        fills_outside=fills_outside, sized=sized, ranged=ranged, range_wide_at_1=wide,
        uses_magnitude=uses_magnitude,
    ))


def _with(fn: Callable[..., A.BasicTransform], **kw: Any) -> RangedFactory:
    return lambda lo, hi, scale: fn(lo, hi, scale, **kw)


def _register_builtin_ops() -> None:
    geo, photo = "geometric", "photometric"
    reg = _builtin
    reg("identity", photo, "no change", "-", None, _fixed(lambda: A.NoOp(p=1.0)),
        uses_magnitude=False)
    reg("hflip", geo, "mirror left-right (magnitude unused)", "-", None,
        _fixed(lambda: A.HorizontalFlip(p=1.0)), uses_magnitude=False)
    reg("vflip", geo, "mirror top-bottom (magnitude unused)", "-", None,
        _fixed(lambda: A.VerticalFlip(p=1.0)), uses_magnitude=False)
    reg("rotate", geo, "rotate about the centre by 30*m degrees (wide: 135*m)", "±30°", "±135°",
        _rotate, signed=True, fills_outside=True)
    for axis in ("x", "y"):
        reg(f"shear_{axis}", geo,
            f"shear along {axis} by factor 0.3*m (angle atan(0.3*m); wide: 0.99*m)",
            "±0.3 (±16.7°)", "±0.99 (±44.7°)", _with(_shear, axis=axis), signed=True,
            fills_outside=True)
    for axis, side in (("x", "width"), ("y", "height")):
        reg(f"translate_{axis}", geo,
            f"shift along {axis} by 0.45*m of the {side} (wide: 32*m pixels whatever the "
            "size, as torchvision's TrivialAugmentWide; whole pixels)",
            "±0.45 of the side", "±32 px (any size)", _with(_translate, axis=axis),
            signed=True, fills_outside=True)
    reg("scale", geo, "zoom about the centre by factor 1±0.5*m", "×0.5 .. ×1.5", None, _scale,
        signed=True, fills_outside=True)
    reg("grid_distortion", geo,
        "grid distortion: the image cut into 5x5 cells whose widths and heights are each "
        "scaled by a random factor in 1±0.5*m (strength sampled; the grid stays on the image)",
        "cell sides ×0.5 .. ×1.5", None, _grid_distortion)
    reg("elastic", geo,
        "elastic warp: a thin-plate spline through a 4x4 grid of control points, each moved by "
        "N(0, 0.03*m of the side); pixels move ~0.14*m of the side on average (strength "
        "sampled; size-independent)",
        "control points ±N(0, 0.03 side)", None, _elastic, fills_outside=True)
    reg("crop", geo,
        "random-resized crop back to the input size; crop area sampled in [1-0.9*m, 1] of the "
        "image, aspect in [3/4, 4/3] (strength sampled)",
        "area ≥ 0.1", None, _crop, sized=True)
    for name in ("brightness", "contrast", "saturation"):
        reg(name, photo, f"enhance {name} by factor 1±0.9*m (wide: 1±0.99*m)", "×0.1 .. ×1.9",
            "×0.01 .. ×1.99", _with(_jitter, which=name), signed=True)
    reg("hue", photo, "shift hue by 0.25*m of the hue circle (90*m degrees)", "±0.25 (±90°)",
        None, _with(_jitter, which="hue"), signed=True)
    reg("sharpness", photo,
        "PIL sharpness factor 1+0.9*m (exact; wide: 1+0.99*m); the - sign blurs with a 3x3 "
        "Gaussian of the same variance as PIL's factor 1-0.9*m", "×0.1 .. ×1.9",
        "×0.01 .. ×1.99", _sharpness, signed=True)
    reg("posterize", photo, "keep 8-round(4*m) bits per channel (wide: 8-round(6*m))",
        "4 bits", "2 bits", _posterize)
    reg("solarize", photo, "invert pixels >= 255*(1-m)", "threshold 0", None, _solarize)
    reg("equalize", photo, "histogram equalization (PIL; magnitude unused)", "-", None,
        _fixed(lambda: A.Equalize(mode="pil", by_channels=True, p=1.0)), uses_magnitude=False)
    reg("autocontrast", photo, "stretch each channel to 0..255 (magnitude unused)", "-", None,
        _fixed(lambda: A.AutoContrast(cutoff=0, method="pil", p=1.0)), uses_magnitude=False)
    reg("invert", photo, "255 - pixel (magnitude unused)", "-", None,
        _fixed(lambda: A.InvertImg(p=1.0)), uses_magnitude=False)
    reg("blur", photo, "Gaussian blur with sigma 2*m pixels", "sigma 2 px", None, _blur)
    reg("noise", photo, "additive Gaussian noise, std 0.2*m of 255, per channel",
        "std 0.2 (51/255)", None, _noise)
    reg("cutout", photo,
        "erase one hole of 0.4*m of each side to black; image only (mask, depth, boxes kept)",
        "0.4 of the side", None, _cutout)


_register_builtin_ops()

# torchvision's RandAugment and TrivialAugmentWide op lists (the same 14 ops), on our names:
# Color -> saturation; TranslateX/Y -> translate_x/y (standard: a fraction of the side).
RANDAUGMENT_OPS: tuple[str, ...] = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
    "saturation", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
)
TRIVIALAUGMENT_OPS: tuple[str, ...] = RANDAUGMENT_OPS
