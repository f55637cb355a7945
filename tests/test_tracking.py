"""``search --log-to tensorboard|mlflow``: every trial's per-epoch metrics, final Δm% and
searched parameters, read back with each tool's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import policysearch as ps
from policysearch.cli import app
from tests.reliability_counts import Recorder

runner = CliRunner()
TRIALS, EPOCHS = 3, 2  # TINY_SPACE trains 2 epochs per trial


def _search(tiny_space: Path, out: Path, target: str) -> None:
    result = runner.invoke(app, ["search", "--space", str(tiny_space), "--out", str(out),
                                 "--trials", str(TRIALS), "--device", "cpu", "--quiet",
                                 "--log-to", target])
    assert result.exit_code == 0, result.output


def test_tensorboard_has_each_trials_curves_and_params(tiny_space: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    _search(tiny_space, out, "tensorboard")
    records = {r.number: r for r in ps.records(out).records}
    folders = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert folders == [f"trial-{n:05d}" for n in sorted(records)]
    for number, record in records.items():
        events = EventAccumulator(str(out / "tensorboard" / f"trial-{number:05d}"))
        events.Reload()
        accuracy = events.Scalars("shape/accuracy")
        assert [e.step for e in accuracy] == list(range(1, EPOCHS + 1))
        assert accuracy[-1].value == pytest.approx(record.metrics["shape"]["accuracy"])
        assert "delta_m" in events.Tags()["scalars"]
        if record.role == "search":
            assert "params/text_summary" in events.Tags()["tensors"]


def test_mlflow_has_one_run_per_trial(tiny_space: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "ml"
    _search(tiny_space, out, "mlflow")
    records = {r.number: r for r in ps.records(out).records}
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {f"trial-{n:05d}" for n in records}
    for number, record in records.items():
        run = runs[f"trial-{number:05d}"]
        assert run.info.status == "FINISHED" and run.data.tags["policysearch.state"] == "complete"
        history = client.get_metric_history(run.info.run_id, "shape/accuracy")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert run.data.metrics["shape/accuracy"] == pytest.approx(
            record.metrics["shape"]["accuracy"])
        assert "delta_m" in run.data.metrics
        assert run.data.params == {k: str(v) for k, v in (record.params or {}).items()}
    assert (out / "mlartifacts").exists() is False  # nothing but the database in OUT


def test_unknown_target_is_refused(tiny_space: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "--space", str(tiny_space), "--out",
                                 str(tmp_path / "x"), "--log-to", "wandb"])
    assert result.exit_code == 2 and "--log-to" in result.output


def test_a_store_that_cannot_be_opened_is_one_line_before_any_trial(tiny_space: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "bad"
    (out / "mlflow.db").mkdir(parents=True)  # a folder where the database file should be
    result = runner.invoke(app, ["search", "--space", str(tiny_space), "--out", str(out),
                                 "--trials", "2", "--device", "cpu", "--log-to", "mlflow"])
    assert result.exit_code == 2, result.output
    assert "cannot open the mlflow log" in result.output and "--log-to" in result.output
    assert not (out / "study.journal").exists()  # no trial ran


def test_a_failing_tracker_is_switched_off_and_the_search_goes_on() -> None:
    from policysearch.events import EpochEnded, SearchEvent, TrackingFailed, TrialStarted
    from policysearch.reporting.tracking import TrackedProgress, _Tracker

    class Broken(_Tracker):
        def metrics(self, number: int, values: dict, step: int) -> None:
            raise OSError("database is locked")

    seen: list[SearchEvent] = []
    tracked = TrackedProgress(Broken(), seen.append)
    tracked(TrialStarted(trial=0, role="reference", policy="hflip", finished=0, target=2,
                         task=None))
    tracked(EpochEnded(trial=0, epoch=0, metrics={"shape": {"accuracy": 0.5}}))
    tracked(EpochEnded(trial=0, epoch=1, metrics={"shape": {"accuracy": 0.6}}))
    assert [e.kind for e in seen] == ["trial_start", "tracking_failed", "epoch", "epoch"]
    assert seen[1] == TrackingFailed(error="database is locked") and tracked.tracker is None


def test_a_tracker_failing_inside_a_real_search_is_switched_off_and_the_search_goes_on(
        tiny_space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    """The same inside a real search: TensorBoard's writer fails at trial 1's first epoch (a
    full disk, a locked file). The search says so once, logs nothing more, and reaches its
    target with every trial kept."""
    from policysearch.reporting.tracking import TensorBoardTracker

    real = TensorBoardTracker.metrics

    def metrics(self: TensorBoardTracker, number: int, values: dict, step: int) -> None:
        if number == 1:
            raise OSError("No space left on device")
        real(self, number, values, step)

    monkeypatch.setattr(TensorBoardTracker, "metrics", metrics)
    out = tmp_path / "tb"
    result = runner.invoke(app, ["search", "--space", str(tiny_space), "--out", str(out),
                                 "--trials", str(TRIALS), "--device", "cpu",
                                 "--log-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "--log-to stopped logging" in line]
    assert said == ["--log-to stopped logging: No space left on device; the search goes on"]
    records = ps.records(out).records
    assert [r.state for r in records] == ["complete"] * TRIALS
    reliability.fault("--log-to fails mid-search", trials=len(records),
                      lost=TRIALS - len(records))
    # Trial 0 was logged in full; nothing after the failure was.
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["trial-00000",
                                                                      "trial-00001"]
