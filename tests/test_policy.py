"""Policy: views, determinism, box bookkeeping, YAML and albumentations round trips, errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policysearch.augment import (
    BASELINES,
    OPS,
    SCHEMA,
    MultiTaskAugment,
    Policy,
    RandAugmentSpec,
    Slot,
    SubPolicies,
    TrivialAugmentSpec,
    Weighting,
    get_baseline,
    load_policy,
)
from policysearch.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}
H = W = 64


def _sample(seed: int = 0, n_boxes: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 61, size=(H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), dtype=np.uint8)
    depth = np.full((H, W), 8.0, dtype=np.float32)
    boxes = []
    for i in range(n_boxes):
        x, y = 4 + 18 * i, 6 + 16 * i
        image[y:y + 14, x:x + 12] = 230
        mask[y:y + 14, x:x + 12] = i + 1
        depth[y:y + 14, x:x + 12] = 2.0 + i
        boxes.append([x, y, x + 12, y + 14])
    return {
        "image": image,
        "label": 2,
        "mask": mask,
        "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "box_labels": np.arange(1, n_boxes + 1, dtype=np.int64),
        "depth": depth,
        "id": f"sample-{seed}",
    }


def _equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


RICH = Policy(
    tasks=TASKS,
    shared=(Slot("rotate", 0.6, 0.3), Slot("crop", 0.8, 0.5), Slot("brightness", 0.5, 0.4)),
    per_task={"seg": (Slot("vflip", 1.0, 1.0),), "shape": (Slot("solarize", 0.2, 0.7),)},
    weighting=Weighting("static", {"shape": 1.0, "seg": 0.8, "objects": 1.3, "depth": 0.5}),
    provenance={"study": "demo", "trial": 17, "delta_m": 4.2, "reference": "flipcrop"},
)


# --- views -------------------------------------------------------------------------------------


def test_views_and_the_view_each_task_trains_on() -> None:
    aug = RICH.transform(seed=0)
    assert isinstance(aug, MultiTaskAugment)
    views = aug(_sample())
    assert list(views) == ["shared", "shape", "seg"] == list(aug.views) == list(RICH.views())
    assert {t: RICH.view_of(t) for t in TASKS} == {
        "shape": "shape", "seg": "seg", "objects": "shared", "depth": "shared"}
    with pytest.raises(UserError, match="unknown task 'nope'"):
        RICH.view_of("nope")


def test_task_view_is_the_shared_view_further_transformed() -> None:
    # Per-task vflip (p=1) on top of a random shared draw: one shared draw per sample.
    aug = RICH.transform(seed=3)
    for seed in range(8):
        sample = _sample(seed)
        views = aug(sample)
        shared, seg = views["shared"], views["seg"]
        np.testing.assert_array_equal(seg["image"], shared["image"][::-1])
        np.testing.assert_array_equal(seg["mask"], shared["mask"][::-1])
        np.testing.assert_array_equal(seg["depth"], shared["depth"][::-1])
        flipped = shared["boxes"].copy()
        flipped[:, [1, 3]] = H - shared["boxes"][:, [3, 1]]
        np.testing.assert_allclose(seg["boxes"], flipped, atol=1e-4)
        np.testing.assert_array_equal(seg["box_labels"], shared["box_labels"])
        assert seg["label"] == 2 and seg["id"] == sample["id"]


def test_identity_shared_then_vflip_task_view() -> None:
    policy = Policy(tasks={"seg": "segmentation"}, shared=(Slot("identity", 1.0, 0.0),),
                    per_task={"seg": (Slot("vflip", 1.0, 1.0),)})
    sample = _sample()
    views = policy.transform(seed=0)(sample)
    assert _equal(views["shared"], sample)
    np.testing.assert_array_equal(views["seg"]["image"], sample["image"][::-1])
    np.testing.assert_array_equal(views["seg"]["mask"], sample["mask"][::-1])


def test_transform_for_one_task_returns_its_single_view() -> None:
    sample = _sample(1)
    for task in TASKS:
        single = RICH.transform(task=task, seed=5)(sample)
        views = RICH.transform(seed=5)(sample)
        assert "image" in single and "shared" not in single
        # Same seed, same draws: the single view equals the matching view of the full call.
        assert _equal(single, views[RICH.view_of(task)])


def test_missing_targets_and_other_keys() -> None:
    aug = RICH.transform(seed=0)
    image_only = {"image": _sample()["image"]}
    views = aug(image_only)
    assert set(views["shared"]) == {"image"} and views["shared"]["image"].shape == (H, W, 3)
    sample = _sample()
    del sample["mask"], sample["depth"]
    out = aug(sample)["shared"]
    assert set(out) == set(sample) and out["id"] == sample["id"]


def test_dtypes_and_contiguity_are_kept() -> None:
    policy = Policy(tasks=TASKS, shared=(Slot("rotate", 1.0, 0.5), Slot("hflip", 1.0, 1.0)))
    aug = policy.transform(seed=0)
    for mask_dtype in (np.uint8, np.int32, np.int64):
        sample = _sample()
        sample["mask"] = sample["mask"].astype(mask_dtype)
        out = aug(sample)["shared"]
        for key in ("image", "mask", "depth", "boxes", "box_labels"):
            assert out[key].dtype == sample[key].dtype, key
            assert out[key].flags["C_CONTIGUOUS"], key


def test_boxes_dropped_with_their_labels() -> None:
    # A box at each side: a translation by 0.45 of the width pushes exactly one out.
    sample = _sample(n_boxes=0)
    sample["boxes"] = np.array([[50, 10, 62, 30], [2, 34, 14, 54]], np.float32)
    sample["box_labels"] = np.array([5, 9], np.int64)
    aug = Policy(tasks=TASKS, shared=(Slot("translate_x", 1.0, 1.0),)).transform(seed=0)
    kept = set()
    for _ in range(20):
        out = aug(sample)["shared"]
        assert out["boxes"].shape == (1, 4) and out["box_labels"].shape == (1,)
        label = int(out["box_labels"][0])
        x1 = out["boxes"][0, 0]
        assert (label, x1) in {(5, 50 - 28), (9, 2 + 28)}
        kept.add(label)
    assert kept == {5, 9}


def test_boxes_everywhere_out_leave_empty_float32_and_int64() -> None:
    sample = _sample(n_boxes=1)
    sample["boxes"] = np.array([[28, 28, 36, 36]], np.float32)
    aug = Policy(tasks=TASKS, shared=(Slot("translate_y", 1.0, 1.0),
                                      Slot("translate_x", 1.0, 1.0),
                                      Slot("translate_y", 1.0, 1.0))).transform(seed=1)
    seen_empty = False
    for _ in range(20):
        out = aug(sample)["shared"]
        assert out["boxes"].dtype == np.float32 and out["boxes"].shape[1] == 4
        assert out["box_labels"].dtype == np.int64
        assert len(out["boxes"]) == len(out["box_labels"])
        seen_empty |= len(out["boxes"]) == 0
    assert seen_empty
    sample["boxes"] = np.zeros((0, 4), np.float32)
    sample["box_labels"] = np.zeros(0, np.int64)
    out = aug(sample)["shared"]
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32
    assert out["box_labels"].shape == (0,) and out["box_labels"].dtype == np.int64


def _instances(sample: dict) -> np.ndarray:
    """One bool mask per box: the box's own pixels (its label in ``mask``)."""
    return np.stack([sample["mask"] == i + 1 for i in range(len(sample["boxes"]))]) \
        if len(sample["boxes"]) else np.zeros((0, H, W), bool)


