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

from policysearch.augment import Weighting, load_policy
from policysearch.cli import app
from policysearch.errors import UserError
from policysearch.evaluation.benchmark import (
    EQUAL_WEIGHTS,
    LOSES,
    NO_DIFFERENCE,
    SEARCHED,
    WINS,
    ablations,
    benchmark_seeds,
    holm,
    mean_interval,
    paired_test,
    plot,
    selection_seeds,
    summary_frame,
    verdicts,
    wilcoxon_min_p,
)
from policysearch.search.lifecycle import reference_policy
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


def test_the_plots_interval_is_the_t_interval_of_the_mean() -> None:
    mean, half = mean_interval([1.0, 2.0, 3.0, math.nan])  # a failed run's NaN is left out
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)  # t(0.975, 2) × 1 / √3
    assert math.isnan(mean_interval([5.0])[1])


def test_the_plot_draws_one_seed_and_many(tmp_path: Path) -> None:
    # One seed has no interval and no test: the plot still draws every contender.
    for seeds in ([1], [1, 2, 3]):
        runs = pd.DataFrame([{"contender": c, "seed": s, "delta_m": d + s, "seconds": 1.0}
                             for c, d in (("flipcrop", 0.0), ("none", -9.0), (SEARCHED, 3.0))
                             for s in seeds])
        path = plot(summary_frame(runs, {}, "ttest"), runs, tmp_path / f"{len(seeds)}.png", "t")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_test_is_paired_not_independent() -> None:
    # A shared per-seed shift cancels in the pairs: a constant +1 difference is certain.
    a, b = [5.0, 50.0, -20.0], [4.0, 49.0, -21.0]
    assert paired_test(a, b)["p"] == 0.0
    assert paired_test(a, a)["p"] == 1.0
    assert math.isnan(paired_test([1.0], [0.0])["p"])


def test_wilcoxon_needs_more_seeds_to_be_significant() -> None:
    # With 3 pairs the smallest two-sided p of the signed-rank test is 0.25; the interval is
    # the t interval whatever the test.
    result = paired_test([3.0, 5.0, 9.0], [1.0, 2.0, 3.0], "wilcoxon")
    assert result["p"] == pytest.approx(0.25) == wilcoxon_min_p(3)
    assert result["ci_low"] == pytest.approx(paired_test([3.0, 5.0, 9.0], [1.0, 2.0, 3.0])
                                             ["ci_low"])


def test_wilcoxon_with_five_pairs_cannot_be_significant_and_says_so() -> None:
    # Five differences of one sign: the exact two-sided minimum, 2 / 2^5.
    a, b = [5.0, 7.0, 4.0, 9.0, 6.5], [1.0, 2.0, 3.0, 1.5, 2.5]
    assert paired_test(a, b, "wilcoxon")["p"] == pytest.approx(0.0625) == wilcoxon_min_p(5)
    assert wilcoxon_min_p(6) < 0.05
    info = {"t": {"acc": {"higher": True, "primary": True}}}
    runs = pd.DataFrame([{"contender": c, "seed": s, "delta_m": d, "t.acc": 0.0,
                          "seconds": 1.0}
                         for c, values in [(SEARCHED, a), ("flipcrop", b)]
                         for s, d in enumerate(values)])
    lines = verdicts(summary_frame(runs, info, "wilcoxon"), "wilcoxon")
    assert any("5 pairs cannot reach p < 0.05" in line and "0.0625" in line for line in lines)
    assert not any("cannot reach" in line for line in
                   verdicts(summary_frame(runs, info, "ttest"), "ttest"))


def test_holm_matches_a_hand_example() -> None:
    # sorted 0.01, 0.03, 0.04: × 3, × 2, × 1 = 0.03, 0.06, 0.04 → non-decreasing 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, math.nan, 0.01])  # no test: not counted
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])


