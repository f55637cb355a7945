"""A search space resolved against its dataset (policysearch.space_adapt): per-task views
chosen by task kind, the default space fitted to any dataset (unsafe ops and ops that cannot
move a target left out, the reference replaced, dataset_options fitted), spaces written by
hand kept as written, and `policysearch search --dataset X` without --space on every built-in
dataset and every file format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import policysearch as ps
from policysearch.augment import OPS, Op, targets_not_moved
from policysearch.cli import app
from policysearch.config import SearchSpace, load_space
from policysearch.data import DATASETS, TaskSpec, get_dataset
from policysearch.data.base import unsafe_ops
from policysearch.data.folder import load as load_folder
from policysearch.data.splits import LoadOptions
from policysearch.errors import DataError, UserError
from policysearch.events import SpaceAdapted
from policysearch.space_adapt import adapt_space, load_adapted
from tests.conftest import TINY_SPACE
from tests.test_attributes import make_celeba
from tests.test_coco import coco_dicts, write_coco
from tests.test_folder import build as build_folder
from tests.test_nyuv2 import _sample as nyu_sample
from tests.test_nyuv2 import _write as nyu_write

runner = CliRunner()
# SearchSpace.fingerprint() of the default space on shapes before spaces could adapt: a study
# started then must resume.
DEFAULT_ON_SHAPES = "39b63f65f6a0fef0"
KINDS = ("segmentation", "depth", "normals", "detection", "classification", "multilabel")


@dataclass
class Fake:
    """A dataset of the given (name, kind) tasks, for resolving spaces (never loaded)."""

    task_kinds: list[tuple[str, str]]
    unsafe_ops: tuple[str, ...] = ()
    name: str = "fake"
    tasks: tuple[TaskSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = tuple(TaskSpec(n, k, num_classes=3) for n, k in self.task_kinds)

    def split(self, name: str) -> list:
        return []


ODD = Fake([("Strasse", "segmentation"), ("tiefe-m", "depth"), ("_n", "normals"),
            ("Autos2", "detection"), ("Wetter", "classification"), ("x", "classification"),
            ("Himmel-tags", "multilabel")])


def _space(**changes: Any) -> SearchSpace:
    return SearchSpace.model_validate({**TINY_SPACE, **changes})


# --- the syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "views"), [
    ("auto", ["Wetter", "x", "Himmel-tags"]),
    ({"kinds": ["classification"]}, ["Wetter", "x"]),
    ({"kinds": ["depth", "segmentation"]}, ["Strasse", "tiefe-m"]),  # in the dataset's order
    ({"kinds": ["multilabel"]}, ["Himmel-tags"]),
    (["x", "Strasse"], ["x", "Strasse"]),  # names are kept as written
])
def test_per_task_views_follow_the_rule_written_in_the_space(rule: Any, views: list) -> None:
    adapted = adapt_space(_space(per_task={"tasks": rule, "slots": 1}), ODD)
    assert adapted.space.per_task.tasks == views
    said = [c for c in adapted.changes if c.startswith("per-task views")]
    assert said == ([] if isinstance(rule, list) else [f"per-task views: {', '.join(views)}"])


def test_a_rule_selecting_no_task_gives_no_view() -> None:
    adapted = adapt_space(_space(per_task={"tasks": "auto", "slots": 1}),
                          Fake([("d", "depth"), ("s", "segmentation")]))
    assert adapted.space.per_task.tasks == [] and "per-task views: none" in adapted.changes


@pytest.mark.parametrize(("tasks", "message"), [
    ("shape", "per_task.tasks: must be a list of task names, auto, or {kinds: [KIND, ...]}"),
    ({"kinds": []}, "per_task.tasks: kinds: List should have at least 1 item"),
    ({"kinds": ["depth", "depth"]}, "per_task.tasks: kinds: lists a kind twice"),
    ({"kind": ["depth"]}, "per_task.tasks: kinds: required key is missing"),
    ({"kinds": ["depth"], "names": ["a"]}, "per_task.tasks: names: unknown key"),
    ([1], "per_task.tasks: item 0 must be a task name"),
])
def test_a_bad_rule_is_one_line_naming_file_and_field(tmp_path: Path, tasks: Any,
                                                      message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "per_task": {"tasks": tasks, "slots": 1}}))
    with pytest.raises(UserError) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)
    result = runner.invoke(app, ["check", "--space", str(path)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {err.value}"]


def test_an_unknown_kind_or_task_name_is_refused_when_the_dataset_is_known() -> None:
    with pytest.raises(UserError, match=r"search space tiny: per_task\.tasks\.kinds\[1\]: "
                                        r"unknown task kind 'classifcation'; known: .*depth"):
        adapt_space(_space(per_task={"tasks": {"kinds": ["depth", "classifcation"]}}), ODD)
    # An explicit name the dataset lacks: the error it always was.
    with pytest.raises(UserError) as err:
        adapt_space(_space(), get_dataset("multidigits", size=32, n_train=8, n_val=8, n_test=8))
    assert str(err.value) == ("search space tiny: per_task.tasks[0]: unknown task 'shape'; the "
                              "dataset has left_digit, right_digit, seg")


def test_parameters_need_a_resolved_space() -> None:
    from policysearch.search.space import parameters

    with pytest.raises(ValueError, match="per_task.tasks is a rule"):
        parameters(load_space("default"), ["shape"])
    space = load_space("default").for_tasks({"shape": "classification", "seg": "segmentation"})
    assert [p.name for p in parameters(space, ["shape", "seg"])
            if p.name.startswith("task.")] == ["task.shape.0.op", "task.shape.0.p",
                                               "task.shape.0.magnitude"]


# --- the default space -----------------------------------------------------------------------


def test_the_default_space_on_shapes_is_the_study_it_always_was() -> None:
    default = load_space("default")
    assert default.adapt and default.per_task.tasks == "auto"
    adapted = adapt_space(default, get_dataset("shapes", size=64))
    assert adapted.space.per_task.tasks == ["shape"]
    assert adapted.space.fingerprint() == DEFAULT_ON_SHAPES  # old studies resume
    assert "adapt" not in adapted.space.canonical()
    assert adapted.changes == ("per-task views: shape",) and adapted.warnings == ()


def test_the_default_space_on_multidigits_leaves_hflip_out() -> None:
    dataset = get_dataset("multidigits", size=32, n_train=8, n_val=8, n_test=8)
    assert dataset.unsafe_ops == ("hflip",)
    default = load_space("default").model_copy(update={"dataset": "multidigits"})
    adapted = adapt_space(default, dataset)
    space = adapted.space
    assert "hflip" not in space.shared.ops and "hflip" not in space.per_task.ops
    assert space.shared.ops == [op for op in default.shared.ops if op != "hflip"]
    assert space.reference == "crop"
    assert ps.get_baseline(space.reference, {"a": "classification"}).op_names() == {"crop"}
    assert space.per_task.tasks == ["left_digit", "right_digit"]
    line = SpaceAdapted(space.name, space.dataset, list(adapted.changes), []).lines()
    assert line == ["space default adapted to multidigits: hflip left out (unsafe for this "
                    "dataset); reference crop (not flipcrop); per-task views: left_digit, "
                    "right_digit"]
    # The adapted space's own ops list is what the study stores; resolving it again, as a
    # stored space (adapt popped), changes nothing.
    again = adapt_space(SearchSpace.model_validate(space.canonical()), dataset)
    assert again.space.canonical() == space.canonical() and again.warnings == ()


def test_unsafe_ops_in_the_base_are_left_out_and_a_safe_reference_stays() -> None:
    space = _space(adapt=True, reference="randaugment", per_task={"tasks": [], "slots": 0},
                   base=[{"op": "vflip", "p": 0.5, "magnitude": 1.0},
                         {"op": "crop", "p": 1.0, "magnitude": 0.5}])
    adapted = adapt_space(space, Fake([("a", "classification")], unsafe_ops=("vflip", "crop")))
    assert [s.op for s in adapted.space.base] == []
    assert adapted.space.reference == "randaugment"  # it uses neither
    assert adapted.changes == ("vflip left out (unsafe for this dataset)",
                               "crop left out (unsafe for this dataset)")
    flipcrop = adapt_space(space.model_copy(update={"reference": "flipcrop"}),
                           Fake([("a", "classification")], unsafe_ops=("vflip", "crop")))
    assert flipcrop.space.reference == "none"  # crop is unsafe too


def test_an_adapted_list_left_empty_is_an_error() -> None:
    space = _space(adapt=True, shared={"slots": 1, "ops": ["hflip"]})
    with pytest.raises(UserError, match=r"search space tiny: shared\.ops: no op of the list can "
                                        r"be used on shapes \(hflip unsafe for this dataset\)"):
        adapt_space(space, Fake([("shape", "classification")], unsafe_ops=("hflip",)))


def test_a_space_written_by_hand_keeps_its_unsafe_ops_with_a_warning() -> None:
    dataset = get_dataset("multidigits", size=32, n_train=8, n_val=8, n_test=8)
    space = _space(dataset="multidigits",
                   per_task={"tasks": ["left_digit"], "slots": 1, "ops": ["contrast"]})
    adapted = adapt_space(space, dataset)
    assert adapted.space == space and adapted.changes == ()
    assert adapted.warnings == (
        "space tiny uses hflip (shared.ops, reference flipcrop), which multidigits declares "
        "unsafe (it changes what the labels mean): kept as written",)
    assert SpaceAdapted("tiny", "multidigits", [], list(adapted.warnings)).lines() == [
        f"warning: {adapted.warnings[0]}"]


# --- ops that cannot move a target ------------------------------------------------------------


class _Mirror(A.DualTransform):
    """A user's geometric transform with neither box support nor a normals rule."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(OPS, "mirror", Op("mirror", "geometric", False, "a user's flip", "-",
                                          factory=lambda m: _Mirror(p=1.0)))
    return "mirror"


