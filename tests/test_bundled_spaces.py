"""The bundled search spaces (search_spaces/*.yaml): `policysearch spaces` lists each with its
description; each adapts to any dataset, and a search runs on it unchanged on shapes,
multidigits and a folder dataset with task names of the user's choosing. randaugment searches
N and M alone, per view (the shared one and each image-level task's RandAugment); recipe_plus
searches on top of flip and crop (crop alone where flips are unsafe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import policysearch as ps
from policysearch.augment import RandAugmentSpec
from policysearch.cli import app
from policysearch.config import load_space, shipped_spaces
from policysearch.data import TaskSpec
from policysearch.search.space import parameters
from policysearch.space_adapt import adapt_space
from tests.test_space_init import _folder, readme_block

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
BUNDLED = ["default", "randaugment", "recipe_plus"]
FLIP, CROP = ("hflip", 0.5, 1.0), ("crop", 1.0, 0.5)


class _Data:
    """A dataset of the given (name, kind) tasks, for resolving spaces (never loaded)."""

    def __init__(self, tasks: list[tuple[str, str]], unsafe: tuple[str, ...] = ()):
        self.tasks = tuple(TaskSpec(name, kind, num_classes=3) for name, kind in tasks)
        self.unsafe_ops = unsafe
        self.name = "data"

    def split(self, name: str) -> list:
        return []


DIGITS = _Data([("left_digit", "classification"), ("right_digit", "classification"),
                ("seg", "segmentation")], unsafe=("hflip",))
SCENE = _Data([("shape", "classification"), ("seg", "segmentation"), ("depth", "depth")])


def test_spaces_lists_every_bundled_file_with_its_description() -> None:
    files = sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert files == BUNDLED and sorted(shipped_spaces()) == BUNDLED
    result = runner.invoke(app, ["spaces"])
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip("\n").splitlines()
    assert [line.split()[0] for line in lines] == BUNDLED
    for line, name in zip(lines, BUNDLED, strict=True):
        raw = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
        assert raw["name"] == name and raw["adapt"] is True and raw["description"]
        assert line == f"{name:<11}  {raw['description']}"
    assert ps.spaces() == {name: load_space(name).description for name in BUNDLED}


def test_the_package_ships_every_bundled_file() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"policysearch.search_spaces" = ["*.yaml"]' in pyproject


def _ra_params(views: list[str]) -> list[str]:
    """The parameters of the randaugment space with a RandAugment view per task of ``views``."""
    return ["shared.n", "shared.magnitude",
            *(f"task.{t}.{what}" for t in views for what in ("n", "magnitude"))]


@pytest.mark.parametrize(("data", "views"), [
    (DIGITS, ["left_digit", "right_digit"]), (SCENE, ["shape"]),
    (_Data([("seg", "segmentation"), ("depth", "depth")]), []),
])
def test_randaugment_searches_n_and_m_alone_per_view(data: _Data, views: list[str]) -> None:
    space = load_space("randaugment")
    assert space.structure == "randaugment" and space.adapt
    resolved = adapt_space(space, data).space  # type: ignore[arg-type]
    assert resolved.per_task.tasks == views
    names = [p.name for p in parameters(resolved, [t.name for t in data.tasks])]
    assert names == _ra_params(views)
    # The per-task views draw from photometric ops only: the default space's per-task ops.
    assert resolved.per_task.ops == load_space("default").per_task.ops
    for part in (space.shared, space.per_task):
        n, m = part.n, part.magnitude
        assert n is not None  # the grid its text names: 30 per view, multiplied across views
        assert (n[1] - n[0] + 1) * round((m[1] - m[0]) / 0.1 + 1) == 30
    assert "3 × 10 = 30" in space.description and "900 on shapes" in space.description
    assert space.sampler.name == "tpe"


@pytest.mark.parametrize(("data", "base", "reference", "views"), [
    (SCENE, [FLIP, CROP], "flipcrop", ["shape"]),
    (DIGITS, [CROP], "crop", ["left_digit", "right_digit"]),
])
def test_recipe_plus_keeps_the_recipe_it_can_use(data: _Data, base: list[tuple], reference: str,
                                                 views: list[str]) -> None:
    space = load_space("recipe_plus")
    assert [(s.op, s.p, s.magnitude) for s in space.base] == [FLIP, CROP]
    assert not {"hflip", "crop"} & set(space.shared.ops)  # the base applies them
    resolved = adapt_space(space, data).space  # type: ignore[arg-type]
    assert [(s.op, s.p, s.magnitude) for s in resolved.base] == base
    assert resolved.reference == reference and resolved.per_task.tasks == views


# --- a search on each, unchanged ---------------------------------------------------------------

DATASETS = {"shapes": lambda root: "shapes", "multidigits": lambda root: "multidigits",
            "folder": _folder}


def _search(space: str, dataset: str, out: Path) -> Any:
    return runner.invoke(app, ["search", "--space", space, "--dataset", dataset, "--out",
                               str(out), "--trials", "2", "--epochs", "1", "--image-size", "16",
                               "--device", "cpu", "--threads", "1", "--no-report", "--quiet"])


@pytest.mark.slow
@pytest.mark.parametrize("which", list(DATASETS))
@pytest.mark.parametrize("name", BUNDLED)
def test_a_search_runs_on_every_bundled_space(tmp_path: Path, name: str, which: str) -> None:
    dataset = DATASETS[which](tmp_path / "data")
    out = tmp_path / "run"
    result = _search(name, dataset, out)
    assert result.exit_code == 0, result.output
    records = ps.records(out)
    assert [r.state for r in records.records] == ["complete", "complete"]
    trial = next(r for r in records.records if r.role == "search")
    assert trial.params is not None and trial.policy is not None
    policy = ps.Policy.from_dict(trial.policy)
    base = [(s.op, s.p, s.magnitude) for s in policy.base]
    flips_unsafe = which == "multidigits"
    assert records.reference_name == ("crop" if flips_unsafe else "flipcrop")
    views = {"shapes": ["shape"], "multidigits": ["left_digit", "right_digit"],
             "folder": ["Wetter"]}[which]
    if name == "randaugment":
        _check_randaugment_trial(trial.params, policy, views)
    if name in ("randaugment", "recipe_plus"):
        assert base == ([CROP] if flips_unsafe else [FLIP, CROP])
    if name == "recipe_plus":
        assert records.space["per_task"]["tasks"] == views
        assert {k.split(".")[1] for k in trial.params if k.startswith("task.")} == set(views)
        assert not {"hflip", "crop"} & {str(v) for v in trial.params.values()}


def _check_randaugment_trial(params: dict[str, Any], policy: ps.Policy,
                             views: list[str]) -> None:
    """A trial of the randaugment space: N and M searched per view, and its policy has them."""
    assert sorted(params) == sorted(_ra_params(views))
    assert policy.structure == "randaugment" and policy.weighting.method == "equal"
    assert policy.shared.n == params["shared.n"]  # type: ignore[union-attr]
    assert list(policy.per_task) == views and policy.views() == ("shared", *views)
    for task in views:
        own = policy.per_task[task]
        assert isinstance(own, RandAugmentSpec) and own.n == params[f"task.{task}.n"]
        assert own.magnitude == params[f"task.{task}.magnitude"]


def test_a_tiny_search_on_randaugment_searches_each_view(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _search("randaugment", "shapes", out)
    assert result.exit_code == 0, result.output
    records = ps.records(out)
    assert [r.state for r in records.records] == ["complete", "complete"]
    assert records.space["per_task"]["tasks"] == ["shape"]
    trial = next(r for r in records.records if r.role == "search")
    assert trial.params is not None and trial.policy is not None
    _check_randaugment_trial(trial.params, ps.Policy.from_dict(trial.policy), ["shape"])


def test_the_readme_shows_the_real_list() -> None:
    assert readme_block("$ policysearch spaces") == runner.invoke(app, ["spaces"]).output
