"""policysearch benchmark: the searched policy against the baselines on the test split."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch.cli import app
from policysearch.evaluation.benchmark import SEARCHED, paired_test, summary_frame
from tests.conftest import TINY_SPACE

runner = CliRunner()
BASELINES = ["none", "flipcrop", "randaugment", "trivialaugment", "autoaugment"]


# --- statistics ------------------------------------------------------------------------------


def test_paired_t_test_matches_the_textbook_values() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 df
    result = paired_test([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert result["diff"] == pytest.approx(2.0)
    assert result["p"] == pytest.approx(0.07418, abs=1e-4)
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) × sd / sqrt(n)
    assert result["ci_low"] == pytest.approx(2.0 - half, abs=1e-4)
    assert result["ci_high"] == pytest.approx(2.0 + half, abs=1e-4)


def test_paired_test_is_paired_not_independent() -> None:
    # A shared per-seed shift cancels in the pairs: a constant +1 difference is certain.
    a, b = [5.0, 50.0, -20.0], [4.0, 49.0, -21.0]
    assert paired_test(a, b)["p"] == 0.0
    assert paired_test(a, a)["p"] == 1.0
    assert math.isnan(paired_test([1.0], [0.0])["p"])


def test_wilcoxon_needs_more_seeds_to_be_significant() -> None:
    # With 3 pairs the smallest two-sided p of the signed-rank test is 0.25.
    result = paired_test([3.0, 5.0, 9.0], [1.0, 2.0, 3.0], "wilcoxon")
    assert result["p"] == pytest.approx(0.25)
    assert math.isnan(result["ci_low"])


def test_summary_is_computed_from_the_per_seed_rows() -> None:
    info = {"t": {"acc": {"higher": True, "primary": True}}}
    runs = pd.DataFrame([
        {"contender": c, "seed": s, "delta_m": d, "t.acc": d / 100, "seconds": 1.0}
        for c, values in [(SEARCHED, [4.0, 6.0, 5.0]), ("flipcrop", [0.0, 0.0, 0.0]),
                          ("randaugment", [1.0, 9.0, -1.0])]
        for s, d in zip([1, 2, 3], values, strict=True)])
    summary = summary_frame(runs, info, "ttest").set_index("contender")
    assert summary.loc[SEARCHED, "delta_m"] == pytest.approx(5.0)
    assert summary.loc[SEARCHED, "delta_m_std"] == pytest.approx(1.0)
    assert summary.loc["randaugment", "delta_m_std"] == pytest.approx(
        statistics.stdev([1.0, 9.0, -1.0]))
    assert summary.loc["flipcrop", "diff"] == pytest.approx(5.0)
    assert bool(summary.loc["flipcrop", "beyond_noise"])  # 5 > max(1, 0)
    assert not bool(summary.loc["randaugment", "beyond_noise"])  # 2 < std 5.3
    assert "diff" not in summary.columns or math.isnan(summary.loc[SEARCHED, "diff"])


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny search: its --out folder holds best_policy.yaml and the journal."""
    folder = tmp_path_factory.mktemp("bench")
    space = folder / "tiny.yaml"
    space.write_text(yaml.safe_dump({**TINY_SPACE, "budget": {**TINY_SPACE["budget"],
                                                               "epochs": 1}}, sort_keys=False))
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(folder / "s"),
                                 "--trials", "3", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return folder / "s"


def _bench(policy: Path, out: Path, *extra: str) -> object:
    return runner.invoke(app, ["benchmark", "--policy", str(policy), "--out", str(out),
                               "--seeds", "2", "--device", "cpu", "--threads", "1", *extra])


