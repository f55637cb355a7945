"""Reliability: faults injected into real searches (in-process CLI, tiny shapes space).

Trial faults go into the real training loop, chosen by trial number: a bug in the training
step, a NaN loss (the network's weights set to NaN), a CUDA out-of-memory error (torch's own
error type, raised on the CPU) and a policy that leaves a task no target. Storage faults are
injected write errors (CI runs as root, for whom chmod changes nothing). docs/reliability.md
lists each fault with the test here that proves what the user sees and what is kept.
"""

from __future__ import annotations

import builtins
import errno
import io
import math
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import policysearch.training as training
from policysearch.cli import app
from policysearch.errors import UserError
from policysearch.search.driver import load_study_records
from policysearch.search.lifecycle import MAX_CONSECUTIVE_FAILURES
from policysearch.search.optuna_study import (
    GRACE_ENV,
    GRACE_PERIOD_S,
    HEARTBEAT_ENV,
    HEARTBEAT_INTERVAL_S,
    JOURNAL_NAME,
    MAX_RETRY,
    POSTGRES_DRIVER_HINT,
    database_url,
    heartbeat_settings,
    open_storage,
)
from tests.conftest import TINY_SPACE
from tests.reliability_counts import Recorder, all_trials, finished_trials, lost_trials

runner = CliRunner()

FAULT_EPOCH = 1  # faults strike in the second epoch: the trial has spent one already
EXPECTED_ERRORS = {
    "error": "RuntimeError: injected bug in the training step",
    "nan": "non-finite loss at epoch 1",
    "oom": "out of memory in training at epoch 1",
    "erase": "the policy leaves no target for task seg in epoch 0",
}


def inject_faults(monkeypatch: pytest.MonkeyPatch, schedule: dict[int, str]) -> None:
    """Make the trials numbered in ``schedule`` fail the way named there, inside the real
    training step (``Trainer._step_losses``); every other trial trains normally."""
    real_run_trial = training.run_trial
    real_step = training.Trainer._step_losses
    current: dict[str, str | None] = {"kind": None}

    def run_trial(*args: Any, reporter: Any = None, **kwargs: Any) -> training.TrialResult:
        current["kind"] = schedule.get(reporter.trial.number) if reporter is not None else None
        try:
            return real_run_trial(*args, reporter=reporter, **kwargs)
        finally:
            current["kind"] = None

    def step(trainer: training.Trainer, batch: dict) -> dict:
        kind = current["kind"]
        if kind == "error" and trainer.epoch == FAULT_EPOCH:
            raise RuntimeError("injected bug in the training step")
        if kind == "oom" and trainer.epoch == FAULT_EPOCH:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if kind == "nan" and trainer.epoch == FAULT_EPOCH:
            with torch.no_grad():
                for param in trainer.model.parameters():
                    param.fill_(math.nan)
        if kind == "erase":  # what a policy that erases every mask leaves: no seg target
            seg = batch["targets"]["seg"]
            batch = {**batch, "targets": {**batch["targets"], "seg": torch.full_like(seg, 255)}}
        return real_step(trainer, batch)

    monkeypatch.setattr(training, "run_trial", run_trial)
    monkeypatch.setattr(training.Trainer, "_step_losses", step)


def _space(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, **changes}, sort_keys=False))
    return path


def _search(space: Path, out: Path, trials: int, *extra: str):
    return runner.invoke(app, ["search", "--space", str(space), "--out", str(out),
                               "--trials", str(trials), "--device", "cpu", "--threads", "1",
                               *extra])


