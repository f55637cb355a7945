"""`policysearch init`: a commented starter search space for a dataset (policysearch.space_init),
its budget sized from the measured trial, the file `check` accepts and a search runs on, and the
one-line refusals (a dataset that cannot be read, a file that exists)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import policysearch as ps
from policysearch.cli import app
from policysearch.config import SearchSpace, load_space
from policysearch.data import get_dataset
from policysearch.space_adapt import adapt_space
from policysearch.space_init import (
    MAX_EPOCHS,
    TARGET_TRIAL_SECONDS,
    cpu_budget,
    model_size,
    render,
    starter,
)
from tests.test_folder import build as build_folder

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# Two tasks with names of the user's choosing, and an op the dataset declares unsafe.
USER_TASKS: list[dict[str, Any]] = [
    {"name": "Strassen_Maske", "kind": "segmentation", "folder": "masks",
     "classes": ["background", "road", "car"]},
    {"name": "Wetter", "kind": "classification", "file": "labels.csv",
     "classes": ["indoor", "outdoor"]},
]


def _folder(root: Path) -> str:
    return f"folder:{build_folder(root, n=12, tasks=USER_TASKS, unsafe_ops=['vflip'])}"


# --- the budget ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("native", "size"), [
    ((64, 64), (64, 64)), ((32, 32), (32, 32)), ((16, 20), (16, 16)), ((10, 10), (16, 16)),
    ((480, 640), (96, 128)), ((1000, 1000), (128, 128)), ((200, 72), (128, 48))])
def test_the_image_size_is_the_data_s_capped_and_rounded_to_16(
        native: tuple[int, int], size: tuple[int, int]) -> None:
    assert model_size(native) == size


def test_the_budget_scales_the_measured_trial() -> None:
    # The measured case itself: 400 images of 64x64 take 1.44 s per epoch, 24 epochs fit.
    measured = cpu_budget(400, (64, 64), can_limit=False)
    assert (measured.epochs, measured.limit) == (MAX_EPOCHS, None)
    assert measured.seconds_per_epoch == pytest.approx(1.44)
    # Four times the pixels and three times the images: 12 times the seconds per epoch.
    larger = cpu_budget(1200, (128, 128), can_limit=True)
    assert larger.seconds_per_epoch == pytest.approx(1.44 * 12)
    assert larger.epochs == int(TARGET_TRIAL_SECONDS / (1.44 * 12)) == 10
    # A large file dataset is limited to the images that give a trial 8 epochs.
    coco = cpu_budget(118_287, (480, 640), can_limit=True)
    assert coco.image_size == (96, 128) and coco.limit == 2000 and coco.train_images == 2000
    assert coco.epochs == 8 and coco.trial_seconds <= TARGET_TRIAL_SECONDS
    # A generated dataset takes no limit: fewer epochs, at least one.
    assert cpu_budget(100_000, (64, 64), can_limit=False).epochs == 1


# --- what the file holds ----------------------------------------------------------------------

def test_init_on_multidigits_writes_the_fitted_space_with_explicit_lists(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--dataset", "multidigits"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "# What to change first:\n#   1. budget: epochs and image_size" in text
    assert "# Tasks of this dataset: left_digit (classification), right_digit (classification)," \
        in text and "seg (segmentation)." in text
    assert "#   hflip left out (unsafe for this dataset)\n#   reference crop (not flipcrop)" in text
    assert "# On a GPU: image_size 32 (the native size), batch_size 64" in text
    data = yaml.safe_load(text)
    assert data["adapt"] is False and data["dataset"] == "multidigits"
    assert data["per_task"]["tasks"] == ["left_digit", "right_digit"]  # a list, not auto
    assert "hflip" not in data["shared"]["ops"] and "vflip" in data["shared"]["ops"]
    assert data["reference"] == "crop"
    assert data["budget"]["image_size"] == 32 and data["budget"]["epochs"] == 24
    assert data["dataset_options"] == {"n_train": 400, "n_val": 200, "n_test": 500, "seed": 0}
    # Read back, it is the space init made; resolved against its dataset, nothing changes.
    found = starter("multidigits")
    space = SearchSpace.model_validate(data)
    assert space == found.space and render(found) == text
    dataset = get_dataset("multidigits", size=32, n_train=8, n_val=8, n_test=8)
    resolved = adapt_space(space, dataset)
    assert resolved.space == space and resolved.changes == () and resolved.warnings == ()


def test_init_from_the_randaugment_space(tmp_path: Path) -> None:
    target = tmp_path / "ra.yaml"
    text = ps.init("multidigits", space="randaugment", to=target)
    assert target.read_text() == text
    space = load_space(target)
    assert space.structure == "randaugment" and space.shared.n == (1, 3)
    assert [slot.op for slot in space.base] == ["crop"] and space.reference == "crop"
    assert space.per_task.tasks == ["left_digit", "right_digit"]
    assert space.per_task.n == (1, 3) and space.per_task.magnitude == (0.1, 1.0)
    assert space.per_task.ops == load_space("randaugment").per_task.ops
    assert space.weights.methods == ("equal",)
    assert "  n: [1, 3]                   # ops per image (RandAugment's N), searched" in text
    assert text.count("# ops per image (RandAugment's N), searched") == 2  # shared, per task


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    dataset = _folder(tmp_path / "data")
    target = tmp_path / "space.yaml"
    target.write_text("mine\n")
    result = runner.invoke(app, ["init", "--dataset", dataset, "--to", str(target)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {target}: already exists; pass --force to overwrite it"]
    assert target.read_text() == "mine\n"
    result = runner.invoke(app, ["init", "--dataset", dataset, "--to", str(target), "--force"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {target}"
    assert load_space(target).per_task.tasks == ["Wetter"]


def _bad_yaml(root: Path) -> str:
    root.mkdir()
    (root / "dataset.yaml").write_text("images: [\n")
    return f"folder:{root}"


def _not_coco(root: Path) -> str:
    root.mkdir()
    return f"coco:{root}"


@pytest.mark.parametrize(("make", "says"), [
    (lambda root: f"folder:{root / 'missing'}", "no dataset.yaml here"),
    (_bad_yaml, "invalid YAML"),
    (_not_coco, "no annotations/ folder"),
    (lambda root: f"nyuv2:{root / 'missing'}", "folder not found"),
    (lambda root: "bogus:/data", "unknown dataset format 'bogus'"),
    (lambda root: "nosuch", "unknown dataset 'nosuch'"),
])
def test_a_dataset_that_cannot_be_read_is_one_line_and_nothing_is_written(
        tmp_path: Path, make: Any, says: str) -> None:
    dataset = make(tmp_path / "data")
    target = tmp_path / "space.yaml"
    result = runner.invoke(app, ["init", "--dataset", dataset, "--to", str(target)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --dataset {dataset}: "), lines
    assert says in lines[0]
    assert not target.exists()


# --- end to end: init, check, search ------------------------------------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "policysearch", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["shapes", "folder"])
def test_init_then_check_then_search(tmp_path: Path, which: str) -> None:
    dataset = "shapes" if which == "shapes" else _folder(tmp_path / "data")
    space_file = tmp_path / "space.yaml"
    done = _cli("init", "--dataset", dataset, "--to", str(space_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {space_file}"
    done = _cli("check", "--space", str(space_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {space_file}: space ")
    out = tmp_path / "run"
    done = _cli("search", "--space", str(space_file), "--trials", "2", "--epochs", "1",
                "--image-size", "16", "--device", "cpu", "--threads", "1", "--no-report",
                "--quiet", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = ps.records(out)
    written = load_space(space_file)
    assert records.space["per_task"]["tasks"] == written.per_task.tasks
    trial = next(r for r in records.records if r.role == "search")
    assert trial.state == "complete" and trial.params is not None
    views = {name.split(".")[1] for name in trial.params if name.startswith("task.")}
    if which == "folder":
        assert list(records.tasks) == ["Strassen_Maske", "Wetter"]
        assert written.per_task.tasks == ["Wetter"] and views == {"Wetter"}
        assert "vflip" not in records.space["shared"]["ops"]
        assert "vflip left out (unsafe for this dataset)" in space_file.read_text()
    else:
        assert written.per_task.tasks == ["shape"] and views == {"shape"}
        assert records.reference_name == "flipcrop"


def test_init_from_a_written_space_keeps_every_field(tmp_path: Path) -> None:
    source = tmp_path / "mine.yaml"
    source.write_text(yaml.safe_dump({
        "name": "mine", "dataset": "shapes", "structure": "subpolicies",
        "shared": {"subpolicies": 3, "slots": 2, "ops": ["identity", "hflip", "rotate"],
                   "p": [0.1, 0.9]},
        "per_task": {"tasks": {"kinds": ["segmentation"]}, "slots": 2,
                     "ops": ["identity", "contrast"], "magnitude": [0.2, 0.8]},
        "weights": {"method": ["static", "dwa"], "range": [0.5, 2.0],
                    "dwa": {"temperature": [1.0, 3.0]}},
        "reference": "flipcrop", "single_task_reference": True,
        "task_weights": {"seg": 2.0}, "objective": "pareto",
        "budget": {"lr": 0.01, "optimizer": "sgd", "encoder": "small"},
        "sampler": {"name": "nsga2", "population_size": 8},
        "pruner": {"name": "successive_halving", "min_resource": 2},
    }))
    found = starter("multidigits", str(source))
    text = render(found)
    space = SearchSpace.model_validate(yaml.safe_load(text))
    assert space == found.space
    assert space.per_task.tasks == ["seg"] and "hflip" not in space.shared.ops
    assert space.shared.subpolicies == 3 and space.weights.hyper("dwa") == {
        "temperature": (1.0, 3.0)}
    assert space.budget.lr == 0.01 and space.sampler.population_size == 8
    assert space.pruner.min_resource == 2 and space.single_task_reference
    assert ("  # a view per segmentation task (what {kinds: [segmentation]} chose); [] for "
            "none\n  tasks: [seg]\n") in text
    assert max(map(len, text.splitlines())) <= 100


def readme_block(after: str) -> str:
    """The text of README.md's code block that starts with the line ``after``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{after}\n") + len(after) + 2
    return text[start:text.index("```", start)]


def test_the_readme_shows_the_real_output() -> None:
    result = runner.invoke(app, ["init", "--dataset", "multidigits"])
    assert readme_block("$ policysearch init --dataset multidigits") == result.output