def test_instance_masks_are_kept_and_dropped_with_their_boxes() -> None:
    # albumentations 2.0.8 drops a box and its labels but not a per-instance mask: ours does.
    sample = _sample(n_boxes=0)
    sample["boxes"] = np.array([[50, 10, 62, 30], [2, 34, 14, 54]], np.float32)
    sample["box_labels"] = np.array([5, 9], np.int64)
    sample["mask"][10:30, 50:62], sample["mask"][34:54, 2:14] = 1, 2
    sample["instance_masks"] = _instances(sample)
    aug = Policy(tasks=TASKS, shared=(Slot("translate_x", 1.0, 1.0),)).transform(seed=0)
    kept = set()
    for _ in range(20):
        out = aug(sample)["shared"]
        inst = out["instance_masks"]
        assert inst.dtype == bool and inst.shape == (1, H, W)
        label = int(out["box_labels"][0])
        kept.add(label)
        # The kept mask is the kept box's object, moved with it.
        np.testing.assert_array_equal(inst[0], out["mask"] == {5: 1, 9: 2}[label])
        ys, xs = np.nonzero(inst[0])
        x1, y1, x2, y2 = out["boxes"][0]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
    assert kept == {5, 9}


def test_instance_masks_are_empty_outside_and_without_boxes() -> None:
    sample = _sample(n_boxes=3)
    sample["instance_masks"] = _instances(sample).astype(np.uint8)
    aug = Policy(tasks=TASKS, shared=(Slot("rotate", 1.0, 1.0), Slot("scale", 1.0, 1.0)))
    for seed in range(10):
        out = aug.transform(seed=seed)(sample)["shared"]
        assert out["instance_masks"].dtype == np.uint8
        assert set(np.unique(out["instance_masks"])) <= {0, 1}
        outside = out["mask"] == 255
        assert not out["instance_masks"][:, outside].any()
        for inst, label in zip(out["instance_masks"], out["box_labels"], strict=True):
            np.testing.assert_array_equal(inst == 1, out["mask"] == label)
    empty = _sample(n_boxes=0)
    empty["instance_masks"] = np.zeros((0, H, W), np.uint8)
    out = aug.transform(seed=0)(empty)["shared"]
    assert out["instance_masks"].shape == (0, H, W) and out["instance_masks"].dtype == np.uint8


def test_instance_masks_must_match_the_boxes() -> None:
    sample = _sample(n_boxes=3)
    sample["instance_masks"] = _instances(sample)[:2]
    aug = Policy(tasks=TASKS, shared=(Slot("hflip", 1.0, 1.0),)).transform(seed=0)
    with pytest.raises(UserError, match="^instance_masks: 2 instance masks for 3 boxes"):
        aug(sample)
    sample["instance_masks"] = _instances(sample)[:, :32]
    with pytest.raises(UserError, match=r"^instance_masks: shape \(3, 32, 64\) does not fit"):
        aug(sample)


@pytest.mark.parametrize("key", ["mask", "depth"])
def test_a_target_of_another_size_is_a_user_error(key: str) -> None:
    sample = _sample()
    sample[key] = sample[key][:, :40]
    aug = Policy(tasks=TASKS, shared=(Slot("hflip", 1.0, 1.0),)).transform(seed=0)
    with pytest.raises(UserError, match=rf"^{key}: shape \(64, 40\) does not fit the image 64×64"):
        aug(sample)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_outputs_different_seed_different() -> None:
    samples = [_sample(i) for i in range(6)]

    def run(seed: int) -> list[dict]:
        aug = RICH.transform(seed=seed)
        return [aug(s) for s in samples]

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b, strict=True):
        assert all(_equal(x[v], y[v]) for v in x)
    assert not all(_equal(x[v], z[v]) for x, z in zip(a, c, strict=True) for v in x)


