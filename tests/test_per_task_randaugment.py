"""A RandAugment view per task (structure randaugment): the policy format (YAML, checks,
summary, table, exports, the pipeline each view runs) and the search space that searches each
view's N and M; existing policies and spaces are untouched."""

from __future__ import annotations

import random
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from policysearch.augment import Phase, Policy, RandAugmentSpec, Slot, load_policy
from policysearch.cli import app
from policysearch.config import SearchSpace, load_space
from policysearch.errors import UserError
from policysearch.exports.best_policy import export_policy
from policysearch.reporting.policy_table import policy_rows
from policysearch.search.space import draw_params, parameters, policy_from_params
from tests.conftest import TINY_SPACE
from tests.test_policy import check_bad_policy_file

TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}
ROTATE = RandAugmentSpec(n=1, magnitude=0.5, ops=("rotate",))
INVERT = RandAugmentSpec(n=1, magnitude=1.0, ops=("invert",))
PHOTO = RandAugmentSpec(n=2, magnitude=0.4, mstd=0.1, ops=("contrast", "solarize"))
# Task shape has a RandAugment of its own, task seg slots, as any structure may give.
POLICY = Policy(tasks=TASKS, shared=ROTATE, per_task={"shape": PHOTO, "seg": (
    Slot("vflip", 1.0, 1.0),)}, base=(Slot("hflip", 0.5, 1.0),), provenance={"image_size": 16})


def _sample(size: int = 16) -> dict:
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"image": image, "mask": np.zeros((size, size), np.uint8)}


# --- the policy format ---------------------------------------------------------------------------


def test_yaml_round_trip_of_per_task_randaugment_views(tmp_path: Path) -> None:
    path = POLICY.to_yaml(tmp_path / "p.yaml")
    assert load_policy(path) == POLICY and Policy.from_dict(POLICY.to_dict()) == POLICY
    data = yaml.safe_load(path.read_text())
    # The same mapping as the shared RandAugment, under per_task.
    assert data["per_task"] == {
        "shape": {"n": 2, "magnitude": 0.4, "mstd": 0.1, "ops": ["contrast", "solarize"]},
        "seg": [{"op": "vflip", "p": 1.0, "magnitude": 1.0}]}
    assert "  shape:\n    n: 2\n" in path.read_text()  # written like the shared one
    # A hand-written view may leave mstd out; a schedule's phases carry views too.
    hand = tmp_path / "hand.yaml"
    hand.write_text("schema: policysearch.policy/v1\ntasks: {c: classification}\n"
                    "structure: randaugment\nshared: {n: 2, magnitude: 0.5, ops: [rotate]}\n"
                    "per_task: {c: {n: 1, magnitude: 0.2, ops: [invert]}}\n")
    assert load_policy(hand).per_task == {"c": RandAugmentSpec(n=1, magnitude=0.2,
                                                                ops=("invert",))}
    later = Policy(tasks=TASKS, shared=ROTATE, base=POLICY.base,
                   per_task={"shape": INVERT, "seg": POLICY.per_task["seg"]})
    phased = Policy.from_phases([(0, POLICY), (3, later)])
    assert phased.schedule == (Phase(0, ROTATE, dict(POLICY.per_task)),
                               Phase(3, ROTATE, dict(later.per_task)))
    assert load_policy(phased.to_yaml(tmp_path / "s.yaml")) == phased


def _text(**per_task: object) -> str:
    return yaml.safe_dump({"schema": "policysearch.policy/v1", "tasks": TASKS,
                           "structure": "randaugment",
                           "shared": {"n": 2, "magnitude": 0.3, "ops": ["rotate"]},
                           "per_task": per_task})


