"""benchmarks/transfer.py's own logic where the answer is known: each fidelity's space as the
protocol states it, the found policies read back from the methods comparison's committed
searches, and the ranking statistics on made-up Δm%. (Its whole run, at tiny sizes, is the
benchmark smoke test.)"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml
from scipy import stats

from tests.conftest import load_benchmark_script

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = yaml.safe_load((ROOT / "benchmarks" / "transfer_protocol.yaml").read_text())
TASKS = {"left_digit": "classification", "right_digit": "classification",
         "seg": "segmentation"}


@pytest.fixture(scope="module")
def transfer():  # noqa: ANN201
    return load_benchmark_script("transfer")


def test_each_fidelity_is_the_space_with_the_protocols_changes(transfer,  # noqa: ANN001
                                                                tmp_path: Path) -> None:
    own = yaml.safe_load((ROOT / PROTOCOL["dataset"]["space"]).read_text())
    proxy = yaml.safe_load(transfer.fidelity_space(PROTOCOL, "proxy", tmp_path).read_text())
    high = yaml.safe_load(transfer.fidelity_space(PROTOCOL, "high", tmp_path, lr=0.001)
                          .read_text())
    for data in (proxy, high):
        assert data["dataset_options"]["seed"] == PROTOCOL["dataset"]["generator_seed"]
        for key in ("dataset", "base", "reference", "shared", "weights"):
            assert data[key] == own[key]
    assert proxy["budget"] == own["budget"]  # the searches' own budget
    wanted = {k: v for k, v in PROTOCOL["fidelities"]["high"].items() if v is not None}
    assert high["budget"] == {**own["budget"], **wanted, "lr": 0.001}
    assert high["budget"]["encoder"] != proxy["budget"]["encoder"]


def test_the_found_policies_are_the_methods_comparisons_exports(transfer) -> None:  # noqa: ANN001
    from tests.conftest import load_benchmark_script as load

    policies = transfer.transfer_policies(PROTOCOL, TASKS, smoke=False)
    found = [k for k in policies if k not in PROTOCOL["policies"]["recipes"]]
    assert found == list(PROTOCOL["policies"]["found"])
    methods = load("methods")
    for key in found:
        assert methods.policy_key(policies[key]) == key
    assert [k for k in policies if k in PROTOCOL["policies"]["recipes"]] == \
        PROTOCOL["policies"]["recipes"]


def _values(proxy: dict[str, list[float]], high: dict[str, list[float]]
            ) -> dict[str, dict[str, list[float]]]:
    return {"proxy": proxy, "high": high}


def test_the_ranking_statistics_on_made_up_values(transfer) -> None:  # noqa: ANN001
    recipes, found = ["ref", "a", "b"], ["f1", "f2"]
    proxy = {"ref": [0.0] * 5, "a": [-3.0, -2.0, -4.0, -3.0, -3.5], "b": [-9.0] * 5,
             "f1": [1.0, 2.0, 1.5, 0.5, 1.0], "f2": [-1.0, -0.5, -1.5, -1.0, 0.0]}
    # The same order at the high fidelity, shifted down: the ranking holds exactly.
    high = {k: [x - 1.0 for x in v] for k, v in proxy.items()}
    high["ref"] = [0.0] * 5
    result = transfer.analyse(_values(proxy, high), recipes, found)
    means_p = [statistics.fmean(proxy[n]) for n in result["names"]]
    means_h = [statistics.fmean(high[n]) for n in result["names"]]
    expected = stats.spearmanr(means_p, means_h)
    assert result["spearman"] == pytest.approx(expected.statistic)
    assert result["holds"] == (result["spearman"] > 0 and result["spearman_p"] < 0.05)
    assert result["top"] == "f1" and result["top_rank_high"] == 1
    # The found policies against the best recipe of each fidelity (ref at both).
    test = result["against"]["proxy"]["tests"]["f1"]
    diffs = [x - 0.0 for x in proxy["f1"]]
    assert result["against"]["proxy"]["best"] == "ref"
    assert test["diff"] == pytest.approx(statistics.fmean(diffs))
    assert test["p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
    assert test["p_holm"] >= test["p"]
    # high − proxy of a policy, paired by seed.
    assert result["per_policy"]["b"]["shift"]["diff"] == pytest.approx(-1.0)
    low, high_end = result["bootstrap"]
    assert -1.0 <= low <= high_end <= 1.0


def test_a_reversed_ranking_does_not_hold(transfer) -> None:  # noqa: ANN001
    names = ["ref", "a", "b", "f1", "f2"]
    proxy = {n: [float(-i) + 0.1 * s for s in range(5)] for i, n in enumerate(names)}
    high = {n: [float(i - 4) + 0.1 * s for s in range(5)] for i, n in enumerate(names)}
    result = transfer.analyse(_values(proxy, high), names[:3], names[3:])
    assert result["spearman"] == pytest.approx(-1.0)
    assert not result["holds"]
    assert result["top"] == "ref" and result["top_rank_high"] == len(names)