def test_set_seed_restarts_the_stream() -> None:
    samples = [_sample(i) for i in range(4)]
    aug = get_baseline("flipcrop", TASKS).transform(seed=1)
    first = [aug(s)["shared"] for s in samples]
    aug.set_seed(1)
    again = [aug(s)["shared"] for s in samples]
    assert all(_equal(x, y) for x, y in zip(first, again, strict=True))


def test_slots_draw_independently() -> None:
    # Two slots with the same p must not be applied together every time (albumentations seeds
    # every transform of a seeded Compose alike; the policy must not inherit that).
    policy = Policy(tasks={"c": "classification"},
                    shared=(Slot("invert", 0.5, 1.0), Slot("hflip", 0.5, 1.0)))
    aug = policy.transform(seed=0)
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 0] = 100
    outcomes = set()
    for _ in range(40):
        out = aug({"image": image})["shared"]["image"]
        outcomes.add((bool(out.max() == 255), bool(out[0, -1, 0] in (100, 155))))
    assert len(outcomes) == 4


# --- YAML --------------------------------------------------------------------------------------


def test_yaml_round_trip(tmp_path: Path) -> None:
    path = RICH.to_yaml(tmp_path / "best_policy.yaml")
    assert load_policy(path) == RICH
    data = yaml.safe_load(path.read_text())
    assert data["schema"] == SCHEMA and list(data) == [
        "schema", "tasks", "structure", "shared", "per_task", "weighting", "provenance"]
    assert data["shared"][0] == {"op": "rotate", "p": 0.6, "magnitude": 0.3}
    assert Policy.from_dict(RICH.to_dict()) == RICH


def test_design_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "schema: policysearch.policy/v1\n"
        "tasks: {shape: classification, seg: segmentation, objects: detection, depth: depth}\n"
        "structure: sequence\n"
        "shared:\n  - {op: rotate, p: 0.6, magnitude: 0.3}\n"
        "per_task:\n  shape:\n    - {op: solarize, p: 0.2, magnitude: 0.7}\n"
        "weighting: {method: static, weights: {shape: 1.0, seg: 0.8, objects: 1.3, depth: 0.5}}\n"
        "provenance: {study: demo, trial: 17, delta_m: 4.2, reference: flipcrop}\n"
    )
    policy = load_policy(path)
    assert policy.shared == (Slot("rotate", 0.6, 0.3),)
    assert policy.per_task == {"shape": (Slot("solarize", 0.2, 0.7),)}
    assert policy.weighting == Weighting("static", {"shape": 1.0, "seg": 0.8, "objects": 1.3,
                                                    "depth": 0.5})
    assert policy.summary() == "rotate(.6,.3) | shape: solarize(.2,.7)"


slots = st.lists(
    st.builds(Slot, op=st.sampled_from(sorted(OPS)), p=st.floats(0, 1), magnitude=st.floats(0, 1)),
    max_size=3,
).map(tuple)


@settings(max_examples=25, deadline=None)
@given(shared=slots, seg=slots, w=st.floats(0.01, 10), trial=st.integers(0, 10**6))
def test_yaml_round_trip_property(tmp_path_factory: pytest.TempPathFactory, shared: tuple,
                                  seg: tuple, w: float, trial: int) -> None:
    policy = Policy(tasks={"seg": "segmentation", "cls": "classification"}, shared=shared,
                    per_task={"seg": seg} if seg else {},
                    weighting=Weighting("static", {"seg": w}),
                    provenance={"trial": trial, "note": "x"})
    path = policy.to_yaml(tmp_path_factory.mktemp("rt") / "p.yaml")
    assert load_policy(path) == policy


def _policy_text(**changes: object) -> str:
    data = RICH.to_dict()
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


def _slot(op: str = "hflip", p: object = 0.5, magnitude: object = 1.0) -> dict:
    return {"op": op, "p": p, "magnitude": magnitude}


