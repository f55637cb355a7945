"""Studies and Ray experiments written by older code stay readable; seeded under seeding
version 1 (before the input pipeline's keyed draws), they are not resumed, in one line.

The fixtures in tests/fixtures/stored_studies (its README.md says which commit wrote them, with
which commands) are an Optuna-engine study with stored re-runs and a Ray-engine experiment
stripped to what policysearch reads. Each test copies one into tmp_path and runs the CLI in a
fresh process, the interface every module layout keeps (plus ``policysearch.load_policy``).
The expected trial numbers and Δm% come from the fixture itself: its stored trials, and the
results table the old code printed for it (expected/*.csv).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from policysearch import load_policy
from tests import ray_cluster
from tests.ray_cluster import RayHead

ray_head = ray_cluster.ray_head  # the fixture: a real Ray head for this module's Ray tests
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stored_studies"
SPACE = FIXTURES / "tiny.yaml"
STUDY = "tiny"
ENGINES = ("optuna", "ray")
CLI_TIMEOUT_S = 300
RAY_TIMEOUT_S = 420
# The options the fixtures were searched with (README.md there); --trials is given per run.
# The seed is part of a study's definition: a resume with another one is refused.
SEARCH_OPTIONS = ["--seed", "0", "--device", "cpu", "--threads", "1", "--no-report",
                  "--quiet"]

Table = dict[int, dict[str, str]]
# The re-evaluation columns now leave the study's seed out (the old code included it):
# test_stored_reruns_are_shown checks them against the old code's values.
RERUN_COLUMNS = ("delta_m_mean", "delta_m_std", "seeds")


# --- helpers ------------------------------------------------------------------------------------


def _cli(*args: object, env: dict[str, str] | None = None,
         timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``policysearch ARGS`` in a fresh process; fails the test on a non-zero exit status."""
    done = subprocess.run([sys.executable, "-m", "policysearch", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert done.returncode == 0, (f"policysearch {' '.join(map(str, args))}: exit "
                                  f"{done.returncode}\n{done.stdout[-2000:]}\n"
                                  f"{done.stderr[-3000:]}")
    return done


def _copy(engine: str, tmp_path: Path) -> Path:
    """A copy of the stored study (commands may write beside it; the fixture stays as is)."""
    target = tmp_path / engine
    shutil.copytree(FIXTURES / engine, target)
    return target


def _by_trial(text: str) -> Table:
    return {int(row["trial"]): row for row in csv.DictReader(io.StringIO(text))}


def _expected(engine: str) -> Table:
    """The results table the old code printed for the fixture (``results --format csv``)."""
    return _by_trial((FIXTURES / "expected" / f"{engine}_results.csv").read_text())


def _results_csv(out: Path) -> Table:
    return _by_trial(_cli("results", "--out", out, "--format", "csv").stdout)


def _optuna_study(folder: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))
    return optuna.load_study(study_name=STUDY, storage=storage)


def _ray_records(folder: Path) -> dict[int, dict]:
    found = [json.loads(p.read_text()) for p in (folder / "trials").glob("trial-*.json")]
    return {int(d["number"]): d for d in found}


def _stored_trials(engine: str, folder: Path) -> dict[int, str]:
    """``{trial number: state}`` as the study or experiment in ``folder`` stores them."""
    if engine == "optuna":
        states = {optuna.trial.TrialState.COMPLETE: "complete",
                  optuna.trial.TrialState.PRUNED: "pruned"}
        return {t.number: states.get(t.state, t.state.name.lower())
                for t in _optuna_study(folder).get_trials(deepcopy=False)}
    return {n: d["state"] for n, d in _ray_records(folder).items()}


def _stored_tasks(engine: str, folder: Path) -> list[str]:
    if engine == "optuna":
        return list(_optuna_study(folder).user_attrs["tasks"])
    return list(json.loads((folder / "policysearch.json").read_text())["tasks"])


def _rank_one(expected: Table) -> tuple[int, dict[str, str]]:
    return next((n, row) for n, row in expected.items() if row["rank"] == "1")


def _printed_rows(stdout: str) -> dict[int, dict[str, str]]:
    """The rows of the printed (rich) results table, by trial, keyed by column header."""
    headers: list[str] = []
    rows: dict[int, dict[str, str]] = {}
    for line in stdout.splitlines():
        if line.startswith("┃"):
            headers = [c.strip() for c in line.strip().strip("┃").split("┃")]
        elif line.startswith("│") and headers:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            row = dict(zip(headers, cells, strict=False))
            if row.get("trial", "").isdigit():
                rows[int(row["trial"])] = row
    return rows


def _reruns(study: optuna.Study) -> tuple[dict[int, set[int]], set[int]]:
    """The re-runs stored as study user attributes: ``{trial: seeds}`` and the reference's
    seeds (``rerun:trial:<number>:<seed>``, ``rerun:reference:<seed>``)."""
    trials: dict[int, set[int]] = {}
    reference: set[int] = set()
    for key in study.user_attrs:
        parts = key.split(":")
        if parts[:2] == ["rerun", "trial"] and len(parts) == 4:
            trials.setdefault(int(parts[2]), set()).add(int(parts[3]))
        elif parts[:2] == ["rerun", "reference"] and len(parts) == 3:
            reference.add(int(parts[2]))
    return trials, reference


def _assert_same_rows(table: Table, expected: Table, skip: tuple[str, ...] = ()) -> None:
    """Every stored trial's row has the values the old code printed, column by column."""
    for number, want in expected.items():
        got = table[number]
        for column, value in want.items():
            if column not in skip:
                assert got.get(column) == value, (number, column, got.get(column), value)


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_results_lists_the_stored_trials_with_their_delta_m(engine: str, tmp_path: Path) -> None:
    out = _copy(engine, tmp_path)
    expected = _expected(engine)
    stored = _stored_trials(engine, out)
    assert stored and set(expected) == set(stored)  # the expected table covers every trial
    table = _results_csv(out)
    assert set(table) == set(stored)
    assert {n: row["state"] for n, row in table.items()} == stored
    _assert_same_rows(table, expected, skip=RERUN_COLUMNS)  # every other column, as before
    # Trials stored before the data wait was measured have none: the columns are there, empty.
    assert all(row["data_wait"] == "" and row["loader_workers"] == "" for row in table.values())
    if engine == "optuna":  # Δm% is also the objective value Optuna stored for each trial
        for trial in _optuna_study(out).get_trials(deepcopy=False):
            assert float(table[trial.number]["delta_m"]) == trial.value
    printed = _cli("results", "--out", out).stdout
    assert "policies ranked by Δm%" in printed
    rows = _printed_rows(printed)
    assert set(rows) == set(stored)
    for number, want in expected.items():
        assert rows[number]["Δm%"] == f"{float(want['delta_m']):+.2f}"
        assert rows[number]["rank"] == (want["rank"] or "-")


@pytest.mark.parametrize("engine", ENGINES)
def test_export_writes_the_rank_one_policy(engine: str, tmp_path: Path) -> None:
    out = _copy(engine, tmp_path)
    path = out / "best_policy.yaml"
    assert not path.exists()
    _cli("export", "--out", out)
    number, best = _rank_one(_expected(engine))
    policy = load_policy(path)
    tasks = _stored_tasks(engine, out)
    assert set(policy.tasks) == set(tasks)
    written = yaml.safe_load(path.read_text())
    provenance = written["provenance"]
    assert provenance["trial"] == number and provenance["rank"] == 1
    assert provenance["study"] == STUDY
    assert math.isclose(provenance["delta_m"], float(best["delta_m"]), abs_tol=1e-4)
    # The stored trial's own policy, op for op and weight for weight.
    if engine == "optuna":
        stored = _optuna_study(out).trials[number].user_attrs["policy"]
    else:
        stored = _ray_records(out)[number]["policy"]
    for key in ("tasks", "structure", "shared", "per_task", "weighting"):
        assert written.get(key) == stored.get(key), key
    for task in tasks:
        assert (out / f"best_policy.{task}.albumentations.json").is_file(), task


@pytest.mark.parametrize("engine", ENGINES)
def test_report_is_written_for_the_stored_study(engine: str, tmp_path: Path) -> None:
    out = _copy(engine, tmp_path)
    _cli("report", "--out", out, "--no-preview")
    html = (out / "report.html").read_text()
    assert "<html" in html[:2000].lower()
    assert f"<title>policysearch report: {STUDY}</title>" in html
    # The summary names the best complete search trial and its Δm%.
    searched = {n: float(r["delta_m"]) for n, r in _expected(engine).items()
                if r["role"] == "search" and r["state"] == "complete"}
    best = max(searched, key=searched.get)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
    assert re.search(rf"{re.escape(f'{searched[best]:+.2f}')} best Δm% \(trial {best}\)",
                     text), text[:2000]


def test_stored_reruns_are_shown(tmp_path: Path) -> None:
    out = _copy("optuna", tmp_path)
    study = _optuna_study(out)
    reruns, reference_seeds = _reruns(study)
    assert reruns and reference_seeds  # the fixture holds re-runs
    study_seed = int(study.user_attrs["definition"]["seed"])
    expected = _expected("optuna")
    table = _results_csv(out)
    means = {}
    for number, row in table.items():
        seeds = reruns.get(number, set()) & reference_seeds - {study_seed}
        if seeds and row["state"] == "complete":
            assert int(row["seeds"]) == len(seeds)  # the re-runs' seeds, not the study's
            # The old code's mean took the study's seed in: take its Δm% out again.
            old = expected[number]
            k = int(old["seeds"]) - 1
            means[number] = (k + 1) * float(old["delta_m_mean"]) / k - float(row["delta_m"]) / k
            assert float(row["delta_m_mean"]) == pytest.approx(means[number], abs=1e-6)
            assert (row["delta_m_std"] == "") == (len(seeds) == 1)  # no std from one seed
        else:
            assert row["seeds"] == "" and row["delta_m_mean"] == ""
    assert means  # the fixture's re-runs are shown
    printed = _cli("results", "--out", out).stdout
    rows = _printed_rows(printed)
    for number, mean in means.items():
        assert rows[number]["Δm% mean"] == f"{mean:+.2f}"
        assert rows[number]["seeds"] == table[number]["seeds"]
    seeds_text = ", ".join(str(s) for s in sorted(reference_seeds - {study_seed}))
    assert f"Δm% over the re-run seeds {seeds_text}," in printed
    assert "seed noise:" in printed


@pytest.mark.slow
def test_reeval_of_a_ray_experiment_stores_its_runs_beside_it(tmp_path: Path) -> None:
    out = _copy("ray", tmp_path)
    expected = _expected("ray")
    best = min((n for n, row in expected.items() if row["role"] == "search" and row["rank"]),
               key=lambda n: float(expected[n]["rank"]))
    args = ("results", "--out", out, "--reeval", 1, "--seeds", 1, "--device", "cpu",
            "--threads", 1, "--format", "csv")
    done = _cli(*args)
    assert "trained 2 runs, reused 0 stored runs" in done.stderr
    stored = {json.loads(p.read_text())["key"] for p in (out / "reruns").glob("*.json")}
    assert stored == {"rerun:reference:1", f"rerun:trial:{best}:1"}
    row = _by_trial(done.stdout)[best]
    # One re-run seed (1); the study's seed 0 is left out of the mean.
    assert row["seeds"] == "1" and math.isfinite(float(row["delta_m_mean"]))
    # The trials themselves are unchanged; a second run reuses what is stored.
    table = _by_trial(done.stdout)
    for number, old in expected.items():
        assert table[number]["delta_m"] == old["delta_m"]
    again = _cli(*args)
    assert "trained 0 runs, reused 2 stored runs" in again.stderr
    assert _by_trial(again.stdout)[best]["delta_m_mean"] == row["delta_m_mean"]


# --- resuming -----------------------------------------------------------------------------------


def _refused(done: subprocess.CompletedProcess, where: Path) -> None:
    """Exit 2 and one line: the study was seeded under version 1 (before the input pipeline's
    keyed draws), so it is not resumed."""
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {where}: study {STUDY}: refusing to resume: the study "
                               "was seeded under seeding version 1"), lines


