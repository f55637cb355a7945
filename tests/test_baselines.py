"""Baselines: what each one draws over many samples, its targets, and timm-style strings."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from policysearch.augment import (
    AUTOAUGMENT_IMAGENET,
    BASELINES,
    OPS,
    RANDAUGMENT_OPS,
    MultiTaskAugment,
    Policy,
    RandAugmentSpec,
    Slot,
    SubPolicies,
    TrivialAugmentSpec,
    get_baseline,
    is_baseline,
    magnitude_scales,
    parse_timm_string,
    timm_magnitude,
    torchvision_magnitude,
)
from policysearch.augment.baselines import TORCHVISION_OPS
from policysearch.augment.ops import build_slot
from policysearch.errors import UserError
from tests.test_ops import _sample as object_sample
from tests.test_ops import assert_targets_follow

CLS = {"c": "classification"}
TASKS = {"seg": "segmentation", "det": "detection", "depth": "depth"}
DRAWS = 2000


def _image(seed: int = 0, side: int = 8) -> dict:
    return {"image": np.random.default_rng(seed).integers(0, 256, (side, side, 3), np.uint8)}


def _leaves(t: object) -> list[A.BasicTransform]:
    if isinstance(t, A.BaseCompose):
        return [leaf for child in t.transforms for leaf in _leaves(child)]
    return [t]  # type: ignore[list-item]


def _record(transform: object, log: list, tag: object) -> None:
    """Append ``(tag, leaf)`` to ``log`` whenever a leaf of ``transform`` is applied."""
    for leaf in _leaves(transform):
        original = leaf.apply_with_params

        def applied(params: dict, *args: object, _original: Callable = original,
                    _leaf: object = leaf, **kwargs: object) -> object:
            log.append((tag, _leaf))
            return _original(params, *args, **kwargs)

        leaf.apply_with_params = applied  # type: ignore[method-assign]


def _root(aug: MultiTaskAugment) -> A.BaseCompose:
    compose = aug.pipeline("shared")
    assert compose is not None and len(compose.transforms) == 1
    return compose.transforms[0]


def _per_sample(aug: MultiTaskAugment, log: list, draws: int = DRAWS) -> list[list]:
    """Run ``draws`` samples; the tags applied to each."""
    sample = _image()
    seen = []
    for _ in range(draws):
        log.clear()
        aug(sample)
        seen.append([tag for tag, _ in log])
    return seen


def _within(count: float, n: int, p: float, sds: float = 4.5) -> bool:
    """``count`` of ``n`` Bernoulli(p) draws is within ``sds`` standard deviations."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p)) + 1e-9