BAD = {
    "unknown_op": (_policy_text(shared=[_slot(), _slot("zoom")]), "shared[1].op", "unknown op"),
    "p_too_big": (_policy_text(per_task={"seg": [_slot(p=1.5)]}), "per_task.seg[0].p", "[0, 1]"),
    "magnitude_str": (_policy_text(shared=[_slot(magnitude="high")]), "shared[0].magnitude",
                      "[0, 1]"),
    "missing_p": (_policy_text(shared=[{"op": "hflip", "magnitude": 1.0}]), "shared[0].p",
                  "missing"),
    "bad_schema": (_policy_text(schema="policysearch.policy/v9"), "schema", "unsupported"),
    "no_schema": (yaml.safe_dump({"tasks": TASKS}), "schema", "unsupported"),
    "unknown_key": (_policy_text(colour="red"), "colour", "unknown key"),
    "unknown_task": (_policy_text(per_task={"nope": [_slot()]}), "per_task.nope",
                     "not one of the policy's tasks"),
    "bad_weight": (_policy_text(weighting={"method": "static", "weights": {"seg": 0}}),
                   "weighting.weights.seg", "> 0"),
    "weight_unknown_task": (_policy_text(weighting={"weights": {"nope": 1.0}}),
                            "weighting.weights.nope", "not one of"),
    "structure_shared_mismatch": (_policy_text(structure="randaugment"), "shared",
                                  "needs a mapping {n, magnitude, mstd, ops}"),
    "structure_unknown": (_policy_text(structure="zigzag"), "structure", "unknown structure"),
    "sequence_of_lists": (_policy_text(structure="sequence", shared=[[_slot()]]), "shared[0]",
                          "needs structure: subpolicies"),
    "subpolicies_bad_p": (_policy_text(structure="subpolicies",
                                       shared=[[_slot()], [_slot(), _slot(p=2)]]),
                          "shared[1][1].p", "[0, 1]"),
    "subpolicies_empty": (_policy_text(structure="subpolicies", shared=[]), "shared",
                          "a list of sub-policies"),
    "subpolicies_flat": (_policy_text(structure="subpolicies", shared=[_slot()]), "shared[0]",
                         "must be a list of {op, p, magnitude}"),
    "randaugment_key": (_policy_text(structure="randaugment",
                                     shared={"n": 2, "magnitude": 0.3, "ops": ["rotate"],
                                             "m": 9}), "shared.m", "unknown key"),
    "randaugment_missing_n": (_policy_text(structure="randaugment",
                                           shared={"magnitude": 0.3, "ops": ["rotate"]}),
                              "shared.n", "missing"),
    "randaugment_n": (_policy_text(structure="randaugment",
                                   shared={"n": 1.5, "magnitude": 0.3, "ops": ["rotate"]}),
                      "shared.n", "whole number"),
    "randaugment_magnitude": (_policy_text(structure="randaugment",
                                           shared={"n": 2, "magnitude": 9, "ops": ["rotate"]}),
                              "shared.magnitude", "[0, 1]"),
    "randaugment_mstd": (_policy_text(structure="randaugment",
                                      shared={"n": 2, "magnitude": 0.3, "mstd": -1,
                                              "ops": ["rotate"]}), "shared.mstd", ">= 0"),
    "randaugment_op": (_policy_text(structure="randaugment",
                                    shared={"n": 2, "magnitude": 0.3,
                                            "ops": ["rotate", "zoom"]}),
                       "shared.ops[1]", "unknown op"),
    "randaugment_twice": (_policy_text(structure="randaugment",
                                       shared={"n": 2, "magnitude": 0.3,
                                               "ops": ["rotate", "rotate"]}),
                          "shared.ops[1]", "listed twice"),
    "trivialaugment_empty": (_policy_text(structure="trivialaugment", shared={"ops": []}),
                             "shared.ops", "non-empty"),
    "trivialaugment_scale": (_policy_text(structure="trivialaugment",
                                          shared={"ops": ["rotate"], "scale": "huge"}),
                             "shared.scale", "standard, wide"),
    "trivialaugment_list": (_policy_text(structure="trivialaugment", shared=[_slot()]),
                            "shared", "needs a mapping {ops}"),
    "shared_task_name": (_policy_text(tasks={"shared": "classification"}, per_task={},
                                      weighting={"method": "static", "weights": {}}),
                         "tasks.shared", "reserved"),
    "schedule": (_policy_text(schedule=[]), "schedule", "at least one phase"),
    "bad_yaml": ("schema: [unclosed\n  tasks: {", None, "invalid YAML at line"),
    "not_mapping": ("- just\n- a list\n", None, "must be a mapping"),
    "empty_file": ("", None, "must be a mapping"),
}


def check_bad_policy_file(folder: Path, case: str, text: str, field: str | None,
                          message: str) -> None:
    """Loading ``text`` fails with one line naming the file and ``field``, saying ``message``."""
    path = folder / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_policy(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path))
    assert err.value.source == str(path) and err.value.field == field
    if field:
        assert f": {field}: " in line
    assert message in line


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_policy_files(tmp_path: Path, case: str) -> None:
    check_bad_policy_file(tmp_path, case, *BAD[case])


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("schema: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8") as err:
        load_policy(path)
    assert err.value.source == str(path)
    with pytest.raises(UserError, match="file not found"):
        load_policy(tmp_path / "missing.yaml")


def test_programmatic_policies_are_validated_too() -> None:
    with pytest.raises(UserError, match=r"shared\[0\]\.p"):
        Policy(tasks={"a": "classification"}, shared=(Slot("hflip", 2.0, 0.5),))
    with pytest.raises(UserError, match="unknown op"):
        Policy(tasks={"a": "classification"}, per_task={"a": [Slot("nope", 0.5, 0.5)]})


def test_summary() -> None:
    assert RICH.summary() == (
        "rotate(.6,.3) crop(.8,.5) brightness(.5,.4) | shape: solarize(.2,.7) | seg: vflip(1.0,1.0)"
    )
    assert Policy(tasks={"a": "classification"}).summary() == "none"


# --- baselines ---------------------------------------------------------------------------------


def test_baselines() -> None:
    assert {"none", "flipcrop"} <= set(BASELINES)
    none = get_baseline("none", TASKS)
    assert none.shared == () and none.per_task == {} and none.provenance == {"baseline": "none"}
    sample = _sample()
    assert _equal(none.transform(seed=0)(sample)["shared"], sample)
    flipcrop = get_baseline("flipcrop", TASKS)
    assert flipcrop.shared == (Slot("hflip", 0.5, 1.0), Slot("crop", 1.0, 0.5))
    assert flipcrop.tasks == TASKS and flipcrop.provenance == {"baseline": "flipcrop"}
    with pytest.raises(UserError, match="unknown baseline 'fancy'; known: none, crop, flipcrop, "
                       "randaugment, trivialaugment, autoaugment, flipcrop"):
        get_baseline("fancy", TASKS)


