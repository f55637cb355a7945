"""The evidence protocol names only things that exist: its contenders are registered baselines,
its datasets registered generators whose files are committed, its spaces load; and the ledger
numbers its rows in order."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from policysearch.augment import BASELINES
from policysearch.config import load_space
from policysearch.data import DATASETS
from tests.conftest import load_benchmark_script

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = yaml.safe_load((ROOT / "benchmarks" / "protocol.yaml").read_text())


def test_the_protocol_has_a_version_and_a_status() -> None:
    assert isinstance(PROTOCOL["version"], int) and PROTOCOL["version"] >= 1
    assert PROTOCOL["status"] in ("draft", "frozen")
    if PROTOCOL["status"] == "frozen":  # a final run needs its seeds and test data fixed
        assert PROTOCOL["seeds"]["count"] >= PROTOCOL["seeds"]["minimum"] >= 5
        assert all(d["final_seed"] is not None and d["space"] for d in
                   PROTOCOL["datasets"].values())
        # fresh data: no final seed is a development seed or another dataset's final seed
        finals = [d["final_seed"] for d in PROTOCOL["datasets"].values()]
        developments = {d["development_seed"] for d in PROTOCOL["datasets"].values()}
        assert len(set(finals)) == len(finals) and not developments & set(finals)


def test_a_frozen_protocol_is_unchanged_since_its_version_was_frozen() -> None:
    # Any change to the protocol or its final spaces after freezing needs a new version (and
    # new test splits): the files still hash to what protocol_versions.yaml recorded.
    if PROTOCOL["status"] != "frozen":
        return
    finals = load_benchmark_script("finals")
    assert finals.changed_since_frozen(PROTOCOL) == []


def test_a_changed_protocol_file_is_caught(tmp_path: Path) -> None:
    finals = load_benchmark_script("finals")
    copy = tmp_path / "protocol.yaml"
    copy.write_text((ROOT / "benchmarks" / "protocol.yaml").read_text() + "# edited\n")
    frozen = {**PROTOCOL, "version": 1}
    assert finals.changed_since_frozen(frozen, copy) == ["benchmarks/protocol.yaml"]
    unknown = {**PROTOCOL, "version": 999}  # a version with no entry: nothing is frozen
    assert "benchmarks/protocol.yaml" in finals.changed_since_frozen(unknown, copy)


def test_the_seed_count_is_the_noise_studys_power_calculation() -> None:
    # The count and its detectable difference come from benchmarks/noise.py's table: recompute.
    seeds = PROTOCOL["seeds"]
    if seeds["count"] is None:
        assert PROTOCOL["status"] == "draft"
        return
    assert seeds["count"] >= seeds["minimum"] >= 5
    noise = load_benchmark_script("noise")
    text = (ROOT / "benchmarks" / "results" / "noise.md").read_text()
    sigma = float(text.split("with σ_d = ")[1].split(" ")[0])
    assert noise.seeds_needed(sigma, seeds["detectable_difference"], 0.05 / 12) == seeds["count"]


def _contenders(entry: dict) -> list[str]:
    return entry.get("contenders") or PROTOCOL["contenders"]


def test_every_contender_is_a_registered_baseline() -> None:
    named = [*PROTOCOL["contenders"],
             *(n for d in PROTOCOL["datasets"].values() for n in d.get("contenders") or [])]
    missing = [name for name in named if name not in BASELINES]
    assert not missing


def test_each_spaces_reference_is_one_of_its_datasets_contenders() -> None:
    # Δm% is measured against the reference: it must be a recipe the table also shows.
    for name, entry in PROTOCOL["datasets"].items():
        if entry["space"]:
            assert load_space(str(ROOT / entry["space"])).reference in _contenders(entry), name


def test_no_flip_contender_where_flips_change_the_labels() -> None:
    # multidigits: a horizontal flip swaps left_digit and right_digit's places.
    flips = [n for n in _contenders(PROTOCOL["datasets"]["multidigits"]) if "flip" in n]
    assert not flips


def test_every_dataset_is_a_committed_registered_generator() -> None:
    assert len(PROTOCOL["datasets"]) >= 3
    for name, entry in PROTOCOL["datasets"].items():
        assert name in DATASETS
        assert (ROOT / entry["generator"]).is_file()
        if entry["space"]:
            assert load_space(str(ROOT / entry["space"])).dataset == name


def test_the_ledger_numbers_its_rows_in_order() -> None:
    text = (ROOT / "benchmarks" / "ledger.md").read_text()
    numbers = [int(n) for n in re.findall(r"^\| (\d+) \|", text, flags=re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers


def test_the_search_fits_the_cost_cap() -> None:
    # Full-length trials (no pruner) make the cost fixed: every trial (the reference one
    # included) is one full training, and the finalist race trains the finalists and the
    # reference once per fresh seed.
    search, cap = PROTOCOL["search"], PROTOCOL["targets"]["search_cost_full_trainings"]
    cost = search["trials"] + (search["finalists"] + 1) * search["finalist_seeds"]
    assert cost <= cap
    assert search["finalists"] >= 2  # a race needs two
    for name, entry in PROTOCOL["datasets"].items():
        space = load_space(str(ROOT / entry["space"]))
        assert space.pruner.name == "none", name
        # TPE must get proposals of its own among the searched trials.
        assert space.sampler.n_startup_trials < search["trials"] - 1, name


def test_each_final_space_builds_on_its_reference() -> None:
    # The search looks for what to add to the standard recipe: its base is the reference's.
    from policysearch.augment import get_baseline

    for name, entry in PROTOCOL["datasets"].items():
        space = load_space(str(ROOT / entry["space"]))
        recipe = get_baseline(space.reference, {"x": "classification"}).shared
        assert [(s.op, s.p, s.magnitude) for s in space.base] == \
            [(s.op, s.p, s.magnitude) for s in recipe], name
