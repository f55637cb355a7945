"""Paste-ready output: `export --format python|albumentations|yaml` and `show`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import albumentations as A
import pytest
from typer.testing import CliRunner

from policysearch.augment import Policy, get_baseline, load_policy
from policysearch.cli import app
from policysearch.config import load_space
from policysearch.exports.python_source import compose_source, policy_source
from policysearch.search.space import policy_from_params
from tests.conftest import random_param_values

runner = CliRunner()
TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}


def _searched(seed: int) -> Policy:
    space = load_space("default").for_tasks(TASKS)
    policy = policy_from_params(space, TASKS, random_param_values(space, list(TASKS), seed=seed))
    return dataclasses.replace(policy, provenance={"image_size": 64})  # as a search exports it


POLICIES = {
    **{name: dataclasses.replace(get_baseline(name, TASKS), provenance={"image_size": 64})
       for name in
       ("none", "crop", "flipcrop", "randaugment", "trivialaugment", "autoaugment",
        "flipcrop+randaugment", "flipcrop+trivialaugment", "flipcrop+autoaugment")},
    **{f"searched-{seed}": _searched(seed) for seed in range(4)},
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_python_source_rebuilds_every_tasks_compose_exactly(name: str) -> None:
    policy = POLICIES[name]
    namespace: dict = {}
    exec(compile(policy_source(policy, size=(64, 64)), "<export>", "exec"), namespace)  # noqa: S102
    for task in TASKS:
        expected = A.to_dict(policy.to_albumentations(task, size=(64, 64)))
        assert A.to_dict(namespace[f"{task}_transform"]) == expected, task


def test_compose_source_leaves_out_defaults_and_reads_like_albumentations() -> None:
    compose = A.Compose([A.HorizontalFlip(p=0.5), A.OneOf([A.Blur(blur_limit=(3, 5)),
                                                           A.Posterize(num_bits=(4, 4))], p=0.3)])
    source = compose_source(compose)
    assert source == ("A.Compose([\n    A.HorizontalFlip(),\n    A.OneOf([\n"
                      "        A.Blur(blur_limit=(3, 5)),\n        A.Posterize(),\n"
                      "    ], p=0.3),\n])")  # p=0.5, num_bits=4 …: the defaults, left out
    assert A.to_dict(eval(source, {"A": A})) == A.to_dict(compose)  # noqa: S307


def test_export_format_python_prints_one_compose_per_task(tmp_path: Path) -> None:
    path = POLICIES["searched-1"].to_yaml(tmp_path / "best_policy.yaml")
    result = runner.invoke(app, ["export", "--policy", str(path), "--format", "python"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("import albumentations as A\n")
    assert result.output.count("= A.Compose([") == len(TASKS)
    compile(result.output, "<stdout>", "exec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_policy.yaml"]  # wrote nothing

    target = tmp_path / "augment.py"
    result = runner.invoke(app, ["export", "--policy", str(path), "--format", "python", "--to",
                                 str(target)])
    assert result.exit_code == 0 and "A.Compose" in target.read_text()


def test_export_format_albumentations_writes_only_the_json_files(tmp_path: Path) -> None:
    path = POLICIES["flipcrop"].to_yaml(tmp_path / "source.yaml")
    to = tmp_path / "out" / "mine.yaml"
    result = runner.invoke(app, ["export", "--policy", str(path), "--format", "albumentations",
                                 "--to", str(to)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in to.parent.iterdir()) == sorted(
        f"mine.{task}.albumentations.json" for task in TASKS)
    loaded = A.load(str(to.parent / "mine.seg.albumentations.json"), data_format="json")
    assert A.to_dict(loaded) == A.to_dict(POLICIES["flipcrop"].to_albumentations("seg",
                                                                                 size=(64, 64)))


def test_export_yaml_of_a_policy_file_leaves_the_file_as_it_is(tmp_path: Path) -> None:
    path = POLICIES["autoaugment"].to_yaml(tmp_path / "policy.yaml")
    before = path.read_bytes()
    result = runner.invoke(app, ["export", "--policy", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before
    assert (tmp_path / "policy.shape.albumentations.json").exists()


def test_a_schedule_needs_an_epoch_for_python(tmp_path: Path) -> None:
    policy = Policy.from_phases([(0, POLICIES["searched-1"]), (4, POLICIES["searched-2"])])
    path = policy.to_yaml(tmp_path / "pbt.yaml")
    result = runner.invoke(app, ["export", "--policy", str(path), "--format", "python"])
    assert result.exit_code == 2
    assert "--epoch" in result.output and "phases from epochs 0, 4" in result.output
    later = runner.invoke(app, ["export", "--policy", str(path), "--format", "python",
                                "--epoch", "5"])
    assert later.exit_code == 0
    namespace: dict = {}
    exec(later.output, namespace)  # noqa: S102
    assert A.to_dict(namespace["seg_transform"]) == A.to_dict(
        POLICIES["searched-2"].to_albumentations("seg", size=(64, 64)))


def test_show_prints_every_slot_the_weighting_and_the_phases(tmp_path: Path) -> None:
    policy = POLICIES["searched-3"]
    path = policy.to_yaml(tmp_path / "best_policy.yaml")
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    for slot in policy.shared:
        assert slot.op in result.output and f"{slot.p:.2f}" in result.output
    for task, slots in policy.per_task.items():
        assert f"{task} only" in result.output
        assert all(s.op in result.output for s in slots)
    assert f"loss weighting: {policy.weighting.method}" in result.output
    assert "tasks: shape (classification), seg (segmentation)" in result.output

    pbt = Policy.from_phases([(0, POLICIES["flipcrop"]), (6, POLICIES["none"])])
    result = runner.invoke(app, ["show", str(pbt.to_yaml(tmp_path / "pbt.yaml"))])
    assert result.exit_code == 0
    assert "0–5" in result.output and "hflip" in result.output
    assert load_policy(tmp_path / "pbt.yaml").schedule


def test_every_format_carries_the_base(tmp_path: Path) -> None:
    policy = POLICIES["flipcrop+autoaugment"]
    path = policy.to_yaml(tmp_path / "best_policy.yaml")
    assert load_policy(path).base == policy.base
    to = tmp_path / "out" / "mine.yaml"
    result = runner.invoke(app, ["export", "--policy", str(path), "--format", "albumentations",
                                 "--to", str(to)])
    assert result.exit_code == 0, result.output
    loaded = A.load(str(to.parent / "mine.seg.albumentations.json"), data_format="json")
    assert [type(t) for t in loaded.transforms] == [A.HorizontalFlip, A.RandomResizedCrop,
                                                    A.OneOf]
    source = runner.invoke(app, ["export", "--policy", str(path), "--format", "python"])
    assert source.exit_code == 0, source.output
    head = source.output.split("seg_transform = A.Compose([", 1)[1].splitlines()[1:3]
    assert head[0].strip().startswith("A.HorizontalFlip(")
    assert head[1].strip().startswith("A.RandomResizedCrop(")
    shown = runner.invoke(app, ["show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "base (before shared)" in shown.output and "hflip" in shown.output


def test_show_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope.yaml'}: file not found"
