"""Bad input, tried systematically: hypothesis mutates valid search-space and policy files
(wrong types, out-of-range and huge numbers, NaN, unknown keys and ops, empty lists, deleted
keys, non-UTF-8 bytes, truncation) and runs `policysearch check` on each, in-process. Every
outcome is either "ok" (the mutation happened to be valid) or exit status 2 with one line that
names the file — never a traceback, another exit status or a hang."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from policysearch.augment import get_baseline
from policysearch.cli import app
from policysearch.config import load_space
from policysearch.search.space import policy_from_params
from tests.conftest import random_param_values
from tests.reliability_counts import Recorder

runner = CliRunner()
SHAPES_TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
                "depth": "depth"}
EXAMPLES = 150  # per file kind; about 10 s each on one CPU core

# Values that stand in for any field: wrong types, out-of-range and huge numbers, NaN, empty
# and nested containers, unknown op names.
ODD_VALUES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.sampled_from([0, -1, 10 ** 18, 2 ** 63, 1e308, -1e308, math.inf, -math.inf, math.nan,
                     1e-320, 0.5, 1.5]),
    st.text(max_size=12),
    st.sampled_from(["not_an_op", "rotate", "", "!!python/object:os.system", "__import__"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.just([]), st.just({}), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and list indices) into ``data``, the root included."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _paths(value, (*prefix, i))
    return found


def _mutate(data: Any, draw: st.DrawFn) -> Any:
    data = copy.deepcopy(data)
    path = draw(st.sampled_from(_paths(data)[1:]))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    action = draw(st.sampled_from(["replace", "delete", "unknown_key", "empty", "wrap"]))
    if action == "replace":
        parent[last] = draw(ODD_VALUES)
    elif action == "delete":
        del parent[last]
    elif action == "unknown_key":
        key = draw(st.sampled_from(["colour", "slotz", "p ", "0", "schema"]))
        if isinstance(parent[last], dict):
            parent[last][key] = draw(ODD_VALUES)
        elif isinstance(parent, dict):
            parent[key] = draw(ODD_VALUES)
        else:
            parent[last] = {key: draw(ODD_VALUES)}
    elif action == "empty":
        parent[last] = [] if isinstance(parent[last], list) else {}
    else:  # one level too deep
        parent[last] = [parent[last]]
    return data


@st.composite
def mutated_text(draw: st.DrawFn, valid: dict) -> bytes:
    """A valid document with one or two structural mutations, then maybe a byte-level one."""
    data = valid
    for _ in range(draw(st.integers(1, 2))):
        data = _mutate(data, draw)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8")
    byte_action = draw(st.sampled_from(["none", "none", "none", "bad_utf8", "truncate",
                                        "tab", "tag"]))
    if byte_action == "bad_utf8":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80\x80"])) + text[at:]
    elif byte_action == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif byte_action == "tab":
        text = b"\t" + text
    elif byte_action == "tag":  # the unsafe loader's tags must never be honoured
        text = b"shared: !!python/object/apply:os.system ['echo owned']\n" + text
    return text


def _check_one(kind: str, path: Path, text: bytes) -> bool:
    """Whether ``text`` was refused (exit 2, one line); it may also be valid (exit 0)."""
    path.write_bytes(text)
    result = runner.invoke(app, ["check", f"--{kind}", str(path)])
    if result.exit_code == 0:
        assert result.output.startswith(f"ok: {path}:"), result.output
        return False
    assert result.exit_code == 2, (text, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (text, result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, (text, result.output)
    assert lines[0].startswith(f"error: {path}: "), (text, result.output)
    assert len(lines[0]) > len(f"error: {path}: ") + 3  # a message follows
    return True


@pytest.fixture(scope="module")
def valid_space() -> dict:
    data = yaml.safe_load(load_space("default").model_dump_json())
    return data


@pytest.fixture(scope="module")
def valid_policy() -> dict:
    space = load_space("default").for_tasks(SHAPES_TASKS)
    policy = policy_from_params(space, SHAPES_TASKS,
                                random_param_values(space, list(SHAPES_TASKS), seed=3))
    return policy.to_dict()


def test_the_unmutated_files_are_valid(tmp_path: Path, valid_space: dict,
                                       valid_policy: dict) -> None:
    for kind, data in (("space", valid_space), ("policy", valid_policy)):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        result = runner.invoke(app, ["check", f"--{kind}", str(path)])
        assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["space", "policy"])
@settings(max_examples=EXAMPLES, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_exit_0_or_2_with_one_line(kind: str, tmp_path: Path, valid_space: dict,
                                                 valid_policy: dict, reliability: Recorder,
                                                 data: st.DataObject) -> None:
    valid = valid_space if kind == "space" else valid_policy
    if _check_one(kind, tmp_path / f"{kind}.yaml", data.draw(mutated_text(valid))):
        reliability.bad_input()


def test_a_policy_cannot_name_a_python_callable(tmp_path: Path, reliability: Recorder) -> None:
    policy = get_baseline("flipcrop", SHAPES_TASKS).to_dict()
    text = yaml.safe_dump(policy, sort_keys=False)
    assert "op: hflip" in text
    path, marker = tmp_path / "evil.yaml", tmp_path / "owned"
    for payload in (f"!!python/object/apply:os.system ['touch {marker}']",
                    "!!python/name:os.system", "os.system", "policysearch.cli:main",
                    "__import__('os').system('touch owned')"):
        path.write_text(text.replace("op: hflip", f"op: {payload}", 1))
        result = runner.invoke(app, ["check", "--policy", str(path)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {path}: "), result.output
        assert not marker.exists()
        reliability.bad_input()
