"""Loss-weighting methods compared under one policy and budget on the shapes dataset.

Trains the multi-task network with every weighting method — equal, static (weights found by a
small Optuna search on the *val* split), uncertainty, dwa, gradnorm, pcgrad, cagrad — under the
flipcrop baseline policy, the same budget and several seeds, and reports the *test* split's
primary metrics (mean ± std over seeds), Δm% against `equal` (paired by seed), the weights each
method ended with, and seconds per epoch. Writes benchmarks/results/weighting_methods.md (or
--out).

    .venv/bin/python benchmarks/weighting_methods.py             # ~15-25 minutes on 2 cores
    .venv/bin/python benchmarks/weighting_methods.py --smoke-test
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from _machine import cpu_model  # benchmarks/_machine.py, beside this script
from scipy import stats

from policysearch.augment import Policy, Weighting, get_baseline
from policysearch.config import Budget
from policysearch.data import get_dataset
from policysearch.data.base import MultiTaskDataset
from policysearch.records import delta_m, metrics_info_from_tasks
from policysearch.tasks import make_task
from policysearch.training import Metrics, TrialResult, run_trial
from policysearch.weighting_schema import defaults

HERE = Path(__file__).resolve().parent
METHODS = ("equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad", "cagrad")
POLICY = "flipcrop"
WEIGHT_RANGE = (0.25, 4.0)


@dataclass(frozen=True)
class Setting:
    image_size: int
    n_train: int
    n_val: int
    n_test: int
    budget: Budget
    seeds: tuple[int, ...]
    static_trials: int


FULL = Setting(64, 300, 150, 250, Budget(epochs=10, batch_size=16, image_size=64),
               (0, 1, 2), 6)
SMOKE = Setting(32, 32, 16, 16, Budget(epochs=3, batch_size=16, image_size=32), (0,), 2)


def search_static_weights(policy: Policy, dataset: MultiTaskDataset, budget: Budget,
                          info: Mapping, trials: int,
                          seed: int) -> tuple[dict[str, float], list[float]]:
    """TPE over one log-uniform weight per task, scored by Δm% on the val split against the
    first trial (all weights 1, i.e. equal), trained with ``seed``: the best weights and the
    val Δm% of every trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tasks = list(policy.tasks)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=0, n_startup_trials=max(1, trials // 2)))
    study.enqueue_trial({f"w.{t}": 1.0 for t in tasks})
    reference: list[Metrics] = []

    def objective(trial: optuna.Trial) -> float:
        weights = {t: trial.suggest_float(f"w.{t}", *WEIGHT_RANGE, log=True) for t in tasks}
        candidate = replace(policy, weighting=Weighting("static", weights))
        metrics = run_trial(candidate, dataset, budget, seed=seed, device="cpu", threads=2,
                            eval_split="val").metrics
        if not reference:
            reference.append(metrics)
        return delta_m(metrics, reference[0], info)[0]

    study.optimize(objective, n_trials=trials)
    best = {t: float(study.best_params[f"w.{t}"]) for t in tasks}
    return best, [float(t.value) for t in study.trials]


def cell(values: Sequence[float], digits: int = 3, sign: bool = False) -> str:
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {statistics.stdev(values):.{digits}f}"


def p_value(deltas: Sequence[float]) -> str:
    """Two-sided one-sample t-test of the per-seed Δm% against 0 (paired by seed)."""
    if len(deltas) < 2 or statistics.stdev(deltas) == 0:
        return "—"
    return f"{stats.ttest_1samp(deltas, 0.0).pvalue:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "weighting_methods.md")
    args = parser.parse_args()
    setting = SMOKE if args.smoke_test else FULL
    budget = setting.budget
    torch.set_num_threads(2)
    started = time.perf_counter()
    dataset = get_dataset("shapes", size=setting.image_size, n_train=setting.n_train,
                          n_val=setting.n_val, n_test=setting.n_test)
    tasks = {t.name: t.kind for t in dataset.tasks}
    info = metrics_info_from_tasks([make_task(spec) for spec in dataset.tasks])
    primary = [(t, m) for t, metrics in info.items() for m, i in metrics.items() if i["primary"]]
    baseline = get_baseline(POLICY, tasks)

    search_started = time.perf_counter()
    static, search_values = search_static_weights(baseline, dataset, budget, info,
                                                  setting.static_trials, seed=setting.seeds[0])
    search_seconds = time.perf_counter() - search_started
    weightings = {m: Weighting(m, static if m == "static" else {}, defaults(m))
                  for m in METHODS}

    runs: dict[str, list[TrialResult]] = {}
    cpu_seconds: dict[str, list[float]] = {}
    for method, weighting in weightings.items():
        policy = replace(baseline, weighting=weighting)
        runs[method], cpu_seconds[method] = [], []
        for seed in setting.seeds:
            cpu_started = time.process_time()
            runs[method].append(run_trial(policy, dataset, budget, seed=seed, device="cpu",
                                          threads=2, eval_split="test"))
            cpu_seconds[method].append(time.process_time() - cpu_started)
        print(f"{method}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    deltas = {m: [delta_m(r.metrics, ref.metrics, info)[0]
                  for r, ref in zip(runs[m], runs["equal"], strict=True)] for m in METHODS}

    smoke = " --smoke-test" if args.smoke_test else ""
    seeds = ", ".join(map(str, setting.seeds))
    directions = ", ".join(f"{t} {m} {'↑' if info[t][m]['higher'] else '↓'}" for t, m in primary)
    lines = [
        "# Loss-weighting methods on shapes",
        "",
        f"Produced by `python benchmarks/weighting_methods.py{smoke}` on {cpu_model()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, no GPU; "
        f"{(time.perf_counter() - started) / 60:.1f} minutes in all. Dataset `shapes` at "
        f"{setting.image_size}×{setting.image_size}: {setting.n_train} training, "
        f"{setting.n_val} validation and {setting.n_test} test images. Every method trains "
        f"under the `{POLICY}` policy with the same budget ({budget.epochs} epochs, batch "
        f"{budget.batch_size}, lr {budget.lr:g}, {budget.optimizer}, encoder "
        f"`{budget.encoder}`) and the seeds {seeds}; metrics on the **test** split, "
        "mean ± std over seeds. The budget is smaller than the default search space's "
        "(24 epochs, 400 training images) so that the whole run fits in about 25 minutes on "
        "2 shared cores.",
        "",
        f"`static`: per-task weights from a TPE search of {setting.static_trials} trials over "
        f"log-uniform weights in [{WEIGHT_RANGE[0]:g}, {WEIGHT_RANGE[1]:g}] (first trial: all "
        f"1), scored by Δm% on the **val** split against that first trial, seed "
        f"{setting.seeds[0]} ({search_seconds / 60:.1f} minutes); found "
        + ", ".join(f"{t} {w:.2f}" for t, w in static.items())
        + " (val Δm% of the trials in order: "
        + ", ".join(f"{v:+.1f}" for v in search_values) + ")"
        + ("; no searched weights beat equal weights on val, so `static` trains as `equal` "
           "does" if all(w == 1.0 for w in static.values()) else "") + ". "
        "Dynamic methods use their papers' defaults: "
        + "; ".join(f"{m} " + ", ".join(f"{k} {v:g}" for k, v in defaults(m).items())
                    for m in METHODS if defaults(m)) + ".",
        "",
        f"Primary metrics: {directions}. Δm% against `equal` is paired by seed; p: two-sided "
        "one-sample t-test of the per-seed Δm% against 0.",
        "",
        "| method | " + " | ".join(f"{t} {m}" for t, m in primary)
        + " | Δm% vs equal | p | s/epoch | CPU s/epoch |",
        "|---|" + "---:|" * (len(primary) + 4),
    ]
    for method in METHODS:
        results = runs[method]
        per_epoch = [r.seconds / r.epochs for r in results]
        cpu_per_epoch = [c / r.epochs for c, r in zip(cpu_seconds[method], results, strict=True)]
        metric_cells = [cell([r.metrics[t][m] for r in results]) for t, m in primary]
        delta = "—" if method == "equal" else cell(deltas[method], 1, sign=True)
        p = "—" if method == "equal" else p_value(deltas[method])
        lines.append(f"| {method} | " + " | ".join(metric_cells)
                     + f" | {delta} | {p} | {statistics.mean(per_epoch):.2f} | "
                     f"{statistics.mean(cpu_per_epoch):.2f} |")
    lines += [
        "",
        "s/epoch: wall-clock seconds per epoch, training plus the evaluation of the test split "
        "after every epoch (the same for every method), mean over seeds; CPU s/epoch: the "
        "process's CPU time (both threads) per epoch, which other processes sharing the "
        "machine disturb less than the wall clock.",
        "",
        "## Weights at the end of training (mean over seeds)",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    for method in METHODS:
        mean_weights = [statistics.mean(r.weights[t] for r in runs[method]) for t in tasks]
        lines.append(f"| {method} | " + " | ".join(f"{w:.2f}" for w in mean_weights) + " |")
    lines += [
        "",
        "pcgrad reshapes gradients instead of weighing losses (1.0 each); cagrad's are each "
        "task's coefficient in its last shared update, times the number of tasks (1.0 each for "
        "the mean gradient).",
    ]
    noisy = [m for m in METHODS[1:] if p_value(deltas[m]) == "—"
             or float(p_value(deltas[m])) >= 0.05]
    if len(setting.seeds) > 1:
        lines += ["", "Differences with p ≥ 0.05 are within the seed noise of this budget: "
                  + (", ".join(noisy) if noisy else "none") + "."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