def test_every_built_in_op_moves_every_target() -> None:
    keys = {"image", "mask", "depth", "normals", "boxes", "instance_masks"}
    assert {op: targets_not_moved(op, keys) for op in OPS} == {op: [] for op in OPS}


@pytest.mark.parametrize(("kinds", "missing"), [
    (["detection"], "boxes"), (["normals"], "normals"), (["detection", "normals"],
                                                        "boxes or normals")])
def test_an_op_that_cannot_move_a_target_is_left_out_or_refused(mirror: str, kinds: list,
                                                                missing: str) -> None:
    dataset = Fake([(f"t{i}", k) for i, k in enumerate(["classification", *kinds])])
    written = _space(shared={"slots": 1, "ops": ["identity", mirror, "rotate"]},
                     per_task={"tasks": [], "slots": 0})
    adapted = adapt_space(written.model_copy(update={"adapt": True}), dataset)
    assert adapted.space.shared.ops == ["identity", "rotate"]
    assert adapted.changes == (f"mirror left out (cannot move {missing})",)
    with pytest.raises(UserError, match=rf"search space tiny: shared\.ops\[1\]: op 'mirror' "
                                        rf"cannot move the {missing} of shapes"):
        adapt_space(written, dataset)
    # A dataset without those targets can use it.
    assert adapt_space(written, Fake([("t", "segmentation")])).space == written


