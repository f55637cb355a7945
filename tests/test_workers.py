"""Several trial processes on one study: --workers K on a journal, several searches on one
PostgreSQL database, dead workers and killed drivers. Real processes, real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
import yaml

from policysearch.search.optuna_study import (
    GRACE_ENV,
    HEARTBEAT_ENV,
    JOURNAL_NAME,
    MAX_RETRY,
    STALE_HEARTBEAT_ERROR,
    database_url,
    journal_lock,
    load_records,
    open_storage,
)
from policysearch.search.workers import gpu_for, visible_gpus
from tests.conftest import TINY_SPACE
from tests.postgres_server import postgres_url  # noqa: F401 — a fixture
from tests.reliability_counts import Recorder, lost_trials

pytestmark = pytest.mark.slow
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SEARCH_TIMEOUT_S = 900  # a search's subprocess (tiny trials, on a busy machine)
QUICK_TIMEOUT_S = 300  # a subprocess refused up front, or one that only reads a study
WAIT_TIMEOUT_S = 60  # a killed process, to be collected
# A database study's heartbeat, short enough that a lost host's trials go stale in seconds.
SHORT_HEARTBEAT = {HEARTBEAT_ENV: "1", GRACE_ENV: "3"}


def _space(tmp_path: Path, **budget: object) -> Path:
    space = {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], **budget}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _search_cmd(space: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "policysearch", "search", "--space", str(space),
            "--device", "cpu", "--threads", "1", *args]


def _study(storage: str, name: str = "tiny") -> optuna.Study:
    if storage.endswith(".journal"):
        return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage)))
    return optuna.load_study(study_name=name, storage=database_url(storage))


def _wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 300) -> None:
    """Poll ``condition`` until it holds (polling, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (KeyError, ValueError, OSError, optuna.exceptions.OptunaError):
            pass  # the study does not exist yet
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the search ended before {what}: {out[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"not within {limit} s: {what}")


def _check_counts(study: optuna.Study, target: int, workers: int) -> None:
    """At least ``target`` finished trials, at most one more per extra worker; one reference;
    no trial lost (every trial finished or failed) and none run twice."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert target <= len(finished) <= target + workers - 1
    roles = Counter(t.user_attrs.get("role") for t in finished)
    assert roles["reference"] == 1
    assert all(t.state in (*FINISHED, optuna.trial.TrialState.FAIL) for t in trials)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    searched = [tuple(sorted(t.params.items())) for t in finished
                if t.user_attrs.get("role") == "search"]
    assert len(searched) == len(set(searched))  # no suggestion trained twice


def _check_workers(study: optuna.Study, processes: int) -> None:
    """Every finished trial names the process that trained it (``host:pid``), one of the
    ``processes`` that ran; which of them got how many trials is up to scheduling (one may
    have trained them all), so it is not asserted."""
    labels = {t.user_attrs.get("worker") for t in study.get_trials(states=FINISHED)}
    assert all(isinstance(label, str) and ":" in label for label in labels), labels
    assert 1 <= len(labels) <= processes, labels


def test_two_workers_share_one_journal(tmp_path: Path) -> None:
    # Each worker's trials with a loader worker of their own, too.
    out = tmp_path / "run"
    done = subprocess.run(_search_cmd(_space(tmp_path), "--out", str(out), "--trials", "6",
                                      "--workers", "2", "--loader-workers", "1"),
                          capture_output=True, text=True, env=ENV, timeout=SEARCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "results.csv")
    assert table.loc[table["state"] == "complete", "loader_workers"].eq(1).all()
    assert "2 workers" in done.stdout
    study = _study(str(out / JOURNAL_NAME))
    _check_counts(study, 6, 2)
    _check_workers(study, 2)
    assert (out / "results.csv").exists() and (out / "best_policy.yaml").exists()
    # the same command again: the target is reached, nothing more runs
    again = subprocess.run(_search_cmd(_space(tmp_path), "--out", str(out), "--trials", "6",
                                       "--workers", "2"), capture_output=True, text=True, env=ENV,
                           timeout=SEARCH_TIMEOUT_S)
    assert again.returncode == 0, again.stderr
    assert len(_study(str(out / JOURNAL_NAME)).trials) == len(study.trials)


def test_a_killed_worker_fails_its_trial_and_the_search_goes_on(tmp_path: Path,
                                                                reliability: Recorder) -> None:
    out = tmp_path / "run"
    journal = str(out / JOURNAL_NAME)
    proc = subprocess.Popen(_search_cmd(_space(tmp_path, epochs=6), "--out", str(out),
                                        "--trials", "5", "--workers", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    victim: dict = {}

    def running_in(worker: str | None = None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in _study(journal).get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("role") == "search" and t.user_attrs.get("worker")
                and worker in (None, t.user_attrs["worker"])]

    def a_search_trial_runs_in_a_stopped_worker() -> bool:
        # A worker is frozen (SIGSTOP) before it is killed, and its trial is looked up again
        # while it is frozen: that trial cannot end before the kill lands (no race with it).
        running = running_in()
        if not running:
            return False
        worker = running[0].user_attrs["worker"]
        pid = int(worker.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        try:
            frozen = [t.number for t in running_in(worker)]
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        if not frozen:  # its trial ended between the two looks: let it go on, look again
            os.kill(pid, signal.SIGCONT)
            return False
        victim.update(trials=frozen, pid=pid)
        return True

    try:
        _wait_for(a_search_trial_runs_in_a_stopped_worker, proc, "a search trial started")
        os.kill(victim["pid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=SEARCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_TIMEOUT_S)
    assert proc.returncode == 0, output
    assert f"its trials {victim['trials']} are marked failed" in output
    assert len(victim["trials"]) == 1  # a worker runs one trial at a time
    study = _study(journal)
    dead = study.trials[victim["trials"][0]]
    assert dead.state == optuna.trial.TrialState.FAIL
    assert "its worker process died (killed by signal 9)" in dead.user_attrs["error"]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].params == dead.params  # its parameters ran again
    assert len(study.get_trials(states=FINISHED)) >= 5
    reliability.fault("a worker process killed", trials=len(study.trials))


def test_kill_9_of_a_driver_with_workers_then_the_same_command(tmp_path: Path,
                                                               reliability: Recorder) -> None:
    out = tmp_path / "run"
    journal = str(out / JOURNAL_NAME)
    cmd = _search_cmd(_space(tmp_path, epochs=4), "--out", str(out), "--trials", "7",
                      "--workers", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    workers: set[int] = set()

    def two_finished() -> bool:
        trials = _study(journal).get_trials()
        workers.update(int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials
                       if t.user_attrs.get("worker"))
        return sum(t.state in FINISHED for t in trials) >= 2

    try:
        _wait_for(two_finished, proc, "two trials finished")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_TIMEOUT_S)
    before = {t.number: t.value for t in _study(journal).get_trials(states=FINISHED)}

    def orphans() -> list[int]:
        alive = []
        for pid in workers:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        return alive

    deadline = time.monotonic() + 60
    while orphans() and time.monotonic() < deadline:
        time.sleep(0.2)  # polling: workers notice their driver is gone
    assert not orphans(), "worker processes outlived their killed driver"
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV,
                          timeout=SEARCH_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    study = _study(journal)
    after = {t.number: t.value for t in study.get_trials(states=FINISHED)}
    reliability.fault("kill -9 of a driver with workers", trials=len(study.trials),
                      lost=lost_trials(before, after))
    assert all(after[n] == v for n, v in before.items())  # every finished trial kept
    _check_counts(study, 7, 2)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_a_second_search_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with journal_lock(None, out):
        done = subprocess.run(_search_cmd(_space(tmp_path), "--out", str(out), "--trials", "2"),
                              capture_output=True, text=True, env=ENV, timeout=QUICK_TIMEOUT_S)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: {out / JOURNAL_NAME}: another search is "
                                          f"running on this study (pid {os.getpid()}")


def test_workers_spread_over_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    gpus = visible_gpus("auto")
    assert gpus == ["2", "5"] and visible_gpus("cuda") == gpus
    assert [gpu_for(i, gpus) for i in range(4)] == ["2", "5", "2", "5"]
    assert visible_gpus("cpu") == [] and visible_gpus("cuda:1") == []
    assert gpu_for(0, []) is None


def test_sqlite_with_workers_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(_search_cmd(_space(tmp_path), "--storage",
                                      f"sqlite:///{tmp_path / 'x.db'}", "--workers", "2"),
                          capture_output=True, text=True, env=ENV, timeout=QUICK_TIMEOUT_S)
    assert done.returncode == 2 and "--storage: SQLite does not tolerate" in done.stderr


@pytest.mark.postgres
def test_two_searches_share_one_postgres_study(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    """Two hosts on one study, the second with ``--workers 2``: three processes in all."""
    space = _space(tmp_path)
    # With loader workers: started from a forkserver beside Optuna's heartbeat thread.
    cmd = _search_cmd(space, "--storage", postgres_url, "--study", "shared", "--trials", "6",
                      "--loader-workers", "1")
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / f"host{i}"),
                               *(["--workers", "2"] if i else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=ENV) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=SEARCH_TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=WAIT_TIMEOUT_S)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[:3000] for o in outputs)
    assert "2 workers" in outputs[1]
    study = _study(postgres_url, "shared")
    _check_counts(study, 6, 3)
    _check_workers(study, 3)
    # results read the same study from the database
    table = subprocess.run([sys.executable, "-m", "policysearch", "results", "--storage",
                            postgres_url, "--study", "shared", "--format", "csv"],
                           capture_output=True, text=True, env=ENV, timeout=QUICK_TIMEOUT_S)
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.strip().splitlines()) == len(study.trials) + 1


def _heartbeats(storage: str) -> set[int]:
    """The ids of the trials that have beaten at least once (Optuna's heartbeat table)."""
    engine = sqlalchemy.create_engine(database_url(storage))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_host_killed_mid_trial_loses_no_trial_and_another_host_reruns_it(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        reliability: Recorder) -> None:
    """Host A (``--workers 2``) is killed with SIGKILL, all its processes at once, while it
    trains search trials; host B then searches the same study. Once A's trials have gone a
    grace period without a heartbeat, B fails them and runs their parameters again; every
    trial A finished is kept, and B stops at exactly ``--trials``. Short heartbeats
    (``POLICYSEARCH_HEARTBEAT_S``/``_GRACE_S``) keep it to seconds."""
    for name, value in SHORT_HEARTBEAT.items():
        monkeypatch.setenv(name, value)  # for this test's own look at the study, as for A, B
    env = {**ENV, **SHORT_HEARTBEAT}
    target = 5
    cmd = _search_cmd(_space(tmp_path, epochs=6), "--storage", postgres_url, "--study",
                      "hostloss", "--trials", str(target))

    def search_trials_run_and_beat() -> bool:
        study = _study(postgres_url, "hostloss")
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        beating = _heartbeats(postgres_url)
        # Mid-trial: each running trial beats and has all its parameters drawn (its policy is
        # stored once they are), so that the kill cannot land between two of its draws.
        return (any(t.user_attrs.get("role") == "search" for t in running)
                and all(t._trial_id in beating and "policy" in t.user_attrs for t in running))

    host_a = subprocess.Popen([*cmd, "--workers", "2", "--out", str(tmp_path / "host-a")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, start_new_session=True)
    def frozen_mid_trial() -> bool:
        # Host A is frozen (SIGSTOP) and its trials looked at again before the kill: a worker
        # cannot claim a new trial between the look and the kill (no race with it).
        if not search_trials_run_and_beat():
            return False
        os.killpg(host_a.pid, signal.SIGSTOP)
        try:
            frozen = search_trials_run_and_beat()
        except BaseException:
            os.killpg(host_a.pid, signal.SIGCONT)
            raise
        if not frozen:
            os.killpg(host_a.pid, signal.SIGCONT)
        return frozen

    try:
        _wait_for(frozen_mid_trial, host_a, "a search trial running on host A")
    finally:
        os.killpg(host_a.pid, signal.SIGKILL)  # the driver and its workers: the host is gone
        host_a.wait(timeout=WAIT_TIMEOUT_S)
    study = _study(postgres_url, "hostloss")
    killed = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    before = {t.number: t.value for t in study.get_trials(states=FINISHED)}
    assert killed and len(before) < target

    # Until the grace period has passed, B would rightly take A's trials for live ones.
    storage, _ = open_storage(postgres_url, tmp_path)
    stale = lambda: set(storage._get_stale_trial_ids(study._study_id))  # noqa: E731
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not {t._trial_id for t in killed} <= stale():
        assert time.monotonic() < deadline, "host A's trials never went stale"
        time.sleep(0.2)  # polling the database's clock, not a timing assertion

    host_b = subprocess.run([*cmd, "--out", str(tmp_path / "host-b")], capture_output=True,
                            text=True, env=env, timeout=SEARCH_TIMEOUT_S)
    assert host_b.returncode == 0, host_b.stdout + host_b.stderr
    study = _study(postgres_url, "hostloss")
    trials = study.get_trials()
    for dead in killed:
        assert trials[dead.number].state == optuna.trial.TrialState.FAIL
        reruns = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert 1 <= len(reruns) <= MAX_RETRY
        assert all(t.params == dead.params for t in reruns), (  # its parameters ran again
            dead.number, dead.params, [(t.number, t.params) for t in reruns])
        assert reruns[-1].state == optuna.trial.TrialState.COMPLETE
    # The results say why: Optuna's heartbeat fails a trial without a reason of its own.
    errors = {r.number: r.error for r in load_records(out_dir=None, storage=postgres_url,
                                                      study_name="hostloss").records}
    for dead in killed:
        again = [t.number for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert errors[dead.number] == (f"{STALE_HEARTBEAT_ERROR}; its parameters ran again as "
                                       f"trial {again[0]}")
    after = {t.number: t.value for t in study.get_trials(states=FINISHED)}
    reliability.fault("a PostgreSQL host killed mid-trial", trials=len(trials),
                      lost=lost_trials(before, after))
    assert all(after[n] == v for n, v in before.items())  # every finished trial kept
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == target
    _check_counts(study, target, 1)  # one reference, no trial run twice
    assert all(t.state in (*FINISHED, optuna.trial.TrialState.FAIL) for t in trials)
