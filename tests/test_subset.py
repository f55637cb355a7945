"""Search on a subset, train on everything: ``subset`` / ``--subset`` (policysearch.data.subset).

The subset is reproducible (by its seed alone, in any process), stratified by the first
classification task's label with proportional allocation and an exact size, part of the
study's definition (a space without one keeps its old fingerprint), recorded in the exported
policy's provenance; a search trains its trials on it, the benchmark on the whole split; bad
sizes are one-line errors (exit status 2) before anything is written.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from policysearch import training
from policysearch.cli import app
from policysearch.config import SearchSpace, TrainSubset, load_space
from policysearch.data import ShapesDataset
from policysearch.data.base import TaskSubset
from policysearch.data.loading import load_dataset
from policysearch.data.subset import (
    SubsetDataset,
    SubsetError,
    allocate,
    choose_indices,
    choose_subset,
    subset_train,
)
from policysearch.errors import UserError
from tests.conftest import TINY_SPACE

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
# SearchSpace.fingerprint() of the shipped default space resolved on shapes (as in
# test_space_adapt): a space without a subset must keep it, so that old studies resume.
DEFAULT_ON_SHAPES = "39b63f65f6a0fef0"


def _tiny(**extra: Any) -> SearchSpace:
    return SearchSpace.model_validate({**TINY_SPACE, **extra})


def _write_space(path: Path, **extra: Any) -> Path:
    data = {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], "epochs": 1}, **extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- choosing the samples ----------------------------------------------------------------------


def test_same_seed_same_indices_exact_size_and_another_seed_another_subset() -> None:
    labels = [k % 3 for k in range(90)] + [None] * 10
    first = choose_indices(100, 25, seed=0, labels=labels)
    assert np.array_equal(first, choose_indices(100, 25, seed=0, labels=labels))
    assert len(first) == 25 == len(set(first.tolist()))
    assert np.array_equal(first, np.sort(first)) and first.min() >= 0 and first.max() < 100
    assert not np.array_equal(first, choose_indices(100, 25, seed=1, labels=labels))
    plain = choose_indices(100, 25, seed=0)
    assert len(plain) == 25 and np.array_equal(plain, choose_indices(100, 25, seed=0))
    assert not np.array_equal(plain, choose_indices(100, 25, seed=1))


@pytest.mark.parametrize("seed", range(6))
def test_stratified_class_counts_are_within_one_of_proportional(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 60, size=int(rng.integers(2, 9))).tolist()
    labels: list[int | None] = [k for k, size in enumerate(sizes) for _ in range(size)]
    labels += [None] * int(rng.integers(0, 20))  # unlabelled: a stratum of its own
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    total = len(labels)
    for n in (1, total // 7 + 1, total // 2, total - 1, total):
        chosen = choose_indices(total, n, seed, labels)
        assert len(chosen) == n
        got = Counter(labels[i] for i in chosen)
        for label, size in Counter(labels).items():
            share = n * size / total
            assert share - 1 < got.get(label, 0) < share + 1, (label, size, n)
            assert got.get(label, 0) <= size


def test_allocation_is_largest_remainders() -> None:
    # shares 3.5, 3.0, 0.5 of 7: floors 3, 3, 0; the one left goes to a remainder of 0.5,
    # between the first and the last by the tie-breaker
    assert allocate([7, 6, 1], 7, [0.2, 0.9, 0.1]) == [3, 3, 1]
    assert allocate([7, 6, 1], 7, [0.1, 0.9, 0.2]) == [4, 3, 0]
    assert allocate([5, 5], 10, [0.0, 0.0]) == [5, 5]
    with pytest.raises(ValueError):
        allocate([1, 1], 3, [0.0, 0.0])


def test_a_dataset_subset_is_stratified_by_its_first_classification_task() -> None:
    data = ShapesDataset(seed=0, size=16, n_train=60, n_val=10, n_test=10)
    choice = choose_subset(data, 20, seed=0)
    assert choice.stratified_by == "shape" and choice.of == 60 and len(choice.indices) == 20
    labels = [s["label"] for s in data.split("train")]
    got = Counter(labels[i] for i in choice.indices)
    for label, size in Counter(labels).items():
        assert abs(got[label] - 20 * size / 60) < 1
    # No classification task: a plain seeded random sample of the indices.
    seg_only = TaskSubset(data, ["seg"])
    plain = choose_subset(seg_only, 20, seed=0)
    assert plain.stratified_by is None
    assert np.array_equal(plain.indices, choose_indices(60, 20, 0))


def test_the_subset_is_the_same_in_a_fresh_process() -> None:
    data = ShapesDataset(seed=0, size=16, n_train=60, n_val=10, n_test=10)
    here = choose_subset(data, 17, seed=3).indices.tolist()
    code = ("from policysearch.data import ShapesDataset\n"
            "from policysearch.data.subset import choose_subset\n"
            "data = ShapesDataset(seed=0, size=16, n_train=60, n_val=10, n_test=10)\n"
            "print(choose_subset(data, 17, seed=3).indices.tolist())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == here


def test_load_dataset_applies_the_subset_to_train_only_and_it_pickles() -> None:
    space = _tiny(subset={"n": 12, "seed": 1})
    whole, sub = load_dataset(_tiny()), load_dataset(space)
    assert isinstance(sub, SubsetDataset)
    assert len(sub.split("train")) == 12
    assert len(sub.split("val")) == len(whole.split("val"))
    assert len(sub.split("test")) == len(whole.split("test"))
    first = sub.subset.indices[0]
    np.testing.assert_array_equal(sub.split("train")[0]["image"],
                                  whole.split("train")[int(first)]["image"])
    assert sub.notes[-1] == ("train: a subset of 12 of the 48 training samples (stratified by "
                             "shape, subset seed 1); val and test whole")
    again = pickle.loads(pickle.dumps(sub))  # what a Ray trial or a loader worker receives
    assert np.array_equal(again.subset.indices, sub.subset.indices)
    np.testing.assert_array_equal(again.split("train")[5]["image"],
                                  sub.split("train")[5]["image"])
    with pytest.raises(SubsetError, match="asks for 49 training samples; the training split "
                                          "has 48"):
        subset_train(whole, TrainSubset(n=49))


@pytest.mark.slow
def test_a_loader_worker_trains_on_the_same_subset() -> None:
    # The subset's split crosses to the DataLoader worker process (pickled, or forked) and
    # gives the numbers of a training without workers.
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup

    space = _tiny(subset=20)
    data = load_dataset(space)
    tasks, _ = task_setup(data)
    results = []
    for workers in (0, 1):
        budget = space.budget.model_copy(update={"loader_workers": workers, "epochs": 1})
        results.append(training.run_trial(reference_policy("flipcrop", tasks), data, budget,
                                          seed=0, device="cpu", threads=1))
    assert [r.loader_workers for r in results] == [0, 1]
    assert [r.train_images for r in results] == [20, 20]
    assert results[0].metrics == results[1].metrics


def _folder_dataset(root: Path) -> Path:
    """A folder dataset of 40 tiny images with one classification task: 30 of class a, 6 of
    class b, 4 unlabelled."""
    (root / "images").mkdir(parents=True)
    rows = []
    for k in range(40):
        Image.fromarray(np.full((8, 8, 3), k, dtype=np.uint8)).save(root / "images" / f"i{k}.png")
        if k < 36:
            rows.append(f"i{k},{'b' if k % 6 == 0 else 'a'}")
    (root / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump({
        "images": "images",
        "tasks": [{"name": "kind", "kind": "classification", "file": "labels.csv",
                   "classes": ["a", "b"]}]}))
    return root


def test_a_folder_dataset_is_stratified_from_its_csv_without_decoding_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policysearch.data import folder, get_dataset

    spec = f"folder:{_folder_dataset(tmp_path / 'd')}"
    labels = [s.get("label") for s in get_dataset(spec).split("train")]
    data = get_dataset(spec)
    train = data.split("train")

    def no_decoding(path: Path) -> None:
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(folder, "read_image", no_decoding)
    choice = choose_subset(data, 8, seed=0)
    assert not train._cache  # type: ignore[attr-defined]  # nothing decoded or cached
    got = Counter(labels[i] for i in choice.indices)
    for label, size in Counter(labels).items():  # None: the unlabelled stratum
        assert abs(got.get(label, 0) - 8 * size / len(train)) < 1


# --- the space and the study -------------------------------------------------------------------


def test_the_fingerprint_includes_the_subset_and_a_space_without_keeps_its_old_one() -> None:
    from policysearch.space_adapt import adapt_space

    default = load_space("default")
    adapted = adapt_space(default, ShapesDataset()).space
    assert adapted.fingerprint() == DEFAULT_ON_SHAPES
    assert "subset" not in adapted.canonical()
    with_subset = adapted.with_subset(100)
    assert with_subset.canonical()["subset"] == {"n": 100, "seed": 0}
    assert with_subset.fingerprint() != DEFAULT_ON_SHAPES
    other_seed = with_subset.model_copy(update={"subset": TrainSubset(n=100, seed=1)})
    assert other_seed.fingerprint() != with_subset.fingerprint()
    assert with_subset.with_subset(None).fingerprint() == DEFAULT_ON_SHAPES
    # subset: N is {n: N, seed: 0}; --subset keeps the file's subset seed.
    assert _tiny(subset=100).subset == TrainSubset(n=100, seed=0)
    assert _tiny(subset={"n": 5, "seed": 7}).with_subset(9).subset == TrainSubset(n=9, seed=7)


@pytest.mark.parametrize(("value", "field", "message"), [
    (0, "subset.n", "greater than or equal to 1"),
    ({"n": -2}, "subset.n", "greater than or equal to 1"),
    ({"n": 5, "seed": -1}, "subset.seed", "greater than or equal to 0"),
    ({"n": 5, "sed": 1}, "subset.sed", "unknown key"),
    ("lots", "subset", "must be a number of samples N or {n: N, seed: S}"),
])
def test_a_bad_subset_in_a_space_file_names_the_file_and_field(
        tmp_path: Path, value: Any, field: str, message: str) -> None:
    path = _write_space(tmp_path / "bad.yaml", subset=value)
    with pytest.raises(UserError) as err:
        load_space(path)
    assert err.value.source == str(path) and err.value.field == field
    assert message in err.value.message


# --- the commands ------------------------------------------------------------------------------


def _one_error_line(output: str, *parts: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert all(part in lines[0] for part in parts), output
    assert "Traceback" not in output


@pytest.mark.parametrize(("args", "where", "message"), [
    (["--subset", "0"], "--subset", "must be a number of training samples >= 1, got 0"),
    (["--subset", "49"], "--subset", "asks for 49 training samples; the training split has 48"),
])
def test_a_bad_subset_flag_is_one_line_before_any_trial(
        tmp_path: Path, args: list[str], where: str, message: str) -> None:
    space = _write_space(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(out),
                                 "--device", "cpu", *args])
    assert result.exit_code == 2
    _one_error_line(result.output, where, message)
    assert not out.exists()


def test_a_subset_larger_than_train_in_the_space_file_names_file_and_field(
        tmp_path: Path) -> None:
    space = _write_space(tmp_path / "big.yaml", subset={"n": 1000, "seed": 2})
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 2
    _one_error_line(result.output, f"{space}: subset.n: asks for 1000 training samples")
    assert not out.exists()


class _Spy:
    """Records the training split size and the images trained of every run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.runs: list[tuple[int, int]] = []
        real = training.run_trial

        def run_trial(policy: Any, dataset: Any, budget: Any, **kwargs: Any) -> Any:
            result = real(policy, dataset, budget, **kwargs)
            self.runs.append((len(dataset.split("train")), result.train_images))
            return result

        monkeypatch.setattr(training, "run_trial", run_trial)


