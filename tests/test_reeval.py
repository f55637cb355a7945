"""Re-evaluation beside a study: the best trials and the reference trained with extra seeds,
other baselines as the reference; stored runs reused, trial counts and definition unchanged."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import scipy.stats
import yaml
from typer.testing import CliRunner

from policysearch import training
from policysearch.cli import app
from policysearch.config import SearchSpace
from policysearch.data import loading
from policysearch.errors import UserError
from policysearch.evaluation.reeval import reevaluate, study_space
from policysearch.reporting.tables import results_frame, seed_noise_line, to_markdown
from policysearch.search.optuna_engine import optimize
from policysearch.search.optuna_study import JOURNAL_NAME, study_records
from policysearch.training import TrialResult
from tests.conftest import TINY_SPACE

runner = CliRunner()

INFO = {
    "cls": {"accuracy": {"higher": True, "primary": True}},
    "depth": {"abs_err": {"higher": False, "primary": True}},
}
TASKS = {"cls": "classification", "depth": "depth"}


def _metrics(acc: float, abs_err: float) -> dict:
    return {"cls": {"accuracy": acc}, "depth": {"abs_err": abs_err}}


def _study(out: Path, n_trials: int = 4, broken_op: str | None = None,
           single_task_reference: bool = False) -> optuna.Study:
    """A study made by the engine with a runner that trains nothing (seed 0); ``broken_op``
    replaces the last trial's stored shared ops (as if stored by a version with that op)."""
    space = SearchSpace.model_validate({
        "name": "fake", "shared": {"slots": 1, "ops": ["identity", "rotate"]},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "single_task_reference": single_task_reference})
    counter = itertools.count()

    def run(policy, reporter) -> TrialResult:  # noqa: ANN001
        i = next(counter)  # trial i: Δm% = (10·i + 0) / 2 against the reference (i = 0)
        if broken_op and i == n_trials - 1:
            stored = {**policy.to_dict(), "shared": [{"op": broken_op, "p": 0.5,
                                                      "magnitude": 0.5}]}
            reporter.trial.set_user_attr("policy", stored)
        return TrialResult(metrics=_metrics(0.5 + 0.05 * i, 2.0), epochs=1)

    optimize(space, tasks=TASKS, metrics_info=INFO, dataset_name="fake", runner=run,
             n_trials=n_trials, out_dir=out)
    return _load(out)