def test_a_verdict_needs_the_holm_adjusted_p() -> None:
    # b and d are significant alone (raw p .031 and .040) but not after Holm over 4 tests.
    info = {"t": {"acc": {"higher": True, "primary": True}}}
    searched = [10.0, 11.0, 12.0, 13.0, 14.0]
    others = {"a": [0.0, 0.5, 1.0, 1.5, 2.0],  # far below: wins
              "b": [9.0, 9.0, 11.8, 11.5, 11.0],  # differences 1, 2, .2, 1.5, 3
              "d": [9.0, 9.0, 12.0, 11.5, 11.0],  # differences 1, 2, 0, 1.5, 3
              "c": [30.0, 31.0, 33.0, 32.0, 35.0]}  # far above: loses
    runs = pd.DataFrame([{"contender": c, "seed": s, "delta_m": d, "t.acc": 0.0,
                          "seconds": 1.0}
                         for c, values in [(SEARCHED, searched), *others.items()]
                         for s, d in enumerate(values)])
    summary = summary_frame(runs, info, "ttest").set_index("contender")
    names = list(others)
    assert summary.loc[names, "p_holm"].tolist() == pytest.approx(
        holm(summary.loc[names, "p_value"].tolist()))
    for name in ("b", "d"):
        assert summary.loc[name, "p_value"] < 0.05 <= summary.loc[name, "p_holm"]
        assert summary.loc[name, "verdict"] == NO_DIFFERENCE
    assert summary.loc["a", "verdict"] == WINS and summary.loc["c", "verdict"] == LOSES
    lines = verdicts(summary.reset_index(), "ttest")
    assert any(line.startswith("searched vs b:") and "does not win" in line for line in lines)
    assert lines[-1].endswith("does not beat b, d, c; it beats a.")


def test_ablations_swap_the_loss_weighting() -> None:
    tasks = {"shape": "classification", "seg": "segmentation"}
    weighting = Weighting("static", {"shape": 2.0, "seg": 0.5})
    searched = reference_policy("randaugment", tasks)
    searched = type(searched)(tasks=tasks, shared=searched.shared, weighting=weighting)
    found = {c.name: c.policy for c in ablations(searched, ["flipcrop", "none"], tasks)}
    assert list(found) == [EQUAL_WEIGHTS, "flipcrop/searched-weights", "none/searched-weights"]
    equal = found[EQUAL_WEIGHTS]
    assert equal.weighting.weights == {"shape": 1.0, "seg": 1.0}
    assert equal.augmentation_key() == searched.augmentation_key()
    for base in ("flipcrop", "none"):
        swapped, plain = found[f"{base}/searched-weights"], reference_policy(base, tasks)
        assert swapped.weighting == weighting
        assert swapped.augmentation_key() == plain.augmentation_key()
    # Already weighing like the baselines: the ablations would repeat contenders.
    assert ablations(equal, ["flipcrop"], tasks) == []