@pytest.mark.slow
def test_an_optuna_study_seeded_under_version_1_is_not_resumed(tmp_path: Path) -> None:
    out = _copy("optuna", tmp_path)
    stored = _stored_trials("optuna", out)
    definition = _optuna_study(out).user_attrs["definition"]
    done = subprocess.run([sys.executable, "-m", "policysearch", "search", "--space", SPACE,
                           "--out", str(out), "--trials", str(len(stored) + 1),
                           *SEARCH_OPTIONS], capture_output=True, text=True, cwd=ROOT,
                          timeout=CLI_TIMEOUT_S)
    _refused(done, out / "study.journal")
    # No trial added, the study's definition as it was (Optuna's create_study(load_if_exists)
    # appends an operation of its own to the journal; reading the study ignores it).
    assert _stored_trials("optuna", out) == stored
    assert _optuna_study(out).user_attrs["definition"] == definition
    _assert_same_rows(_results_csv(out), _expected("optuna"), skip=RERUN_COLUMNS)  # as before


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_experiment_seeded_under_version_1_is_not_resumed(ray_head: RayHead,
                                                                 tmp_path: Path) -> None:
    out = _copy("ray", tmp_path)
    stored = _stored_trials("ray", out)
    before = _ray_records(out)
    done = subprocess.run([sys.executable, "-m", "policysearch", "search", "--engine", "ray",
                           "--space", SPACE, "--out", str(out), "--trials",
                           str(len(stored) + 1), "--ray-address", "auto", "--workers", "1",
                           *SEARCH_OPTIONS], capture_output=True, text=True, cwd=ROOT,
                          env=ray_head.env, timeout=RAY_TIMEOUT_S)
    _refused(done, out / "policysearch.json")
    assert _ray_records(out) == before
    _assert_same_rows(_results_csv(out), _expected("ray"))
