"""The Ray Tune engine against the Optuna engine: overhead per trial, and what ASHA saves.

(a) Overhead: the same tiny search space and number of trials through `--engine optuna` and
    `--engine ray` (one trial at a time, so that every second not spent training is the engine's);
    overhead per trial = (wall time of the search − the trials' own training time) / trials.
    The Ray searches join a local Ray instance the script starts once (timed separately); each
    search still starts its own Tuner and worker actor (torch imported once per worker).
(b) ASHA: the same trials (a seeded random sampler, so that both runs train the same policies
    in the same order whatever ASHA does) with `--scheduler asha` and `--scheduler none`;
    trial-epochs trained and the best Δm% found.

Writes benchmarks/results/ray_engine.md (or --out).

    .venv/bin/python benchmarks/ray_engine.py               # ~5-10 minutes on 2 shared cores
    .venv/bin/python benchmarks/ray_engine.py --smoke-test
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
import yaml
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

from policysearch.config import load_space
from policysearch.events import SearchEvent
from policysearch.reporting.tables import results_frame
from policysearch.search.driver import SearchOptions, search
from policysearch.search.ray_engine import asha_rungs

HERE = Path(__file__).resolve().parent
BASE = {
    "dataset": "shapes",
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "brightness", "contrast"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
}


@dataclass(frozen=True)
class Setting:
    overhead_trials: int
    overhead_data: dict[str, int]
    overhead_epochs: int
    asha_trials: int
    asha_data: dict[str, int]
    asha_epochs: int
    asha_seeds: tuple[int, ...]
    asha_warmups: tuple[int, ...]  # the space pruner's n_warmup_steps: ASHA's first rung - 1


FULL = Setting(8, {"n_train": 48, "n_val": 24, "n_test": 24}, 2,
               16, {"n_train": 160, "n_val": 80, "n_test": 24}, 9, (0, 1), (0, 2))
SMOKE = Setting(2, {"n_train": 32, "n_val": 16, "n_test": 16}, 1,
                3, {"n_train": 32, "n_val": 16, "n_test": 16}, 2, (0,), (0,))


def space_file(folder: Path, name: str, data: dict[str, int], epochs: int,
               sampler: dict[str, Any], pruner: dict[str, Any]) -> Path:
    space = {"name": name, **BASE, "dataset_options": {**data, "seed": 0},
             "budget": {"epochs": epochs, "batch_size": 16, "lr": 0.003, "image_size": 32},
             "sampler": sampler, "pruner": pruner}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@dataclass
class Run:
    wall: float  # the engine's part: from the dataset being loaded to the search's return
    first_trial_s: float  # from the engine's start to the first trial starting
    training: float  # sum of the trials' own durations
    trials: int
    epochs: int  # trial-epochs trained (finished trials)
    pruned: int
    best: float  # best Δm% of a complete search trial
    best_trial: int = -1
    values: dict[int, float] = field(default_factory=dict)  # complete search trials' Δm%
    trial_epochs: dict[int, int] = field(default_factory=dict)  # every finished trial's
    states: dict[int, str] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return (self.wall - self.training) / self.trials


def timed_search(options: SearchOptions) -> Run:
    marks: dict[str, float] = {}

    def progress(event: SearchEvent) -> None:
        marks.setdefault(event.kind, time.perf_counter())

    outcome = search(options, progress=progress)
    end = time.perf_counter()
    finished = [r for r in outcome.study.records if r.state in ("complete", "pruned")]
    frame = results_frame(outcome.study, warn=False)
    searched = frame[(frame["role"] == "search") & frame["delta_m"].notna()]
    values = {int(t): float(v) for t, v in zip(searched["trial"], searched["delta_m"],
                                                strict=True)}
    best_trial = max(values, key=values.__getitem__) if values else -1
    return Run(wall=end - marks["dataset"], first_trial_s=marks["trial_start"] - marks["start"],
               training=sum(r.duration_s or 0.0 for r in finished), trials=len(finished),
               epochs=sum(r.epochs or 0 for r in finished),
               pruned=sum(r.state == "pruned" for r in finished),
               best=values.get(best_trial, float("nan")), best_trial=best_trial, values=values,
               trial_epochs={r.number: r.epochs or 0 for r in finished},
               states={r.number: r.state for r in outcome.study.records})


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


def overhead_options(setting: Setting, work: Path, engine: str) -> SearchOptions:
    space = space_file(work, "overhead", setting.overhead_data, setting.overhead_epochs,
                       {"name": "tpe", "n_startup_trials": 2}, {"name": "none"})
    return SearchOptions(space=space, trials=setting.overhead_trials, device="cpu", seed=0,
                         workers=1, engine=engine, out=work / engine)


def overhead_section(setting: Setting, runs: dict[str, Run]) -> list[str]:
    lines = [
        "## (a) Overhead per trial: Ray Tune engine against the Optuna engine",
        "",
        f"{setting.overhead_trials} trials (the reference included) of a tiny space "
        f"({setting.overhead_data['n_train']} training images of 32×32, "
        f"{setting.overhead_epochs} epochs), one at a time, 2 CPU threads per trial. "
        "Overhead per trial = (wall time − training time) / trials; wall time runs from the "
        "dataset being loaded to the search's return (results written); training time is the "
        "sum of the trials' own durations.",
        "",
        "| engine | wall (s) | training (s) | overhead per trial (s) | start → first trial (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        lines.append(f"| {name} | {run.wall:.1f} | {run.training:.1f} | {run.overhead:.2f} | "
                     f"{run.first_trial_s:.1f} |")
    ray_run = runs["ray"]
    steady = (ray_run.wall - ray_run.first_trial_s - ray_run.training) / ray_run.trials
    lines += ["", f"Of Ray's overhead, {ray_run.first_trial_s:.1f} s is paid once per run of "
              "the command before the first trial trains (a Tuner and a worker actor start, "
              "the worker imports torch, the dataset reaches it through the object store); "
              f"the rest is {steady:.2f} s per trial (reports, records, scheduling). Starting a "
              "local Ray instance (not counted above) takes the time in the header. The "
              "Optuna search ran before the Ray instance started, so that Ray's own processes "
              "starting up did not slow its trials."]
    return lines


def epochs_to_reach(run: Run, value: float) -> int | None:
    """Trial-epochs ``run`` spent (trials in order) until a complete search trial first
    reached Δm% ``value`` (None: never)."""
    spent = 0
    for number in sorted(run.trial_epochs):
        spent += run.trial_epochs[number]
        if run.values.get(number, float("-inf")) >= value - 1e-9:
            return spent
    return None


def asha_row(seed: int, label: str, run: Run, full: Run) -> str:
    own = epochs_to_reach(run, run.best)
    if run is full:
        return (f"| {seed} | {label} | {run.epochs} | {run.pruned} | {run.best:+.2f} "
                f"(#{run.best_trial}) | {own} | — | — | {run.wall:.1f} |")
    in_full = full.values.get(run.best_trial, float("nan"))
    rank = 1 + sum(v > in_full for v in full.values.values())
    reach = epochs_to_reach(full, run.best)
    fate = run.states.get(full.best_trial, "?")
    return (f"| {seed} | {label} | {run.epochs} | {run.pruned} | {run.best:+.2f} "
            f"(#{run.best_trial}, rank {rank} of {len(full.values)} without a scheduler) | "
            f"{own} | {reach if reach is not None else '—'} | #{full.best_trial} {fate} | "
            f"{run.wall:.1f} |")


def asha_section(setting: Setting, work: Path) -> list[str]:
    rows, totals = [], {w: [0, 0] for w in setting.asha_warmups}
    rung_text = []
    for warmup in setting.asha_warmups:
        pruner = {"name": "median", "n_startup_trials": 0, "n_warmup_steps": warmup}
        space = load_space(space_file(work, f"asha-w{warmup}", setting.asha_data,
                                      setting.asha_epochs, {"name": "random"}, pruner))
        rung_text.append(f"warm-up {warmup}: rungs at epoch "
                         + ", ".join(map(str, asha_rungs(space))))
    for seed in setting.asha_seeds:
        def run(scheduler: str, warmup: int, seed: int = seed) -> Run:
            space = work / f"asha-w{warmup}.yaml"
            return timed_search(SearchOptions(
                space=space, engine="ray", trials=setting.asha_trials, device="cpu", seed=seed,
                workers=1, scheduler=scheduler, out=work / f"s{seed}-{scheduler}-w{warmup}"))

        full = run("none", setting.asha_warmups[0])
        rows.append(asha_row(seed, "none", full, full))
        for warmup in setting.asha_warmups:
            asha = run("asha", warmup)
            rows.append(asha_row(seed, f"asha, warm-up {warmup}", asha, full))
            totals[warmup][0] += asha.epochs
            totals[warmup][1] += full.epochs
    lines = [
        "## (b) ASHA: trial-epochs saved",
        "",
        f"{setting.asha_trials} trials (the reference included) of {setting.asha_epochs} "
        f"epochs ({setting.asha_data['n_train']} training, {setting.asha_data['n_val']} "
        "validation images of 32×32), one at a time. A seeded random sampler makes every run "
        "of one seed train the same policies in the same order, so that trial #k is the same "
        "policy with or without ASHA and only the scheduler differs. ASHA compares Δm% against "
        "the reference after each epoch and keeps the best third at each rung; its first rung "
        "comes after the space pruner's warm-up (`n_warmup_steps`) — "
        + "; ".join(rung_text) + ".",
        "",
        "| seed | scheduler | trial-epochs | pruned | best Δm% (trial) | trial-epochs until "
        "that best | without a scheduler: trial-epochs until the same Δm% | without a "
        "scheduler's best trial, here | wall (s) |",
        "|---:|---|---:|---:|---|---:|---:|---|---:|",
        *rows,
        "",
    ]
    for warmup, (asha_epochs, full_epochs) in totals.items():
        lines.append(f"- warm-up {warmup}: ASHA trained {1 - asha_epochs / full_epochs:.0%} "
                     "fewer trial-epochs than the same trials without a scheduler (all seeds).")
    lines += ["", "Δm% of single short trainings on this small dataset carries seed noise of "
              "several points (see trial_speed.md), so a best Δm% a few points apart is not "
              "a reliable difference; which trials ASHA stopped is."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ray_engine.md")
    args = parser.parse_args()
    setting = SMOKE if args.smoke_test else FULL
    started = time.perf_counter()
    load_before = load_line()
    for name in ("ray", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="ray-engine-bench-") as tmp:
        work = Path(tmp)
        runs = {"optuna": timed_search(overhead_options(setting, work, "optuna"))}
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t0
        try:
            runs["ray"] = timed_search(overhead_options(setting, work, "ray"))
            asha = asha_section(setting, work)
        finally:
            ray.shutdown()
    overhead = overhead_section(setting, runs)
    smoke = " --smoke-test" if args.smoke_test else ""
    minutes = (time.perf_counter() - started) / 60
    lines = [
        "# Ray Tune engine: overhead and ASHA",
        "",
        f"Produced by `python benchmarks/ray_engine.py{smoke}` on {cpu_model()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}, no GPU; "
        f"{minutes:.1f} minutes in all. Starting the local Ray instance took {ray_start:.1f} s. "
        f"The machine was shared: load average {load_before} at the start, {load_line()} at "
        "the end, so wall times carry that noise.",
        "",
        *overhead,
        "",
        *asha,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
