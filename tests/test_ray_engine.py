"""The Ray Tune engine (``--engine ray``): searches on a real Ray head and on a local instance,
resume after kill -9, a dying worker, user errors, and the records ``results``/``export`` read.

No mocks of Ray: the tests marked ``ray`` start a real head (tests/ray_cluster.py) or let the
engine start a local instance. Budgets are tiny (trials of about a second).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from policysearch.cli import app
from policysearch.errors import UserError
from policysearch.events import PruningOff, SearchEvent, TrialEnded
from policysearch.records import TrialRecord
from policysearch.reporting.tables import results_frame
from policysearch.search import ray_results as rr
from tests import ray_cluster
from tests.conftest import TINY_SPACE, unexpected_stderr
from tests.ray_cluster import RayHead, ray_unavailable
from tests.reliability_counts import Recorder, all_trials, finished_trials, lost_trials

ray_head = ray_cluster.ray_head  # the fixture: a real Ray head for this module's tests
runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
# TINY_SPACE with 3 epochs and a pruner that ASHA follows from the first epoch on.
ASHA_SPACE = {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], "epochs": 3},
              "pruner": {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0}}
TASKS = ("shape", "seg", "objects", "depth")
SEARCH_TIMEOUT_S = 420  # a search's subprocess (trials of about a second)
QUICK_TIMEOUT_S = 120  # a subprocess that only imports


@pytest.fixture(scope="module")
def ray_engine():
    """The engine module (skip, or fail with POLICYSEARCH_REQUIRE_RAY=1, without ray)."""
    try:
        from policysearch.search import ray_engine, ray_runtime
    except ImportError as err:
        ray_unavailable(f"ray is not installed ({err})")
    assert ray_engine.optimize_ray
    return ray_runtime  # what both Ray engines share: the trainable, records, experiment


def _space_file(tmp_path: Path, space: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _cli(space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "policysearch", "search", "--engine", "ray", "--space",
            str(space), "--out", str(out), "--trials", str(trials), "--device", "cpu", *extra]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=SEARCH_TIMEOUT_S)


def _records(out: Path) -> dict[int, dict]:
    return {d["number"]: d for d in rr.read_trial_files(out)}


def _finished(out: Path) -> dict[int, dict]:
    return {n: d for n, d in _records(out).items() if d["state"] in rr.FINISHED_STATES}


def _no_ray_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


# --- no Ray needed ----------------------------------------------------------------------------


def test_records_round_trip_pointer_and_stale_trials(tmp_path: Path) -> None:
    exp = tmp_path / "shared" / "study"
    info = rr.experiment_info(study="study", definition={
                                  "space": {"budget": {"image_size": 32}}, "seed": 3},
                              metrics_info={"shape": {"accuracy": {
                                  "higher": True, "primary": True}}}, tasks={"shape": "cls"},
                              reference="flipcrop", dataset="shapes", dataset_notes=["n"],
                              scheduler="asha")
    rr.write_experiment(exp, info)
    rr.write_trial_record(exp, TrialRecord(0, "complete", "reference",
                                           {"shape": {"accuracy": 0.5}}, epochs=2,
                                           data_wait=[0.25, 0.125], loader_workers=2))
    rr.write_trial_record(exp, TrialRecord(1, "running"), worker="host:1")
    out = tmp_path / "out"
    rr.write_pointer(out, exp)
    assert rr.is_ray_experiment(out) and rr.is_ray_experiment(exp)
    assert not rr.is_ray_experiment(tmp_path)
    assert rr.resolve_experiment(out) == exp
    assert not list(exp.rglob("*.tmp"))  # atomic writes leave no temporary files
    assert rr.mark_stale(exp) == [1]
    stale = _records(exp)[1]
    assert stale["state"] == "failed" and stale["error"] == rr.STALE_ERROR
    assert stale["worker"] == "host:1"  # engine extras survive
    study = rr.load_ray_records(out)
    assert study.name == "study" and study.seed == 3 and study.image_size == 32
    assert [r.state for r in study.records] == ["complete", "failed"]
    assert study.reference_metrics() == {"shape": {"accuracy": 0.5}}
    assert (study.records[0].data_wait, study.records[0].loader_workers) == ([0.25, 0.125], 2)
    # A record file written before the data wait was measured reads as None.
    old = {k: v for k, v in _records(exp)[0].items() if k not in ("data_wait", "loader_workers")}
    assert rr.record_from_dict(old).data_wait is None
    assert rr.record_from_dict(old).loader_workers is None
    with pytest.raises(UserError, match="no Ray experiment"):
        rr.load_ray_records(tmp_path)


def test_ray_is_imported_by_the_engine_only() -> None:
    code = ("import sys, policysearch.cli, policysearch.search.ray_results, "
            "policysearch.search.driver; sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          timeout=QUICK_TIMEOUT_S).returncode == 0


def test_trial_outcome(ray_engine) -> None:
    from policysearch.search.lifecycle import TrialOutcome

    outcome = ray_engine.trial_outcome
    sent = TrialOutcome("complete", metrics={"shape": {"accuracy": 0.5}}, epochs=3, value=1.5,
                        data_wait=[0.5, 0.25, 0.125], loader_workers=1)
    assert outcome({"state": "complete", "epoch": 3, "outcome": sent.to_dict()}, 3) == sent
    failed = TrialOutcome("failed", epochs=2, error="nan", kind="trial")
    assert outcome({"state": "failed", "epoch": 2, "outcome": failed.to_dict()}, 3) == failed
    pruned = outcome({"state": "running", "epoch": 1, "metrics": {"shape": {"a": 1.0}}}, 3)
    assert pruned.state == "pruned" and "by ASHA after epoch 1 of 3" in str(pruned.error)
    assert pruned.epochs == 1 and pruned.metrics == {"shape": {"a": 1.0}}
    assert outcome(None, 3).state == "failed"


def test_resume_with_another_seed_is_refused(ray_engine, tmp_path: Path) -> None:
    from policysearch.config import SearchSpace

    space = SearchSpace(**TINY_SPACE)
    args = {"out_dir": tmp_path, "ray_storage": None, "study_name": "tiny",
            "metrics_info": {}, "tasks": {"shape": "classification"}, "dataset": "shapes",
            "dataset_notes": [], "scheduler": "asha"}
    exp = ray_engine.open_experiment(space, seed=0, **args)
    assert exp == tmp_path.resolve() and rr.is_ray_experiment(tmp_path)
    with pytest.raises(UserError, match=r"refusing to resume.*seed: 0 → 1"):
        ray_engine.open_experiment(space, seed=1, **args)
    with pytest.raises(UserError, match="--scheduler"):
        ray_engine.open_experiment(space, seed=0, **{**args, "scheduler": "pbt"})


def test_one_search_per_experiment(ray_engine, tmp_path: Path) -> None:
    lock = ray_engine.experiment_lock
    with lock(tmp_path / "exp"), pytest.raises(UserError, match=r"another search .*pid \d+"), \
            lock(tmp_path / "exp"):
        pass
    with ray_engine.experiment_lock(tmp_path / "exp"):  # released at the end
        pass


def test_unreachable_address_is_one_line_naming_the_flag(ray_engine, tiny_space: Path,
                                                         tmp_path: Path) -> None:
    with ray_cluster.unanswered_port() as port:
        result = runner.invoke(app, ["search", "--engine", "ray", "--space", str(tiny_space),
                                     "--out", str(tmp_path / "o"), "--device", "cpu",
                                     "--ray-address", f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "error: --ray-address: cannot reach a Ray cluster at 127.0.0.1:")
    assert not (tmp_path / "o").exists()  # refused before anything was written


# --- a real Ray head --------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_gpus_per_trial_without_a_gpu_is_refused(ray_engine, ray_head: RayHead,
                                                 tiny_space: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ray_head.join(monkeypatch)
    result = runner.invoke(app, ["search", "--engine", "ray", "--space", str(tiny_space),
                                 "--out", str(tmp_path / "o"), "--ray-address", "auto",
                                 "--gpus-per-trial", "0.5"])
    assert result.exit_code == 2, result.output
    assert "--gpus-per-trial" in result.output and "no GPU" in result.output


@pytest.mark.ray
@pytest.mark.slow
def test_timeout_starts_no_new_trial(ray_engine, ray_head: RayHead, tiny_space: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray_head.join(monkeypatch)
    out = tmp_path / "t"
    result = runner.invoke(app, ["search", "--engine", "ray", "--space", str(tiny_space),
                                 "--out", str(out), "--ray-address", "auto", "--trials", "5",
                                 "--device", "cpu", "--timeout", "0.000001"])
    assert result.exit_code == 0, result.output
    assert "timeout reached" in result.output
    assert _records(out) == {} and not (out / "best_policy.yaml").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_search_on_a_running_cluster_then_results_and_export(ray_engine, ray_head: RayHead,
                                                             tmp_path: Path) -> None:
    space = _space_file(tmp_path, ASHA_SPACE)
    out = tmp_path / "ray"
    done = _run(_cli(space, out, 6, "--ray-address", "auto", "--workers", "2",
                     "--log-to", "tensorboard"), ray_head.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[6/6]" in done.stdout and "policies ranked" in done.stdout
    # Ray's own output is silenced: nothing on stderr but known warnings (a Python warning, a
    # warning of Ray's core on a busy machine), never its progress tables, logs or errors.
    assert not unexpected_stderr(done.stderr), done.stderr[-2000:]
    records = _records(out)
    finished = _finished(out)
    assert len(finished) == 6 and len(records) == 6  # exactly --trials, none lost
    reference = records[0]
    assert reference["role"] == "reference" and reference["state"] == "complete"
    searched = [r for r in records.values() if r["role"] == "search"]
    # The reference ran first: no search trial started before it ended.
    assert all(r["started_at"] >= reference["ended_at"] for r in searched)
    for r in searched:
        assert r["state"] in ("complete", "pruned") and r["policy"]["shared"]
        assert r["epochs"] == 3 if r["state"] == "complete" else 1 <= r["epochs"] < 3
        # The searched values are kept (the report's parameter importances use them).
        assert r["params"] and "shared.0.op" in r["params"]
    # Every trial names the worker process that trained it. (Whether Ray reused an actor for
    # several trials depends on its scheduling, so it is not asserted.)
    assert all(re.fullmatch(r".+:\d+", str(r["worker"])) for r in records.values()), records
    for name in ("results.csv", "results.md", "best_policy.yaml", "report.html"):
        assert (out / name).exists(), name
    # --log-to: our event files, one folder per trial, as with the Optuna engine; and Ray
    # Tune's own loggers (CSV, JSON, TensorBoard) in the experiment's trial folders.
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == [
        f"trial-{n:05d}" for n in sorted(records)]
    ray_trials = [p for p in out.rglob("trial-*") if p.is_dir() and p.parent.name.startswith(
        "tune-")]
    assert ray_trials
    for folder in ray_trials:
        names = {f.name for f in folder.iterdir()}
        assert {"progress.csv", "result.json"} <= names, names
        assert any(n.startswith("events.out.tfevents") for n in names), names

    # The same table as for an Optuna study of the same space.
    optuna_out = tmp_path / "optuna"
    result = runner.invoke(app, ["search", "--space", str(space), "--out", str(optuna_out),
                                 "--trials", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    tables = {}
    for name, folder in (("ray", out), ("optuna", optuna_out)):
        result = runner.invoke(app, ["results", "--out", str(folder), "--format", "csv"])
        assert result.exit_code == 0, result.output
        tables[name] = result.output
    ray_header, optuna_header = (t.splitlines()[0] for t in tables.values())
    assert ray_header == optuna_header
    assert len(tables["ray"].strip().splitlines()) == 7
    result = runner.invoke(app, ["export", "--out", str(out), "--to",
                                 str(tmp_path / "best.yaml")])
    assert result.exit_code == 0, result.output
    from policysearch import load_policy

    assert set(load_policy(tmp_path / "best.yaml").tasks) == set(TASKS)


@pytest.mark.ray
@pytest.mark.slow
# (scheduler, trials finished before the kill): PBT's members end together, at the last
# epoch, so its kill lands after the reference and before any member.
@pytest.mark.parametrize(("scheduler", "first"), [("asha", 2), ("pbt", 1)])
def test_kill_9_of_the_driver_then_the_same_command_resumes(ray_engine, ray_head: RayHead,
                                                            tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            reliability: Recorder,
                                                            scheduler: str, first: int) -> None:
    space = _space_file(tmp_path, TINY_SPACE)
    out = tmp_path / "killed"
    storage = tmp_path / "shared"  # --ray-storage: the experiment lives apart from --out
    cmd = _cli(space, out, 5, "--ray-address", "auto", "--epochs", "3", "--ray-storage",
               str(storage), "--scheduler", scheduler)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ray_head.env, cwd=ROOT)
    exp = storage / "tiny"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(_finished(exp)) >= first:
                break
            if proc.poll() is not None:
                pytest.fail("the search ended before it could be killed")
            time.sleep(0.2)  # polling interval, not a timing assertion
        else:
            pytest.fail("no two trials finished within 300 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    before = _finished(exp)
    assert first <= len(before) < 5 and rr.resolve_experiment(out) == exp.resolve()
    done = _run(cmd, ray_head.env)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _finished(exp)
    assert len(after) == 5  # --trials reached, not exceeded
    reliability.fault(f"kill -9 of the Ray driver ({scheduler})", trials=len(_records(exp)),
                      lost=lost_trials({n: r["metrics"] for n, r in before.items()},
                                       {n: r["metrics"] for n, r in after.items()}))
    for number, record in before.items():  # every trial finished before the kill is kept
        assert after[number]["metrics"] == record["metrics"]
        assert after[number]["state"] == record["state"]
    stale = [r for r in _records(exp).values() if r["state"] == "failed"]
    assert all(r["error"] == rr.STALE_ERROR for r in stale)
    # Running it again with the target reached trains nothing (in this process: faster).
    from policysearch.search.driver import SearchOptions, search

    ray_head.join(monkeypatch)
    count = len(_records(exp))
    outcome = search(SearchOptions(space=space, engine="ray", trials=5, epochs=3, device="cpu",
                                   out=out, ray_address="auto", ray_storage=str(storage),
                                   scheduler=scheduler))
    assert len(outcome.study.records) == count == len(_records(exp))


@pytest.mark.ray
@pytest.mark.slow
def test_pareto_search_with_single_task_references(ray_engine, ray_head: RayHead,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from policysearch.search.driver import SearchOptions, search

    ray_head.join(monkeypatch)
    space = _space_file(tmp_path, {**ASHA_SPACE, "single_task_reference": True})
    events: list[SearchEvent] = []
    outcome = search(SearchOptions(space=space, engine="ray", trials=5, workers=2,
                                   device="cpu", out=tmp_path / "p", objective="pareto",
                                   ray_address="auto"),
                     progress=events.append)
    records = {r.number: r for r in outcome.study.records}
    assert len(records) == 5 and all(r.state == "complete" for r in records.values())
    references = [r for r in records.values() if r.role == "reference"]
    assert sorted(r.reference_task for r in references) == sorted(TASKS)
    assert sum(isinstance(e, PruningOff) for e in events) == 1  # ASHA cannot stop them
    ends = [e for e in events if isinstance(e, TrialEnded) and e.role == "search"]
    assert ends and set(ends[0].task_deltas or {}) == set(TASKS)
    frame = results_frame(outcome.study, warn=False)
    assert "pareto" in frame.columns and frame["pareto"].any()
    assert (tmp_path / "p" / "best_policy.yaml").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_corrupt_image_met_in_a_trial_stops_the_search_with_exit_2(
        ray_engine, ray_head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability: Recorder) -> None:
    from tests.test_folder import build as build_folder

    ray_head.join(monkeypatch)
    root = build_folder(tmp_path / "folder", n=12)
    space = _space_file(tmp_path, {**TINY_SPACE, "name": "fmt", "dataset": f"folder:{root}",
                                   "per_task": {"tasks": [], "slots": 0},
                                   "budget": {**TINY_SPACE["budget"], "epochs": 1}})
    out = tmp_path / "run"
    # With a loader worker: started from a forkserver inside the Ray actor.
    args = ["search", "--engine", "ray", "--ray-address", "auto", "--space", str(space),
            "--out", str(out), "--device", "cpu", "--loader-workers", "1", "--trials"]
    assert runner.invoke(app, [*args, "2"]).exit_code == 0
    table = pd.read_csv(out / "results.csv")
    assert table.loc[table["state"] == "complete", "loader_workers"].eq(1).all()
    before = finished_trials(out)
    # A file whose header is fine but whose pixels cannot be decoded: found only when read,
    # inside a trial on a Ray worker, by its loader worker.
    victim = root / "images" / "img3.png"
    victim.write_bytes(victim.read_bytes()[:60])
    result = runner.invoke(app, [*args, "4"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {victim}: corrupt image")
    reliability.fault("corrupt image met in a Ray trial", trials=all_trials(out),
                      lost=lost_trials(before, finished_trials(out)))
    table = pd.read_csv(out / "results.csv")
    assert table["state"].eq("complete").sum() == 2  # the two finished trials are kept
    assert lost_trials(before, finished_trials(out)) == 0


# --- a local Ray instance (the default) --------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_local_instance_retries_a_dead_worker_and_fails_a_dying_trial(
        ray_engine, tmp_path: Path, reliability: Recorder) -> None:
    space = _space_file(tmp_path, TINY_SPACE)
    out = tmp_path / "local"
    marker = tmp_path / "died-once"
    # Trial 1's worker dies once (retried, then completes); trial 2's dies at every attempt
    # (failed after the retries); the search still reaches --trials. Two workers, so that the
    # replacement workers start side by side.
    env = {**_no_ray_env(), ray_engine.TEST_EXIT_ENV: f"1:{marker},2"}
    done = _run(_cli(space, out, 3, "--workers", "2"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(out)
    assert marker.exists()
    assert records[1]["state"] == "complete" and records[1]["retries"] == 1
    assert records[2]["state"] == "failed" and "died" in records[2]["error"]
    assert records[2]["retries"] == ray_engine.RETRIES
    assert len(_finished(out)) == 3 and records[3]["state"] == "complete"
    # Trial 1's worker died once, trial 2's at each of its attempts.
    reliability.fault("a Ray worker process dies", trials=len(records),
                      n=1 + 1 + ray_engine.RETRIES)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and table["rank"].notna().sum() == 3
    assert json.loads((out / rr.EXPERIMENT_FILE).read_text())["engine"] == "ray"


@pytest.mark.ray
@pytest.mark.slow
def test_repeated_errors_stop_a_ray_search_as_they_stop_an_optuna_search(ray_engine,
                                                                         tmp_path: Path) -> None:
    from policysearch.search.lifecycle import MAX_CONSECUTIVE_ERRORS

    space = _space_file(tmp_path, TINY_SPACE)
    out = tmp_path / "dying"
    # Every trial's worker dies at every attempt: each trial fails (after its retries) with an
    # unexpected error, and the lifecycle's failure rules stop the search, as with Optuna.
    env = {**_no_ray_env(), ray_engine.TEST_EXIT_ENV: ",".join(map(str, range(8)))}
    done = _run(_cli(space, out, 3, "--workers", "1", "--no-report"), env)
    assert done.returncode == 1, done.stderr[-3000:]
    last = (done.stdout + done.stderr).strip().splitlines()[-1]
    assert (f"error: {MAX_CONSECUTIVE_ERRORS} trials in a row failed with an unexpected error; "
            f"last: its worker process died ({ray_engine.RETRIES + 1} times)") in last
    records = _records(out)
    assert sorted(records) == list(range(MAX_CONSECUTIVE_ERRORS))
    assert all(r["state"] == "failed" and "died" in r["error"] for r in records.values())


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_session_leaves_the_environment_as_it_found_it(ray_engine,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    # ray.init sets RAY_AUTH_MODE=token (among others) in the process: a driver started later
    # from this process (an API user's subprocess) could then not schedule on a plain cluster.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = dict(os.environ)
    with ray_engine.ray_session(None, num_cpus=1):
        pass
    assert dict(os.environ) == before
