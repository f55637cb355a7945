from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policysearch.config import load_space, shipped_spaces, validate_tasks
from policysearch.errors import UserError
from tests.conftest import TINY_SPACE


def _write(tmp_path: Path, data: object, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_shipped_default_space_is_valid() -> None:
    assert "default" in shipped_spaces()
    space = load_space("default")
    assert space.name == "default"
    assert space.shared.slots >= 1 and space.reference == "flipcrop"


def test_unknown_op_names_file_and_field(tmp_path: Path) -> None:
    data = dict(TINY_SPACE, shared={"slots": 1, "ops": ["identity", "teleport"]})
    path = _write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_space(path)
    line = str(err.value)
    assert str(path) in line and "shared.ops" in line and "teleport" in line
    assert "\n" not in line


def test_probability_out_of_range(tmp_path: Path) -> None:
    data = dict(TINY_SPACE, shared={"slots": 1, "ops": ["identity"], "p": [0.0, 1.5]})
    path = _write(tmp_path, data)
    with pytest.raises(UserError, match=r"shared\.p") as err:
        load_space(path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_key_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match=r"budget\.epoch.*unknown key"):
        load_space(_write(tmp_path, dict(TINY_SPACE, budget={"epoch": 3})))
    with pytest.raises(UserError, match="invalid YAML"):
        load_space(_write(tmp_path, "shared: [unclosed", "bad.yaml"))
    with pytest.raises(UserError, match="not UTF-8"):
        bad = tmp_path / "bin.yaml"
        bad.write_bytes(b"name: \xff\xfe")
        load_space(bad)


def test_budget_override_validates() -> None:
    space = load_space("default")
    assert space.with_budget(epochs=3).budget.epochs == 3
    assert space.with_budget(epochs=None) is space
    with pytest.raises(UserError, match="epochs"):
        space.with_budget(epochs=0)


def test_fingerprint_changes_with_budget_not_description() -> None:
    space = load_space("default")
    assert space.fingerprint() == space.model_copy(update={"description": "x"}).fingerprint()
    assert space.fingerprint() != space.with_budget(epochs=99).fingerprint()


def test_per_task_must_name_dataset_tasks(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, dict(TINY_SPACE, per_task={
        "tasks": ["nope"], "slots": 1, "ops": ["identity"]})))
    with pytest.raises(UserError, match=r"per_task\.tasks\[0\]"):
        validate_tasks(space, ["shape", "seg"], "space.yaml")
