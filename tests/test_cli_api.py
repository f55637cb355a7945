"""One entry point: every command calls the API function that README's command → call table
names (section "Python API"), with the options the command line gave; the API's signatures
list every option explicitly. Nothing here trains: each API function is replaced by a
recorder that stops the command once called."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import policysearch as ps
from policysearch import api
from policysearch.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def readme_table() -> list[tuple[str | None, str, str]]:
    """(command or None, API function, call text) per row of README's command → call table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[1].startswith("`ps."):
            continue
        command = cells[0].strip("`") if cells[0].startswith("`") else None
        call = cells[1].strip("`")
        name = re.match(r"ps\.(\w+)\(", call)
        assert name, f"README table: cannot read the call {call!r}"
        rows.append((command, name.group(1), call))
    return rows


TABLE = readme_table()
COMMANDS = {cmd.name or cmd.callback.__name__.replace("_", "-")
            for cmd in app.registered_commands}


class Called(Exception):
    """Raised by a recorder: the command reached the API (and goes no further)."""


def _cases(tmp: Path) -> dict[str, list[tuple[list[str], dict[str, Any]]]]:
    """Per command: (command line, arguments the API call must get). The paths do not exist,
    so that a command which bypassed the API fails at once instead of training."""
    missing = str(tmp / "no-study")
    return {
        "search": [(["--space", str(tmp / "space.yaml"), "--trials", "3", "--epochs", "2",
                     "--image-size", "24x32", "--out", str(tmp / "run"), "--workers", "2",
                     "--seed", "5", "--objective", "pareto", "--scheduler", "none",
                     "--log-to", "tensorboard", "--no-report", "--quiet", "--finalists", "2",
                     "--finalist-seeds", "4", "--subset", "100", "--method", "random",
                     "--folds", "3", "--heldout", "0.3", "--copies", "2", "--keep", "4"],
                    {"space": str(tmp / "space.yaml"), "trials": 3, "epochs": 2,
                     "image_size": (24, 32), "out": tmp / "run", "workers": 2, "seed": 5,
                     "objective": "pareto", "scheduler": "none", "log_to": "tensorboard",
                     "report": False, "engine": "optuna", "device": "auto", "finalists": 2,
                     "finalist_seeds": 4, "subset": 100, "method": "random",
                     "folds": 3, "heldout": 0.3, "copies": 2, "keep": 4})],
        "results": [(["--out", missing, "--format", "csv", "--top", "3", "--reeval", "2",
                      "--seeds", "1", "--reference", "none", "--task-weight", "shape=2",
                      "--device", "cpu", "--threads", "1"],
                     {"out": Path(missing), "format": "csv", "top": 3, "reeval": 2,
                      "seeds": 1, "reference": "none", "task_weights": {"shape": 2.0},
                      "device": "cpu", "threads": 1}),
                    (["--storage", "sqlite:///" + missing, "--study", "s"],
                     {"storage": "sqlite:///" + missing, "study": "s", "format": "frame"})],
        "export": [(["--out", missing, "--rank", "2", "--format", "python", "--to",
                     str(tmp / "augment.py"), "--task-weight", "seg=0.5"],
                    {"out": Path(missing), "rank": 2, "format": "python",
                     "to": tmp / "augment.py", "task_weights": {"seg": 0.5}})],
        "report": [(["--out", missing, "--to", str(tmp / "r.html"), "--no-preview"],
                    {"out": Path(missing), "to": tmp / "r.html", "preview": False})],
        "benchmark": [(["--policy", str(tmp / "p.yaml"), "--baselines", "none, randaugment",
                        "--seeds", "2", "--search", missing, "--out", str(tmp / "bench"),
                        "--significance", "wilcoxon", "--image-size", "32", "--json-logs",
                        "--no-ablations", "--subset", "64"],
                       {"policy": tmp / "p.yaml", "baselines": ["none", "randaugment"],
                        "seeds": 2, "search": Path(missing), "out": tmp / "bench",
                        "ablations": False, "subset": 64,
                        "significance": "wilcoxon", "image_size": 32})],
        "preview": [(["--policy", "flipcrop", "--to", str(tmp / "g.png"), "--dataset",
                      f"folder:{missing}", "--n", "2", "--draws", "3", "--image-size", "48"],
                     {"policy": "flipcrop", "to": tmp / "g.png", "dataset": f"folder:{missing}",
                      "n": 2, "draws": 3, "image_size": 48})],
        "show": [([str(tmp / "p.yaml")], {"policy": tmp / "p.yaml"})],
        "check": [(["--space", str(tmp / "s.yaml")], {"space": str(tmp / "s.yaml")}),
                  (["--policy", str(tmp / "p.yaml")], {"policy": tmp / "p.yaml"})],
        "init": [(["--dataset", f"folder:{missing}", "--to", str(tmp / "s.yaml"), "--force",
                   "--space", "randaugment"],
                  {"dataset": f"folder:{missing}", "to": tmp / "s.yaml", "force": True,
                   "space": "randaugment"}),
                 (["--dataset", "shapes"], {"dataset": "shapes", "to": None, "force": False,
                                            "space": "default"})],
        "spaces": [([], {})],
        "ops": [([], {})],
    }


