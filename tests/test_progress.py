"""Progress: the live bar on a terminal (trial k of N, epoch, best Δm%, ETA), a line per trial
otherwise, --quiet, and --json-logs for machines (search and benchmark)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml
from rich.console import Console
from typer.testing import CliRunner

from policysearch.cli import app
from policysearch.events import (
    EpochEnded,
    RunEnded,
    RunEpochEnded,
    RunStarted,
    SearchStarted,
    TrialEnded,
    TrialStarted,
    to_dict,
)
from policysearch.reporting.progress import BenchmarkBar, JsonLogPrinter, ProgressPrinter
from tests.conftest import TINY_SPACE

runner = CliRunner()


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "budget": {**TINY_SPACE["budget"],
                                                              "epochs": 1}}, sort_keys=False))
    return path


def _search(tmp_path: Path, *extra: str):
    return runner.invoke(app, ["search", "--space", str(_space(tmp_path)), "--out",
                               str(tmp_path / "s"), "--trials", "2", "--device", "cpu",
                               "--threads", "1", *extra])


def test_the_live_bar_follows_trials_and_epochs() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with ProgressPrinter(console) as printer:
        assert printer.live  # a terminal
        printer(SearchStarted(study="s", finished=0, target=5, epochs=4))
        printer(TrialStarted(trial=0, role="reference", policy="hflip", finished=0, target=5,
                             task=None))
        printer(EpochEnded(trial=0, epoch=2, metrics={}))
        task = printer._bar.tasks[0]
        assert task.description == "trial 1 of 5"
        assert "trial 0: epoch 3/4" in task.fields["status"]
        printer(TrialEnded(trial=0, state="complete", role="reference", delta_m=0.0))
        printer(TrialStarted(trial=1, role="search", policy="rotate", finished=1, target=5,
                             task=None))
        printer(TrialEnded(trial=1, state="complete", role="search", delta_m=1.5))
        task = printer._bar.tasks[0]
        assert (task.completed, task.description) == (2, "trial 3 of 5")
        assert "best Δm% +1.50 (#1)" in task.fields["status"] and "ETA" in task.fields["status"]
    assert printer._bar is None  # gone when the search ends
    assert "[2/5] trial   1 complete" in console.file.getvalue()  # the lines stay


def test_not_a_terminal_gives_lines_and_no_bar() -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    printer = ProgressPrinter(console)
    printer(SearchStarted(study="s", finished=0, target=1, epochs=1))
    assert not printer.live and printer._bar is None


def test_json_logs_turn_nan_into_null() -> None:
    stream = io.StringIO()
    JsonLogPrinter(stream)(TrialEnded(trial=3, state="complete", role="search",
                                      delta_m=float("nan"), seconds=1.0))
    record = json.loads(stream.getvalue())
    assert record["event"] == "trial_end" and record["delta_m"] is None


def test_json_log_lines_are_the_event_fields_after_its_kind_and_time() -> None:
    stream = io.StringIO()
    printer = JsonLogPrinter(stream)
    printer(TrialEnded(trial=3, state="failed", role="search", error="boom"))
    printer(TrialEnded(trial=4, state="complete", role="search", delta_m=1.25, seconds=2.0,
                       task_deltas={"seg": 0.5}))
    printer(TrialEnded(trial=5, state="pruned", role="search"))
    printer(SearchStarted(study="s", target=8, epochs=2, finished=0))
    printer(TrialStarted(trial=0, role="reference", policy="", finished=0, target=8,
                         task=None))
    lines = stream.getvalue().splitlines()
    for line in lines:  # "time" follows "event": the rest is byte for byte the fields
        assert line.startswith('{"event": "') and ', "time": ' in line
    rest = [line.split(", ", 2)[2] for line in lines]
    assert rest == ['"trial": 3, "state": "failed", "role": "search", "error": "boom"}',
                    '"trial": 4, "state": "complete", "role": "search", "delta_m": 1.25, '
                    '"seconds": 2.0, "task_deltas": {"seg": 0.5}}',
                    '"trial": 5, "state": "pruned", "role": "search"}',
                    '"study": "s", "target": 8, "epochs": 2, "finished": 0}',
                    '"trial": 0, "role": "reference", "policy": "", "finished": 0, '
                    '"target": 8, "task": null}']
    assert to_dict(RunEpochEnded(run=1, epoch=0, metrics={})) == {
        "event": "epoch", "run": 1, "epoch": 0, "metrics": {}}


def test_search_quiet_prints_only_the_files(tmp_path: Path) -> None:
    result = _search(tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote ")


def test_search_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    result = _search(tmp_path, "--json-logs")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.strip().splitlines()]
    events = [r["event"] for r in records]
    assert events[0] == "dataset" and events[-1] == "done"
    assert events.count("trial_end") == 2 and events.count("epoch") == 2
    start = next(r for r in records if r["event"] == "start")
    assert (start["target"], start["epochs"]) == (2, 1)
    ends = [r for r in records if r["event"] == "trial_end"]
    assert [r["state"] for r in ends] == ["complete", "complete"]
    assert records[-1]["best"]["trial"] in (0, 1)
    assert any(f.endswith("best_policy.yaml") for f in records[-1]["files"])


def test_benchmark_quiet_and_json_logs(tmp_path: Path) -> None:
    assert _search(tmp_path, "--quiet").exit_code == 0
    policy = tmp_path / "s" / "best_policy.yaml"
    args = ["benchmark", "--policy", str(policy), "--baselines", "none", "--seeds", "1",
            "--no-ablations", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "b")]
    logged = runner.invoke(app, [*args, "--json-logs"])
    assert logged.exit_code == 0, logged.output
    records = [json.loads(line) for line in logged.output.strip().splitlines()]
    assert records[-1]["event"] == "done"
    assert {row["contender"] for row in records[-1]["summary"]} == {"searched", "none",
                                                                     "flipcrop"}
    # Three runs of one epoch each: a start, an epoch and an end per run.
    runs = [(r["event"], r["run"]) for r in records
            if r["event"] in ("run_start", "epoch", "run_end")]
    assert runs == [(e, k) for k in (1, 2, 3) for e in ("run_start", "epoch", "run_end")]
    assert all(r["runs"] == 3 for r in records if r["event"] == "run_start")
    quiet = runner.invoke(app, [*args, "--quiet"])  # the runs are reused
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.strip().splitlines()[0].startswith("wrote ")


def test_the_benchmark_bar_follows_runs_and_epochs() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with BenchmarkBar(console) as bar:
        assert bar.live
        bar(RunStarted(run=1, runs=3, contender="searched", seed=1, epochs=4))
        bar(RunEpochEnded(run=1, epoch=1, metrics={}))
        task = bar._bar.tasks[0]
        assert task.description == "run 1 of 3: searched, seed 1"
        assert task.fields["status"] == "epoch 2/4"  # no ETA before a run has finished
        bar(RunEnded(run=1, runs=3, contender="searched", seed=1, seconds=40.0))
        bar(RunStarted(run=2, runs=3, contender="none", seed=1, epochs=4))
        bar(RunEpochEnded(run=2, epoch=0, metrics={}))
        task = bar._bar.tasks[0]
        assert task.description == "run 2 of 3: none, seed 1" and task.completed == 1.25
        # 40 s a run: the rest of this run (3 of 4 epochs) and one more run = 70 s.
        assert task.fields["status"] == "epoch 1/4  ETA 1:10"
    assert bar._bar is None
    quiet = BenchmarkBar(Console(file=io.StringIO(), force_terminal=False))
    quiet(RunStarted(run=1, runs=1, contender="none", seed=1, epochs=1))
    assert quiet._bar is None  # not a terminal: no bar
