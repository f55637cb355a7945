"""Multi-objective (pareto) studies: per-task Δ%, the Pareto front in the results table, the
engine's one objective per task without pruning, export from the front."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch.augment import get_baseline
from policysearch.cli import app
from policysearch.config import SearchSpace
from policysearch.errors import UserError
from policysearch.events import PruningOff, TrialEnded
from policysearch.exports.best_policy import pick_trial
from policysearch.records import StudyRecords, TrialRecord, delta_m, task_deltas
from policysearch.reporting.tables import pareto_optimal, results_frame, to_markdown
from policysearch.search.optuna_engine import PRUNING_OFF, optimize
from policysearch.search.optuna_study import JOURNAL_NAME
from policysearch.search.sampling import make_sampler
from policysearch.training import TrialResult
from tests.conftest import TINY_SPACE

runner = CliRunner()

INFO = {
    "cls": {"accuracy": {"higher": True, "primary": True},
            "macro_f1": {"higher": True, "primary": False}},
    "depth": {"abs_err": {"higher": False, "primary": True},
              "rel_err": {"higher": False, "primary": True}},
}
TASKS = {"cls": "classification", "depth": "depth"}


def _metrics(acc: float, abs_err: float) -> dict:
    return {"cls": {"accuracy": acc, "macro_f1": acc}, "depth": {"abs_err": abs_err,
                                                                 "rel_err": 0.5}}


def test_task_deltas_are_the_per_task_terms_of_delta_m() -> None:
    ref = _metrics(0.5, 2.0)
    metrics = {"cls": {"accuracy": 0.6, "macro_f1": 0.1},
               "depth": {"abs_err": 1.0, "rel_err": 0.6}}
    deltas, notes = task_deltas(metrics, ref, INFO)
    # cls: +20 (macro_f1 is not primary); depth: mean of +50 (abs_err) and -20 (rel_err).
    assert deltas == pytest.approx({"cls": 20.0, "depth": 15.0}) and notes == []
    assert delta_m(metrics, ref, INFO)[0] == pytest.approx(17.5)
    assert delta_m(metrics, ref, INFO, {"cls": 3.0})[0] == pytest.approx((3 * 20 + 15) / 4)
    ref["cls"]["accuracy"] = 0.0  # a ~0 reference metric leaves its task without a Δ%
    deltas, notes = task_deltas(metrics, ref, INFO)
    assert set(deltas) == {"depth"} and "cls.accuracy" in notes[0]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def test_pareto_optimal_on_points() -> None:
    points = [[20, 0], [0, 50], [10, 25], [0, -10], [20, 10], [10, 25]]
    marks = pareto_optimal(points)
    assert marks == [False, True, True, False, True, True]  # equal points both stay
    for point, mark in zip(points, marks, strict=True):
        dominated = any(_dominates(other, point) for other in points)
        assert mark is not dominated
    assert pareto_optimal([]) == [] and pareto_optimal([[1.0]]) == [True]


def _pareto_study() -> StudyRecords:
    def rec(n: int, acc: float, abs_err: float, state: str = "complete",
            role: str = "search") -> TrialRecord:
        return TrialRecord(number=n, state=state, role=role, metrics=_metrics(acc, abs_err),
                           policy=None, epochs=1)

    return StudyRecords(name="p", metrics_info=INFO, objective="pareto", records=[
        rec(0, 0.5, 2.0, role="reference"),  # Δ% (0, 0)
        rec(1, 0.6, 2.0),     # (+20, 0): dominated by 5
        rec(2, 0.5, 0.9),     # (0, +27.5): best Δm% (13.75), best on depth
        rec(3, 0.55, 1.5),    # (+10, +12.5): Δm% 11.25
        rec(4, 0.5, 2.2),     # (0, -5): dominated
        rec(5, 0.6, 1.8),     # (+20, +5): best on cls, Δm% 12.5
        rec(6, 0.55, 1.5),    # equal to 3: both on the front
        rec(7, 0.9, 0.1, state="pruned"),  # better everywhere, but not complete
        TrialRecord(number=8, state="failed", error="boom"),
    ])


def test_results_frame_marks_the_front_of_complete_search_trials() -> None:
    frame = results_frame(_pareto_study())
    by_trial = frame.set_index("trial")
    assert by_trial.loc[3, "delta.cls"] == pytest.approx(10.0)
    assert by_trial.loc[3, "delta.depth"] == pytest.approx(12.5)
    assert set(frame.loc[frame["pareto"], "trial"]) == {2, 3, 5, 6}
    assert not by_trial.loc[[0, 7, 8], "pareto"].any()
    # The property: no marked trial is dominated; every unmarked complete one is.
    search = frame[frame["role"].eq("search") & frame["state"].eq("complete")]
    points = {int(r.trial): [r["delta.cls"], r["delta.depth"]] for _, r in search.iterrows()}
    for trial, point in points.items():
        dominated = any(_dominates(other, point) for other in points.values())
        assert bool(by_trial.loc[trial, "pareto"]) is not dominated
    # Ranks stay by Δm% over every complete trial, the reference included.
    assert list(frame["trial"][:4]) == [2, 5, 3, 6] and frame["rank"][:6].tolist() == [*range(1, 7)]
    assert "Multi-objective study" in to_markdown(frame)


def test_a_front_is_empty_until_a_search_trial_completes() -> None:
    study = _pareto_study()
    study.records = study.records[:1]
    frame = results_frame(study)
    assert frame["pareto"].tolist() == [False] and frame["rank"].tolist() == [1]


def test_a_single_objective_study_has_no_pareto_column() -> None:
    study = _pareto_study()
    study.objective = "delta_m"
    frame = results_frame(study)
    assert "pareto" not in frame.columns and "delta.cls" not in frame.columns
    assert "Multi-objective" not in to_markdown(frame)


def test_pick_from_the_front() -> None:
    study = _pareto_study()
    policy = get_baseline("flipcrop", TASKS).to_dict()
    for r in study.records:
        r.policy = policy
    _, prov = pick_trial(study, None, front=True)
    assert prov["trial"] == 2 and prov["picked"] == "Pareto front (4 trials): best Δm%"
    assert prov["task_deltas"] == {"cls": 0.0, "depth": 27.5}
    _, prov = pick_trial(study, None, priority="cls")  # implies the front
    assert prov["trial"] == 5 and prov["picked"].endswith("best Δ% on cls, ties by Δm%")
    _, prov = pick_trial(study, None, priority="depth")
    assert prov["trial"] == 2
    _, prov = pick_trial(study, 5)  # --rank ranks every complete trial, front or not
    assert prov["trial"] == 1 and prov["picked"] == "rank 5 by Δm%"
    with pytest.raises(UserError, match="--priority: unknown task 'seg'; the study has cls, d"):
        pick_trial(study, None, priority="seg")
    _, prov = pick_trial(study, 2, front=True)  # the front by Δm%: 2, 5, then 3 and 6
    assert prov["trial"] == 5 and prov["picked"] == "Pareto front (4 trials): number 2 by Δm%"
    _, prov = pick_trial(study, 2, priority="cls")  # by cls: 5, then 3 and 6 (tie: trial)
    assert prov["trial"] == 3 and "number 2 by Δ% on cls" in prov["picked"]
    with pytest.raises(UserError, match="--rank: with --front, rank must be between 1 and 4"):
        pick_trial(study, 5, front=True)
    study.objective = "delta_m"
    with pytest.raises(UserError, match="--front: study p is not multi-objective"):
        pick_trial(study, None, front=True)


def test_final_weights_replace_the_policy_weights() -> None:
    study = _pareto_study()
    study.records[1].policy = {"weighting": {"method": "static",
                                             "weights": {"cls": 2.0, "depth": 0.5}}}
    study.records[2].policy = dict(study.records[1].policy)
    study.records[2].final_weights = {"cls": 0.7, "depth": 1.3}
    frame = results_frame(study).set_index("trial")
    assert frame.loc[1, "w.cls"] == 2.0 and frame.loc[2, "w.cls"] == 0.7


def _fake_search(out: Path, objective: str, n_trials: int = 6) -> tuple[list, list]:
    """optimize() with a runner that trains nothing: trial i gets made-up metrics."""
    space = SearchSpace.model_validate({
        "name": "fake", "shared": {"slots": 1, "ops": ["identity", "rotate"]},
        "objective": objective, "sampler": {"name": "random"},
        "pruner": {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0}})
    counter = itertools.count()
    events: list = []

    def run(policy, reporter) -> TrialResult:  # noqa: ANN001
        i = next(counter)
        metrics = _metrics(0.5 + 0.04 * ((i * 3) % 5 - 2), 1.0 + 0.2 * ((i * 2) % 5))
        reporter.report(0, metrics)
        return TrialResult(metrics=metrics, epochs=1, weights={"cls": 1.5, "depth": 0.5})

    optimize(space, tasks=TASKS, metrics_info=INFO, dataset_name="fake", runner=run,
             n_trials=n_trials, out_dir=out, progress=events.append)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    return optuna.load_study(study_name="fake", storage=storage).get_trials(), events


def test_the_engine_tells_one_value_per_task_and_never_prunes(tmp_path: Path) -> None:
    trials, events = _fake_search(tmp_path, "pareto")
    assert sum(isinstance(e, PruningOff) for e in events) == 1
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and len(trials) == 6
    assert trials[0].user_attrs["role"] == "reference" and trials[0].values == [0.0, 0.0]
    ref = trials[0].user_attrs["metrics"]
    for t in trials:
        expected = task_deltas(t.user_attrs["metrics"], ref, INFO)[0]
        assert t.values == pytest.approx([expected["cls"], expected["depth"]])
        assert t.user_attrs["final_weights"] == {"cls": 1.5, "depth": 0.5}
    ends = [e for e in events if isinstance(e, TrialEnded) and e.role == "search"]
    assert set(ends[0].task_deltas or {}) == {"cls", "depth"}


def test_a_delta_m_study_refuses_export_front(tmp_path: Path) -> None:
    trials, events = _fake_search(tmp_path, "delta_m", n_trials=3)
    assert not any(isinstance(e, PruningOff) for e in events)
    assert len(trials[0].values) == 1
    result = runner.invoke(app, ["export", "--out", str(tmp_path), "--front"])
    assert result.exit_code == 2
    assert "--front: study fake is not multi-objective (objective delta_m)" in result.output
    table = runner.invoke(app, ["results", "--out", str(tmp_path), "--format", "csv"])
    assert table.exit_code == 0 and "pareto" not in table.output.splitlines()[0]


@pytest.mark.slow
def test_a_pareto_search_through_the_cli(tmp_path: Path) -> None:
    space = {**TINY_SPACE, "per_task": {"tasks": [], "slots": 0},
             "budget": {**TINY_SPACE["budget"], "epochs": 1},
             "pruner": {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    out = tmp_path / "run"
    args = ["search", "--space", str(path), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--trials", "4", "--objective", "pareto"])
    assert result.exit_code == 0, result.output
    assert result.output.count(PRUNING_OFF) == 1

    tasks = ["shape", "seg", "objects", "depth"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.directions) == len(tasks)
    assert study.trials[0].values == [0.0] * len(tasks)

    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and table["rank"].notna().all()
    front = table[table["pareto"]]
    assert len(front) >= 1 and not table.loc[table["role"] == "reference", "pareto"].any()
    searched = table[(table["role"] == "search") & (table["state"] == "complete")]
    # a task whose Δ% is undefined (its reference metric ~0 after one epoch) decides nothing
    defined = [t for t in tasks if searched[f"delta.{t}"].notna().all()]
    points = {int(r["trial"]): [r[f"delta.{t}"] for t in defined] for _, r in searched.iterrows()}

    def dominated(n: int) -> bool:
        return any(all(a >= b for a, b in zip(other, points[n], strict=True))
                   and other != points[n] for m, other in points.items() if m != n)

    for n in points:  # the front is exactly the non-dominated complete search trials
        assert (n in set(front["trial"])) == (not dominated(n)), (n, points)
    assert "Multi-objective study" in (out / "results.md").read_text()
    best = yaml.safe_load((out / "best_policy.yaml").read_text())["provenance"]
    assert best["picked"].startswith("Pareto front") and best["trial"] in set(front["trial"])

    target = tmp_path / "seg.yaml"
    result = runner.invoke(app, ["export", "--out", str(out), "--front", "--priority", "seg",
                                 "--to", str(target)])
    assert result.exit_code == 0, result.output
    prov = yaml.safe_load(target.read_text())["provenance"]
    assert prov["trial"] == int(front.sort_values(["delta.seg", "delta_m"],
                                                  ascending=False)["trial"].iloc[0])
    assert "best Δ% on seg" in prov["picked"]
    result = runner.invoke(app, ["export", "--out", str(out), "--rank", "2", "--to",
                                 str(tmp_path / "r2.yaml")])
    assert result.exit_code == 0 and "rank 2 by Δm%" in result.output
    result = runner.invoke(app, ["export", "--out", str(out), "--priority", "colour"])
    assert result.exit_code == 2 and "--priority: unknown task 'colour'" in result.output

    # The objective is part of the study's definition: another one is refused on resume.
    result = runner.invoke(app, [*args, "--trials", "5", "--objective", "delta_m"])
    assert result.exit_code == 2
    assert "refusing to resume" in result.output and "objective" in result.output


def test_nsga2_sampler_from_the_space() -> None:
    space = SearchSpace.model_validate(
        {**TINY_SPACE, "objective": "pareto",
         "sampler": {"name": "nsga2", "population_size": 6}})
    sampler = make_sampler(space, seed=0, n_existing=0)
    assert isinstance(sampler, optuna.samplers.NSGAIISampler)
    assert sampler._population_size == 6
    with pytest.raises(Exception, match="population_size"):
        SearchSpace.model_validate({**TINY_SPACE, "sampler": {"name": "nsga2",
                                                              "population_size": 1}})