BAD = {
    "n_negative": (_text(shape={"n": -1, "magnitude": 0.3, "ops": ["invert"]}),
                   "per_task.shape.n", "whole number >= 0"),
    "n_fraction": (_text(shape={"n": 1.5, "magnitude": 0.3, "ops": ["invert"]}),
                   "per_task.shape.n", "whole number >= 0"),
    "unknown_op": (_text(shape={"n": 1, "magnitude": 0.3, "ops": ["invert", "zoom"]}),
                   "per_task.shape.ops[1]", "unknown op"),
    "magnitude": (_text(shape={"n": 1, "magnitude": 3, "ops": ["invert"]}),
                  "per_task.shape.magnitude", "[0, 1]"),
    "missing_n": (_text(shape={"magnitude": 0.3, "ops": ["invert"]}), "per_task.shape.n",
                  "missing"),
    "unknown_key": (_text(shape={"n": 1, "m": 9, "magnitude": 0.3, "ops": ["invert"]}),
                    "per_task.shape.m", "unknown key"),
    "not_a_view": (_text(shape="invert"), "per_task.shape", "a list of slots {op, p, "
                   "magnitude} or a mapping {n, magnitude, mstd, ops}"),
    "in_a_sequence_policy": (yaml.safe_dump({
        "schema": "policysearch.policy/v1", "tasks": TASKS, "shared": [],
        "per_task": {"shape": {"n": 1, "magnitude": 0.3, "ops": ["invert"]}}}),
        "per_task.shape", "needs structure: randaugment"),
    "in_a_phase": (yaml.safe_dump({
        "schema": "policysearch.policy/v1", "tasks": TASKS, "structure": "randaugment",
        "schedule": [{"from_epoch": e, "shared": {"n": 2, "magnitude": 0.3, "ops": ["rotate"]},
                      "per_task": {"shape": {"n": 1, "magnitude": 0.3, "ops": [op]}}}
                     for e, op in ((0, "nope"), (2, "invert"))]}),
        "schedule[0].per_task.shape.ops[0]", "unknown op"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_per_task_randaugment_is_one_line_naming_the_field(tmp_path: Path,
                                                                 case: str) -> None:
    check_bad_policy_file(tmp_path, case, *BAD[case])


def test_a_per_task_randaugment_built_in_code_is_checked_too() -> None:
    with pytest.raises(UserError, match="needs structure 'randaugment', got 'sequence'") as err:
        Policy(tasks=TASKS, shared=(), per_task={"shape": INVERT})
    assert err.value.field == "per_task.shape"
    with pytest.raises(UserError, match="whole number >= 0") as err:
        Policy(tasks=TASKS, shared=ROTATE, per_task={"shape": RandAugmentSpec(n=-2)})
    assert err.value.field == "per_task.shape.n"


def test_ops_views_summary_key_and_table() -> None:
    assert POLICY.op_names() == {"hflip", "rotate", "contrast", "solarize", "vflip"}
    assert POLICY.views() == ("shared", "shape", "seg") and POLICY.view_of("shape") == "shape"
    assert POLICY.summary() == ("base: hflip(.5,1.0) + randaugment(n=1, m=.50, 1 ops) | shape: "
                                "randaugment(n=2, m=.40, mstd=.10, 2 ops) | seg: vflip(1.0,1.0)")
    # Deduplication: the same views augment alike; another task's view, or slots, do not.
    same = Policy(tasks=dict(reversed(TASKS.items())), shared=ROTATE,
                  per_task=dict(POLICY.per_task), base=POLICY.base)
    assert same.augmentation_key() == POLICY.augmentation_key()
    for other in ({"shape": INVERT, "seg": POLICY.per_task["seg"]},
                  {"seg": PHOTO, "shape": POLICY.per_task["seg"]}):
        changed = Policy(tasks=TASKS, shared=ROTATE, per_task=other, base=POLICY.base)
        assert changed.augmentation_key() != POLICY.augmentation_key()
    rows = [(r["view"], r["op"], r["p"], r["magnitude"]) for r in policy_rows(POLICY)]
    assert rows == [("base (before shared)", "hflip", "0.50", "1.00"),
                    ("shared", "randaugment: 1 of 1 ops (standard)", "1", "0.5"),
                    ("shape only", "randaugment: 2 of 2 ops (standard)", "1", "0.4 ± 0.1"),
                    ("seg only", "vflip", "1.00", "1.00")]


# --- what each view runs -------------------------------------------------------------------------


def test_a_task_view_applies_its_own_randaugment_after_the_shared_one() -> None:
    policy = Policy(tasks=TASKS, shared=ROTATE, per_task={"shape": INVERT})
    shared_only = Policy(tasks=TASKS, shared=ROTATE)
    sample = _sample()
    views = policy.transform(seed=3)(sample, index=0)
    again = policy.transform(seed=3)(sample, index=0)
    assert list(views) == ["shared", "shape"]
    assert all(np.array_equal(views[v]["image"], again[v]["image"]) for v in views)
    # The shared view is rotated, and the same draw as without the task's view; the task's
    # view is that image, inverted.
    assert not np.array_equal(views["shared"]["image"], sample["image"])
    alone = shared_only.transform(seed=3)(sample, index=0)["shared"]["image"]
    assert np.array_equal(views["shared"]["image"], alone)
    assert np.array_equal(views["shape"]["image"], 255 - views["shared"]["image"])
    assert np.array_equal(policy.transform(task="shape", seed=3)(sample, index=0)["image"],
                          views["shape"]["image"])
    # A plain albumentations Compose per task: base, shared RandAugment, the task's own.
    shape = policy.to_albumentations("shape", seed=0)
    seg = policy.to_albumentations("seg", seed=0)
    assert [type(t) for t in shape.transforms] == [A.RandomOrder, A.RandomOrder]
    assert isinstance(shape.transforms[1].transforms[0], A.InvertImg)
    assert len(seg.transforms) == 1
    assert np.array_equal(shape(image=sample["image"])["image"],
                          255 - seg(image=sample["image"])["image"])


def test_exports_write_each_task_its_own_pipeline(tmp_path: Path) -> None:
    result = export_policy(POLICY, tmp_path / "best.yaml")
    assert result.skipped == {}
    shape = A.load(str(result.albumentations["shape"]), data_format="json")
    objects = A.load(str(result.albumentations["objects"]), data_format="json")
    assert [type(t) for t in shape.transforms] == [A.HorizontalFlip, A.RandomOrder,
                                                   A.RandomOrder]
    assert shape.transforms[2].n == 2
    assert [type(t) for t in objects.transforms] == [A.HorizontalFlip, A.RandomOrder]
    assert load_policy(tmp_path / "best.yaml") == POLICY


# --- the search space ----------------------------------------------------------------------------

PER_TASK_RA = {"tasks": ["shape", "seg"], "n": [1, 2], "magnitude": [0.2, 0.4],
               "ops": ["identity", "invert"]}


def _space(**changes: object) -> SearchSpace:
    return SearchSpace.model_validate({**TINY_SPACE, **changes})


def _ra_space(**per_task: object) -> SearchSpace:
    return _space(structure="randaugment",
                  shared={"n": [1, 3], "magnitude": [0.1, 0.6], "ops": ["rotate", "contrast"]},
                  per_task={**PER_TASK_RA, **per_task}, weights={"method": "equal"})


def test_each_task_view_s_n_and_m_are_searched() -> None:
    space = _ra_space()
    params = parameters(space, list(TASKS))
    assert [(p.name, p.kind, p.low, p.high) for p in params] == [
        ("shared.n", "int", 1, 3), ("shared.magnitude", "float", 0.1, 0.6),
        ("task.shape.n", "int", 1, 2), ("task.shape.magnitude", "float", 0.2, 0.4),
        ("task.seg.n", "int", 1, 2), ("task.seg.magnitude", "float", 0.2, 0.4)]
    for seed in range(3):
        values = draw_params(params, random.Random(seed))
        policy = policy_from_params(space, TASKS, values)
        assert policy.per_task == {
            task: RandAugmentSpec(n=values[f"task.{task}.n"],
                                  magnitude=values[f"task.{task}.magnitude"],
                                  ops=("identity", "invert"))
            for task in ("shape", "seg")}
        assert policy.shared == RandAugmentSpec(n=values["shared.n"],
                                                magnitude=values["shared.magnitude"],
                                                ops=("rotate", "contrast"))
        assert Policy.from_dict(policy.to_dict()) == policy


# SearchSpace.fingerprint() and parameter names of TINY_SPACE as a sequence space and as a
# randaugment space with per-task slot views, computed before per-task RandAugment existed.
EXISTING = {
    "sequence": ({}, "f08e43bbc1221fe8", [
        "shared.0.op", "shared.0.p", "shared.0.magnitude", "task.shape.0.op", "task.shape.0.p",
        "task.shape.0.magnitude", "weight.shape", "weight.seg", "weight.objects",
        "weight.depth"]),
    "randaugment_slot_views": (
        {"structure": "randaugment", "shared": {"n": [1, 3], "magnitude": [0.1, 0.6],
                                                "ops": ["rotate", "contrast"]}},
        "941f0429f283e8e6", [
            "shared.n", "shared.magnitude", "task.shape.0.op", "task.shape.0.p",
            "task.shape.0.magnitude", "weight.shape", "weight.seg", "weight.objects",
            "weight.depth"]),
}


@pytest.mark.parametrize("name", sorted(EXISTING))
def test_existing_spaces_keep_their_parameters_and_study(name: str) -> None:
    changes, fingerprint, names = EXISTING[name]
    space = _space(**changes)
    assert [p.name for p in parameters(space, list(TASKS))] == names
    assert space.fingerprint() == fingerprint and "n" not in space.canonical()["per_task"]
    values = draw_params(parameters(space, list(TASKS)), random.Random(0))
    assert policy_from_params(space, TASKS, values).per_task["shape"] == (Slot(
        values["task.shape.0.op"], values["task.shape.0.p"], values["task.shape.0.magnitude"]),)


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"per_task": {"tasks": ["shape"], "n": [1, 2]}}, "per_task",
     "n (a RandAugment view per task) needs structure: randaugment, got sequence"),
    ({"structure": "randaugment", "per_task": {"tasks": ["shape"], "n": [0, 2]}},
     "per_task.n", "1 <= low <= high <= 16"),
])
def test_a_bad_per_task_n_is_one_line_naming_the_field(tmp_path: Path, changes: dict,
                                                       field: str, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, **changes}))
    with pytest.raises(UserError) as err:
        load_space(path)
    assert err.value.field == field and message in err.value.message
    assert "\n" not in str(err.value)


def test_check_describes_n_and_m_per_view(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", "--space", "randaugment"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "ok: randaugment: space randaugment on shapes, RandAugment N in [1, 3] and M in "
        "[0.1, 1.0] for the shared view, N in [1, 3] and M in [0.1, 1.0] for each task's own "
        "view (tasks auto), 19 ops, weights equal, 24 epochs\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "structure": "randaugment",
                                    "per_task": {"tasks": [], "slots": 0}}))
    result = CliRunner().invoke(app, ["check", "--space", str(path)])
    assert "RandAugment N in [1, 3] and M in [0.0, 1.0] for the shared view, 4 ops," \
        in result.output