def _study(out: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    return optuna.load_study(study_name="tiny", storage=storage)


def _all_metric_values(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    return [float(v) for t in trials for per_task in (t.user_attrs.get("metrics") or {}).values()
            for v in per_task.values()]


# --- 1. failures inside a trial -----------------------------------------------------------------

@pytest.mark.slow
def test_each_trial_fault_fails_its_trial_with_the_reason_and_the_search_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    schedule = {1: "error", 2: "nan", 3: "oom", 4: "erase"}
    inject_faults(monkeypatch, schedule)
    out = tmp_path / "faults"
    result = _search(_space(tmp_path), out, 4)
    assert result.exit_code == 0, result.output

    trials = {t.number: t for t in _study(out).trials}
    for number, kind in schedule.items():
        assert trials[number].state == optuna.trial.TrialState.FAIL, kind
        assert EXPECTED_ERRORS[kind] in trials[number].user_attrs["error"], kind
    expected_epochs = {"error": FAULT_EPOCH, "nan": FAULT_EPOCH, "oom": FAULT_EPOCH, "erase": 0}
    assert {n: trials[n].user_attrs["epochs"] for n in schedule} == {
        n: expected_epochs[k] for n, k in schedule.items()}
    finished = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    reliability.fault("a fault inside a trial", n=len(schedule), trials=len(trials),
                      lost=4 - len(finished))
    assert len(finished) == 4 and max(schedule) < min(t.number for t in finished[1:])
    assert all(math.isfinite(v) for v in _all_metric_values(list(trials.values())))

    table = pd.read_csv(out / "results.csv")
    notes = dict(zip(table["trial"], table["note"].fillna(""), strict=True))
    for number, kind in schedule.items():
        assert EXPECTED_ERRORS[kind] in notes[number]
        assert f"{EXPECTED_ERRORS[kind][:30]}" in result.output  # shown as it happens
    ranked = table[table["rank"].notna()]
    assert set(ranked["trial"]) == {t.number for t in finished}


def test_a_non_finite_metric_fails_the_trial_and_is_never_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    real_evaluate = training.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> dict:
        metrics = real_evaluate(*args, **kwargs)
        metrics["depth"]["abs_err"] = math.inf
        return metrics

    monkeypatch.setattr(training, "evaluate", evaluate)
    space = _space(tmp_path, budget={**TINY_SPACE["budget"], "epochs": 1})
    out = tmp_path / "inf"
    result = _search(space, out, 1)
    assert result.exit_code == 1, result.output  # the reference cannot finish: …
    assert f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed" in result.output
    trials = _study(out).trials
    reliability.fault("a non-finite metric", n=len(trials), trials=len(trials))
    assert len(trials) == MAX_CONSECUTIVE_FAILURES  # … so it stops instead of looping
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert all("non-finite metric after epoch 1: depth.abs_err" in t.user_attrs["error"]
               for t in trials)
    assert not any("metrics" in t.user_attrs for t in trials)
    assert "Traceback" not in result.output


def test_repeated_unexpected_errors_stop_the_search_with_one_line_and_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    inject_faults(monkeypatch, {n: "error" for n in range(1, 10)})
    space = _space(tmp_path, budget={**TINY_SPACE["budget"], "epochs": 2})
    out = tmp_path / "errors"
    result = _search(space, out, 5)
    assert result.exit_code == 1
    assert "3 trials in a row failed with an unexpected error; last: RuntimeError: " \
           "injected bug in the training step (finished trials are kept)" in result.output
    assert "Traceback" not in result.output
    states = [t.state for t in _study(out).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.FAIL] * 3
    before = finished_trials(out)
    # the same command, the bug fixed, resumes: 5 finished, the failures stay failed
    monkeypatch.undo()
    assert _search(space, out, 5).exit_code == 0
    after = finished_trials(out)
    reliability.fault("the same bug in every trial", n=3, trials=all_trials(out),
                      lost=lost_trials(before, after))
    assert len(after) == 5 and lost_trials(before, after) == 0


# --- 2. Ctrl-C --------------------------------------------------------------------------------

def test_ctrl_c_marks_the_running_trial_prints_a_summary_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    real_step = training.Trainer._step_losses
    calls = {"trials": 0}
    real_run_trial = training.run_trial

    def run_trial(*args: Any, reporter: Any = None, **kwargs: Any) -> training.TrialResult:
        calls["trials"] += 1
        return real_run_trial(*args, reporter=reporter, **kwargs)

    def step(trainer: training.Trainer, batch: dict) -> dict:
        if calls["trials"] == 3 and trainer.epoch == 1:  # the third trial, mid-training
            raise KeyboardInterrupt
        return real_step(trainer, batch)

    monkeypatch.setattr(training, "run_trial", run_trial)
    monkeypatch.setattr(training.Trainer, "_step_losses", step)
    space, out = _space(tmp_path), tmp_path / "ctrl-c"
    result = _search(space, out, 4)
    assert result.exit_code == 130
    assert "interrupted: 2 complete, 0 pruned, 1 failed; best Δm%" in result.output
    assert "Traceback" not in result.output
    trials = _study(out).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [
        optuna.trial.TrialState.FAIL]
    assert trials[2].user_attrs["error"] == "interrupted"
    assert set(pd.read_csv(out / "results.csv")["trial"]) == {0, 1, 2}  # written on the way out
    before = finished_trials(out)

    monkeypatch.undo()
    assert _search(space, out, 4).exit_code == 0
    reliability.fault("Ctrl-C", trials=all_trials(out),
                      lost=lost_trials(before, finished_trials(out)))
    assert lost_trials(before, finished_trials(out)) == 0
    trials = _study(out).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 5  # --trials respected, nothing twice
    assert [t.number for t in complete[:2]] == [0, 1]


# --- 3. storage faults ------------------------------------------------------------------------

def _refuse_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int,
                         after: Callable[[], bool] = lambda: True) -> None:
    """Writes (open for writing, mkdir) under ``folder`` fail with ``code`` once ``after()``."""
    real_open, real_mkdir = builtins.open, os.mkdir
    folder = folder.resolve()

    def refused(path: Any) -> bool:
        try:
            inside = Path(os.fsdecode(path)).resolve().is_relative_to(folder)
        except (TypeError, ValueError):
            return False
        return inside and after()

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") \
                and refused(file):
            raise OSError(code, os.strerror(code), os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if refused(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize(("code", "status", "ending"), [
    (errno.EROFS, 2, "Read-only file system"),  # the user can fix it: another --out
    (errno.EIO, 1, "Input/output error (an unexpected I/O error)"),
], ids=["read_only_folder_exit_2", "unexpected_io_error_exit_1"])
def test_an_output_folder_that_cannot_be_written_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, status: int,
        ending: str, reliability: Recorder) -> None:
    out = tmp_path / "cannot-write"
    space = _space(tmp_path)
    _refuse_writes_under(monkeypatch, out, code)
    result = _search(space, out, 2)
    assert result.exit_code == status, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].endswith(ending) and str(out) in lines[0]
    assert "Traceback" not in result.output
    reliability.fault(f"an output folder that cannot be written ({errno.errorcode[code]})")


def test_a_full_disk_mid_search_keeps_the_finished_trials_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    out, space = tmp_path / "full", _space(tmp_path)
    finished = {"n": 0}
    real_run_trial = training.run_trial

    def run_trial(*args: Any, **kwargs: Any) -> training.TrialResult:
        result = real_run_trial(*args, **kwargs)
        finished["n"] += 1
        return result

    monkeypatch.setattr(training, "run_trial", run_trial)
    # The disk fills up once two trials have trained: the second trial's journal entry and
    # everything after it fail to be written.
    _refuse_writes_under(monkeypatch, out, errno.ENOSPC, after=lambda: finished["n"] >= 2)
    result = _search(space, out, 4)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert "Traceback" not in result.output
    monkeypatch.undo()
    records = load_study_records(out, None, None)
    complete = [r for r in records.records if r.state == "complete"]
    assert [r.number for r in complete] == [0]  # the first trial, fully kept
    assert all(math.isfinite(v) for r in complete for m in r.metrics.values()
               for v in m.values())
    before = finished_trials(out)
    # space freed: the same command resumes and reaches its target
    assert _search(space, out, 4).exit_code == 0
    reliability.fault("a full disk", trials=all_trials(out),
                      lost=lost_trials(before, finished_trials(out)))
    assert lost_trials(before, finished_trials(out)) == 0
    assert len([t for t in _study(out).trials
                if t.state == optuna.trial.TrialState.COMPLETE]) == 4


def test_a_half_written_last_journal_line_is_cut_off_and_the_search_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], reliability: Recorder) -> None:
    # The process died (or the disk filled) in the middle of writing a record: the journal
    # ends without a newline. Reading it keeps every complete trial; resuming moves the cut
    # line aside instead of gluing the next record to it, and the search reaches its target.
    out, space = tmp_path / "cut", _space(tmp_path)
    assert _search(space, out, 2).exit_code == 0
    journal = out / JOURNAL_NAME
    data = journal.read_bytes()
    last = data[:-1].rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # half of the last record
    capsys.readouterr()
    before = finished_trials(out)
    assert before  # the complete trials are read back as they were
    # The first opening cuts the line off under the journal's lock, and says so.
    assert "its last line was cut off mid-write" in capsys.readouterr().err
    result = _search(space, out, 3)
    assert result.exit_code == 0, result.output
    assert (out / (JOURNAL_NAME + ".partial")).read_bytes() == data[last: last + (
        len(data) - last) // 2] + b"\n"
    after = finished_trials(out)
    reliability.fault("a half-written journal line", trials=all_trials(out),
                      lost=lost_trials(before, after))
    assert lost_trials(before, after) == 0 and len(after) == 3  # nothing lost, target held
    assert journal.read_bytes().endswith(b"\n")


def test_a_journal_damaged_in_the_middle_is_one_line_naming_the_line(
        tmp_path: Path, reliability: Recorder) -> None:
    # A cut-off record with others appended after it (written by a version without the repair,
    # or another tool): no reader can parse it; the error names the file and the line.
    out = tmp_path / "bad"
    out.mkdir()
    (out / JOURNAL_NAME).write_bytes(b'{"op_code":0,"worker_id":"w","study_name":"tiny",'
                                     b'"directions":[1]}\n{"op_code":4,"wor{"op_code":5}\n'
                                     b'{"op_code":5,"worker_id":"w","study_id":0}\n')
    result = runner.invoke(app, ["results", "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(out / JOURNAL_NAME) in lines[0]
    assert "line 2 is not a complete journal record" in lines[0]
    reliability.fault("a journal damaged in the middle")


def test_an_unreachable_storage_is_one_line_naming_the_flag(tmp_path: Path,
                                                           reliability: Recorder) -> None:
    result = _search(_space(tmp_path), tmp_path / "x", 2, "--storage",
                     "postgresql://nobody@127.0.0.1:9/nothing")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--storage" in lines[0]
    assert "Traceback" not in result.output
    reliability.fault("a storage that cannot be reached")


def test_a_database_storage_takes_its_heartbeat_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    for name in (HEARTBEAT_ENV, GRACE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert heartbeat_settings() == (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S)
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    monkeypatch.setenv(GRACE_ENV, " 3 ")
    storage, is_file = open_storage(url, tmp_path)
    assert not is_file and isinstance(storage, optuna.storages.RDBStorage)
    assert (storage.heartbeat_interval, storage.grace_period) == (1, 3)
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert callback._max_retry == MAX_RETRY
    # (bad values: tests/test_user_errors.py, one line and exit 2 from the commands)
    for heartbeat, grace, named in (("0", "3", HEARTBEAT_ENV), ("1", "1.5", GRACE_ENV),
                                    ("5", "5", GRACE_ENV)):
        monkeypatch.setenv(HEARTBEAT_ENV, heartbeat)
        monkeypatch.setenv(GRACE_ENV, grace)
        with pytest.raises(UserError) as caught:
            open_storage(url, tmp_path)
        assert str(caught.value).startswith(f"{named}: ")


def test_a_postgresql_url_uses_the_installed_driver_or_names_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://nobody@127.0.0.1:9/nothing"
    # (a None in sys.modules makes that import fail, as when the package is not installed)
    monkeypatch.setitem(sys.modules, "psycopg", types.ModuleType("psycopg"))
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    assert database_url(url) == "postgresql+psycopg://nobody@127.0.0.1:9/nothing"
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg2", types.ModuleType("psycopg2"))
    assert database_url(url) == url  # SQLAlchemy's default driver for postgresql://
    for other in (f"sqlite:///{tmp_path / 'x.db'}", "postgresql+psycopg2://u@h/db"):
        assert database_url(other) == other  # a driver named by the user is the user's
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(UserError, match=r"pip install 'policysearch\[postgres\]'"):
        database_url(url)
    result = _search(_space(tmp_path), tmp_path / "x", 2, "--storage", url)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {url}: --storage: postgresql:// needs a PostgreSQL driver: {POSTGRES_DRIVER_HINT}"]


# --- 6 and 7. a soak search with scheduled faults; a stored trial re-run gives its metrics ---

SOAK_TRIALS = 30
# About 20% of the trials fail, on a fixed schedule by trial number, every kind of fault.
SOAK_FAULTS = {3: "error", 8: "nan", 12: "oom", 17: "erase", 21: "error", 26: "nan",
               31: "oom", 35: "erase"}


@pytest.mark.slow
def test_soak_search_with_scheduled_faults_ends_with_the_expected_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    inject_faults(monkeypatch, SOAK_FAULTS)
    space = _space(tmp_path, dataset_options={"n_train": 32, "n_val": 16, "n_test": 16,
                                              "seed": 0})
    out = tmp_path / "soak"
    result = _search(space, out, SOAK_TRIALS)
    assert result.exit_code == 0, result.output
    trials = _study(out).trials
    assert len(trials) == SOAK_TRIALS + len(SOAK_FAULTS)
    failed = {t.number for t in trials if t.state == optuna.trial.TrialState.FAIL}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    reliability.fault("soak: scheduled faults inside trials", n=len(failed), trials=len(trials),
                      lost=SOAK_TRIALS - len(complete))
    assert failed == set(SOAK_FAULTS)
    assert len(complete) == SOAK_TRIALS
    for number, kind in SOAK_FAULTS.items():
        assert EXPECTED_ERRORS[kind] in trials[number].user_attrs["error"]
    assert all(math.isfinite(v) for v in _all_metric_values(trials))

    # The ranking: complete trials by Δm% (the study's values), best first; failures unranked.
    table = pd.read_csv(out / "results.csv")
    ranked = table[table["rank"].notna()].sort_values("rank")
    by_value = sorted(complete, key=lambda t: (-t.value, t.number))
    assert list(ranked["trial"]) == [t.number for t in by_value]
    assert ranked["delta_m"].tolist() == pytest.approx([t.value for t in by_value], abs=0.006)
    assert set(table.loc[table["rank"].isna(), "trial"]) == failed

    # 6. the best trial re-run from what the study stored (policy, budget, seed 0) on the CPU
    # gives its recorded metrics exactly.
    monkeypatch.undo()
    from policysearch.augment import Policy
    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.training import train_policy

    best = by_value[0]
    loaded = load_space(str(space))
    rerun = train_policy(Policy.from_dict(best.user_attrs["policy"]), load_dataset(loaded),
                         loaded.budget, seed=0, device="cpu", threads=1)
    assert rerun.metrics == best.user_attrs["metrics"]


def test_a_trial_failed_by_the_heartbeat_says_why_and_which_trial_ran_it_again() -> None:
    from policysearch.search.optuna_study import (
        STALE_HEARTBEAT_ERROR,
        _with_stale_reasons,
        to_record,
    )

    study = optuna.create_study()
    make = optuna.trial.create_trial
    study.add_trial(make(state=optuna.trial.TrialState.COMPLETE, value=1.0,
                         user_attrs={"role": "reference"}))
    # Trial 1 failed by the heartbeat (no reason of its own), retried as 2, which failed the
    # same way and was retried as 3 (Optuna's retries name the first trial: failed_trial 1).
    study.add_trial(make(state=optuna.trial.TrialState.FAIL))
    study.add_trial(make(state=optuna.trial.TrialState.FAIL, system_attrs={"failed_trial": 1}))
    study.add_trial(make(state=optuna.trial.TrialState.COMPLETE, value=2.0,
                         system_attrs={"failed_trial": 1}))
    study.add_trial(make(state=optuna.trial.TrialState.FAIL, user_attrs={"error": "nan"}))
    trials = study.get_trials()
    errors = [r.error for r in _with_stale_reasons(trials, [to_record(t) for t in trials])]
    assert errors == [None, f"{STALE_HEARTBEAT_ERROR}; its parameters ran again as trial 2",
                      f"{STALE_HEARTBEAT_ERROR}; its parameters ran again as trial 3", None,
                      "nan"]