def _ks_uniform(values: list[float], lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance of ``values`` from U[lo, hi]."""
    xs = np.sort((np.asarray(values) - lo) / (hi - lo))
    n = len(xs)
    ranks = np.arange(1, n + 1) / n
    return float(max(np.max(ranks - xs), np.max(xs - (ranks - 1 / n))))


KS_99 = 1.63  # KS critical value at alpha = 0.01 is 1.63 / sqrt(n)


# --- RandAugment -------------------------------------------------------------------------------


def test_randaugment_applies_exactly_n_ops_drawn_with_replacement_in_draw_order() -> None:
    policy = get_baseline("randaugment", CLS)
    assert policy.shared == RandAugmentSpec(n=2, magnitude=0.3, mstd=0.0, ops=RANDAUGMENT_OPS)
    aug = policy.transform(seed=0)
    root = _root(aug)
    assert isinstance(root, A.RandomOrder)
    log: list = []
    for i, child in enumerate(root.transforms):
        _record(child, log, i)
    seen = _per_sample(aug, log)
    assert all(len(tags) == 2 for tags in seen)
    counts = Counter(t for tags in seen for t in tags)
    k = len(RANDAUGMENT_OPS)
    assert set(counts) == set(range(k))
    assert all(_within(c, 2 * DRAWS, 1 / k) for c in counts.values()), counts
    # With replacement: the same op twice in 1/k of the samples; drawn order, not list order.
    twice = sum(tags[0] == tags[1] for tags in seen)
    assert twice > 0 and _within(twice, DRAWS, 1 / k)
    descending = sum(tags[0] > tags[1] for tags in seen)
    ascending = sum(tags[0] < tags[1] for tags in seen)
    assert _within(descending, ascending + descending, 0.5)


def test_randaugment_magnitude_is_exact_with_a_random_sign() -> None:
    aug = Policy(tasks=CLS, shared=RandAugmentSpec(n=3, magnitude=0.3, ops=("rotate",))
                 ).transform(seed=1)
    log: list = []
    _record(_root(aug), log, "rotate")
    angles = Counter()
    for _ in range(300):
        log.clear()
        aug(_image())
        assert len(log) == 3
        angles.update(round(leaf.params["rotate"], 6) for _, leaf in log)
    assert set(angles) == {9.0, -9.0} and _within(angles[9.0], 900, 0.5)


def test_randaugment_mstd_draws_a_clipped_normal_magnitude() -> None:
    m, mstd = 0.9, 0.1
    aug = Policy(tasks=CLS, shared=RandAugmentSpec(n=1, magnitude=m, mstd=mstd,
                                                   ops=("rotate",))).transform(seed=2)
    log: list = []
    _record(_root(aug), log, "rotate")
    strengths = []
    for _ in range(DRAWS):
        log.clear()
        aug(_image())
        (_, leaf), = log
        strengths.append(abs(leaf.params["rotate"]) / 30.0)
    xs = np.sort(strengths)
    # The clipped upper tail is an atom at exactly 1 with mass P(N > 1) = 0.159.
    clipped = int(np.isclose(xs, 1.0).sum())
    assert _within(clipped, DRAWS, 0.5 * math.erfc((1 - m) / mstd / math.sqrt(2)))
    # Below it, the empirical CDF follows the normal's (bins add < 0.01 of error).
    cdf = 0.5 * (1 + np.vectorize(math.erf)((xs - m) / (mstd * math.sqrt(2))))
    ranks = np.arange(1, DRAWS + 1) / DRAWS
    inner = xs < 1.0 - 1e-9
    assert np.max(np.abs(ranks - cdf)[inner]) < KS_99 / math.sqrt(DRAWS) + 0.01


# --- TrivialAugment ----------------------------------------------------------------------------


def test_trivialaugment_applies_exactly_one_op_drawn_uniformly() -> None:
    policy = get_baseline("trivialaugment", CLS)
    assert policy.shared == TrivialAugmentSpec(ops=RANDAUGMENT_OPS, scale="wide")
    aug = policy.transform(seed=0)
    root = _root(aug)
    assert isinstance(root, A.OneOf)
    log: list = []
    for i, child in enumerate(root.transforms):
        _record(child, log, i)
    seen = _per_sample(aug, log)
    assert all(len(tags) == 1 for tags in seen)
    counts = Counter(tags[0] for tags in seen)
    k = len(RANDAUGMENT_OPS)
    assert set(counts) == set(range(k))
    assert all(_within(c, DRAWS, 1 / k) for c in counts.values()), counts


def test_trivialaugment_rotation_angle_is_uniform_over_the_wide_range() -> None:
    aug = Policy(tasks=CLS, shared=TrivialAugmentSpec(ops=("rotate",))).transform(seed=3)
    log: list = []
    _record(_root(aug), log, "rotate")
    angles = []
    for _ in range(DRAWS):
        log.clear()
        aug(_image())
        (_, leaf), = log
        angles.append(leaf.params["rotate"])
    assert min(angles) < -130 and max(angles) > 130
    assert _ks_uniform(angles, -135.0, 135.0) < KS_99 / math.sqrt(DRAWS)
    assert _within(sum(a < 0 for a in angles), DRAWS, 0.5)


def test_trivialaugment_unsigned_strength_is_uniform_too() -> None:
    # (Seed 4 drew a 1-in-500 sample under the keyed draws of seeding version 2: KS·√n 1.89;
    # seeds 0-7 give 0.44-1.02 otherwise.)
    aug = Policy(tasks=CLS, shared=TrivialAugmentSpec(ops=("solarize",))).transform(seed=0)
    log: list = []
    _record(_root(aug), log, "solarize")
    thresholds = []
    for _ in range(DRAWS):
        log.clear()
        aug(_image())
        thresholds.append(log[0][1].params["threshold"])
    assert _ks_uniform(thresholds, 0.0, 1.0) < KS_99 / math.sqrt(DRAWS)


def test_trivialaugment_posterize_bits_follow_torchvision_wide() -> None:
    aug = Policy(tasks=CLS, shared=TrivialAugmentSpec(ops=("posterize",))).transform(seed=5)
    log: list = []
    _record(_root(aug), log, "posterize")
    bits = Counter()
    for _ in range(DRAWS):
        log.clear()
        aug(_image())
        bits[getattr(log[0][1], "num_bits", (8, 8))[0]] += 1
    # 8 - round(6 u): 8 and 2 bits 1/12 each, 7..3 bits 1/6 each.
    expect = {8: 1 / 12, 2: 1 / 12, **{b: 1 / 6 for b in range(3, 8)}}
    assert set(bits) == set(expect)
    assert all(_within(bits[b], DRAWS, p) for b, p in expect.items()), bits


# --- AutoAugment -------------------------------------------------------------------------------


def test_autoaugment_is_torchvisions_imagenet_policy_on_our_ops() -> None:
    policy = get_baseline("autoaugment", CLS)
    assert isinstance(policy.shared, SubPolicies) and len(policy.shared.policies) == 25
    assert all(len(sp) == 2 for sp in policy.shared.policies)
    assert policy.shared.policies[0] == (Slot("posterize", 0.4, 8 / 9), Slot("rotate", 0.6, 1.0))
    assert policy.shared.policies[10] == (Slot("rotate", 0.8, 8 / 9),
                                          Slot("saturation", 0.4, 0.0))
    assert policy.shared.policies[14][1] == Slot("contrast", 1.0, 8 / 9)
    assert policy.provenance == {"baseline": "autoaugment"}


def test_autoaugment_picks_sub_policies_uniformly_and_slots_with_their_p() -> None:
    draws = 5000
    aug = get_baseline("autoaugment", CLS).transform(seed=0)
    root = _root(aug)
    assert isinstance(root, A.OneOf)
    branch_of = {id(b): i for i, b in enumerate(root.transforms)}
    picks: list[int] = []
    # OneOf reports the branch it ran through this hook (albumentations 2.0.8).
    root._track_transform_params = (  # type: ignore[method-assign]
        lambda t, data: picks.append(branch_of[id(t)]))
    log: list = []
    for i, branch in enumerate(root.transforms):
        for j, slot in enumerate(branch.transforms):
            _record(slot, log, (i, j))
    applied = Counter()
    sample = _image()
    for _ in range(draws):
        log.clear()
        aug(sample)
        assert {i for (i, _), _ in log} <= {picks[-1]}
        applied.update(tag for tag, _ in log)
    assert len(picks) == draws
    counts = Counter(picks)
    chi2 = sum((counts[i] - draws / 25) ** 2 / (draws / 25) for i in range(25))
    assert chi2 < 51.2  # chi-square, 24 degrees of freedom, alpha = 0.001
    for i, sub in enumerate(AUTOAUGMENT_IMAGENET):
        for j, (_, p, _) in enumerate(sub):
            assert _within(applied[(i, j)], counts[i], p), (i, j, applied[(i, j)], counts[i])


# --- targets under every baseline --------------------------------------------------------------


def _geometric_twin(policy: Policy) -> Policy:
    """``policy`` with every photometric op dropped (lists) or made identity (slots), so the
    image itself can witness alignment."""
    def keep(name: str) -> bool:
        return OPS[name].kind == "geometric" or name == "identity"

    shared = policy.shared
    if isinstance(shared, RandAugmentSpec):
        shared = RandAugmentSpec(n=shared.n, magnitude=shared.magnitude, mstd=shared.mstd,
                                 ops=tuple(o for o in shared.ops if keep(o)), scale=shared.scale)
    elif isinstance(shared, TrivialAugmentSpec):
        shared = TrivialAugmentSpec(ops=tuple(o for o in shared.ops if keep(o)),
                                    scale=shared.scale)
    elif isinstance(shared, SubPolicies):
        shared = SubPolicies(tuple(
            tuple(s if keep(s.op) else Slot("identity", s.p, 0.0) for s in sp)
            for sp in shared.policies))
    return Policy(tasks=policy.tasks, shared=shared, base=policy.base)


ALL_BASELINES = [*BASELINES, "rand-n3-m9-mstd0.5"]


@pytest.mark.parametrize("name", ALL_BASELINES)
def test_targets_follow_the_image_under_every_baseline(name: str) -> None:
    policy = get_baseline(name, TASKS)
    twin = _geometric_twin(policy)
    aug, twin_aug = policy.transform(seed=7), twin.transform(seed=7)
    rng = np.random.default_rng(11)
    for i in range(40):
        obj = (int(rng.integers(4, 37)), int(rng.integers(4, 37)), int(rng.integers(16, 27)),
               int(rng.integers(16, 27)), bool(i % 2))
        sample = object_sample(np.random.default_rng(i), *obj)
        # The baseline itself: photometric ops change the image only, so the targets must
        # agree with each other and with the geometry; its geometric twin shows the image
        # moved with them.
        assert_targets_follow(sample, aug(sample)["shared"], image_aligned=False)
        assert_targets_follow(sample, twin_aug(sample)["shared"])


def test_cutout_never_erases_targets_inside_structures() -> None:
    sample = object_sample(np.random.default_rng(0), 30, 30, 12, 12, False)
    sample["image"][:] = 255
    for shared in (RandAugmentSpec(n=3, magnitude=1.0, ops=("cutout",)),
                   TrivialAugmentSpec(ops=("cutout",), scale="standard"),
                   SubPolicies(((Slot("cutout", 1.0, 1.0), Slot("hflip", 0.0, 1.0)),))):
        aug = Policy(tasks=TASKS, shared=shared).transform(seed=0)
        holes = 0
        for _ in range(20):
            out = aug(sample)["shared"]
            holes += int((out["image"] == 0).all(axis=2).sum())
            for key in ("mask", "depth", "boxes", "box_labels"):
                np.testing.assert_array_equal(out[key], sample[key])
        assert holes > 0


# --- contenders as practitioners run them -----------------------------------------------------


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment", "autoaugment"])
def test_flipcrop_contenders_put_flipcrop_before_the_bare_baseline(name: str) -> None:
    bare, flipcrop = get_baseline(name, TASKS), get_baseline("flipcrop", TASKS)
    combined = get_baseline(f"flipcrop+{name}", TASKS)
    assert combined.base == flipcrop.shared and not bare.base
    assert combined.shared == bare.shared and combined.structure == bare.structure
    assert combined.provenance == {"baseline": f"flipcrop+{name}"}
    # Applied first: the pipeline of the shared view starts with the flip and the crop.
    compose = combined.transform(seed=0).pipeline("shared")
    assert compose is not None
    assert [type(t) for t in compose.transforms[:2]] == [A.HorizontalFlip, A.RandomResizedCrop]
    assert len(compose.transforms) == 3  # then the bare baseline's one block


def test_the_benchmark_takes_every_baseline_as_a_contender(tmp_path: Path) -> None:
    from policysearch.evaluation.benchmark import SEARCHED, BenchmarkOptions, _contenders

    searched = get_baseline("none", TASKS)
    options = BenchmarkOptions(policy=tmp_path / "p.yaml", baselines=list(BASELINES),
                               reference="flipcrop+randaugment")
    contenders = _contenders(options, searched, TASKS)
    assert [c.name for c in contenders] == [SEARCHED, *BASELINES]
    for c in contenders[1:]:
        assert c.policy.base == get_baseline(c.name, TASKS).base
        assert c.policy.weighting.weights == {t: 1.0 for t in TASKS}
    options = BenchmarkOptions(policy=tmp_path / "p.yaml", baselines=["flipcrop+cutmix"])
    with pytest.raises(UserError, match="known: none, crop, flipcrop, .*flipcrop\\+autoaugment"):
        _contenders(options, searched, TASKS)


def test_crop_contender_crops_without_flipping() -> None:
    policy = get_baseline("crop", CLS)
    assert policy.shared == (Slot("crop", 1.0, 0.5),) and not policy.base
    assert get_baseline("flipcrop", CLS).shared == (Slot("hflip", 0.5, 1.0), *policy.shared)


# --- torchvision's own tables ------------------------------------------------------------------

# (height, width): torchvision's standard translate is in pixels of the side.
TV_SIZE = (48, 80)
# Our deliberate difference: the standard translate is 0.45 of the side, torchvision's 150/331.
TRANSLATE_RATIO = 0.45 / (150 / 331)


def _torchvision_spaces() -> dict[str, tuple[dict, str, int]]:
    """torchvision's ``_augmentation_space`` of each baseline: (table, our scale, bins)."""
    from torchvision.transforms import AutoAugment, RandAugment, TrivialAugmentWide

    return {
        "randaugment": (RandAugment()._augmentation_space(31, TV_SIZE), "standard", 31),
        "trivialaugment": (TrivialAugmentWide()._augmentation_space(31), "wide", 31),
        "autoaugment": (AutoAugment()._augmentation_space(10, TV_SIZE), "standard", 10),
    }


def _tv_parameter(name: str, t: A.BasicTransform) -> float:
    """The parameter torchvision's ``_augmentation_space`` lists that our transform ``t`` of op
    ``name`` applies (its two ends must agree: an exact strength)."""
    def exact(pair: tuple[float, float]) -> float:
        assert pair[0] == pytest.approx(pair[1])
        return float(pair[0])

    if name == "rotate":
        return exact(t.rotate)
    if name.startswith("shear_"):  # torchvision lists the factor, applies atan's angle
        return math.tan(math.radians(exact(t.shear[name[-1]])))
    if name.startswith("translate_"):  # pixels at TV_SIZE
        axis = name[-1]
        if t.translate_percent is None:
            return exact(t.translate_px[axis])
        return exact(t.translate_percent[axis]) * TV_SIZE[1 if axis == "x" else 0]
    if name in ("brightness", "saturation", "contrast"):
        return exact(getattr(t, name)) - 1.0
    if name == "sharpness":  # PIL's factor f: Sharpen's alpha (f - 1) / 13
        return exact(t.alpha) * 13.0
    if name == "posterize":  # bits kept
        return exact(t.num_bits) if isinstance(t, A.Posterize) else 8.0
    if name == "solarize":  # threshold in pixel values
        return exact(t.threshold_range) * 255.0
    raise AssertionError(f"no torchvision parameter for {name}")


@pytest.mark.parametrize("baseline", ["randaugment", "trivialaugment", "autoaugment"])
def test_op_sets_are_torchvisions(baseline: str) -> None:
    table, _, _ = _torchvision_spaces()[baseline]
    theirs = {TORCHVISION_OPS[name] for name in table}
    policy = get_baseline(baseline, CLS)
    if isinstance(policy.shared, SubPolicies):
        ours = {s.op for sp in policy.shared.policies for s in sp}
        assert ours <= theirs and theirs - ours == {"brightness", "shear_y", "translate_x",
                                                     "translate_y"}  # unused by ImageNet's
    else:
        assert isinstance(policy.shared, (RandAugmentSpec, TrivialAugmentSpec))
        assert set(policy.shared.ops) == theirs and len(policy.shared.ops) == len(table)
    for name, (magnitudes, signed) in table.items():
        op = OPS[TORCHVISION_OPS[name]]
        assert op.signed == signed, name
        assert op.uses_magnitude == (magnitudes.ndim > 0), name


@pytest.mark.parametrize("baseline", ["randaugment", "trivialaugment", "autoaugment"])
def test_magnitudes_map_to_torchvisions_parameters(baseline: str) -> None:
    table, scale, bins = _torchvision_spaces()[baseline]
    checked = 0
    for name, (magnitudes, _) in table.items():
        if magnitudes.ndim == 0:
            continue
        ours = TORCHVISION_OPS[name]
        for k in (0, bins // 2, bins - 1):
            t = build_slot(ours, 1.0, k / (bins - 1), scale=scale)
            plus = t.transforms[0] if isinstance(t, A.OneOf) else t
            theirs = float(magnitudes[k])
            if ours.startswith("translate_") and scale == "standard":
                theirs *= TRANSLATE_RATIO
            assert _tv_parameter(ours, plus) == pytest.approx(theirs, abs=1e-5), (name, k)
            checked += 1
    assert checked == 3 * sum(m.ndim > 0 for m, _ in table.values())


@pytest.mark.parametrize("side", [32, 64, 224, 315])
def test_the_standard_translate_is_under_one_pixel_short_of_torchvisions_below_316_px(
        side: int) -> None:
    from torchvision.transforms import RandAugment

    theirs = float(RandAugment()._augmentation_space(31, (side, side))["TranslateX"][0][-1])
    plus = build_slot("translate_x", 1.0, 1.0).transforms[0]
    ours = plus.translate_percent["x"][1] * side
    assert 0.0 <= theirs - ours < 1.0
    assert theirs * 316 / side - ours * 316 / side >= 1.0  # from 316 px on, a pixel or more


def _shift(side: int, m: float, seed: int) -> int:
    """How far translate_x (wide) at ``m`` moves an image ``side`` px wide, in pixels."""
    image = np.zeros((side, side, 3), np.uint8)
    image[:, 5, 0] = image[:, side - 6, 1] = 255  # a red column at the left, a green one right
    t = build_slot("translate_x", 1.0, m, scale="wide")
    out = A.Compose([t], seed=seed)(image=image)["image"]
    red, green = np.nonzero(out[0, :, 0])[0], np.nonzero(out[0, :, 1])[0]
    return int(red[0]) - 5 if len(red) else int(green[0]) - (side - 6)


@pytest.mark.parametrize("side", [64, 160])
def test_trivialaugment_wide_translate_is_32_pixels_whatever_the_size(side: int) -> None:
    shifts = {_shift(side, m, seed) for m in (1.0, 0.5) for seed in range(12)}
    assert shifts == {32, -32, 16, -16}


def test_trivialaugment_wide_translate_moves_a_32_pixel_image_out_entirely() -> None:
    image = np.full((32, 32, 3), 255, np.uint8)
    t = build_slot("translate_x", 1.0, 1.0, scale="wide")
    for seed in range(4):
        assert not A.Compose([t], seed=seed)(image=image)["image"].any()


# --- timm-style strings ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "n", "magnitude", "mstd"), [
    ("rand-n2-m9-mstd0.5", 2, 0.9, 0.05),
    ("rand-m9-mstd0.5", 2, 0.9, 0.05),
    ("rand-m9-n3", 3, 0.9, 0.0),
    ("rand-mstd1-m7", 2, 0.7, 0.1),
    ("rand-m9-mmax20", 2, 0.45, 0.0),
    ("rand-m10", 2, 1.0, 0.0),
    ("rand-n0-m0", 0, 0.0, 0.0),
    ("rand", 2, 1.0, 0.0),  # timm's defaults: n=2, m=10 of 10
])
def test_timm_strings_keep_timms_scale(text: str, n: int, magnitude: float, mstd: float) -> None:
    spec = parse_timm_string(text)
    assert (spec.n, spec.ops, spec.scale) == (n, RANDAUGMENT_OPS, "standard")
    assert spec.magnitude == pytest.approx(magnitude) and spec.mstd == pytest.approx(mstd)
    policy = get_baseline(text, CLS)
    assert policy.shared == spec and policy.provenance == {"baseline": text}
    assert is_baseline(text)