# --- dataset options -----------------------------------------------------------------------------


def test_the_adapted_space_keeps_only_the_dataset_options_its_dataset_takes(
        tmp_path: Path) -> None:
    options = {"n_train": 8, "n_val": 8, "n_test": 8, "seed": 0, "test_seed": 3,
               "normals": True, "limit": 5}
    space = _space(adapt=True, dataset="multidigits", dataset_options=options,
                   per_task={"tasks": "auto", "slots": 1})
    adapted, dataset = load_adapted(space)
    assert len(dataset.split("train")) == 8
    kept = adapted.space.dataset_options
    assert (kept.test_seed, kept.normals, kept.limit) == (None, None, None)
    assert "dataset_options test_seed, normals, limit left out (not taken by multidigits)" \
        in adapted.changes
    with pytest.raises(UserError, match="test_seed is an option of the scenes dataset"):
        load_adapted(space.model_copy(update={"adapt": False}))  # as written: refused


def test_a_folder_dataset_declares_its_unsafe_ops(tmp_path: Path) -> None:
    root = build_folder(tmp_path / "data", n=6, unsafe_ops=["vflip"])
    assert load_folder(root, LoadOptions()).unsafe_ops == ("vflip",)
    assert load_folder(build_folder(tmp_path / "plain", n=6), LoadOptions()).unsafe_ops == ()
    build_folder(tmp_path / "bad", n=6, unsafe_ops=["vflip", "teleport"])
    with pytest.raises(DataError, match=r"dataset\.yaml: unsafe_ops: unknown op 'teleport'"):
        load_folder(tmp_path / "bad", LoadOptions())


# --- end to end: `policysearch search --dataset X`, no --space ---------------------------------

