"""End-to-end: a short search through the CLI on every dataset format's fixture and on
MultiDigits; bad data stops it with exit status 2 and one line, finished trials are kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch.cli import app
from tests.conftest import TINY_SPACE
from tests.reliability_counts import Recorder, all_trials, finished_trials, lost_trials
from tests.test_attributes import make_celeba
from tests.test_coco import coco_dicts, write_coco
from tests.test_folder import build as build_folder
from tests.test_nyuv2 import _sample as nyu_sample
from tests.test_nyuv2 import _write as nyu_write

runner = CliRunner()


def _nyuv2(root: Path) -> str:
    for i in range(8):
        nyu_write(root, "train", i, nyu_sample(i))
    for i in range(3):
        nyu_write(root, "val", i, nyu_sample(100 + i))
    return f"nyuv2:{root}"


def _coco(root: Path) -> str:
    return f"coco:{write_coco(root, coco_dicts())}"


def _attributes(root: Path) -> str:
    return f"attributes:{make_celeba(root)}"


def _folder(root: Path) -> str:
    return f"folder:{build_folder(root, n=12)}"


# dataset builder, its tasks (metric columns that must appear), a note the search prints
FORMATS: dict[str, tuple[Callable[[Path], str], tuple[str, ...], str]] = {
    "coco": (_coco, ("objects.map50", "seg.miou", "present.mean_acc"),
             "no labelled test split: the given val split is used as test"),
    "nyuv2": (_nyuv2, ("seg.miou", "depth.abs_err", "normals.mean"),
              "val carved from train"),
    "attributes": (_attributes, ("attributes.mean_acc", "attributes.map"), ""),
    "folder": (_folder, ("seg.miou", "depth.abs_err", "objects.map50", "scene.accuracy"),
               "unlabelled"),
    "multidigits": (lambda root: "multidigits", ("left_digit.accuracy", "right_digit.accuracy",
                                                 "seg.miou"), ""),
}


def _space(tmp_path: Path, dataset: str, **budget: object) -> Path:
    space = {**TINY_SPACE, "name": "fmt", "dataset": dataset,
             "per_task": {"tasks": [], "slots": 0},
             "budget": {**TINY_SPACE["budget"], "epochs": 1, **budget}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _search(space: Path, out: Path, trials: int = 2, *extra: str):  # noqa: ANN202
    return runner.invoke(app, ["search", "--space", str(space), "--out", str(out),
                               "--trials", str(trials), "--device", "cpu", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORMATS))
def test_a_short_search_runs_on_every_format(tmp_path: Path, name: str) -> None:
    make, columns, note = FORMATS[name]
    dataset = make(tmp_path / "data")
    out = tmp_path / "run"
    result = _search(_space(tmp_path, dataset), out)
    assert result.exit_code == 0, result.output
    assert f"dataset {dataset}: train " in result.output
    assert note in result.output
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 and table["state"].eq("complete").all()
    for column in columns:
        assert column in table.columns, column
        assert table[column].notna().all(), column
    policy = yaml.safe_load((out / "best_policy.yaml").read_text())
    assert {c.split(".")[0] for c in columns} <= set(policy["tasks"])
    if note:
        assert note in (out / "results.md").read_text()
    if name == "nyuv2":  # normals: turned by policysearch, no plain albumentations file
        assert "no albumentations file for task normals" in result.output
        assert not (out / "best_policy.normals.albumentations.json").exists()


@pytest.mark.slow
def test_bad_data_exits_2_with_one_line_or_is_skipped(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco", coco_dicts())
    (root / "train2017" / "c.png").unlink()
    space = _space(tmp_path, f"coco:{root}")
    result = _search(space, tmp_path / "run")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {root / 'train2017' / 'c.png'}: file not found"]

    result = _search(space, tmp_path / "run2", 2, "--skip-bad-samples")
    assert result.exit_code == 0, result.output
    assert "1 bad samples skipped (--skip-bad-samples)" in result.output


@pytest.mark.slow
def test_a_corrupt_image_met_during_the_search_keeps_finished_trials(
        tmp_path: Path, reliability: Recorder) -> None:
    root = build_folder(tmp_path / "folder", n=12)
    space = _space(tmp_path, f"folder:{root}")
    out = tmp_path / "run"
    assert _search(space, out, 2).exit_code == 0
    before = finished_trials(out)
    # A file whose header is fine but whose pixels cannot be decoded: found only when read.
    victim = root / "images" / "img3.png"
    victim.write_bytes(victim.read_bytes()[:60])
    result = _search(space, out, 4)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {victim}: corrupt image")
    reliability.fault("corrupt image met in a trial", trials=all_trials(out),
                      lost=lost_trials(before, finished_trials(out)))
    table = pd.read_csv(out / "results.csv")
    assert table["state"].eq("complete").sum() == 2  # the two finished trials are kept
    assert lost_trials(before, finished_trials(out)) == 0


def test_the_built_in_datasets_refuse_a_non_square_size(tmp_path: Path) -> None:
    space = _space(tmp_path, "multidigits", image_size=[32, 48])
    result = _search(space, tmp_path / "run")
    assert result.exit_code == 2
    assert "generated square: give one side" in result.output


@pytest.mark.parametrize(("flags", "message"), [
    (("--encoder", "resnet19"), "encoder: unknown encoder 'resnet19'; known:"),
    (("--encoder", "resnet18", "--weights", "/nowhere/r18.pt"), "/nowhere/r18.pt: weights:"),
])
def test_a_bad_encoder_or_weights_file_is_refused_before_any_trial(tmp_path: Path,
                                                                   flags: tuple, message: str
                                                                   ) -> None:
    out = tmp_path / "run"
    result = _search(_space(tmp_path, "multidigits"), out, 2, *flags)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (out / "study.journal").exists()


@pytest.mark.slow
def test_a_single_task_reference_runs_one_network_per_task_first(tmp_path: Path) -> None:
    space = yaml.safe_load(_space(tmp_path, "multidigits").read_text())
    space.update(single_task_reference=True, task_weights={"seg": 2.0})
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    out = tmp_path / "run"
    result = _search(path, out, 5)
    assert result.exit_code == 0, result.output
    for task in ("left_digit", "right_digit", "seg"):
        assert f"reference (single task {task})" in result.output
    table = pd.read_csv(out / "results.csv")
    refs = table[table["role"] == "reference"]
    assert sorted(refs["trial"]) == [0, 1, 2] and refs["rank"].isna().all()
    ranked = table[table["rank"].notna()]
    assert len(ranked) == 2 and ranked["delta_m"].notna().all()
    text = (out / "results.md").read_text()
    assert "single-task runs of flipcrop, one network per task" in text
    assert "Δm% weighs the tasks: seg 2 (others 1)." in text
    assert yaml.safe_load((out / "best_policy.yaml").read_text())["provenance"][
        "task_weights"] == {"seg": 2.0}
    # Re-rank with other task weights, without re-running anything.
    again = runner.invoke(app, ["results", "--out", str(out), "--format", "md",
                                "--task-weight", "left_digit=3", "--task-weight", "seg=1"])
    assert again.exit_code == 0, again.output
    assert "Δm% weighs the tasks: left_digit 3 (others 1)." in again.output
    bad = runner.invoke(app, ["results", "--out", str(out), "--task-weight", "digit=2"])
    assert bad.exit_code == 2 and "--task-weight: unknown task 'digit'" in bad.output
    bad = runner.invoke(app, ["export", "--out", str(out), "--task-weight", "seg=-1"])
    assert bad.exit_code == 2 and "expected TASK=WEIGHT with a weight > 0" in bad.output


def test_task_weights_must_name_dataset_tasks(tmp_path: Path) -> None:
    space = yaml.safe_load(_space(tmp_path, "multidigits").read_text())
    space["task_weights"] = {"segmentation": 2.0}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    result = _search(path, tmp_path / "run")
    assert result.exit_code == 2
    assert "task_weights.segmentation: unknown task 'segmentation'" in result.output
