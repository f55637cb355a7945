"""Finalist racing (``search --finalists K --finalist-seeds S``): the K best trials and the
reference trained again with seeds no trial used, through the re-evaluation; the export is the
finalist with the best mean Δm% over those seeds; stored runs are reused."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch import load_policy, training
from policysearch.augment import Policy
from policysearch.cli import app
from policysearch.config import SearchSpace
from policysearch.data import loading
from policysearch.events import FinalistsProgress, FinalistsStarted, SearchEvent
from policysearch.exports.best_policy import pick_finalist, pick_trial
from policysearch.records import StudyRecords
from policysearch.reporting.progress import finalists_line
from policysearch.reporting.report import write_report
from policysearch.reporting.tables import results_frame, to_markdown
from policysearch.search.finalists import plan_finalists, race_finalists
from policysearch.search.options import SearchOptions, SearchRun
from policysearch.search.optuna_engine import optimize
from policysearch.search.optuna_study import JOURNAL_NAME, load_records
from policysearch.training import TrialResult
from tests.conftest import TINY_SPACE

runner = CliRunner()
INFO = {"cls": {"accuracy": {"higher": True, "primary": True}},
        "depth": {"abs_err": {"higher": False, "primary": True}}}
TASKS = {"cls": "classification", "depth": "depth"}
EPOCHS = 2


def _metrics(acc: float) -> dict:
    return {"cls": {"accuracy": acc}, "depth": {"abs_err": 2.0}}


def _study(out: Path) -> StudyRecords:
    """Trial 0 the reference (accuracy 0.5), trial i accuracy 0.5 + 0.05·i with the study's
    seed 0: trial 3 ranks first (Δm% +15), trial 2 second (+10), trial 1 third (+5)."""
    space = SearchSpace.model_validate({
        "name": "fake", "shared": {"slots": 1, "ops": ["identity", "rotate", "brightness"]},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "budget": {"epochs": EPOCHS}})
    counter = itertools.count()

    def run(policy, reporter) -> TrialResult:  # noqa: ANN001
        return TrialResult(metrics=_metrics(0.5 + 0.05 * next(counter)), epochs=EPOCHS)

    optimize(space, tasks=TASKS, metrics_info=INFO, dataset_name="fake", runner=run,
             n_trials=4, out_dir=out)
    return load_records(out_dir=out, storage=None, study_name=None)


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[int | None, int]]:
    """The study of ``_study`` in tmp_path, and training replaced: returns the (trial, seed)
    of every run (trial None: the reference). With any seed but 0, trial 2 (rank 2) reaches
    accuracy 0.8 (Δm% +30) and trial 3 (rank 1) only 0.55 (+5): rank 1 was a lucky seed."""
    records = _study(tmp_path)
    by_summary = {Policy.from_dict(dict(r.policy or {})).summary(): r.number
                  for r in records.records if r.role == "search"}
    calls: list[tuple[int | None, int]] = []

    def train(policy, dataset, budget, *, seed, device, threads, reporter=None):  # noqa: ANN001, ANN202
        trial = by_summary.get(policy.summary()) if "crop(" not in policy.summary() else None
        calls.append((trial, seed))
        acc = {None: 0.5, 2: 0.8, 3: 0.55}.get(trial, 0.5 + 0.05 * (trial or 0))
        return TrialResult(metrics=_metrics(acc), epochs=budget.epochs, seconds=0.5)

    monkeypatch.setattr(training, "train_policy", train)
    monkeypatch.setattr(loading, "load_dataset", lambda space: SimpleNamespace(
        tasks=[SimpleNamespace(name=t) for t in TASKS]))
    return calls


def _run(out: Path, events: list[SearchEvent], finalists: int, seeds: int) -> SearchRun:
    """What ``race_finalists`` reads of a search: its options, study and listener."""
    options = SearchOptions(out=out, finalists=finalists, finalist_seeds=seeds, device="cpu")
    return SearchRun(options=options, space=None, dataset=None, tasks=TASKS,  # type: ignore[arg-type]
                     metrics_info=INFO, dataset_notes=[], study_name="fake", out_dir=out,
                     threads=1, progress=events.append)


def test_the_best_mean_over_fresh_seeds_is_exported_not_the_lucky_seed(
        tmp_path: Path, trained: list[tuple[int | None, int]]) -> None:
    records = load_records(out_dir=tmp_path, storage=None, study_name=None)
    assert pick_trial(records)[1]["trial"] == 3  # rank 1 by the study's seed
    plan = plan_finalists(records, 2, 3)
    assert (plan.trials, plan.seeds, plan.runs, plan.stored) == ([3, 2], [1, 2, 3], 9, 0)
    assert finalists_line(plan.event()).endswith(
        f"9 runs of {EPOCHS} epochs = {9 * EPOCHS} trial-epochs at most; 0 stored, 9 to train "
        f"({9 * EPOCHS} trial-epochs)")

    events: list[SearchEvent] = []
    records = race_finalists(_run(tmp_path, events, 2, 3), records)
    # Seeds 1-3, never the study's seed 0; per seed the reference first, then the finalists.
    assert trained == [(None, 1), (3, 1), (2, 1), (None, 2), (3, 2), (2, 2),
                       (None, 3), (3, 3), (2, 3)]
    assert events[0] == plan.event()
    assert all(isinstance(e, FinalistsProgress) for e in events[1:])
    assert events[-1].message == "re-evaluation: trained 9 runs, reused 0 stored runs"

    policy, provenance = pick_finalist(records, 2)
    assert provenance["trial"] == 2 and provenance["rank"] == 2
    assert provenance["seeds"] == [1, 2, 3]
    assert provenance["delta_m_mean"] == pytest.approx(60.0 / 2)  # +60 % accuracy, 2 tasks
    assert provenance["delta_m"] == pytest.approx(10.0)  # its own trial, with the study's seed
    assert "nothing better than the reference" not in provenance["picked"]
    finalists = {f["trial"]: f for f in provenance["finalists"]}
    assert set(finalists) == {2, 3} and finalists[3]["mean"] == pytest.approx(5.0)
    assert finalists[3]["delta_m"] == pytest.approx(15.0)
    # Every seed gives the same Δm% here: the interval is the mean itself.
    assert finalists[2]["interval"] == pytest.approx([30.0, 30.0])
    assert policy.provenance == provenance

    # The table shows the finalists' mean, interval and seeds, and counts their cost apart.
    frame = results_frame(records).set_index("trial")
    assert frame.loc[2, ["delta_m_mean", "delta_m_low", "delta_m_high"]].tolist() == \
        pytest.approx([30.0, 30.0, 30.0])
    assert frame.loc[2, "seeds"] == 3 and pd.isna(frame.loc[1, "seeds"])
    text = to_markdown(results_frame(records))
    assert (f"plus {9 * EPOCHS} trial-epochs in 9 re-runs beside the study (finalists, "
            f"re-evaluation) = 9.0 full trainings, 0.1 min") in text
    assert "trial-epochs over 4 trials" in text  # the trials' own count is unchanged
    html = write_report(records, tmp_path / "report.html", preview=False).read_text()
    assert "re-runs beside the study (finalists, re-evaluation; not trials)" in html
    assert "delta_m_low" in html and "delta_m_high" in html
    assert "best mean Δm% over re-run seeds (trial 2, 3 seeds)" in html


def test_an_export_says_when_the_reference_beat_every_finalist(
        tmp_path: Path, trained: list[tuple[int | None, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # On the fresh seeds the reference (accuracy 0.9) beats both finalists: the export still
    # names the best finalist, and says that nothing searched beat the reference.
    def train(policy, dataset, budget, *, seed, device, threads, reporter=None):  # noqa: ANN001, ANN202
        acc = 0.9 if "crop(" in policy.summary() else 0.6
        return TrialResult(metrics=_metrics(acc), epochs=budget.epochs, seconds=0.5)

    monkeypatch.setattr(training, "train_policy", train)
    records = race_finalists(_run(tmp_path, [], 2, 1),
                             load_records(out_dir=tmp_path, storage=None, study_name=None))
    _, provenance = pick_finalist(records, 2)
    assert provenance["delta_m_mean"] < 0
    assert provenance["picked"].endswith("the search found nothing better than the reference")


def test_a_resumed_race_trains_only_what_is_missing(
        tmp_path: Path, trained: list[tuple[int | None, int]]) -> None:
    records = load_records(out_dir=tmp_path, storage=None, study_name=None)
    race_finalists(_run(tmp_path, [], 1, 2), records)
    assert trained == [(None, 1), (3, 1), (None, 2), (3, 2)]
    trained.clear()
    events: list[SearchEvent] = []
    records = load_records(out_dir=tmp_path, storage=None, study_name=None)
    records = race_finalists(_run(tmp_path, events, 2, 2), records)
    assert trained == [(2, 1), (2, 2)]  # the new finalist only
    started = events[0]
    assert isinstance(started, FinalistsStarted)
    assert (started.runs, started.stored) == (6, 4)
    assert pick_finalist(records, 2)[1]["trial"] == 2
    # Off: no run, no event.
    trained.clear()
    events.clear()
    assert race_finalists(_run(tmp_path, events, 0, 2), records) is records
    assert trained == [] and events == []


def test_bad_finalist_options_are_one_line_exit_2(tiny_space: Path, tmp_path: Path) -> None:
    for extra, message in [
        (["--finalists", "-1"], "--finalists: must be at least 0"),
        (["--finalists", "2", "--finalist-seeds", "0"], "--finalist-seeds: must be at least 1"),
        (["--finalists", "2", "--objective", "pareto"],
         "--finalists: finalists are raced by Δm%"),
    ]:
        result = runner.invoke(app, ["search", "--space", str(tiny_space), "--out",
                                     str(tmp_path / "run"), "--device", "cpu", *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
        assert not (tmp_path / "run" / JOURNAL_NAME).exists()


@pytest.mark.slow
def test_search_with_finalists_through_the_cli(tmp_path: Path) -> None:
    space = {**TINY_SPACE, "per_task": {"tasks": [], "slots": 0},
             "dataset_options": {"n_train": 16, "n_val": 8, "n_test": 8, "seed": 0},
             "budget": {**TINY_SPACE["budget"], "epochs": 1}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    out = tmp_path / "run"
    argv = ["search", "--space", str(path), "--out", str(out), "--trials", "3", "--device",
            "cpu", "--no-report", "--finalists", "2", "--finalist-seeds", "2"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "finalists: trials" in result.output
    assert "6 runs of 1 epochs = 6 trial-epochs at most; 0 stored, 6 to train" in result.output
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    reruns = sorted(k for k in study.user_attrs if k.startswith("rerun:"))
    assert len(study.trials) == 3 and len(reruns) == 6
    assert {k.rsplit(":", 1)[1] for k in reruns} == {"1", "2"}  # never the study's seed 0

    provenance = load_policy(out / "best_policy.yaml").provenance
    finalists = provenance["finalists"]
    assert len(finalists) == 2 and all(f["seeds"] == [1, 2] for f in finalists)
    assert provenance["delta_m_mean"] == max(f["mean"] for f in finalists)
    table = pd.read_csv(out / "results.csv")
    raced = table[table["seeds"].notna()]
    assert sorted(raced["trial"]) == sorted(f["trial"] for f in finalists)
    assert (raced["delta_m_low"] <= raced["delta_m_mean"]).all()
    assert "6 re-runs beside the study" in (out / "results.md").read_text()

    # The same command again: nothing new to train, the same export.
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "0 stored" not in result.output and "6 stored, 0 to train" in result.output
    assert "trained 0 runs, reused 6 stored runs" in result.output
    assert load_policy(out / "best_policy.yaml").provenance == provenance
