"""Loss-weighting methods compared under one policy, at the default search space's budget, on
development data only.

Trains the multi-task network with every weighting method — equal, static (weights found by a
small Optuna search), uncertainty, dwa, gradnorm, pcgrad, cagrad — under the space's reference
policy (flipcrop) and budget (24 epochs, 400 training images of `shapes`), with seeds 1 … N
(``--seeds``, default 5), and compares each with `equal`, paired by seed. No test split is
scored:

  * the static search scores its trials (seed 0, the selection seed, never used again) on the
    space's 200 validation images, as a search would;
  * every comparison is scored on 800 further validation images (val[200:1000] of the same
    generator: a generated split's samples do not depend on its length) that the static search
    never saw;
  * the untrained network of each seed is scored on the same 800 images, so that the table
    shows whether every head clearly learned at this budget (the earlier version of this
    benchmark ran at 10 epochs, where the shape classifier stayed at chance).

Statistics: mean paired Δm% against `equal` with its 95% t interval, the paired t-test, Holm's
correction across the methods (protocol.yaml). Each training is stored under ``--runs``
(default runs/weighting) as it finishes; a re-run reuses them (chunks: ``--max-new N``).
Writes benchmarks/results/weighting_methods.md (or --out).

    .venv/bin/python benchmarks/weighting_methods.py             # ~35 minutes on 2 quiet cores
    .venv/bin/python benchmarks/weighting_methods.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from _machine import cpu_model, write_result  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
METHODS = ("equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad")
WEIGHT_RANGE = (0.25, 4.0)
STATIC_TRIALS = 6
SELECTION_SEED = 0
HELD_OUT = 800  # validation images after the space's own, scored by every comparison


def cell(values: Sequence[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    import optuna
    import torch

    from policysearch.augment import Weighting
    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.evaluation.benchmark import ALPHA, holm, paired_test
    from policysearch.records import delta_m
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup
    from policysearch.training import Trainer, evaluate
    from policysearch.weighting_schema import defaults

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-new", type=int, default=None,
                        help="train at most this many runs not stored yet, then stop")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "weighting_methods.md")
    args = parser.parse_args()
    smoke = args.smoke_test
    started = time.perf_counter()
    space = load_space("default")
    budget = space.budget
    held_out = 16 if smoke else HELD_OUT
    static_trials = 2 if smoke else STATIC_TRIALS
    seeds = list(range(1, 1 + (2 if smoke else args.seeds)))
    if smoke:
        data = space.dataset_options.model_copy(update={"n_train": 32, "n_val": 16, "n_test": 8})
        space = space.model_copy(update={"dataset_options": data})
        budget = budget.model_copy(update={"image_size": 32, "epochs": 2})
    space = space.model_copy(update={"budget": budget})
    dataset = load_dataset(space)
    n_val = len(dataset.split("val"))
    big = load_dataset(space.model_copy(update={"dataset_options": space.dataset_options
                                                .model_copy(update={"n_val": n_val + held_out})}))
    search_val = dataset.split("val")
    scored = big.split("val")[n_val:]
    tasks, info = task_setup(dataset)
    primary = [(t, m) for t, metrics in info.items() for m, i in metrics.items() if i["primary"]]
    reference = reference_policy(space.reference, tasks)
    threads = os.cpu_count() or 1
    store = args.runs or (args.out.parent / "weighting-smoke-runs" if smoke
                          else Path("runs/weighting"))
    store.mkdir(parents=True, exist_ok=True)
    new = 0

    def train(name: str, weighting: Any, seed: int) -> dict[str, Any] | None:
        """Train (or read back) one run: its metrics on the search's and the held-out
        validation images, final weights, seconds and CPU seconds per epoch."""
        nonlocal new
        path = store / f"{name}-s{seed}.json"
        if path.exists():
            return json.loads(path.read_text())
        if args.max_new is not None and new >= args.max_new:
            return None
        new += 1
        begun, cpu_begun = time.perf_counter(), time.process_time()
        with Trainer(replace(reference, weighting=weighting), dataset, budget, seed=seed,
                     device="cpu", threads=threads) as trainer:
            while not trainer.done:
                trainer.train_epoch()
            result: dict[str, Any] = {
                "search_val": evaluate(trainer.model, trainer.tasks, search_val, trainer.device),
                "held_out": evaluate(trainer.model, trainer.tasks, scored, trainer.device),
                "weights": trainer.weighting.weights(),
                "seconds_per_epoch": (time.perf_counter() - begun) / budget.epochs,
                "cpu_per_epoch": (time.process_time() - cpu_begun) / budget.epochs}
        path.write_text(json.dumps(result))
        print(f"{path.name}: {result['seconds_per_epoch'] * budget.epochs:.0f} s", flush=True)
        return result

    def untrained(seed: int) -> dict[str, Any]:
        path = store / f"untrained-s{seed}.json"
        if path.exists():
            return json.loads(path.read_text())
        with Trainer(reference, dataset, budget, seed=seed, device="cpu",
                     threads=threads) as trainer:
            result = {"held_out": evaluate(trainer.model, trainer.tasks, scored, trainer.device)}
        path.write_text(json.dumps(result))
        return result

    # The static search: TPE over one log-uniform weight per task, trained with the selection
    # seed and scored by Δm% on the search's validation images against its first trial (all 1).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=0, n_startup_trials=max(1, static_trials // 2)))
    study.enqueue_trial({f"w.{t}": 1.0 for t in tasks})
    first: list[dict[str, Any]] = []
    stopped = False

    def objective(trial: optuna.Trial) -> float:
        nonlocal stopped
        weights = {t: trial.suggest_float(f"w.{t}", *WEIGHT_RANGE, log=True) for t in tasks}
        run = train(f"static-search{trial.number}", Weighting("static", weights),
                    SELECTION_SEED)
        if run is None:
            stopped = True
            study.stop()
            return float("nan")
        if not first:
            first.append(run)
        return delta_m(run["search_val"], first[0]["search_val"], info)[0]

    search_started = time.perf_counter()
    study.optimize(objective, n_trials=static_trials)
    search_minutes = (time.perf_counter() - search_started) / 60
    if stopped:
        print("stopped in the static search (--max-new); run again to go on", flush=True)
        return
    static = {t: float(study.best_params[f"w.{t}"]) for t in tasks}
    search_values = [float(t.value) for t in study.trials if t.value is not None]
    all_equal = all(w == 1.0 for w in static.values())

    runs: dict[str, list[dict[str, Any]]] = {}
    for method in METHODS:
        if method == "static" and all_equal:
            continue  # trains exactly as `equal` does (the CPU is deterministic)
        weighting = Weighting(method, static if method == "static" else {}, defaults(method))
        found = [train(method, weighting, s) for s in seeds]
        if any(r is None for r in found):
            print("stopped with runs still to train (--max-new); run again to go on", flush=True)
            return
        runs[method] = [r for r in found if r is not None]
    if all_equal:
        runs["static"] = runs["equal"]
    blank = [untrained(s) for s in seeds]

    def dm(run: dict[str, Any], ref: dict[str, Any]) -> float:
        return delta_m(run["held_out"], ref["held_out"], info)[0]

    compared = [m for m in METHODS[1:] if not (m == "static" and all_equal)]
    tests = {m: paired_test([dm(r, e) for r, e in zip(runs[m], runs["equal"], strict=True)],
                            [0.0] * len(seeds)) for m in compared}
    adjusted = dict(zip(compared, holm([tests[m]["p"] for m in compared]), strict=True))

    def metric(rs: list[dict[str, Any]], t: str, m: str) -> list[float]:
        return [r["held_out"][t][m] for r in rs]

    learned = {(t, m): [(a > b) == info[t][m]["higher"] for a, b in
                        zip(metric(runs["equal"], t, m), metric(blank, t, m), strict=True)]
               for t, m in primary}
    directions = ", ".join(f"{t} {m} {'↑' if info[t][m]['higher'] else '↓'}" for t, m in primary)
    seed_list = ", ".join(map(str, seeds))
    smoke_flag = " --smoke-test" if smoke else ""
    lines = [
        "# Loss-weighting methods on shapes, at the default budget, on development data",
        "",
        f"Produced by `.venv/bin/python benchmarks/weighting_methods.py{smoke_flag}` on "
        f"{cpu_model()}, {threads} CPU threads, torch {torch.__version__}, no GPU; "
        f"{(time.perf_counter() - started) / 60:.1f} minutes for this invocation (stored runs "
        "are read back). The default search space's dataset (`shapes`, "
        f"{len(dataset.split('train'))} training images at {budget.image_size}×"
        f"{budget.image_size}) and budget ({budget.epochs} epochs, batch {budget.batch_size}, "
        f"lr {budget.lr:g}, {budget.optimizer}, encoder `{budget.encoder}`); every method "
        f"trains under the space's reference policy ({space.reference}) with the seeds "
        f"{seed_list}. **No test split is scored**: every number below is on {len(scored)} "
        f"validation images (val[{n_val}:{n_val + len(scored)}]) that no choice was made on.",
        "",
        f"`static`: per-task weights from a TPE search of {static_trials} trials over "
        f"log-uniform weights in [{WEIGHT_RANGE[0]:g}, {WEIGHT_RANGE[1]:g}] (first trial: all "
        f"1), trained with seed {SELECTION_SEED} (used for nothing else) and scored by Δm% on "
        f"the space's {n_val} validation images, as a search would ({search_minutes:.1f} min "
        "in this invocation); found "
        + ", ".join(f"{t} {w:.2f}" for t, w in static.items())
        + " (Δm% of the trials in order: " + ", ".join(f"{v:+.1f}" for v in search_values) + ")"
        + ("; no searched weights beat equal weights, so `static` is `equal` and is not "
           "compared" if all_equal else "") + ". "
        "Dynamic methods use their papers' defaults: "
        + "; ".join(f"{m} " + ", ".join(f"{k} {v:g}" for k, v in defaults(m).items())
                    for m in METHODS if defaults(m)) + ".",
        "",
        f"Primary metrics: {directions}; mean ± std over seeds. Δm% against `equal`, paired by "
        "seed, with its 95% t interval; p: paired t-test; p (Holm): corrected across the "
        f"{len(compared)} methods compared; a method differs from `equal` only when p (Holm) < "
        f"{ALPHA}.",
        "",
        "| method | " + " | ".join(f"{t} {m}" for t, m in primary)
        + " | Δm% vs equal [95% CI] | p | p (Holm) | s/epoch | CPU s/epoch |",
        "|---|" + "---:|" * (len(primary) + 5),
        "| untrained network | " + " | ".join(cell(metric(blank, t, m)) for t, m in primary)
        + " | — | — | — | — | — |",
    ]
    for method in METHODS:
        rs = runs[method]
        if method == "equal" or method not in tests:
            delta = p = p_holm = "—"
        else:
            test = tests[method]
            delta = (f"{test['diff']:+.1f} [{test['ci_low']:+.1f}, {test['ci_high']:+.1f}]")
            p, p_holm = f"{test['p']:.2f}", f"{adjusted[method]:.2f}"
        lines.append(
            f"| {method} | " + " | ".join(cell(metric(rs, t, m)) for t, m in primary)
            + f" | {delta} | {p} | {p_holm} | "
            f"{statistics.fmean(r['seconds_per_epoch'] for r in rs):.2f} | "
            f"{statistics.fmean(r['cpu_per_epoch'] for r in rs):.2f} |")
    every = all(all(v) for v in learned.values())
    lines += [
        "",
        "Did every head learn? `equal` against the untrained network of the same seed, on the "
        "same images: " + "; ".join(f"{t} {m} better in {sum(v)} of {len(v)} seeds"
                                     for (t, m), v in learned.items())
        + (". Every head beats its untrained network in every seed at this budget."
           if every else ". **Not every head learned in every seed at this budget**: the "
           "comparisons below rest partly on a head that did not."),
        "",
        "s/epoch: wall-clock seconds per epoch of training (no evaluation during training), "
        "mean over seeds; CPU s/epoch: the process's CPU time per epoch, which other processes "
        "sharing the machine disturb less than the wall clock.",
        "",
        "## Weights at the end of training (mean over seeds)",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for method in METHODS:
        mean_weights = [statistics.fmean(r["weights"][t] for r in runs[method]) for t in tasks]
        lines.append(f"| {method} | " + " | ".join(f"{w:.2f}" for w in mean_weights) + " |")
    significant = [m for m in compared if adjusted[m] < ALPHA]
    lines += [
        "",
        "pcgrad reshapes gradients instead of weighing losses (1.0 each); cagrad's are each "
        "task's coefficient in its last shared update, times the number of tasks (1.0 each for "
        "the mean gradient).",
        "",
        "Differs from `equal` after Holm's correction: "
        + (", ".join(f"{m} ({tests[m]['diff']:+.1f})" for m in significant)
           if significant else "no method")
        + f". With {len(seeds)} seeds, a difference smaller than about the interval's half-width "
        "cannot be told from the seed noise.",
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