# Unusual task names, every kind, two classification tasks sharing a CSV, and an unsafe op.
FOLDER_TASKS: list[dict[str, Any]] = [
    {"name": "Strassen_Maske", "kind": "segmentation", "folder": "masks",
     "classes": ["background", "road", "car"]},
    {"name": "tiefe-m", "kind": "depth", "folder": "depth", "scale": 0.001},
    {"name": "_flaeche", "kind": "normals", "folder": "normals"},
    {"name": "Autos2", "kind": "detection", "folder": "boxes", "classes": ["car", "person"]},
    {"name": "Wetter", "kind": "classification", "file": "labels.csv",
     "classes": ["indoor", "outdoor"]},
    {"name": "drinnen", "kind": "classification", "file": "labels.csv",
     "classes": ["indoor", "outdoor"]},
    {"name": "Himmel-tags", "kind": "multilabel", "file": "tags.csv",
     "classes": ["sunny", "rainy"]},
]


def _folder(root: Path) -> str:
    return f"folder:{build_folder(root, n=16, tasks=FOLDER_TASKS, unsafe_ops=['vflip'])}"


def _nyuv2(root: Path) -> str:
    for i in range(8):
        nyu_write(root, "train", i, nyu_sample(i))
    for i in range(3):
        nyu_write(root, "val", i, nyu_sample(100 + i))
    return f"nyuv2:{root}"


# builder, the per-task views the default space gives, the ops it leaves out, its reference
FORMATS: dict[str, tuple[Callable[[Path], str], list[str], list[str], str]] = {
    "coco": (lambda root: f"coco:{write_coco(root, coco_dicts())}", ["present"], [],
             "flipcrop"),
    "nyuv2": (_nyuv2, [], [], "flipcrop"),
    "attributes": (lambda root: f"attributes:{make_celeba(root)}", ["attributes"], [],
                   "flipcrop"),
    "folder": (_folder, ["Wetter", "drinnen", "Himmel-tags"], ["vflip"], "flipcrop"),
}


def _search_without_space(dataset: str, out: Path) -> Any:
    return runner.invoke(app, ["search", "--dataset", dataset, "--out", str(out), "--trials",
                               "2", "--epochs", "1", "--image-size", "16", "--device", "cpu",
                               "--threads", "1", "--no-report"])


def _assert_adapted_search(result: Any, out: Path, dataset: str, views: list[str],
                           left_out: list[str], reference: str) -> None:
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("space default adapted"))
    assert line.startswith(f"space default adapted to {dataset}: ")
    assert f"per-task views: {', '.join(views) or 'none'}" in line
    for op in left_out:
        assert f"{op} left out (unsafe for this dataset)" in line
    records = ps.records(out)
    space = records.space
    assert space["per_task"]["tasks"] == views
    kinds = {name: kind for name, kind in records.tasks.items()}
    assert all(kinds[v] in ("classification", "multilabel") for v in views)
    assert [t for t, k in kinds.items() if k in ("classification", "multilabel")] == views
    assert not set(left_out) & set(space["shared"]["ops"])
    assert space["reference"] == reference and records.reference_name == reference
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 and table["state"].eq("complete").all(), table
    ref = next(r for r in records.records if r.role == "reference")
    trial = next(r for r in records.records if r.role == "search")
    assert ref.policy is not None and trial.params is not None
    assert ps.Policy.from_dict(ref.policy).op_names() == \
        ps.get_baseline(reference, records.tasks).op_names()
    assert {k.split(".")[1] for k in trial.params if k.startswith("task.")} == set(views)
    assert not set(left_out) & {str(v) for v in trial.params.values()}
    assert set(records.tasks) == {t.split(".")[1] for t in trial.params
                                  if t.startswith("weight.")}  # a loss weight per task


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_default_space_runs_on_every_built_in_dataset(tmp_path: Path, name: str) -> None:
    # What to expect follows from the dataset (built lazily: nothing is generated here).
    dataset = get_dataset(name, size=16, n_train=8, n_val=8, n_test=8)
    views = [t.name for t in dataset.tasks if t.kind in ("classification", "multilabel")]
    left_out = [op for op in load_space("default").shared.ops if op in unsafe_ops(dataset)]
    reference = "crop" if "hflip" in left_out else "flipcrop"
    if name == "multidigits":  # the dataset the rule is for
        assert (views, left_out, reference) == (["left_digit", "right_digit"], ["hflip"],
                                                "crop")
    out = tmp_path / "run"
    result = _search_without_space(name, out)
    _assert_adapted_search(result, out, name, views, left_out, reference)


@pytest.mark.parametrize("name", list(FORMATS))
def test_the_default_space_runs_on_every_file_format(tmp_path: Path, name: str) -> None:
    make, views, left_out, reference = FORMATS[name]
    dataset = make(tmp_path / "data")
    out = tmp_path / "run"
    result = _search_without_space(dataset, out)
    _assert_adapted_search(result, out, dataset, views, left_out, reference)
