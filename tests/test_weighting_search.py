"""Weighting methods in the search space: parsing, parameters, and the Policy they make."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from policysearch.augment import Policy, Weighting
from policysearch.config import SearchSpace, load_space
from policysearch.errors import UserError
from policysearch.search.sampling import suggest
from policysearch.search.space import WEIGHT_METHOD, parameters, policy_from_params
from tests.conftest import TINY_SPACE, random_param_values

TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}


def _space(weights: dict) -> SearchSpace:
    return SearchSpace.model_validate({**TINY_SPACE, "weights": weights})


def _weight_params(space: SearchSpace) -> dict:
    return {p.name: p for p in parameters(space, list(TASKS)) if p.name.startswith("weight.")}


def _values(space: SearchSpace, **fixed: object) -> dict:
    return {**random_param_values(space, TASKS), **fixed}


def test_static_and_equal_spaces_keep_their_parameters() -> None:
    static = _weight_params(_space({"method": "static", "range": [0.5, 2.0]}))
    assert sorted(static) == sorted(f"weight.{t}" for t in TASKS)
    assert all(p.log and (p.low, p.high) == (0.5, 2.0) and p.when is None
               for p in static.values())
    equal = _space({"method": "equal"})
    assert _weight_params(equal) == {}
    policy = policy_from_params(equal, TASKS, _values(equal))
    assert policy.weighting == Weighting("equal", {t: 1.0 for t in TASKS})


def test_a_single_dynamic_method_with_fixed_and_searched_hyper_parameters() -> None:
    space = _space({"method": "gradnorm", "gradnorm": {"alpha": [0.5, 2.0], "lr": 0.01}})
    params = _weight_params(space)
    assert list(params) == ["weight.gradnorm.alpha"]  # lr is fixed, so not searched
    assert (params["weight.gradnorm.alpha"].low, params["weight.gradnorm.alpha"].high) == (0.5,
                                                                                          2.0)
    policy = policy_from_params(space, TASKS, _values(space, **{"weight.gradnorm.alpha": 1.25}))
    assert policy.weighting == Weighting("gradnorm", {}, {"alpha": 1.25, "lr": 0.01})
    # a hyper-parameter the space leaves out is written with its default
    dwa = _space({"method": "dwa"})
    assert policy_from_params(dwa, TASKS, _values(dwa)).weighting.params == {"temperature": 2.0}


def test_a_list_of_methods_becomes_a_categorical_with_conditional_parameters() -> None:
    space = _space({"method": ["static", "uncertainty", "dwa", "cagrad"], "range": [0.25, 4.0],
                    "dwa": {"temperature": [1.0, 4.0]}, "cagrad": {"c": 0.4}})
    params = parameters(space, list(TASKS))
    names = [p.name for p in params]
    weight_names = [n for n in names if n.startswith("weight.")]
    assert weight_names[0] == WEIGHT_METHOD  # asked before the parameters it conditions
    by_name = {p.name: p for p in params}
    assert by_name[WEIGHT_METHOD].choices == ("static", "uncertainty", "dwa", "cagrad")
    assert by_name["weight.seg"].when == (WEIGHT_METHOD, "static")
    assert by_name["weight.dwa.temperature"].when == (WEIGHT_METHOD, "dwa")
    assert set(weight_names) == {WEIGHT_METHOD, "weight.dwa.temperature",
                                 *(f"weight.{t}" for t in TASKS)}

    expected = {
        "static": lambda v: Weighting("static", {t: v[f"weight.{t}"] for t in TASKS}, {}),
        "uncertainty": lambda v: Weighting("uncertainty", {}, {}),
        "dwa": lambda v: Weighting("dwa", {}, {"temperature": v["weight.dwa.temperature"]}),
        "cagrad": lambda v: Weighting("cagrad", {}, {"c": 0.4}),
    }
    for method, weighting in expected.items():
        values = _values(space, **{WEIGHT_METHOD: method})
        policy = policy_from_params(space, TASKS, values)
        assert policy.weighting == weighting(values)
        assert Policy.from_dict(policy.to_dict()) == policy
    # an engine that skips the parameters of methods not picked (define-by-run) still works
    values = {k: v for k, v in _values(space, **{WEIGHT_METHOD: "cagrad"}).items()
              if not k.startswith("weight.") or k == WEIGHT_METHOD}
    assert policy_from_params(space, TASKS, values).weighting.method == "cagrad"


def test_optuna_suggests_the_weighting_parameters() -> None:
    space = _space({"method": ["equal", "dwa", "gradnorm"], "dwa": {"temperature": [1.0, 3.0]},
                    "gradnorm": {"alpha": [0.5, 2.0]}})
    params = parameters(space, list(TASKS))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        policy = policy_from_params(space, TASKS, suggest(trial, params))
        seen.add(policy.weighting.method)
        if policy.weighting.method == "dwa":
            assert 1.0 <= policy.weighting.params["temperature"] <= 3.0
        study.tell(trial, 0.0)
    assert seen == {"equal", "dwa", "gradnorm"}


def test_a_task_named_method_clashes_with_the_categorical() -> None:
    space = _space({"method": ["static", "dwa"]})
    with pytest.raises(UserError, match="weights.method: a task named 'method'"):
        parameters(space, ["method", "seg"])


@pytest.mark.parametrize(("weights", "field", "message"), [
    ({"method": "magic"}, "weights.method", "unknown weighting method 'magic'"),
    ({"method": ["static", "magic"]}, "weights.method", "'magic'; known: static"),
    ({"method": []}, "weights.method", "non-empty list"),
    ({"method": ["dwa", "dwa"]}, "weights.method", "lists a method twice"),
    ({"method": "dwa", "dwa": {"tau": 2.0}}, "weights.dwa", "unknown hyper-parameter 'tau'"),
    ({"method": "dwa", "dwa": {"temperature": 0}}, "weights.dwa", "temperature must be"),
    ({"method": "dwa", "dwa": {"temperature": [3.0, 1.0]}}, "weights.dwa", "low <= high"),
    ({"method": "cagrad", "cagrad": {"c": [0, 1, 2]}}, "weights.cagrad", "number or [low, high]"),
    ({"method": "static", "gradnorm": {"alpha": 1.0}}, "weights",
     "gradnorm hyper-parameters are set but 'gradnorm' is not among the methods"),
    ({"method": "pcgrad", "pcgrad": {"x": 1}}, "weights.pcgrad", "unknown key"),
    ({"method": "dwa", "params": {"magic": {"x": 1}}}, "weights.params",
     "unknown weighting method 'magic'"),
    ({"method": "dwa", "params": {"dwa": {"tau": 1}}}, "weights.params",
     "unknown hyper-parameter 'tau' of dwa"),
    ({"method": "dwa", "params": {"cagrad": {"c": 0.3}}}, "weights",
     "cagrad hyper-parameters are set but 'cagrad' is not among the methods"),
    ({"method": "dwa", "dwa": {"temperature": 2}, "params": {"dwa": {"temperature": 3}}},
     "weights", "set twice"),
])
def test_search_space_errors_name_the_field(tmp_path: Path, weights: dict, field: str,
                                            message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "weights": weights}))
    with pytest.raises(UserError) as err:
        load_space(path)
    line = str(err.value)
    assert line.startswith(f"{path}: {field}: "), line
    assert message in line and "\n" not in line


def test_a_registered_methods_hyper_parameters_are_searched_through_params() -> None:
    from policysearch.weighting_schema import METHODS, HyperParam, register_method

    register_method("ratio_test", {"alpha": HyperParam(1.0, 0.0, 4.0),
                                   "beta": HyperParam(0.5, 0.0, 1.0)})
    try:
        space = _space({"method": ["static", "ratio_test"],
                        "params": {"ratio_test": {"alpha": [0.5, 2.0]}}})
        params = _weight_params(space)
        alpha = params["weight.ratio_test.alpha"]
        assert (alpha.low, alpha.high, alpha.when) == (0.5, 2.0, (WEIGHT_METHOD, "ratio_test"))
        values = _values(space, **{WEIGHT_METHOD: "ratio_test", "weight.ratio_test.alpha": 1.5})
        policy = policy_from_params(space, TASKS, values)
        # the searched value, and the default of the one the space leaves out
        assert policy.weighting == Weighting("ratio_test", {}, {"alpha": 1.5, "beta": 0.5})
        # a space without params keeps the canonical form (and fingerprint) of older studies
        assert "params" not in _space({"method": "dwa"}).canonical()["weights"]
        assert space.canonical()["weights"]["params"] == {"ratio_test": {"alpha": [0.5, 2.0]}}
        assert SearchSpace.model_validate(space.canonical()) == space
    finally:
        METHODS.pop("ratio_test")
