"""Trials per hour: two one-thread worker processes vs one trial using both cores.

Writes benchmarks/results/workers.md (or --out). Runs the same search twice through the CLI,
on a fresh journal each time: ``--workers 1 --threads 2`` and ``--workers 2 --threads 1``
(same space, trial count and seed; no pruner, so every trial trains its full budget). Reports
* steady-state trials per hour: search trials finished ÷ (last trial end − reference end); the
  reference runs alone in both set-ups, and a second worker waits for it;
* the whole search's wall clock, worker start-up (spawned interpreters) included.

    .venv/bin/python benchmarks/workers.py                 # full run, ~6 minutes on 2 cores
    .venv/bin/python benchmarks/workers.py --smoke-test
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _space(smoke: bool) -> dict:
    return {
        "name": "workers-bench",
        "dataset": "shapes",
        "dataset_options": ({"n_train": 32, "n_val": 16, "n_test": 16, "seed": 0} if smoke
                            else {"n_train": 300, "n_val": 100, "n_test": 16, "seed": 0}),
        "shared": {"slots": 2, "ops": ["identity", "hflip", "rotate", "crop", "brightness",
                                       "contrast"]},
        "weights": {"method": "static", "range": [0.5, 2.0]},
        "budget": {"epochs": 1 if smoke else 5, "batch_size": 16, "lr": 0.003,
                   "image_size": 32 if smoke else 64},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
    }


def _warm_up(space: dict) -> None:
    from policysearch.data import get_dataset

    opts = space["dataset_options"]
    get_dataset(space["dataset"], size=space["budget"]["image_size"], seed=opts["seed"],
                n_train=opts["n_train"], n_val=opts["n_val"], n_test=opts["n_test"])


def _run(space_file: Path, out: Path, workers: int, threads: int, trials: int) -> dict:
    cmd = [sys.executable, "-m", "policysearch", "search", "--space", str(space_file),
           "--out", str(out), "--trials", str(trials), "--workers", str(workers),
           "--threads", str(threads), "--device", "cpu"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"search failed: {done.stderr[-2000:]}")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name="workers-bench", storage=storage)
    trials_done = study.get_trials(states=FINISHED)
    reference = next(t for t in trials_done if t.user_attrs.get("role") == "reference")
    search = [t for t in trials_done if t.user_attrs.get("role") == "search"]
    span = (max(t.datetime_complete for t in search)
            - reference.datetime_complete).total_seconds()
    return {"workers": workers, "threads": threads, "search_trials": len(search),
            "span_s": span, "per_hour": len(search) / span * 3600, "wall_s": wall,
            "reference_s": (reference.datetime_complete
                            - reference.datetime_start).total_seconds()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "workers.md")
    parser.add_argument("--trials", type=int, default=None,
                        help="finished trials per search, reference included (default 9)")
    args = parser.parse_args()
    trials = args.trials or (3 if args.smoke_test else 9)
    with tempfile.TemporaryDirectory() as tmp:
        space_file = Path(tmp) / "space.yaml"
        space_file.write_text(yaml.safe_dump(_space(args.smoke_test), sort_keys=False))
        os.environ.setdefault("POLICYSEARCH_CACHE", str(Path(tmp) / "cache"))
        _warm_up(_space(args.smoke_test))  # generate the dataset once, outside the timings
        rows = [_run(space_file, Path(tmp) / f"w{w}", w, t, trials)
                for w, t in ((1, 2), (2, 1))]
    one, two = rows
    space = _space(args.smoke_test)
    budget = space["budget"]
    lines = [
        "# Trials per hour: two one-thread workers vs one two-thread trial",
        "",
        f"Produced by `python benchmarks/workers.py{' --smoke-test' if args.smoke_test else ''}`"
        f" on {cpu_model()}, {os.cpu_count()} CPUs, no GPU. Each set-up runs a fresh search of "
        f"{trials} finished trials (the reference included) on `shapes` at "
        f"{budget['image_size']}×{budget['image_size']} "
        f"({space['dataset_options']['n_train']} training images, {budget['epochs']} epochs, "
        "random sampler, no pruner, a journal file in a temporary folder).",
        "",
        "| set-up | search trials | steady-state trials/hour | whole search (wall) | "
        "reference trial |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| --workers {row['workers']} --threads {row['threads']} | "
                     f"{row['search_trials']} | {row['per_hour']:.0f} | {row['wall_s']:.0f} s | "
                     f"{row['reference_s']:.1f} s |")
    lines += [
        "",
        f"Speed-up of two workers in steady state: **{two['per_hour'] / one['per_hour']:.2f}×** "
        "(target ≥ 1.25×); over the whole search, reference and start-up included: "
        f"{one['wall_s'] / two['wall_s']:.2f}×.",
        "",
        "Steady state: search trials finished ÷ (last trial end − reference end). The "
        "reference trial runs alone in both set-ups (with two workers the second one waits "
        "for it), and each worker is a fresh interpreter that imports torch and loads the "
        "dataset once.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
