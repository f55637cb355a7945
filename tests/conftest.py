"""Shared fixtures: a per-session dataset cache and a tiny search space that trains in seconds."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from hypothesis import settings

# CI (CI=true) draws the same examples on every run (Hypothesis' derandomize), so that a red CI
# means a change broke something; a developer's run explores new examples each time.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Keep generated datasets out of ~/.cache, but share them between the tests of a session.
    os.environ["POLICYSEARCH_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))


TINY_SPACE = {
    "name": "tiny",
    "dataset": "shapes",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "brightness"]},
    "per_task": {"tasks": ["shape"], "slots": 1, "ops": ["identity", "contrast"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "tpe", "n_startup_trials": 2},
    "pruner": {"name": "none"},
}


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    """A search-space file whose trials take about a second on one CPU core."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    return path


def random_param_values(space, task_names, seed: int = 0) -> dict:
    """One random value per parameter of ``space`` (as an engine would suggest them)."""
    from policysearch.search.space import parameters

    rng = random.Random(seed)
    values = {}
    for p in parameters(space, list(task_names)):
        if p.kind == "categorical":
            values[p.name] = rng.choice(p.choices)
        elif p.kind == "int":
            values[p.name] = rng.randint(int(p.low), int(p.high))
        else:
            values[p.name] = rng.uniform(p.low, p.high)
    return values


def load_benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (its own folder on the path while it loads, for
    its helpers beside it)."""
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
