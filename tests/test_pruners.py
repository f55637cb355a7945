"""The search space's pruners: median and none as before, successive halving and Hyperband
(validation, the Optuna pruner built from them, and pruning at the rungs, in epochs)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from policysearch.cli import app
from policysearch.config import SearchSpace, load_space
from policysearch.errors import UserError
from policysearch.search.optuna_engine import optimize
from policysearch.search.optuna_study import JOURNAL_NAME, open_study
from policysearch.search.sampling import make_pruner as _pruner
from policysearch.training import TrialResult
from tests.conftest import TINY_SPACE
from tests.ray_cluster import ray_unavailable

runner = CliRunner()


def _space(pruner: dict[str, Any] | None, epochs: int = 6) -> SearchSpace:
    data: dict[str, Any] = {"name": "p", "budget": {"epochs": epochs}}
    if pruner is not None:
        data["pruner"] = pruner
    return SearchSpace.model_validate(data)


def _write(tmp_path: Path, pruner: Any) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "pruner": pruner}))
    return path


# --- median and none: unchanged ---------------------------------------------------------------

@pytest.mark.parametrize(("pruner", "dumped"), [
    (None, {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 3}),
    ({"name": "median", "n_warmup_steps": 0},
     {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}),
    ({"name": "none"}, {"name": "none", "n_startup_trials": 2, "n_warmup_steps": 3}),
    # a stored definition of a none study holds the median's keys: it still validates
    ({"name": "none", "n_startup_trials": 0, "n_warmup_steps": 8},
     {"name": "none", "n_startup_trials": 0, "n_warmup_steps": 8}),
])
def test_median_and_none_dump_exactly_as_before(pruner: dict | None, dumped: dict) -> None:
    space = _space(pruner)
    assert space.canonical()["pruner"] == dumped  # no key of the new pruners leaks in
    assert space.model_dump()["pruner"] == dumped
    assert SearchSpace.model_validate(space.canonical()) == space


def test_median_and_none_build_the_same_optuna_pruners() -> None:
    median = _pruner(_space({"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}))
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 1)
    assert isinstance(_pruner(_space({"name": "none"})), optuna.pruners.NopPruner)


# --- successive halving and Hyperband: validation ---------------------------------------------

@pytest.mark.parametrize(("pruner", "dumped"), [
    ({"name": "successive_halving"},
     {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3,
      "min_early_stopping_rate": 0}),
    ({"name": "successive_halving", "min_resource": 2, "reduction_factor": 4,
      "min_early_stopping_rate": 1},
     {"name": "successive_halving", "min_resource": 2, "reduction_factor": 4,
      "min_early_stopping_rate": 1}),
    ({"name": "hyperband"},
     {"name": "hyperband", "min_resource": 1, "max_resource": "auto", "reduction_factor": 3}),
    ({"name": "hyperband", "min_resource": 2, "max_resource": 18, "reduction_factor": 2},
     {"name": "hyperband", "min_resource": 2, "max_resource": 18, "reduction_factor": 2}),
    ({"name": "hyperband", "max_resource": "auto"},
     {"name": "hyperband", "min_resource": 1, "max_resource": "auto", "reduction_factor": 3}),
])
def test_good_pruners_dump_their_own_keys_with_defaults(pruner: dict, dumped: dict) -> None:
    space = _space(pruner)
    assert space.canonical()["pruner"] == dumped
    again = SearchSpace.model_validate(space.canonical())  # a stored definition reloads
    assert again == space and again.fingerprint() == space.fingerprint()


def test_the_yaml_syntax_of_the_readme_loads(tmp_path: Path) -> None:
    path = tmp_path / "sh.yaml"
    path.write_text("name: sh\npruner: {name: successive_halving, min_resource: 2, "
                    "reduction_factor: 3, min_early_stopping_rate: 0}\n")
    assert load_space(path).pruner.min_resource == 2
    path.write_text("name: hb\npruner: {name: hyperband, min_resource: 1, max_resource: auto, "
                    "reduction_factor: 3}\n")
    assert load_space(path).pruner.max_resource == "auto"


@pytest.mark.parametrize(("pruner", "field", "words"), [
    ({"name": "median", "min_resource": 2}, "pruner.min_resource",
     "not a key of pruner 'median'"),
    ({"name": "none", "reduction_factor": 3}, "pruner.reduction_factor",
     "not a key of pruner 'none'"),
    ({"name": "successive_halving", "n_warmup_steps": 2}, "pruner.n_warmup_steps",
     "not a key of pruner 'successive_halving'"),
    ({"name": "successive_halving", "max_resource": 9}, "pruner.max_resource",
     "max_resource belongs to hyperband"),
    ({"name": "hyperband", "min_early_stopping_rate": 1}, "pruner.min_early_stopping_rate",
     "min_early_stopping_rate belongs to successive_halving"),
    ({"name": "hyperband", "n_startup_trials": 0}, "pruner.n_startup_trials",
     "not a key of pruner 'hyperband'"),
])
def test_a_key_of_another_pruner_is_refused(tmp_path: Path, pruner: dict, field: str,
                                            words: str) -> None:
    path = _write(tmp_path, pruner)
    with pytest.raises(UserError) as err:
        load_space(path)
    assert err.value.source == str(path) and err.value.field == field
    assert words in err.value.message


@pytest.mark.parametrize(("pruner", "field", "words"), [
    ({"name": "asha"}, "pruner.name", "successive_halving"),
    ({"name": "successive_halving", "min_resource": 0}, "pruner.min_resource", "1"),
    ({"name": "successive_halving", "reduction_factor": 1}, "pruner.reduction_factor", "2"),
    ({"name": "successive_halving", "min_early_stopping_rate": -1},
     "pruner.min_early_stopping_rate", "0"),
    ({"name": "successive_halving", "min_resource": None}, "pruner.min_resource",
     "needs a value"),
    ({"name": "hyperband", "min_resource": 1.5}, "pruner.min_resource", "integer"),
    ({"name": "hyperband", "max_resource": "big"}, "pruner.max_resource", "auto or a whole"),
    ({"name": "hyperband", "max_resource": 0}, "pruner.max_resource", "auto or a whole"),
    ({"name": "hyperband", "max_resource": True}, "pruner.max_resource", "auto or a whole"),
    ({"name": "hyperband", "min_resource": 4, "max_resource": 2}, "pruner.max_resource",
     "must be >= min_resource (4)"),
    ({"name": "hyperband", "bootstrap_count": 1}, "pruner.bootstrap_count", "unknown key"),
])
def test_bad_values_are_refused_naming_file_and_field(tmp_path: Path, pruner: dict, field: str,
                                                       words: str) -> None:
    path = _write(tmp_path, pruner)
    with pytest.raises(UserError) as err:
        load_space(path)
    assert err.value.source == str(path) and err.value.field == field
    assert words in err.value.message
    assert str(path) in str(err.value) and field in str(err.value)


def test_a_bad_pruner_key_is_one_line_from_the_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "hyperband", "n_warmup_steps": 2})
    result = runner.invoke(app, ["search", "--space", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "pruner.n_warmup_steps" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_study_refuses_to_resume_under_another_pruner(tmp_path: Path) -> None:
    def open_with(pruner: dict | None) -> None:
        open_study(_space(pruner), storage=None, study_name="p", out_dir=tmp_path, seed=0,
                   metrics_info={}, tasks={"cls": "classification"}, dataset="shapes")

    open_with(None)
    open_with({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 3})  # the same
    with pytest.raises(UserError, match="refusing to resume.*pruner"):
        open_with({"name": "successive_halving"})


# --- the Optuna pruners built -----------------------------------------------------------------

def test_successive_halving_is_built_with_the_given_values() -> None:
    pruner = _pruner(_space({"name": "successive_halving", "min_resource": 2,
                             "reduction_factor": 4, "min_early_stopping_rate": 1}))
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor,
            pruner._min_early_stopping_rate) == (2, 4, 1)
    defaults = _pruner(_space({"name": "successive_halving"}))
    assert (defaults._min_resource, defaults._reduction_factor,
            defaults._min_early_stopping_rate) == (1, 3, 0)


def test_hyperband_is_built_with_the_given_values() -> None:
    pruner = _pruner(_space({"name": "hyperband", "min_resource": 2, "max_resource": 18,
                             "reduction_factor": 2}))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, 18, 2)


def test_hyperband_auto_is_the_budget_epochs_after_cli_overrides() -> None:
    space = _space({"name": "hyperband"}, epochs=9)
    pruner = _pruner(space)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, 9, 3)
    assert _pruner(space.with_budget(epochs=27))._max_resource == 27


# --- pruning at the rungs ---------------------------------------------------------------------

INFO = {"cls": {"accuracy": {"higher": True, "primary": True}}}
TASKS = {"cls": "classification"}


def _run_fake(out: Path, pruner: dict, epochs: int, n_trials: int) -> list:
    """optimize() with a runner that trains nothing: search trial i reports accuracy
    ``0.5 + 0.01 * epoch`` shifted by a made-up quality, one value per epoch from epoch 0."""
    space = SearchSpace.model_validate({
        "name": "fake", "shared": {"slots": 1, "ops": ["identity", "rotate"]},
        "sampler": {"name": "random"}, "budget": {"epochs": epochs}, "pruner": pruner})
    quality = itertools.cycle([0.0, -0.2, 0.1, -0.1, 0.2, -0.3, 0.05, -0.05])

    def run(policy, reporter) -> TrialResult:  # noqa: ANN001
        q = next(quality)
        metrics: dict = {}
        for epoch in range(epochs):
            metrics = {"cls": {"accuracy": 0.5 + q + 0.01 * epoch}}
            reporter.report(epoch, metrics)
        return TrialResult(metrics=metrics, epochs=epochs)

    optimize(space, tasks=TASKS, metrics_info=INFO, dataset_name="fake", runner=run,
             n_trials=n_trials, out_dir=out)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    return optuna.load_study(study_name="fake", storage=storage).get_trials()


def test_successive_halving_prunes_at_its_rungs_in_epochs(tmp_path: Path) -> None:
    # min_resource 1, factor 3: rungs at steps 1 and 3 = after 2 and 4 trained epochs.
    trials = _run_fake(tmp_path, {"name": "successive_halving", "min_resource": 1},
                       epochs=6, n_trials=12)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "nothing was pruned"
    assert {t.user_attrs["epochs"] for t in pruned} <= {2, 4}
    assert all(t.last_step + 1 == t.user_attrs["epochs"] for t in pruned)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.user_attrs["epochs"] == 6 for t in complete)


def test_hyperband_prunes_at_the_rungs_of_its_brackets(tmp_path: Path) -> None:
    # max_resource auto = 9 epochs, min_resource 1, factor 3: brackets of early-stopping rate
    # 0 (rungs at steps 1, 3), 1 (step 3) and 2 (step 9: past the budget, never prunes).
    trials = _run_fake(tmp_path, {"name": "hyperband", "min_resource": 1}, epochs=9,
                       n_trials=12)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "nothing was pruned"
    assert {t.user_attrs["epochs"] for t in pruned} <= {2, 4}


@pytest.mark.slow
def test_a_real_successive_halving_search_stops_pruned_trials_at_a_rung(tmp_path: Path) -> None:
    # 3 epochs, min_resource 1, factor 3: one rung, at step 1 (after 2 trained epochs); the
    # next (step 3) lies past the budget, so every pruned trial trained exactly 2 epochs.
    space = {**TINY_SPACE, "per_task": {"tasks": [], "slots": 0},
             "budget": {**TINY_SPACE["budget"], "epochs": 3},
             "pruner": {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3,
                        "min_early_stopping_rate": 0}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", "--space", str(path), "--out", str(out),
                                 "--trials", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert study.user_attrs["definition"]["space"]["pruner"] == space["pruner"]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, result.output
    for t in pruned:
        assert t.user_attrs["epochs"] == 2 < 3
        assert sorted(t.intermediate_values) == [0, 1]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.user_attrs["epochs"] == 3 for t in complete)


def test_ray_asha_takes_its_first_rung_and_factor_from_the_pruner() -> None:
    try:
        from policysearch.search.ray_engine import asha_grace, asha_reduction, asha_rungs
    except ImportError as err:  # skip, or fail with POLICYSEARCH_REQUIRE_RAY=1, without ray
        ray_unavailable(f"ray is not installed ({err})")

    sha = _space({"name": "successive_halving", "min_resource": 2, "reduction_factor": 2},
                 epochs=24)
    assert asha_grace(sha) == 3  # Optuna decides at step 2, after 3 epochs
    assert asha_reduction(sha) == 2
    assert asha_rungs(sha) == [3, 6, 12]
    median = _space({"name": "median", "n_warmup_steps": 8}, epochs=24)
    assert (asha_grace(median), asha_reduction(median)) == (9, 3)