def _recorder(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    """Replace ``policysearch.api.<name>`` by a recorder of its (bound) arguments."""
    real = getattr(ps, name)  # the package's binding stays the real function
    calls: list[dict[str, Any]] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(dict(inspect.signature(real).bind(*args, **kwargs).arguments))
        raise Called(name)

    monkeypatch.setattr(api, name, record)
    return calls


def test_the_table_names_every_command_once() -> None:
    named = [command for command, _, _ in TABLE if command is not None]
    assert sorted(named) == sorted(COMMANDS), "README's Python API table and the commands differ"


@pytest.mark.parametrize(("command", "function"),
                         [(c, f) for c, f, _ in TABLE if c is not None])
def test_the_command_calls_the_api_function_the_table_names(
        command: str, function: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = _cases(tmp_path)
    assert command in cases, f"add a case for the command {command!r}"
    for argv, expected in cases[command]:
        calls = _recorder(monkeypatch, function)
        result = runner.invoke(app, [command, *argv])
        assert isinstance(result.exception, Called), (
            f"`policysearch {command}` did not call policysearch.api.{function} "
            f"(exit {result.exit_code}): {result.output}")
        assert len(calls) == 1
        got = {key: calls[0].get(key, inspect.signature(getattr(ps, function))
                                 .parameters[key].default) for key in expected}
        assert got == expected, (command, argv)


def test_progress_reaches_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorder(monkeypatch, "search")
    runner.invoke(app, ["search", "--space", str(tmp_path / "s.yaml"), "--json-logs"])
    assert callable(calls[0]["progress"])
    calls = _recorder(monkeypatch, "benchmark")
    runner.invoke(app, ["benchmark", "--policy", str(tmp_path / "p.yaml"), "--quiet"])
    assert callable(calls[0]["progress"]) and callable(calls[0]["events"])


@pytest.mark.parametrize(("function", "call"), [(f, c) for _, f, c in TABLE])
def test_the_table_names_real_parameters(function: str, call: str) -> None:
    assert getattr(ps, function) is getattr(api, function)
    params = inspect.signature(getattr(api, function)).parameters
    inner = call[call.index("(") + 1:call.rindex(")")]
    for arg in (a.strip() for a in inner.split(",")):
        if arg and arg != "…":
            assert arg.rstrip("=") in params, f"README: {call}: no parameter {arg!r}"


def _public_functions() -> list[Callable[..., Any]]:
    return [getattr(api, name) for name in sorted({f for _, f, _ in TABLE})]


@pytest.mark.parametrize("func", _public_functions(), ids=lambda f: f.__name__)
def test_api_functions_have_explicit_typed_parameters_and_docstrings(
        func: Callable[..., Any]) -> None:
    signature = inspect.signature(func)
    assert func.__doc__ and func.__doc__.strip()
    assert signature.return_annotation is not inspect.Signature.empty
    for param in signature.parameters.values():
        assert param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL), param
        assert param.annotation is not inspect.Parameter.empty, param


def _assert_lists_fields(func: Callable[..., Any], options: type, extra: set[str]) -> None:
    params = inspect.signature(func).parameters
    fields = {f.name: f for f in dataclasses.fields(options)}
    assert set(params) == set(fields) | extra
    for name, field in fields.items():
        if field.default is not dataclasses.MISSING:
            assert params[name].default == field.default, name
        else:
            assert params[name].default is inspect.Parameter.empty, name
    for name in extra:
        assert params[name].default is None, name


def test_search_lists_every_search_option() -> None:
    from policysearch.search.driver import SearchOptions

    _assert_lists_fields(ps.search, SearchOptions, {"progress"})


def test_benchmark_lists_every_benchmark_option() -> None:
    from policysearch.evaluation.benchmark import BenchmarkOptions

    _assert_lists_fields(ps.benchmark, BenchmarkOptions, {"progress", "events"})


# What cli.py may import from the package: the API, errors, and printing helpers.
CLI_IMPORTS = {
    ("policysearch", "__version__"), ("policysearch", "api"),
    ("policysearch.errors", "SearchAborted"), ("policysearch.errors", "UserError"),
    ("policysearch.reporting.progress", "BenchmarkBar"),
    ("policysearch.reporting.progress", "JsonLogPrinter"),
    ("policysearch.reporting.progress", "ProgressPrinter"),
    ("policysearch.reporting.progress", "QuietPrinter"),
    ("policysearch.reporting.tables", "compact_columns"),
    ("policysearch.reporting.tables", "footer_lines"),
    ("policysearch.reporting.tables", "weights_text"),
    ("policysearch.reporting.policy_table", "policy_table"),
}


def test_the_cli_reaches_the_library_only_through_the_api() -> None:
    tree = ast.parse((ROOT / "policysearch" / "cli.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("policysearch"):
            found |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("policysearch") for a in node.names)
    assert found <= CLI_IMPORTS, sorted(found - CLI_IMPORTS)
