"""The rules of the test suite itself: in CI a skipped test fails unless it is marked gpu,
markers must be registered (--strict-markers), and every test has a timeout.

Each rule runs pytest in a subprocess, with this repository's configuration (pyproject.toml)
and tests/conftest.py as a plugin, on a tiny test file in tmp_path (outside tests/, so that
nothing here is collected twice). A run takes a second or two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTEST_TIMEOUT_S = 120  # one inner pytest run (about a second)

SKIPS = '''
import pytest


def test_plain_skip():
    pytest.skip("nothing to run against")


@pytest.mark.gpu
def test_gpu_skip():
    pytest.skip("needs a CUDA GPU")


@pytest.mark.skipif(True, reason="never here")
def test_skipif_without_gpu():
    pass


@pytest.mark.gpu
@pytest.mark.skipif(True, reason="no CUDA")
def test_skipif_with_gpu():
    pass


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False


def test_passes():
    pass
'''
MODULE_SKIP = '''
import pytest

pytest.importorskip("policysearch_no_such_module")


def test_never_collected():
    pass
'''


def _pytest(tmp_path: Path, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """pytest on ``args`` (files in tmp_path) as the suite runs: this repository's
    configuration and tests/conftest.py; CI=true or no CI at all."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if ci:
        env["CI"] = "true"
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
           "--rootdir", str(tmp_path), "-p", "tests.conftest", "-p", "no:cacheprovider",
           "--junitxml", str(tmp_path / "junit.xml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=PYTEST_TIMEOUT_S)


def _outcomes(tmp_path: Path) -> dict[str, str]:
    """Each test case's outcome in the JUnit report: passed, failure, error or skipped."""
    outcomes = {}
    for case in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return outcomes


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "no-ci"])
def test_in_ci_only_a_test_marked_gpu_may_skip(tmp_path: Path, ci: bool) -> None:
    (tmp_path / "test_skips.py").write_text(SKIPS)
    done = _pytest(tmp_path, "test_skips.py", ci=ci)
    output = done.stdout + done.stderr
    outcomes = _outcomes(tmp_path)
    if ci:
        assert done.returncode == 1, output
        assert outcomes == {"test_plain_skip": "failure", "test_gpu_skip": "skipped",
                            "test_skipif_without_gpu": "error",  # skipped in its setup
                            "test_skipif_with_gpu": "skipped",
                            "test_expected_failure": "skipped",  # an xfail is no skip
                            "test_passes": "passed"}, output
        assert "skipped in CI (CI=true), where only tests marked gpu may skip" in output
        assert "nothing to run against" in output and "never here" in output
    else:
        assert done.returncode == 0, output
        assert outcomes == {"test_plain_skip": "skipped", "test_gpu_skip": "skipped",
                            "test_skipif_without_gpu": "skipped",
                            "test_skipif_with_gpu": "skipped",
                            "test_expected_failure": "skipped", "test_passes": "passed"}, output


def test_in_ci_a_module_that_skips_when_imported_fails(tmp_path: Path) -> None:
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    done = _pytest(tmp_path, "test_module_skip.py", ci=True)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "skipped in CI (CI=true)" in output and "policysearch_no_such_module" in output
    done = _pytest(tmp_path, "test_module_skip.py", ci=False)
    assert done.returncode == 5, done.stdout + done.stderr  # skipped: no test collected


def test_an_unregistered_marker_is_an_error(tmp_path: Path) -> None:
    misspelt = "gpu" + "s"  # spelt out, test_every_marker_used_in_the_tests_… would see it
    (tmp_path / "test_marker.py").write_text(
        f"import pytest\n\n\n@pytest.mark.{misspelt}\ndef test_misspelt():\n    pass\n")
    done = _pytest(tmp_path, "test_marker.py", ci=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "'gpus' not found in `markers` configuration option" in output


def test_every_marker_used_in_the_tests_is_registered(pytestconfig: pytest.Config) -> None:
    # --strict-markers finds an unregistered marker only on the tests a run collects; this
    # looks at every test file, whatever a run selects (-m, -k, a single file).
    import re

    registered = {line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")}
    builtin = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings",
               "timeout"}
    used = {name for path in (ROOT / "tests").glob("*.py")
            for name in re.findall(r"pytest\.mark\.(\w+)", path.read_text())}
    assert used - builtin <= registered, used - builtin - registered


def test_every_test_has_a_timeout_above_the_longest_subprocess(
        pytestconfig: pytest.Config) -> None:
    from tests.test_benchmarks import RUN_TIMEOUT_S

    assert "--strict-markers" in pytestconfig.getini("addopts")
    timeout = float(pytestconfig.getini("timeout"))
    # Above the longest subprocess timeout of a test, so that a hung subprocess is reported by
    # its own timeout (naming its command) first.
    assert RUN_TIMEOUT_S < timeout <= 1800