# --- albumentations export ---------------------------------------------------------------------


def test_to_albumentations_uses_albumentations_keys() -> None:
    sample = _sample()
    det = RICH.to_albumentations("objects", size=(H, W), seed=0)
    out = det(image=sample["image"], bboxes=sample["boxes"], labels=sample["box_labels"])
    assert out["image"].shape == (H, W, 3) and len(out["bboxes"]) == len(out["labels"])
    seg = RICH.to_albumentations("seg", size=(H, W))
    assert [type(t).__name__ for t in seg.transforms][-1] == "VerticalFlip"
    depth = RICH.to_albumentations("depth", size=(H, W), seed=0)
    out = depth(image=sample["image"], depth=sample["depth"])
    assert out["depth"].dtype == np.float32


def test_to_albumentations_refusals() -> None:
    policy = Policy(tasks={"n": "normals", "c": "classification"},
                    shared=(Slot("crop", 1.0, 0.5),))
    with pytest.raises(UserError, match="surface normals need policysearch's own step"):
        policy.to_albumentations("n")
    with pytest.raises(UserError, match="size"):
        policy.to_albumentations("c")
    assert policy.to_albumentations("c", size=(32, 32)).transforms[0].size == (32, 32)
    with_size = Policy(tasks=policy.tasks, shared=policy.shared, provenance={"image_size": 48})
    assert with_size.to_albumentations("c").transforms[0].size == (48, 48)
    with pytest.raises(UserError, match="unknown task"):
        policy.to_albumentations("zzz")


_CHILD = """
import json, sys
import albumentations as A
import numpy as np
compose = A.load(sys.argv[1], data_format="json")
data = dict(np.load(sys.argv[2]))
compose.set_random_seed(11)
outs = {}
for i in range(5):
    kwargs = {k: v for k, v in data.items() if k != "labels"}
    if "bboxes" in kwargs:
        kwargs["labels"] = data["labels"]
    out = compose(**kwargs)
    for k, v in out.items():
        outs[f"{i}:{k}"] = np.asarray(v)
np.savez(sys.argv[3], **outs)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "policysearch")))
"""


@pytest.mark.parametrize("task", ["seg", "objects", "depth", "shape"])
def test_albumentations_file_loads_without_policysearch(tmp_path: Path, task: str) -> None:
    compose = RICH.to_albumentations(task, size=(H, W))
    path = tmp_path / f"best_policy.{task}.albumentations.json"
    A.save(compose, str(path), data_format="json")
    sample = _sample()
    inputs = {"image": sample["image"]}
    inputs.update({
        "seg": {"mask": sample["mask"]},
        "objects": {"bboxes": sample["boxes"], "labels": sample["box_labels"]},
        "depth": {"depth": sample["depth"]},
        "shape": {},
    }[task])
    np.savez(tmp_path / "in.npz", **inputs)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    theirs = dict(np.load(tmp_path / "out.npz"))
    compose.set_random_seed(11)
    for i in range(5):
        kwargs = {k: v for k, v in inputs.items()}
        for key, value in compose(**kwargs).items():
            np.testing.assert_array_equal(np.asarray(value), theirs[f"{i}:{key}"])


# --- structures --------------------------------------------------------------------------------

STRUCTURED = {
    "subpolicies": Policy(
        tasks=TASKS,
        shared=SubPolicies(((Slot("rotate", 0.6, 0.3), Slot("equalize", 0.5, 0.0)),
                            (Slot("crop", 0.8, 0.5),), ())),
        per_task={"seg": (Slot("vflip", 1.0, 1.0),)},
        provenance={"image_size": [H, W]},
    ),
    "randaugment": Policy(
        tasks=TASKS,
        shared=RandAugmentSpec(n=3, magnitude=0.9, mstd=0.05,
                               ops=("rotate", "translate_x", "solarize", "cutout", "crop")),
        provenance={"image_size": H},
    ),
    "trivialaugment": Policy(
        tasks=TASKS,
        shared=TrivialAugmentSpec(ops=("identity", "shear_y", "posterize", "hflip")),
        per_task={"shape": (Slot("solarize", 0.2, 0.7),)},
    ),
    "randaugment_wide": Policy(
        tasks=TASKS, shared=RandAugmentSpec(n=1, magnitude=0.5, ops=("rotate",), scale="wide"),
    ),
    "trivialaugment_standard": Policy(
        tasks=TASKS, shared=TrivialAugmentSpec(ops=("rotate",), scale="standard"),
    ),
}


def test_structure_follows_the_type_of_shared() -> None:
    assert RICH.structure == "sequence"
    assert {name: p.structure for name, p in STRUCTURED.items()} == {
        "subpolicies": "subpolicies", "randaugment": "randaugment",
        "trivialaugment": "trivialaugment", "randaugment_wide": "randaugment",
        "trivialaugment_standard": "trivialaugment"}
    # Lists are accepted and frozen to tuples; equality is by value.
    as_lists = Policy(tasks={"a": "classification"}, structure="subpolicies",
                      shared=[[Slot("hflip", 0.5, 1.0)], [Slot("invert", 0.2, 0.0)]])
    assert as_lists.shared == SubPolicies(((Slot("hflip", 0.5, 1.0),),
                                           (Slot("invert", 0.2, 0.0),)))
    assert RandAugmentSpec(ops=["rotate"]) == RandAugmentSpec(ops=("rotate",))
    assert RandAugmentSpec().n == 2 and RandAugmentSpec().magnitude == 0.3
    assert TrivialAugmentSpec().scale == "wide" and len(TrivialAugmentSpec().ops) == 14