def test_benchmark_seeds_skip_the_selection_seeds() -> None:
    assert benchmark_seeds(0, 5, {0}) == [1, 2, 3, 4, 5]
    assert benchmark_seeds(1, 3, {0, 2}) == [1, 3, 4]
    assert benchmark_seeds(1, 2, set()) == [1, 2]


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
    means = runs.groupby("contender")["delta_m"].mean()
    best = means[BASELINES].idxmax()  # the ablations add the reference's and the best's
    ablated = [EQUAL_WEIGHTS, "flipcrop/searched-weights"] + (
        [f"{best}/searched-weights"] if best != "flipcrop" else [])
    contenders = [SEARCHED, *BASELINES, *ablated]
    assert sorted(runs["contender"].unique()) == sorted(contenders)
    assert sorted(runs["seed"].unique()) == [1, 2]  # the search trained with seed 0
    assert len(runs) == len(contenders) * 2
    others = [c for c in contenders if c != SEARCHED]
    assert summary.loc[others, "p_holm"].tolist() == pytest.approx(
        holm(summary.loc[others, "p_value"].tolist()))
    assert set(summary.loc[others, "verdict"]) <= {WINS, LOSES, NO_DIFFERENCE}
    assert (runs.loc[runs["contender"] == "flipcrop", "delta_m"] == 0.0).all()  # the reference
    metric_cols = [c for c in runs.columns if "." in c]
    assert {"shape.accuracy", "seg.miou", "depth.abs_err"} <= set(metric_cols)
    for name, group in runs.groupby("contender"):
        for col in ["delta_m", *metric_cols]:
            assert summary.loc[name, col] == pytest.approx(group[col].mean())
            assert summary.loc[name, f"{col}_std"] == pytest.approx(group[col].std(ddof=1),
                                                                   nan_ok=True)
    paired = runs.pivot(index="seed", columns="contender", values="delta_m")
    for name in others:
        diff = (paired[SEARCHED] - paired[name]).mean()
        assert summary.loc[name, "diff"] == pytest.approx(diff)
        assert 0.0 <= summary.loc[name, "p_value"] <= 1.0

    report = json.loads((out / "benchmark.json").read_text())
    cost = report["cost"]  # the search's cost, found beside the policy file
    assert cost["study"] == "tiny" and cost["trial_epochs"] == 3
    assert cost["full_trainings_by_epochs"] == pytest.approx(3.0)
    text = (out / "benchmark.md").read_text()
    assert all(f"| {c} |" in text for c in contenders)
    assert "p (Holm)" in text and "Overall (Holm-adjusted, α = 0.05)" in text
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
                   "--reference", "none", "--seeds", "1", "--no-ablations")
    assert first.exit_code == 0, first.output
    assert "run 2/2" in first.output
    second = _bench(searched / "best_policy.yaml", out, "--baselines", "none",
                    "--reference", "none", "--seeds", "1", "--epochs", "2", "--no-ablations")
    assert second.exit_code == 0, second.output
    assert "run 2/2" in second.output and "reusing" not in second.output
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["epochs"] == 2).all()
    assert math.isnan(pd.read_csv(out / "benchmark.csv").set_index("contender")
                      .loc["none", "p_value"])  # one seed: no test


def test_the_selection_seeds_come_from_the_search_or_the_policy_file(searched: Path,
                                                                    tmp_path: Path) -> None:
    from policysearch.records import trial_subject
    from policysearch.search.driver import load_study_records

    policy = load_policy(searched / "best_policy.yaml")
    records = load_study_records(searched, None, None)
    assert records.seed == 0 and policy.provenance["selection_seeds"] == [0]
    assert selection_seeds(policy, None, "p.yaml") == {0}  # a copied file still knows
    bare = type(policy)(tasks=policy.tasks, shared=policy.shared, per_task=policy.per_task,
                        weighting=policy.weighting, provenance={
                            "study": records.name, "trial": policy.provenance["trial"]})
    assert selection_seeds(bare, None, "p.yaml") == set()  # nothing to tell
    assert selection_seeds(bare, records, "p.yaml") == {0}
    # A trial also re-run with seed 3 (re-evaluated, raced) may have been picked on seed 3.
    records.reruns[trial_subject(policy.provenance["trial"])] = {3: {}}
    assert selection_seeds(bare, records, "p.yaml") == {0, 3}
    wrong = type(policy)(tasks=policy.tasks, shared=policy.shared,
                         provenance={"selection_seeds": "0"})
    with pytest.raises(UserError, match="selection_seeds"):
        selection_seeds(wrong, None, "p.yaml")


@pytest.mark.slow
def test_the_benchmark_never_trains_with_the_selection_seed(searched: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = _bench(searched / "best_policy.yaml", out, "--seed", "0", "--baselines", "none",
                    "--reference", "none", "--no-ablations")
    assert result.exit_code == 0, result.output
    assert "seeds 0 left out: the searched policy was selected on them" in result.output
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["seed"].unique()) == [1, 2]  # --seeds 2 from 0, the search's 0 skipped
    assert json.loads((out / "benchmark.json").read_text())["selection_seeds"] == [0]


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
