"""``policysearch search --method density`` end to end on the CPU, at tiny sizes: the exported
union loads with plain albumentations and holds only kept candidates, a search killed half-way
resumes to what an uninterrupted one finds, the report is written, and the flags it refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import albumentations as A
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch import api
from policysearch.augment import SubPolicies, load_policy
from policysearch.cli import app
from tests.conftest import TINY_SPACE

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FLAGS = ["--method", "density", "--folds", "2", "--trials", "3", "--copies", "2", "--keep",
         "2", "--epochs", "1", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    return path


def _search(space: Path, out: Path, *extra: str) -> None:
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(out), "--quiet",
                                 *FLAGS, *extra])
    assert result.exit_code == 0, (result.output, result.exception)


def test_density_search_exports_the_union_of_the_kept_candidates(space: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    _search(space, out)
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["fold"].unique()) == [0, 1] and len(table) == 6
    assert table.groupby("fold")["kept"].sum().tolist() == [2, 2]
    policy = load_policy(out / "best_policy.yaml")
    assert policy.structure == "subpolicies" and isinstance(policy.shared, SubPolicies)
    assert policy.weighting.weights == {"shape": 1.0, "seg": 1.0, "objects": 1.0,
                                        "depth": 1.0}  # static range: not searched
    kept = policy.provenance["density"]["kept"]
    assert len(kept) == 4
    # Every sub-policy of the union is a kept candidate's part, and every kept one is there.
    from policysearch.search.density import DensitySearch  # noqa: F401 - the module exists
    journal = out / "density" / "candidates.journal"
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(journal)))
    kept_parts, kept_views = set(), set()
    for item in kept:
        study = optuna.load_study(study_name=f"fold-{item['fold']}", storage=storage)
        trial = study.trials[item["trial"]]
        assert trial.value == pytest.approx(item["loss"])
        kept_parts.add(_part(trial.params, "shared"))
        kept_views.add(_part(trial.params, "task.shape"))
    assert {sp for sp in policy.shared.policies} == kept_parts
    assert set(policy.per_task["shape"].policies) == kept_views
    ranks = table[table["kept"]]["rank"]
    assert ranks.max() <= 2
    for task, path in _albumentations_files(out).items():
        assert isinstance(A.load(str(path), data_format="json"), A.Compose), task
    assert "<html" in (out / "report.html").read_text(encoding="utf-8").lower()
    assert "search cost" in (out / "results.md").read_text(encoding="utf-8")


def _part(params: dict, prefix: str) -> tuple:
    from policysearch.augment import Slot

    slots = sorted({int(k.split(".")[-2]) for k in params if k.startswith(prefix + ".")
                    and k.endswith(".op") and k.count(".") == prefix.count(".") + 2})
    return tuple(Slot(params[f"{prefix}.{i}.op"], params[f"{prefix}.{i}.p"],
                      params[f"{prefix}.{i}.magnitude"]) for i in slots)


def _albumentations_files(out: Path) -> dict[str, Path]:
    return {p.name.split(".")[1]: p for p in out.glob("best_policy.*.albumentations.json")}


@pytest.mark.slow
def test_a_killed_density_search_resumes_to_what_an_uninterrupted_one_finds(
        space: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    _search(space, whole)
    cut = tmp_path / "cut"
    command = [sys.executable, "-m", "policysearch", "search", "--space", str(space), "--out",
               str(cut), "--json-logs", *FLAGS]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    killed = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first candidate of the second fold: fold 0 is done
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "candidate_scored" and event.get("fold") == 1:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert killed, "the search ended before the second fold's first candidate"
    events: list = []
    outcome = api.search(space, out=cut, method="density", folds=2, trials=3, copies=2, keep=2,
                         epochs=1, device="cpu", threads=1, progress=events.append)
    started = next(e for e in events if e.kind == "density")
    assert started.stored >= 1 and started.scored >= 4  # fold 0's model and candidates kept
    assert outcome.study is None and outcome.cost is not None
    a = pd.read_csv(whole / "results.csv").drop(columns=["seconds"])
    b = pd.read_csv(cut / "results.csv").drop(columns=["seconds", "candidate"])
    a = a.drop(columns=["candidate"])
    pd.testing.assert_frame_equal(a, b)
    assert load_policy(cut / "best_policy.yaml").shared == load_policy(
        whole / "best_policy.yaml").shared


@pytest.mark.parametrize(("extra", "flag"), [
    (["--workers", "2"], "--workers"),
    (["--finalists", "2"], "--finalists"),
    (["--engine", "ray"], "--engine"),
    (["--folds", "0"], "--folds"),
    (["--heldout", "1.5"], "--heldout"),
])
def test_density_refuses_what_it_cannot_do(space: Path, tmp_path: Path, extra: list[str],
                                           flag: str) -> None:
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "o"),
                                 *FLAGS, *extra])
    assert result.exit_code == 2
    assert flag in result.stderr
    assert not (tmp_path / "o" / "density").exists()


def test_density_flags_need_the_density_method(space: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "o"),
                                 "--keep", "3"])
    assert result.exit_code == 2 and "--keep" in result.stderr