def test_structure_and_shared_must_agree() -> None:
    tasks = {"a": "classification"}
    with pytest.raises(UserError, match="structure 'randaugment' needs shared") as err:
        Policy(tasks=tasks, shared=(Slot("hflip", 0.5, 1.0),), structure="randaugment")
    assert err.value.field == "shared"
    with pytest.raises(UserError, match="structure 'sequence' needs shared"):
        Policy(tasks=tasks, shared=RandAugmentSpec(), structure="sequence")
    with pytest.raises(UserError, match=r"shared\.ops\[0\]: unknown op"):
        Policy(tasks=tasks, shared=TrivialAugmentSpec(ops=("zoom",)))
    with pytest.raises(UserError, match=r"shared\.n"):
        Policy(tasks=tasks, shared=RandAugmentSpec(n=-1))
    with pytest.raises(UserError, match=r"shared\[0\]\[0\]\.magnitude"):
        Policy(tasks=tasks, shared=SubPolicies(((Slot("rotate", 0.5, 3.0),),)))
    with pytest.raises(UserError, match="at least one sub-policy"):
        Policy(tasks=tasks, shared=SubPolicies(()))


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_yaml_round_trip_of_each_structure(tmp_path: Path, name: str) -> None:
    policy = STRUCTURED[name]
    path = policy.to_yaml(tmp_path / "p.yaml")
    assert load_policy(path) == policy
    assert Policy.from_dict(policy.to_dict()) == policy
    data = yaml.safe_load(path.read_text())
    assert data["structure"] == policy.structure


def test_yaml_forms_of_the_structures(tmp_path: Path) -> None:
    sub = yaml.safe_load(STRUCTURED["subpolicies"].to_yaml(tmp_path / "s.yaml").read_text())
    assert sub["shared"] == [
        [{"op": "rotate", "p": 0.6, "magnitude": 0.3},
         {"op": "equalize", "p": 0.5, "magnitude": 0.0}],
        [{"op": "crop", "p": 0.8, "magnitude": 0.5}],
        [],
    ]
    ra = yaml.safe_load(STRUCTURED["randaugment"].to_yaml(tmp_path / "r.yaml").read_text())
    assert ra["shared"] == {"n": 3, "magnitude": 0.9, "mstd": 0.05,
                            "ops": ["rotate", "translate_x", "solarize", "cutout", "crop"]}
    ta = yaml.safe_load(STRUCTURED["trivialaugment"].to_yaml(tmp_path / "t.yaml").read_text())
    assert ta["shared"] == {"ops": ["identity", "shear_y", "posterize", "hflip"]}
    wide = STRUCTURED["randaugment_wide"].to_dict()["shared"]
    std = STRUCTURED["trivialaugment_standard"].to_dict()["shared"]
    assert wide["scale"] == "wide" and std["scale"] == "standard"
    # mstd and scale may be left out of a hand-written file.
    path = tmp_path / "hand.yaml"
    path.write_text("schema: policysearch.policy/v1\ntasks: {c: classification}\n"
                    "structure: randaugment\nshared: {n: 2, magnitude: 0.5, ops: [rotate]}\n")
    assert load_policy(path).shared == RandAugmentSpec(n=2, magnitude=0.5, ops=("rotate",))


structured_shared = st.one_of(
    st.lists(slots.filter(bool), min_size=1, max_size=4).map(lambda sps: SubPolicies(tuple(sps))),
    st.builds(RandAugmentSpec, n=st.integers(0, 4), magnitude=st.floats(0, 1),
              mstd=st.floats(0, 1), ops=st.lists(st.sampled_from(sorted(OPS)), min_size=1,
                                                 max_size=5, unique=True).map(tuple),
              scale=st.sampled_from(["standard", "wide"])),
    st.builds(TrivialAugmentSpec, ops=st.lists(st.sampled_from(sorted(OPS)), min_size=1,
                                               max_size=5, unique=True).map(tuple),
              scale=st.sampled_from(["standard", "wide"])),
)


@settings(max_examples=30, deadline=None)
@given(shared=structured_shared, seg=slots)
def test_yaml_round_trip_property_of_structures(tmp_path_factory: pytest.TempPathFactory,
                                                shared: object, seg: tuple) -> None:
    policy = Policy(tasks={"seg": "segmentation", "cls": "classification"}, shared=shared,
                    per_task={"seg": seg} if seg else {}, provenance={"image_size": 16})
    path = policy.to_yaml(tmp_path_factory.mktemp("rt") / "p.yaml")
    assert load_policy(path) == policy
    # Every structure runs, with its views.
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    views = policy.transform(seed=0)({"image": image, "mask": np.zeros((16, 16), np.uint8)})
    assert list(views) == list(policy.views())
    assert all(v["image"].shape == (16, 16, 3) for v in views.values())


