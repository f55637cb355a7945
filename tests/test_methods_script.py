"""benchmarks/methods.py's own logic where the answer is known: each method's space and
arguments as the protocol states them, the statistics of the table (cell values, the paired
test against the best recipe with Holm, the one-sided non-inferiority bound) on made-up runs,
and a search run again that must export the same policy. (Its whole run, at tiny sizes, is the
benchmark smoke test.)"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats

from tests.conftest import load_benchmark_script

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = yaml.safe_load((ROOT / "benchmarks" / "methods_protocol.yaml").read_text())
SEEDS = [10, 11, 12, 13, 14]
INFO = {"a": {"acc": {"higher": True, "primary": True}}}


@pytest.fixture(scope="module")
def methods():  # noqa: ANN201
    return load_benchmark_script("methods")


def test_every_method_budget_and_seed_is_one_search_small_budgets_first(methods) -> None:  # noqa: ANN001
    cells = methods.cells(PROTOCOL, smoke=False)
    assert len(cells) == len(set(cells)) == 6 * 2 * 3
    budgets = [c.budget for c in cells]
    assert budgets == sorted(budgets, key=["small", "large"].index)


@pytest.mark.parametrize("dataset", ["multidigits", "scenes"])
def test_each_method_searches_the_protocols_space(methods, dataset: str,  # noqa: ANN001
                                                  tmp_path: Path) -> None:
    entry = PROTOCOL["datasets"][dataset]
    own = yaml.safe_load((ROOT / entry["space"]).read_text())
    for method in PROTOCOL["methods"]:
        cell = methods.Cell(method, "small", 0)
        data = yaml.safe_load(methods.method_space(PROTOCOL, dataset, cell, tmp_path,
                                                   False).read_text())
        assert data["dataset_options"]["seed"] == entry["generator_seed"]
        for key in ("dataset", "base", "reference", "budget", "weights"):
            assert data[key] == own[key], (method, key)
        assert data["weights"] == {"method": "equal"}
        if method == "tpe_halving":  # the first rung at a third of the epochs
            assert data["pruner"] == {"name": "successive_halving", "reduction_factor": 3,
                                      "min_resource": round(own["budget"]["epochs"] / 3)}
        else:
            assert data["pruner"] == {"name": "none"}
        assert data["structure"] == ("randaugment" if method == "randaugment" else "sequence")
        arguments = methods.search_arguments(PROTOCOL, dataset, cell, False)
        if method == "density":
            spec = PROTOCOL["methods"]["density"]["small"]
            assert (arguments["folds"], arguments["trials"]) == (
                spec["folds"], spec["candidates"][dataset])
        else:
            assert arguments["trials"] == PROTOCOL["methods"][method]["trials"]["small"]
        assert arguments["finalists"] == 0 and arguments["device"] == "cpu"


def _runs(values: dict[str, list[float]]) -> dict[tuple[str, int], dict]:
    """Runs whose one metric is 1 + value / 100 against a reference at 1: Δm% = value."""
    return {(key, seed): {"metrics": {"a": {"acc": 1.0 + v / 100}}}
            for key, row in values.items() for seed, v in zip(SEEDS, row, strict=True)}


def test_the_table_statistics_on_made_up_runs(methods) -> None:  # noqa: ANN001
    protocol = {**PROTOCOL, "methods": {"tpe": {}, "random": {}, "density": {}}}
    recipes = {"ref": [0.0] * 5, "good": [2.0, 3.0, 2.5, 3.5, 2.0]}
    policies = {"p0": [4.0, 5.0, 4.0, 6.0, 5.0], "p1": [2.0, 2.0, 3.0, 2.0, 4.0],
                "p2": [1.0, 1.0, 0.0, 1.0, 1.0], "p3": [3.0, 4.0, 3.0, 4.0, 3.0]}
    searches = {}
    for i, (method, key) in enumerate([("tpe", "p0"), ("tpe", "p1"), ("random", "p2"),
                                       ("density", "p3")]):
        searches[f"s{i}"] = {"method": method, "budget": "large" if method != "density"
                             else "small", "seed": i, "policy_key": key,
                             "full_trainings": 10.0, "cpu_hours": 0.1, "wall_seconds": 60.0}
    result = methods.analyse(protocol, searches, _runs({**recipes, **policies}),
                             list(recipes), "ref", INFO, SEEDS)
    assert result["best"] == "good"
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    tpe = rows[("tpe", "large")]
    # A cell's value at a seed is the mean over its searches' policies.
    cell = [(a + b) / 2 for a, b in zip(policies["p0"], policies["p1"], strict=True)]
    assert tpe["values"] == pytest.approx(cell)
    assert tpe["search_mean_std"][0] == pytest.approx(statistics.fmean(cell))
    assert tpe["search_mean_std"][1] == pytest.approx(statistics.stdev(
        [statistics.fmean(policies["p0"]), statistics.fmean(policies["p1"])]))
    diffs = [c - g for c, g in zip(cell, recipes["good"], strict=True)]
    assert tpe["diff"] == pytest.approx(statistics.fmean(diffs))
    assert tpe["p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
    # Holm over the three cells: the smallest p times 3.
    ps = sorted(r["p"] for r in result["rows"])
    assert min(r["p_holm"] for r in result["rows"]) == pytest.approx(min(1.0, 3 * ps[0]))
    # Non-inferiority: density (small) against the best retraining cell at large (tpe).
    ni = result["non_inferiority"]
    assert ni["rival"] == "tpe"
    d = [a - b for a, b in zip(policies["p3"], cell, strict=True)]
    bound = statistics.fmean(d) - stats.t.ppf(0.95, 4) * statistics.stdev(d) / math.sqrt(5)
    assert ni["bound"] == pytest.approx(bound)
    assert ni["met"] == (bound > -PROTOCOL["statistics"]["non_inferiority"]["delta"])
    assert result["winner"]["method"] == "tpe"
    assert result["best_beats_recipe"] == (tpe["diff"] > 0 and tpe["p_holm"] < 0.05)


def test_a_search_run_again_must_export_the_same_policy(methods, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "tpe-large-s0.json"
    path.write_text(json.dumps({"policy_key": "abc", "wall_seconds": 99.0, "cpu_hours": 0.05,
                                "full_trainings": 10.0, "started": "t0", "finished": "t1"}))
    again = {"policy_key": "abc", "wall_seconds": 80.0}
    methods._redone(path, again)
    assert again["earlier"] == [{"wall_seconds": 99.0, "cpu_hours": 0.05,
                                 "full_trainings": 10.0, "started": "t0", "finished": "t1"}]
    with pytest.raises(SystemExit) as err:
        methods._redone(path, {"policy_key": "xyz"})
    assert err.value.code == 2
