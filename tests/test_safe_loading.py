"""Safe loading: no call in the package can run code from a file it reads — YAML only through
the safe loader, no pickle, torch.load only with weights_only=True, numpy without pickles,
no eval/exec — and the files a search exports are plain data."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

import policysearch

PACKAGE = Path(policysearch.__file__).resolve().parent
FORBIDDEN = {
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
    ("yaml", "unsafe_load_all"), ("yaml", "full_load_all"), ("pickle", "load"),
    ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"), ("dill", "load"),
    ("joblib", "load"), ("marshal", "loads"), ("shelve", "open"),
}


def _name(node: ast.expr) -> tuple[str, ...]:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        return (*_name(node.value), node.attr)
    return ()


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Every call in ``source`` that could run code from the data it loads."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        where = f"{filename}:{node.lineno}"
        if name[-2:] in FORBIDDEN:
            found.append(f"{where}: {'.'.join(name)}")
        elif name[-2:] == ("torch", "load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        elif name[-2:] == ("np", "load") or name[-2:] == ("numpy", "load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and not allow.value):
                found.append(f"{where}: np.load with allow_pickle")
        elif name in (("eval",), ("exec",)):
            found.append(f"{where}: {name[0]}")
    return found


def test_the_checker_catches_each_unsafe_call() -> None:
    bad = "\n".join([
        "import yaml, pickle, torch, numpy as np",
        "yaml.load(f)", "yaml.unsafe_load(f)", "pickle.loads(b)", "torch.load(p)",
        "torch.load(p, weights_only=False)", "np.load(p, allow_pickle=True)", "eval(s)",
    ])
    assert len(unsafe_calls(bad, "bad.py")) == 7
    good = "yaml.safe_load(f)\ntorch.load(p, weights_only=True)\nnp.load(p)\n" \
           "np.load(p, allow_pickle=False)\n"
    assert unsafe_calls(good, "good.py") == []


def test_the_package_makes_no_unsafe_load() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += unsafe_calls(path.read_text(), str(path.relative_to(PACKAGE)))
    assert found == []


def test_exported_files_are_plain_data(tmp_path: Path) -> None:
    from policysearch.augment import get_baseline
    from policysearch.exports.best_policy import export_policy

    tasks = {"shape": "classification", "seg": "segmentation", "objects": "detection",
             "depth": "depth"}
    exported = export_policy(get_baseline("randaugment", tasks), tmp_path / "best_policy.yaml")
    text = exported.yaml_path.read_text()
    assert "!!" not in text  # no YAML tags: nothing a loader could turn into an object
    assert isinstance(yaml.safe_load(text), dict)
    for path in exported.albumentations.values():
        data = json.loads(path.read_text())  # JSON: data, resolved by albumentations' registry

        def walk(value: object) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    if key == "__class_fullname__":
                        assert isinstance(item, str) and "." not in item.removeprefix(
                            "albumentations.")  # a class of albumentations, by name
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
        walk(data)
