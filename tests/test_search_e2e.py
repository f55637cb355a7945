"""End-to-end: the CLI searches, resumes, refuses a changed space, prints and exports results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import albumentations as A
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch import load_policy
from policysearch.cli import app
from policysearch.search.optuna_study import JOURNAL_NAME
from tests.reliability_counts import Recorder, lost_trials

runner = CliRunner()
QUICK_TIMEOUT_S = 300  # a subprocess that reads a study or refuses its arguments
SEARCH_TIMEOUT_S = 900  # a subprocess that searches (tiny trials, on a busy machine)


def _search(space: Path, out: Path, trials: int, *extra: str):
    return runner.invoke(app, ["search", "--space", str(space), "--out", str(out),
                               "--trials", str(trials), "--device", "cpu", *extra])


def _finished(out: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


@pytest.mark.slow
def test_search_resume_results_export(tiny_space: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _search(tiny_space, out, 3)
    assert result.exit_code == 0, result.output
    assert "policies ranked by Δm%" in result.output and "[3/3]" in result.output
    for name in ("results.csv", "results.md", "best_policy.yaml", JOURNAL_NAME):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 and table["rank"].notna().all()
    reference = table[table["role"] == "reference"]
    assert len(reference) == 1 and reference["delta_m"].item() == pytest.approx(0.0)
    assert reference["trial"].item() == 0  # the reference runs first
    # Each complete trial's mean data wait, in % of its epochs' wall time.
    complete = table[table["state"] == "complete"]
    assert complete["data_wait"].between(0.0, 100.0).all()
    assert (complete["loader_workers"] >= 0).all()
    for task in ("shape", "seg", "objects", "depth"):
        assert (out / f"best_policy.{task}.albumentations.json").exists()

    # Resume: the same command with a larger target keeps the 3 finished trials.
    first = {t.number: t.value for t in _finished(out)}
    result = _search(tiny_space, out, 5)
    assert result.exit_code == 0, result.output
    again = {t.number: t.value for t in _finished(out)}
    assert len(again) == 5 and all(again[n] == v for n, v in first.items())
    # Reaching the target again runs nothing.
    assert _search(tiny_space, out, 5).exit_code == 0
    assert len(_finished(out)) == 5

    # A changed search space (here the budget, via a flag) is refused, naming what changed.
    result = _search(tiny_space, out, 6, "--epochs", "3")
    assert result.exit_code == 2
    assert "refusing to resume" in result.output and "budget.epochs" in result.output

    # results in every format
    result = runner.invoke(app, ["results", "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["delta_m"] == max(r["delta_m"] for r in rows)
    result = runner.invoke(app, ["results", "--out", str(out), "--format", "md", "--top", "2"])
    assert result.exit_code == 0 and result.output.count("\n|") >= 3

    # export rank 2 elsewhere; the YAML loads back and carries provenance
    target = tmp_path / "exported" / "second.yaml"
    result = runner.invoke(app, ["export", "--out", str(out), "--rank", "2", "--to", str(target)])
    assert result.exit_code == 0, result.output
    policy = load_policy(target)
    assert policy.provenance["rank"] == 2 and policy.provenance["study"] == "tiny"
    assert policy.provenance["trial"] == rows[1]["trial"]
    compose = A.load(str(tmp_path / "exported" / "second.seg.albumentations.json"),
                     data_format="json")
    sample = {"image": np.zeros((32, 32, 3), np.uint8), "mask": np.zeros((32, 32), np.uint8)}
    assert compose(**sample)["mask"].shape == (32, 32)
    result = runner.invoke(app, ["export", "--out", str(out), "--rank", "9"])
    assert result.exit_code == 2 and "--rank" in result.output


def test_bad_space_exits_2_with_one_line(tmp_path: Path) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({"name": "bad", "shared": {"slots": 1, "ops": ["warp9"]}}))
    proc = subprocess.run([sys.executable, "-m", "policysearch", "search", "--space", str(space),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=QUICK_TIMEOUT_S)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(space) in lines[0] and "shared.ops" in lines[0]
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "policysearch", "search", "--space",
                           str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                          timeout=QUICK_TIMEOUT_S)
    assert proc.returncode == 2 and "missing.yaml: file not found" in proc.stderr


def test_probability_out_of_range_via_cli(tmp_path: Path) -> None:
    space = tmp_path / "p.yaml"
    space.write_text(yaml.safe_dump({"name": "p", "shared": {"slots": 1, "ops": ["rotate"],
                                                            "p": [0.0, 1.5]}}))
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(space) in lines[0] and "shared.p" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before a study was created


def test_unknown_reference_baseline_is_refused_up_front(tmp_path: Path) -> None:
    space = tmp_path / "r.yaml"
    space.write_text(yaml.safe_dump({"name": "r", "reference": "flipcropp"}))
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "reference" in result.output and "flipcropp" in result.output


def test_timeout_starts_no_new_trial(tiny_space: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    result = _search(tiny_space, out, 5, "--timeout", "0.000001")
    assert result.exit_code == 0, result.output
    assert "timeout reached" in result.output
    assert len(_finished(out)) == 0
    assert not (out / "best_policy.yaml").exists()
    assert "No trial yet." in (out / "report.html").read_text()  # a report even so


def test_preview_cli_writes_a_png(tmp_path: Path) -> None:
    from PIL import Image

    target = tmp_path / "grid.png"
    result = runner.invoke(app, ["preview", "--policy", "flipcrop", "--n", "2", "--draws", "2",
                                 "--to", str(target)])
    assert result.exit_code == 0, result.output
    with Image.open(target) as image:
        assert image.width > 300 and image.height > 300
    result = runner.invoke(app, ["preview", "--policy", "flipcrop", "--n", "0",
                                 "--to", str(target)])
    assert result.exit_code == 2 and "--n" in result.output


def test_version_and_ops() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("policysearch ")
    result = runner.invoke(app, ["ops"])
    assert result.exit_code == 0 and "rotate" in result.output and "geometric" in result.output


@pytest.mark.slow
def test_results_and_export_in_a_fresh_process(tiny_space: Path, tmp_path: Path) -> None:
    # In-process CLI tests share imported modules; a fresh process catches import-order bugs.
    out = tmp_path / "fresh"
    assert _search(tiny_space, out, 2).exit_code == 0
    cli = [sys.executable, "-m", "policysearch"]
    proc = subprocess.run([*cli, "results", "--out", str(out)], capture_output=True, text=True,
                          timeout=QUICK_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert "Δm%" in proc.stdout and "reference" in proc.stdout
    proc = subprocess.run([*cli, "export", "--out", str(out), "--to", str(tmp_path / "p.yaml")],
                          capture_output=True, text=True, timeout=QUICK_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.yaml").exists() and (tmp_path / "p.seg.albumentations.json").exists()
    code = f"import policysearch as ps; print(type(ps.results({str(out)!r})).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=QUICK_TIMEOUT_S)
    assert proc.returncode == 0 and proc.stdout.strip() == "DataFrame", proc.stderr


def test_results_without_study_is_a_user_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["results", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "study.journal not found" in result.output


@pytest.mark.slow
def test_kill_9_then_same_command_resumes(tiny_space: Path, tmp_path: Path,
                                          reliability: Recorder) -> None:
    out = tmp_path / "killed"
    # --epochs 4: trials long enough (a few seconds) that the kill lands midway on a busy machine
    cmd = [sys.executable, "-m", "policysearch", "search", "--space", str(tiny_space),
           "--out", str(out), "--trials", "6", "--epochs", "4", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (out / JOURNAL_NAME).exists() and len(_finished(out)) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("the search ended before it could be killed")
            time.sleep(0.2)  # polling interval, not a timing assertion
        else:
            pytest.fail("no two trials finished within 300 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    before = {t.number: t.value for t in _finished(out)}
    assert len(before) >= 2
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    after = {t.number: t.value for t in _finished(out)}
    assert len(after) == 6
    assert lost_trials(before, after) == 0
    # Nothing counted twice: besides the 6 finished trials, only the one the kill cut short,
    # failed as stale (its parameters ran again as a new trial).
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    reliability.fault("kill -9 of the driver", trials=len(trials), lost=lost_trials(before, after))
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) <= 1 and len(trials) == 6 + len(failed)
    assert all("interrupted search" in t.user_attrs["error"] for t in failed)