def _load(out: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    return optuna.load_study(study_name="fake", storage=storage)


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Replace training by made-up metrics; returns the (policy kind, seed) of every run,
    the kind suffixed with its task for a single-task network.

    At seed s: the flipcrop reference gets accuracy 0.5, randaugment 0.4, a searched policy
    0.5 + 0.1·s; abs_err is 2 for all.
    """
    calls: list[tuple[str, int]] = []

    def train(policy, dataset, budget, *, seed, device, threads, reporter=None):  # noqa: ANN001, ANN202
        summary = policy.summary()
        kind = ("flipcrop" if "crop(" in summary
                else "randaugment" if "randaugment(" in summary else "trial")
        task = f":{next(iter(policy.tasks))}" if len(policy.tasks) == 1 else ""
        calls.append((kind + task, seed))
        acc = {"flipcrop": 0.5, "randaugment": 0.4}.get(kind, 0.5 + 0.1 * seed)
        return TrialResult(metrics=_metrics(acc, 2.0), epochs=1, seconds=0.5)

    monkeypatch.setattr(training, "train_policy", train)
    monkeypatch.setattr(loading, "load_dataset", lambda space: SimpleNamespace(
        tasks=[SimpleNamespace(name=t) for t in TASKS]))
    return calls


def _reruns(study: optuna.Study) -> dict:
    return {k: v for k, v in study.user_attrs.items() if k.startswith("rerun:")}


def test_reeval_stores_runs_beside_the_study_and_reuses_them(
        tmp_path: Path, trained: list[tuple[str, int]]) -> None:
    study = _study(tmp_path)
    definition = study.user_attrs["definition"]
    assert study_space(study_records(study)).canonical() == definition["space"]
    lines: list[str] = []
    records = reevaluate(out_dir=tmp_path, storage=None, study_name=None, top=2, seeds=2,
                         device="cpu", progress=lines.append)
    # Per extra seed: the reference first, then the two best trials (3 and 2).
    assert trained == [("flipcrop", 1), ("trial", 1), ("trial", 1),
                       ("flipcrop", 2), ("trial", 2), ("trial", 2)]
    assert lines[0].startswith("loading dataset shapes")
    assert lines[1] == "re-run 1/6: reference flipcrop, seed 1 (0.5 s)"
    assert lines[2] == "re-run 2/6: trial 3, seed 1: Δm% +10.00 (0.5 s)"
    assert lines[-1] == "re-evaluation: trained 6 runs, reused 0 stored runs"

    study = _load(tmp_path)
    assert len(study.trials) == 4 and study.user_attrs["definition"] == definition
    assert sorted(_reruns(study)) == [
        "rerun:reference:1", "rerun:reference:2", "rerun:trial:2:1", "rerun:trial:2:2",
        "rerun:trial:3:1", "rerun:trial:3:2"]

    frame = results_frame(records).set_index("trial")
    # Trial 3: Δm% +15 with the study's seed 0 (left out: the trials were ranked on it), then
    # +10 and +20 with seeds 1, 2.
    assert frame.loc[3, "delta_m_mean"] == pytest.approx(15.0)
    assert frame.loc[3, "delta_m_std"] == pytest.approx(statistics.stdev([10, 20]))
    half = scipy.stats.t.ppf(0.975, 1) * statistics.stdev([10, 20]) / 2 ** 0.5
    assert frame.loc[3, "delta_m_low"] == pytest.approx(15.0 - half)
    assert frame.loc[3, "delta_m_high"] == pytest.approx(15.0 + half)
    # Trial 2: +10 with the study's seed, then +10 and +20.
    assert frame.loc[2, "delta_m_mean"] == pytest.approx(statistics.mean([10, 20]))
    assert frame.loc[3, "seeds"] == 2 and pd.isna(frame.loc[1, "seeds"])
    assert frame[["delta_m_mean", "delta_m_std", "delta_m_low"]].loc[[0, 1]].isna().all().all()
    text = to_markdown(results_frame(records))
    assert ("over the re-run seeds 1, 2, each against the reference trained with the same "
            "seed; the study's seed 0, on which the trials were ranked, is left out") in text
    assert "within the seed noise" in text  # 15 ± 7.1 vs 15 ± 7.1

    # The same command again trains nothing; one more trial trains only its own runs.
    trained.clear()
    lines.clear()
    reevaluate(out_dir=tmp_path, storage=None, study_name=None, top=2, seeds=2,
               progress=lines.append)
    assert trained == [] and lines == ["re-evaluation: trained 0 runs, reused 6 stored runs"]
    reevaluate(out_dir=tmp_path, storage=None, study_name=None, top=3, seeds=2)
    assert trained == [("trial", 1), ("trial", 2)]
    assert len(_load(tmp_path).trials) == 4


def test_another_reference_is_trained_at_every_seed_in_use(
        tmp_path: Path, trained: list[tuple[str, int]]) -> None:
    _study(tmp_path)
    reevaluate(out_dir=tmp_path, storage=None, study_name=None, top=1, seeds=1)
    trained.clear()
    records = reevaluate(out_dir=tmp_path, storage=None, study_name=None,
                         reference="randaugment")
    # The study's seed, then seed 1, which the stored re-run of trial 3 used.
    assert trained == [("randaugment", 0), ("randaugment", 1)]
    frame = results_frame(records)
    assert "the baseline randaugment trained beside the study" in to_markdown(frame)
    row = frame.set_index("trial").loc[3]
    # Trial 3 (accuracy 0.65, then 0.6 with seed 1) against accuracy 0.4: +62.5 %, +50 %.
    assert row["delta_m"] == pytest.approx(62.5 / 2)
    assert row["delta_m_mean"] == pytest.approx(50 / 2)  # the study's seed left out
    # The study's own reference needs no training; naming it is the default ranking.
    trained.clear()
    again = reevaluate(out_dir=tmp_path, storage=None, study_name=None, reference="flipcrop")
    assert trained == [] and again.reference_baseline is None


def test_a_single_task_reference_is_re_run_one_network_per_task(
        tmp_path: Path, trained: list[tuple[str, int]]) -> None:
    _study(tmp_path, n_trials=5, single_task_reference=True)  # trials 0, 1: references
    records = reevaluate(out_dir=tmp_path, storage=None, study_name=None, top=1, seeds=1)
    assert trained == [("flipcrop:cls", 1), ("flipcrop:depth", 1), ("trial", 1)]
    row = results_frame(records).set_index("trial").loc[4]
    # Trial 4 (accuracy 0.7, then 0.6) against 0.5 with both seeds: +40 %, +20 %.
    assert row["delta_m_mean"] == pytest.approx(20 / 2)  # the study's seed left out
    trained.clear()
    records = reevaluate(out_dir=tmp_path, storage=None, study_name=None,
                         reference="randaugment")
    assert sorted(trained) == [("randaugment:cls", 0), ("randaugment:cls", 1),
                               ("randaugment:depth", 0), ("randaugment:depth", 1)]
    assert "single-task runs of randaugment" in records.reference_label()


def test_a_policy_that_cannot_be_rebuilt_is_a_user_error(
        tmp_path: Path, trained: list[tuple[str, int]]) -> None:
    _study(tmp_path, broken_op="warp9")
    with pytest.raises(UserError, match=r"study fake: the policy of trial 3 cannot be rebuilt: "
                                        ".*warp9"):
        reevaluate(out_dir=tmp_path, storage=None, study_name=None, top=1, seeds=1)
    assert trained == []


def test_bad_options_are_refused(tmp_path: Path, trained: list[tuple[str, int]]) -> None:
    _study(tmp_path, n_trials=2)
    for argv, message in [
        (["--seeds", "2"], "--seeds: --seeds needs --reeval K"),
        (["--reeval", "0"], "--reeval: must be at least 1"),
        (["--reeval", "1", "--seeds", "0"], "--seeds: must be at least 1"),
        (["--reference", "flipcropp"], "--reference: unknown baseline 'flipcropp'"),
    ]:
        result = runner.invoke(app, ["results", "--out", str(tmp_path), *argv])
        assert result.exit_code == 2 and message in result.output, argv
    assert trained == []


def _noise_frame(rows: list[tuple[int, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"rank": r, "trial": 10 + r, "delta_m_mean": m, "delta_m_std": s,
                          "seeds": 3} for r, m, s in rows])


def test_seed_noise_line_compares_the_two_best_re_evaluated() -> None:
    line = seed_noise_line(_noise_frame([(1, 5.0, 1.0), (2, 1.0, 1.0)]))
    assert "exceeds that of rank 2 by 4.00, more than their combined std 1.41" in line
    line = seed_noise_line(_noise_frame([(1, 2.0, 1.0), (2, 1.0, 1.0)]))
    assert "+1.00, is within the seed noise (combined std 1.41)" in line
    line = seed_noise_line(_noise_frame([(1, 1.0, 0.5), (2, 3.0, 0.5)]))
    assert "the mean of rank 2 is higher by 2.00" in line
    assert "only rank 1 (trial 11)" in seed_noise_line(_noise_frame([(1, 1.0, 0.5)]))


@pytest.mark.slow
def test_reeval_through_the_cli(tmp_path: Path) -> None:
    space = {**TINY_SPACE, "per_task": {"tasks": [], "slots": 0},
             "dataset_options": {"n_train": 16, "n_val": 8, "n_test": 8, "seed": 0},
             "budget": {**TINY_SPACE["budget"], "epochs": 1}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", "--space", str(path), "--out", str(out),
                                 "--trials", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output

    def results(*extra: str):  # noqa: ANN202
        return runner.invoke(app, ["results", "--out", str(out), "--device", "cpu", *extra])

    result = results("--reeval", "2", "--seeds", "1", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "re-run 1/3: reference flipcrop, seed 1" in result.output
    assert "trained 3 runs, reused 0" in result.output
    # One re-run seed each (the study's own left out): a mean, but no std to compare.
    assert "seed noise: no trial has two re-run seeds yet" in result.output
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 3 and len(_reruns(study)) == 3
    stored = _reruns(study)

    result = results("--reeval", "2", "--seeds", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "trained 0 runs, reused 3 stored runs" in result.output
    rows = [r for r in json.loads(result.stdout) if r["seeds"] == 1]  # seed 1; 0 left out
    assert len(rows) == 2 and all(r["delta_m_std"] is None for r in rows)
    assert _reruns(optuna.load_study(study_name="tiny", storage=storage)) == stored

    result = results("--reference", "randaugment")
    assert result.exit_code == 0, result.output
    assert "reference randaugment, seed 0" in result.output
    assert "the baseline randaugment trained beside the study" in result.output
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 3 and "rerun:baseline:randaugment:0" in study.user_attrs