@pytest.mark.parametrize(("text", "bad"), [
    ("rand-n2-m9-inc1", "'inc'"),
    ("rand-w0-m9", "'w'"),
    ("rand-p0.5", "'p'"),
    ("rand-m9-foo", "'foo'"),
    ("rand--m9", "''"),
    ("rand-m9-m8", "'m'"),
    ("rand-n2.5", "'n'"),
    ("rand-mx", "'mx'"),
    ("rand-m", "'m'"),
    ("rand-m11", "'m'"),
    ("rand-mstd200", "'mstd'"),
    ("rand-mmax0", "'mmax'"),
])
def test_timm_strings_refuse_unknown_keys_and_bad_values(text: str, bad: str) -> None:
    with pytest.raises(UserError) as err:
        parse_timm_string(text)
    line = str(err.value)
    assert repr(text) in line and bad in line and "\n" not in line
    with pytest.raises(UserError):
        get_baseline(text, CLS)
    assert not is_baseline(text)


def test_magnitude_scales_side_by_side() -> None:
    assert torchvision_magnitude(9) == pytest.approx(0.3)
    assert timm_magnitude(9) == pytest.approx(0.9)
    assert timm_magnitude(9, mmax=20) == pytest.approx(0.45)
    rows = {r["convention"]: r["magnitude"] for r in magnitude_scales()}
    assert rows["torchvision RandAugment"] == pytest.approx(0.3)
    assert rows["timm rand-m9"] == pytest.approx(0.9)
    # The randaugment baseline is torchvision's M=9, not timm's m9.
    assert get_baseline("randaugment", CLS).shared.magnitude == pytest.approx(0.3)
    assert get_baseline("rand-m9", CLS).shared.magnitude == pytest.approx(0.9)


def test_registered_names_and_errors() -> None:
    assert list(BASELINES) == ["none", "crop", "flipcrop", "randaugment", "trivialaugment",
                               "autoaugment", "flipcrop+randaugment", "flipcrop+trivialaugment",
                               "flipcrop+autoaugment"]
    assert all(is_baseline(b) for b in BASELINES) and not is_baseline("fancy")
    with pytest.raises(UserError, match="or a RandAugment string"):
        get_baseline("fancy", CLS)
    for name in BASELINES:
        policy = get_baseline(name, TASKS)
        assert policy.tasks == TASKS and policy.provenance == {"baseline": name}