def test_summary_of_each_structure() -> None:
    assert STRUCTURED["subpolicies"].summary() == (
        "subpolicies(rotate(.6,.3) equalize(.5,.0) / crop(.8,.5) / none) | seg: vflip(1.0,1.0)")
    assert STRUCTURED["randaugment"].summary() == "randaugment(n=3, m=.90, mstd=.05, 5 ops)"
    assert STRUCTURED["trivialaugment"].summary() == (
        "trivialaugment(4 ops) | shape: solarize(.2,.7)")
    assert STRUCTURED["randaugment_wide"].summary() == "randaugment(n=1, m=.50, wide, 1 ops)"
    assert get_baseline("autoaugment", TASKS).summary() == "subpolicies(25 x 2 slots)"
    assert get_baseline("randaugment", TASKS).summary() == "randaugment(n=2, m=.30, 14 ops)"


def test_to_albumentations_builds_each_structure_from_stock_blocks() -> None:
    sub = STRUCTURED["subpolicies"].to_albumentations("seg")
    outer = sub.transforms[0]
    assert isinstance(outer, A.OneOf) and outer.transforms_ps == [1 / 3] * 3
    assert all(isinstance(t, A.Sequential) and t.p == 1.0 for t in outer.transforms)
    assert isinstance(sub.transforms[-1], A.VerticalFlip)
    assert outer.transforms[1].transforms[0].size == (H, W)  # crop sized from provenance
    ra = STRUCTURED["randaugment"].to_albumentations("objects").transforms[0]
    assert isinstance(ra, A.RandomOrder) and ra.n == 3 and ra.replace and ra.p == 1.0
    assert all(t.p == 1.0 for t in ra.transforms)
    ta = STRUCTURED["trivialaugment"].to_albumentations("shape")
    assert isinstance(ta.transforms[0], A.OneOf) and ta.transforms[0].transforms_ps == [0.25] * 4


def test_exported_depth_is_invalid_outside_under_every_structure() -> None:
    sample = _sample()
    policy = Policy(tasks=TASKS, shared=TrivialAugmentSpec(ops=("rotate",)))
    compose = policy.to_albumentations("depth", seed=0)
    outside = 0
    for _ in range(10):
        out = compose(image=sample["image"], depth=sample["depth"])
        outside += int((out["depth"] == 0.0).sum())
        assert set(np.unique(out["depth"])) <= {0.0, 2.0, 3.0, 4.0, 8.0}
    assert outside > 0


def test_exported_seed_draws_slots_independently() -> None:
    # One stream for the whole export: two p=.5 slots are not applied together every time.
    policy = Policy(tasks={"c": "classification"},
                    shared=SubPolicies(((Slot("invert", 0.5, 1.0), Slot("hflip", 0.5, 1.0)),)))
    compose = policy.to_albumentations("c", seed=0)
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 0] = 100
    outcomes = set()
    for _ in range(40):
        out = compose(image=image)["image"]
        outcomes.add((bool(out.max() == 255), bool(out[0, -1, 0] in (100, 155))))
    assert len(outcomes) == 4


_STRUCTURES_CHILD = """
import json, sys
import albumentations as A
import numpy as np
data = dict(np.load(sys.argv[1]))
shapes = {}
for path in sys.argv[2:]:
    compose = A.load(path, data_format="json")
    compose.set_random_seed(3)
    outs = []
    for _ in range(20):
        out = compose(image=data["image"], mask=data["mask"], bboxes=data["bboxes"],
                      labels=data["labels"])
        assert out["image"].shape == data["image"].shape, path
        assert out["mask"].shape == data["mask"].shape, path
        assert len(out["bboxes"]) == len(out["labels"]), path
        outs.append(int(np.asarray(out["image"], np.int64).sum()))
    shapes[path] = outs
shapes["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "policysearch")
print(json.dumps(shapes))
"""