@pytest.mark.slow
def test_benchmark_writes_consistent_tables_and_reuses_its_runs(searched: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = _bench(searched / "best_policy.yaml", out)
    assert result.exit_code == 0, result.output
    for name in ("benchmark.md", "benchmark.csv", "runs.csv", "benchmark.json"):
        assert (out / name).is_file()
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = pd.read_csv(out / "runs.csv")
    summary = pd.read_csv(out / "benchmark.csv").set_index("contender")
    contenders = [SEARCHED, *BASELINES]
    assert sorted(runs["contender"].unique()) == sorted(contenders)
    assert sorted(runs["seed"].unique()) == [1, 2]  # the search trained with seed 0
    assert len(runs) == len(contenders) * 2
    assert (runs.loc[runs["contender"] == "flipcrop", "delta_m"] == 0.0).all()  # the reference
    metric_cols = [c for c in runs.columns if "." in c]
    assert {"shape.accuracy", "seg.miou", "depth.abs_err"} <= set(metric_cols)
    for name, group in runs.groupby("contender"):
        for col in ["delta_m", *metric_cols]:
            assert summary.loc[name, col] == pytest.approx(group[col].mean())
            assert summary.loc[name, f"{col}_std"] == pytest.approx(group[col].std(ddof=1),
                                                                   nan_ok=True)
    paired = runs.pivot(index="seed", columns="contender", values="delta_m")
    for name in BASELINES:
        diff = (paired[SEARCHED] - paired[name]).mean()
        assert summary.loc[name, "diff"] == pytest.approx(diff)
        assert 0.0 <= summary.loc[name, "p_value"] <= 1.0

    report = json.loads((out / "benchmark.json").read_text())
    cost = report["cost"]  # the search's cost, found beside the policy file
    assert cost["study"] == "tiny" and cost["trial_epochs"] == 3
    assert cost["full_trainings_by_epochs"] == pytest.approx(3.0)
    text = (out / "benchmark.md").read_text()
    assert all(f"| {c} |" in text for c in contenders)
    assert "search cost of study tiny: 3 trial-epochs" in text

    # Running again trains nothing; a lost run is trained again to the same numbers.
    (out / "runs" / "randaugment" / "seed-2.json").unlink()
    again = _bench(searched / "best_policy.yaml", out)
    assert again.exit_code == 0, again.output
    assert "run 1/1: randaugment, seed 2" in again.output
    rerun = pd.read_csv(out / "runs.csv")
    cols = ["contender", "seed", "delta_m", *metric_cols]
    pd.testing.assert_frame_equal(rerun[cols], runs[cols])


@pytest.mark.slow
def test_a_changed_budget_trains_again(searched: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    first = _bench(searched / "best_policy.yaml", out, "--baselines", "none",
                   "--reference", "none", "--seeds", "1")
    assert first.exit_code == 0, first.output
    assert "run 2/2" in first.output
    second = _bench(searched / "best_policy.yaml", out, "--baselines", "none",
                    "--reference", "none", "--seeds", "1", "--epochs", "2")
    assert second.exit_code == 0, second.output
    assert "run 2/2" in second.output and "reusing" not in second.output
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["epochs"] == 2).all()
    assert math.isnan(pd.read_csv(out / "benchmark.csv").set_index("contender")
                      .loc["none", "p_value"])  # one seed: no test


@pytest.mark.parametrize("args, field", [
    (["--baselines", "none,rot90"], "--baselines"),
    (["--reference", "nothing"], "--reference"),
    (["--seeds", "0"], "--seeds"),
])
def test_bad_options_are_one_line_errors(searched: Path, tmp_path: Path, args: list[str],
                                         field: str) -> None:
    result = _bench(searched / "best_policy.yaml", tmp_path / "b", *args)
    assert result.exit_code == 2
    assert field in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b" / "runs").exists()


def test_a_policy_for_other_tasks_is_refused(searched: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((searched / "best_policy.yaml").read_text())
    data["tasks"] = {"digit": "classification"}
    data["per_task"] = {}
    data["weighting"] = {"method": "static", "weights": {"digit": 1.0}}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    result = _bench(other, tmp_path / "b", "--search", str(searched))
    assert result.exit_code == 2
    assert "other.yaml" in result.output and "tasks" in result.output


def test_a_missing_policy_file_is_a_user_error(tmp_path: Path) -> None:
    result = _bench(tmp_path / "nope.yaml", tmp_path / "b")
    assert result.exit_code == 2 and "nope.yaml" in result.output
