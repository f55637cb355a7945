"""Search spaces of every structure: parameters → Policy, and a short real search each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from policysearch.augment import Policy, RandAugmentSpec, Slot, SubPolicies
from policysearch.cli import app
from policysearch.config import SearchSpace, load_space
from policysearch.errors import UserError
from policysearch.search.lifecycle import check_resume, definition
from policysearch.search.space import parameters, policy_from_params
from tests.conftest import TINY_SPACE, random_param_values

TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}


def _space(**changes: object) -> SearchSpace:
    return SearchSpace.model_validate({**TINY_SPACE, **changes})


def _random_values(space: SearchSpace, seed: int) -> dict:
    return random_param_values(space, TASKS, seed)


@pytest.mark.parametrize("seed", range(5))
def test_sequence_space(seed: int) -> None:
    space = _space()
    policy = policy_from_params(space, TASKS, _random_values(space, seed))
    assert policy.structure == "sequence" and len(policy.shared) == 1
    assert set(policy.per_task) <= {"shape"}
    assert Policy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize("seed", range(5))
def test_subpolicies_space(seed: int) -> None:
    space = _space(structure="subpolicies",
                   shared={"slots": 2, "subpolicies": 3, "ops": ["rotate", "invert", "hflip"]})
    names = {p.name for p in parameters(space, list(TASKS))}
    assert {"shared.0.0.op", "shared.2.1.magnitude"} <= names
    policy = policy_from_params(space, TASKS, _random_values(space, seed))
    assert policy.structure == "subpolicies"
    assert isinstance(policy.shared, SubPolicies)
    assert [len(sub) for sub in policy.shared.policies] == [2, 2, 2]
    assert Policy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize("seed", range(5))
def test_randaugment_space_searches_n_and_m(seed: int) -> None:
    space = _space(structure="randaugment",
                   shared={"n": [1, 3], "magnitude": [0.1, 0.6], "ops": ["rotate", "contrast"]})
    params = {p.name: p for p in parameters(space, list(TASKS))}
    assert params["shared.n"].kind == "int" and (params["shared.n"].low, params["shared.n"].high) \
        == (1, 3)
    policy = policy_from_params(space, TASKS, _random_values(space, seed))
    assert isinstance(policy.shared, RandAugmentSpec) and policy.structure == "randaugment"
    assert 1 <= policy.shared.n <= 3 and 0.1 <= policy.shared.magnitude <= 0.6
    assert policy.shared.ops == ("rotate", "contrast")


def test_bad_n_range_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="1 <= low <= high <= 16"):
        _space(structure="randaugment", shared={"n": [0, 2], "ops": ["rotate"]})


@pytest.mark.slow
@pytest.mark.parametrize("structure, shared", [
    ("subpolicies", {"slots": 1, "subpolicies": 2, "ops": ["hflip", "rotate", "brightness"]}),
    ("randaugment", {"n": [1, 2], "magnitude": [0.1, 0.5], "ops": ["rotate", "contrast"]}),
])
def test_short_search_of_each_structure(structure: str, shared: dict, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "structure": structure, "shared": shared,
                                    "reference": "randaugment"}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["search", "--space", str(path), "--out", str(out),
                                      "--trials", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load((out / "best_policy.yaml").read_text())
    assert exported["structure"] in (structure, "randaugment")  # the reference may win
    assert exported["provenance"]["reference"] == "randaugment"


# --- a fixed base --------------------------------------------------------------------------------

FLIPCROP_BASE = [{"op": "hflip", "p": 0.5, "magnitude": 1.0},
                 {"op": "crop", "p": 1.0, "magnitude": 0.5}]


@pytest.mark.parametrize("structure, shared", [
    ("sequence", {"slots": 1, "ops": ["rotate", "contrast"]}),
    ("randaugment", {"n": [1, 2], "magnitude": [0.1, 0.5], "ops": ["rotate", "contrast"]}),
])
def test_every_trial_gets_the_spaces_base_and_searches_none_of_it(structure: str,
                                                                   shared: dict) -> None:
    space = _space(structure=structure, shared=shared, base=FLIPCROP_BASE)
    plain = _space(structure=structure, shared=shared)
    assert parameters(space, list(TASKS)) == parameters(plain, list(TASKS))
    for seed in range(3):
        values = _random_values(space, seed)
        policy = policy_from_params(space, TASKS, values)
        assert policy.base == (Slot("hflip", 0.5, 1.0), Slot("crop", 1.0, 0.5))
        assert policy.shared == policy_from_params(plain, TASKS, values).shared
        assert Policy.from_dict(policy.to_dict()) == policy


def test_a_resumed_study_with_another_base_is_refused() -> None:
    plain = _space()
    based = _space(base=FLIPCROP_BASE)
    assert "base" not in definition(plain, 0)["space"]  # studies stored before bases resume
    check_resume(definition(based, 0), based, 0, where="s.db", study_name="s")
    for stored, new in ((plain, based), (based, plain),
                        (based, _space(base=FLIPCROP_BASE[:1]))):
        with pytest.raises(UserError, match="refusing to resume.*base"):
            check_resume(definition(stored, 0), new, 0, where="s.db", study_name="s")


@pytest.mark.parametrize("base, field, message", [
    ([{"op": "teleport", "p": 1.0, "magnitude": 0.5}], "base.0.op", "unknown op 'teleport'"),
    ([{"op": "hflip", "p": 1.0}], "base.0.magnitude", "required key is missing"),
    ([{"op": "hflip", "p": 1.0, "magnitude": 0.5, "n": 2}], "base.0.n", "unknown key"),
])
def test_a_bad_base_in_a_space_file_is_one_line_naming_the_field(
        tmp_path: Path, base: list, field: str, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "base": base}))
    with pytest.raises(UserError, match=message) as err:
        load_space(path)
    assert err.value.field == field and err.value.source == str(path)
    assert "\n" not in str(err.value)