@pytest.mark.filterwarnings("ignore:Got processor for bboxes")  # baseline none: no transforms
def test_every_structure_exports_to_plain_albumentations(tmp_path: Path) -> None:
    policies = {name: p for name, p in STRUCTURED.items()}
    policies.update({b: get_baseline(b, TASKS) for b in BASELINES})
    policies["timm"] = get_baseline("rand-n3-m9-mstd0.5", TASKS)
    # Every registered op, at an exact and at a sampled strength.
    policies["every-op"] = Policy(tasks=TASKS, shared=tuple(Slot(op, 0.5, 0.6) for op in OPS))
    policies["every-op-wide"] = Policy(tasks=TASKS, shared=TrivialAugmentSpec(ops=tuple(OPS)))
    sample = _sample()
    np.savez(tmp_path / "in.npz", image=sample["image"], mask=sample["mask"],
             bboxes=sample["boxes"], labels=sample["box_labels"])
    paths, composes = [], {}
    for name, policy in policies.items():
        compose = policy.to_albumentations("objects", size=(H, W))
        path = str(tmp_path / f"{name}.objects.albumentations.json")
        A.save(compose, path, data_format="json")
        paths.append(path)
        composes[path] = compose
    result = subprocess.run(
        [sys.executable, "-c", _STRUCTURES_CHILD, str(tmp_path / "in.npz"), *paths],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    assert theirs.pop("modules") == []
    # The loaded file draws exactly what the in-process compose draws under the same seed.
    for path, compose in composes.items():
        compose.set_random_seed(3)
        ours = [int(np.asarray(compose(image=sample["image"], mask=sample["mask"],
                                       bboxes=sample["boxes"],
                                       labels=sample["box_labels"])["image"], np.int64).sum())
                for _ in range(20)]
        assert ours == theirs[path], path


# --- base --------------------------------------------------------------------------------------

FLIP = (Slot("hflip", 1.0, 1.0),)


def test_a_base_runs_before_the_shared_slots_and_every_task_view() -> None:
    with_base = Policy(tasks=TASKS, base=FLIP, shared=(Slot("rotate", 1.0, 0.5),),
                       per_task={"seg": (Slot("vflip", 1.0, 1.0),)})
    flipped = {k: (np.ascontiguousarray(v[:, ::-1]) if k in ("image", "mask", "depth") else v)
               for k, v in _sample(3, n_boxes=0).items()}
    without = Policy(tasks=TASKS, shared=(Slot("rotate", 1.0, 0.5),),
                     per_task={"seg": (Slot("vflip", 1.0, 1.0),)})
    ours = with_base.transform(seed=4)(_sample(3, n_boxes=0), index=0)
    theirs = without.transform(seed=4)(flipped, index=0)
    assert ours.keys() == theirs.keys() == {"shared", "seg"}
    for view in ours:
        assert _equal(ours[view], theirs[view]), view
    compose = with_base.to_albumentations("seg")
    assert [type(t).__name__ for t in compose.transforms] == ["HorizontalFlip", "OneOf",
                                                              "VerticalFlip"]


def test_adding_a_base_leaves_what_the_shared_slots_draw() -> None:
    shared = (Slot("invert", 0.5, 1.0), Slot("rotate", 0.5, 0.7), Slot("crop", 0.5, 0.8))
    plain = Policy(tasks=TASKS, shared=shared, provenance={"image_size": 64})
    # A base that changes nothing but takes draws of its own: an identity and a flip at p=0.
    based = Policy(tasks=TASKS, shared=shared, base=(Slot("identity", 1.0, 0.0),
                                                     Slot("hflip", 0.0, 1.0)))
    a, b = plain.transform(seed=9), based.transform(seed=9)
    samples = [_sample(i) for i in range(12)]
    outputs = [(a(s, index=i)["shared"], b(s, index=i)["shared"]) for i, s in enumerate(samples)]
    assert all(_equal(x, y) for x, y in outputs)
    assert len({int(x["image"].sum()) for x, _ in outputs}) > 1  # the slots did fire


def test_a_base_applies_in_every_phase_of_a_schedule(tmp_path: Path) -> None:
    one = Policy(tasks=TASKS, base=FLIP, shared=(Slot("rotate", 1.0, 0.3),))
    two = Policy(tasks=TASKS, base=FLIP, shared=(Slot("invert", 1.0, 1.0),))
    policy = Policy.from_phases([(0, one), (3, two)])
    assert policy.schedule and policy.base == FLIP
    assert policy.at_epoch(0).base == policy.at_epoch(5).base == FLIP
    assert load_policy(policy.to_yaml(tmp_path / "p.yaml")) == policy
    aug = policy.transform()
    for epoch in (0, 4):
        aug.set_epoch(epoch)
        compose = aug.pipeline()
        assert compose is not None and isinstance(compose.transforms[0], A.HorizontalFlip)
    with pytest.raises(UserError, match="same tasks, structure and base"):
        Policy.from_phases([(0, one), (3, Policy(tasks=TASKS, shared=two.shared))])


def test_a_base_is_written_read_and_keyed_and_none_leaves_the_file_as_before(
        tmp_path: Path) -> None:
    policy = Policy(tasks=TASKS, base=(Slot("hflip", 0.5, 1.0), Slot("crop", 1.0, 0.5)),
                    shared=RandAugmentSpec(), provenance={"image_size": 64})
    path = policy.to_yaml(tmp_path / "p.yaml")
    text = path.read_text()
    assert "base:\n- {op: hflip, p: 0.5, magnitude: 1.0}\n- {op: crop, p: 1.0, magnitude: 0.5}\n" \
        in text
    assert list(yaml.safe_load(text))[:5] == ["schema", "tasks", "structure", "base", "shared"]
    assert load_policy(path) == policy
    bare = dataclasses.replace(policy, base=())
    assert "base" not in bare.to_dict()
    assert bare.augmentation_key() != policy.augmentation_key()
    assert bare.augmentation_key() == ("randaugment", ((0, RandAugmentSpec(), ()),))
    assert policy.summary() == ("base: hflip(.5,1.0) crop(1.0,.5) + "
                                "randaugment(n=2, m=.30, 14 ops)")


@pytest.mark.parametrize(("base", "field", "message"), [
    ("[{op: teleport, p: 1.0, magnitude: 0.5}]", "base[0].op", "unknown op 'teleport'"),
    ("[{op: hflip, p: 1.5, magnitude: 0.5}]", "base[0].p", r"in \[0, 1\], got 1.5"),
    ("{op: hflip}", "base", "must be a list"),
])
def test_a_bad_base_is_one_line_naming_the_field(tmp_path: Path, base: str, field: str,
                                                 message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"schema: {SCHEMA}\ntasks: {{c: classification}}\nbase: {base}\n")
    with pytest.raises(UserError, match=message) as err:
        load_policy(path)
    assert err.value.field == field and "\n" not in str(err.value)


# --- import hygiene ----------------------------------------------------------------------------


def test_augment_imports_neither_torch_optuna_nor_ray() -> None:
    code = (
        "import sys, policysearch.augment as a\n"
        "a.load_policy, a.get_baseline('flipcrop', {'c': 'classification'}).transform(seed=0)\n"
        "print(sorted(m for m in ('torch', 'optuna', 'ray') if m in sys.modules))\n"
        "import albumentations as A, importlib.util\n"
        "if importlib.util.find_spec('torch'):\n"
        "    assert A.ToTensorV2.__name__ == 'ToTensorV2'  # still there, on first use\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