def test_a_search_trains_on_the_subset_and_the_benchmark_on_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = _write_space(tmp_path / "tiny.yaml")  # 48 training samples, 1 epoch, batch 16
    out = tmp_path / "s"
    search = ["search", "--space", str(space), "--out", str(out), "--trials", "1",
              "--device", "cpu", "--threads", "1", "--no-report"]
    spy = _Spy(monkeypatch)
    result = runner.invoke(app, [*search, "--subset", "20"])
    assert result.exit_code == 0, result.output
    assert ("dataset shapes: train 20 (a subset of 48: stratified by shape, subset seed 0), "
            "val 24, test 24") in result.output
    assert spy.runs == [(20, 20)]  # one epoch over the 20 samples of the subset

    from policysearch.search.driver import load_study_records

    study = load_study_records(out, None, None)
    recorded = {"n": 20, "seed": 0, "of": 48, "stratified_by": "shape"}
    assert study.subset == recorded and study.space["subset"] == {"n": 20, "seed": 0}
    assert any("a subset of 20 of the 48" in note for note in study.dataset_notes)
    exported = yaml.safe_load((out / "best_policy.yaml").read_text())
    assert exported["provenance"]["subset"] == recorded

    # The subset is part of what defines the study: another one (or none) is not a resume.
    again = runner.invoke(app, search)
    assert again.exit_code == 2 and "refusing to resume" in again.output
    assert "subset" in again.output

    # The benchmark trains every run on the whole training split.
    spy.runs.clear()
    bench = tmp_path / "b"
    result = runner.invoke(app, ["benchmark", "--policy", str(out / "best_policy.yaml"),
                                 "--out", str(bench), "--seeds", "1", "--baselines", "none",
                                 "--reference", "none", "--no-ablations", "--device", "cpu",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert spy.runs == [(48, 48), (48, 48)]
    for run in (bench / "runs").glob("*/seed-*.json"):
        assert json.loads(run.read_text())["train_images"] == 48
    text = (bench / "benchmark.md").read_text()
    assert ("Training set: the whole training split (48 samples); the search trained its "
            "trials on a subset of 20 of them.") in text
    report = json.loads((bench / "benchmark.json").read_text())
    assert report["train_size"] == 48 and report["subset"] is None
    assert report["search_subset"] == recorded

    # --subset restricts it explicitly, and a bad one is a one-line error writing nothing.
    result = runner.invoke(app, ["benchmark", "--policy", str(out / "best_policy.yaml"),
                                 "--out", str(tmp_path / "b2"), "--subset", "49",
                                 "--device", "cpu"])
    assert result.exit_code == 2
    _one_error_line(result.output.splitlines()[-1], "--subset", "asks for 49")
    assert not (tmp_path / "b2").exists()
