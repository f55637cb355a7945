"""Every Optuna-engine search method end to end on the CPU, at tiny sizes, as a user runs it:
random search, TPE with successive halving, and TPE over a RandAugment (N, M) space. Each
search, killed with SIGKILL after its second finished trial, resumes with the same command to
the full count without losing a finished trial; its exported policy loads with plain
albumentations; its report is written. (TPE alone: tests/test_search_e2e.py; density
matching: tests/test_density_search.py; PBT: tests/test_ray_pbt.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import albumentations as A
import optuna
import pytest
import yaml

from policysearch import load_policy
from policysearch.search.optuna_study import JOURNAL_NAME
from tests.conftest import TINY_SPACE
from tests.reliability_counts import lost_trials

ROOT = Path(__file__).resolve().parents[1]
SEARCH_TIMEOUT_S = 900  # a subprocess that searches (tiny trials, on a busy machine)
TRIALS = 3  # a kill after the 2nd finished trial, then the resume must add the 3rd

RANDAUGMENT = {
    **{k: v for k, v in TINY_SPACE.items() if k not in ("shared", "per_task", "weights")},
    "structure": "randaugment",
    "base": [{"op": "hflip", "p": 0.5, "magnitude": 1.0}],
    "shared": {"n": [1, 3], "magnitude": [0.1, 1.0],
               "ops": ["identity", "rotate", "brightness", "contrast"]},
    "per_task": {"tasks": ["shape"], "n": [1, 2], "magnitude": [0.1, 1.0],
                 "ops": ["identity", "contrast", "posterize"]},
    "weights": {"method": "equal"},
}
# (name, space, extra flags): what `benchmarks/methods_protocol.yaml` runs, at tiny sizes.
METHODS = [
    ("random", TINY_SPACE, ["--method", "random"]),
    ("tpe_halving", {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], "epochs": 4},
                     "pruner": {"name": "successive_halving", "min_resource": 1,
                                "reduction_factor": 2}}, ["--method", "tpe"]),
    ("randaugment", RANDAUGMENT, ["--method", "tpe"]),
]


def _finished(out: Path, study: str) -> dict[int, float | None]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / JOURNAL_NAME)))
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    return {t.number: t.value for t in trials}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "data", "flags"), METHODS, ids=[m[0] for m in METHODS])
def test_each_method_resumes_after_a_kill_and_exports_a_policy_albumentations_loads(
        name: str, data: dict, flags: list[str], tmp_path: Path) -> None:
    space = tmp_path / f"{name}.yaml"
    space.write_text(yaml.safe_dump({**data, "name": name}, sort_keys=False))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "policysearch", "search", "--space", str(space), "--out",
               str(out), "--trials", str(TRIALS), "--device", "cpu", "--threads", "1", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*command, "--json-logs"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    ended = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # kill once two trials have ended
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "trial_end" and event.get("state") != "fail":
                ended += 1
                if ended == 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
    finally:
        if proc.poll() is None and ended < 2:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert ended == 2, "the search ended before its second trial did"
    before = _finished(out, name)
    assert 2 <= len(before) < TRIALS

    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=SEARCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _finished(out, name)
    assert len(after) == TRIALS and lost_trials(before, after) == 0

    policy = load_policy(out / "best_policy.yaml")
    assert set(policy.tasks) == {"shape", "seg", "objects", "depth"}
    files = {p.name.split(".")[1]: p for p in out.glob("best_policy.*.albumentations.json")}
    assert set(files) == set(policy.tasks)
    for task, path in files.items():
        assert isinstance(A.load(str(path), data_format="json"), A.Compose), task
    assert "<html" in (out / "report.html").read_text(encoding="utf-8").lower()
