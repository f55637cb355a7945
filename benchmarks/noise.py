"""How noisy is one trial's Δm% — the search's objective — and what makes it less noisy?

Writes benchmarks/results/noise.md (or --out). Everything is scored on validation data, never
on a test split. The default search space's dataset and budget (24 epochs, 200 validation
images, last epoch's metrics: what a search's trial reports). Two good policies with every loss
weighing 1: A = the space's reference (flipcrop) and B = A + brightness (p 0.5, magnitude 0.3).
For seeds s = 0 … N−1 (``--seeds``, default 11) it trains:

  * A with seeds (model s, order s, augmentation s) — the training seed varies;
  * B with the same three seeds — paired with A's run of that seed;
  * A with (model 0, order 0, augmentation 100 + s) — only the augmentation draws vary.

and measures, with a 95% chi-square interval for each standard deviation:

  1. sd of one trial's Δm% over training seeds: Δm% of A(s) against the fixed reference A(0),
     s ≥ 1 (a search scores every trial against one reference run);
  2. sd over augmentation draws at a fixed initialisation and batch order: Δm% of the
     augmentation-only runs against A(0);
  3. σ_d, the paired sd between the two policies: Δm% of B(s) against A(s).

Then each lever on its own, on the same runs: metrics averaged over the last 3 epochs (from each
run's validation history); a larger validation split (1,000 images: every run's final network is
also scored on them — the first 200 are the usual ones, a generated split's samples do not depend
on its length); a reference averaged over 3 seeds (the metrics of A(0), A(1), A(2) averaged,
measure 1 over s ≥ 3). Common random numbers are measured by benchmarks/common_random_numbers.py.

Finally the number of seeds a paired t-test needs to detect a difference of δ Δm% points with
power 0.8 at α = 0.05 / k (Holm's first step with k contenders), from the measured σ_d.

Each training is stored under ``--runs`` (default runs/noise) as it finishes; a re-run reuses
them, so the script can be stopped and resumed (e.g. in chunks: ``--max-new 12``).

    .venv/bin/python benchmarks/noise.py               # ~35 min on 2 quiet cores (33 trainings)
    .venv/bin/python benchmarks/noise.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _machine import cpu_model, write_result  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
EXTRA = {"op": "brightness", "p": 0.5, "magnitude": 0.3}
AUGMENT_ONLY = 100  # augmentation seeds of the augmentation-only runs start here
LAST = 3  # epochs averaged by the last-epochs lever
BIG_VAL = 1000
REFERENCE_SEEDS = 3
CONTENDERS = (1, 6, 12)  # k of the power calculation


def sd_interval(values: list[float]) -> tuple[float, float, float]:
    """Sample sd and its 95% chi-square interval (normal data)."""
    from scipy import stats

    n = len(values)
    sd = statistics.stdev(values)
    lo = math.sqrt((n - 1) * sd ** 2 / stats.chi2.ppf(0.975, n - 1))
    hi = math.sqrt((n - 1) * sd ** 2 / stats.chi2.ppf(0.025, n - 1))
    return sd, lo, hi


def seeds_needed(sigma: float, delta: float, alpha: float, power: float = 0.8) -> int:
    """Smallest n (pairs) for a two-sided paired t-test at ``alpha`` to reach ``power`` against
    a true mean difference ``delta`` with paired sd ``sigma`` (noncentral t)."""
    from scipy import stats

    for n in range(2, 1000):
        df = n - 1
        crit = stats.t.ppf(1 - alpha / 2, df)
        nc = delta / (sigma / math.sqrt(n))
        if stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= power:
            return n
    return 1000  # shown as "≥ 1000"


def _n(seeds: int) -> str:
    return "≥ 1000" if seeds >= 1000 else str(seeds)


def mean_metrics(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {task: {m: statistics.fmean(r[task][m] for r in runs) for m in runs[0][task]}
            for task in runs[0]}


def main() -> None:
    from policysearch.augment import Slot
    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.records import delta_m, task_deltas
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup
    from policysearch.training import Seeds, Trainer, evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--seeds", type=int, default=11)
    parser.add_argument("--max-new", type=int, default=None,
                        help="train at most this many runs not stored yet, then stop")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "noise.md")
    args = parser.parse_args()
    smoke = args.smoke_test
    started = time.perf_counter()
    space = load_space("default")
    budget = space.budget
    n_seeds = 5 if smoke else max(args.seeds, REFERENCE_SEEDS + 2)
    big_val = 24 if smoke else BIG_VAL
    if smoke:
        data = space.dataset_options.model_copy(update={"n_train": 32, "n_val": 16, "n_test": 8})
        space = space.model_copy(update={"dataset_options": data})
        budget = budget.model_copy(update={"image_size": 32, "epochs": LAST})
    space = space.model_copy(update={"budget": budget})
    dataset = load_dataset(space)
    big = load_dataset(space.model_copy(update={"dataset_options": space.dataset_options
                                                .model_copy(update={"n_val": big_val})}))
    tasks, info = task_setup(dataset)
    a = reference_policy(space.reference, tasks)
    b = replace(a, shared=(*a.shared, Slot(**EXTRA)))
    threads = os.cpu_count() or 1
    store = args.runs or (args.out.parent / "noise-smoke-runs" if smoke else Path("runs/noise"))
    store.mkdir(parents=True, exist_ok=True)
    new = 0

    def run(name: str, policy: Any, seeds: Seeds) -> dict[str, Any] | None:
        nonlocal new
        path = store / f"{name}-m{seeds.model}-o{seeds.order}-a{seeds.augment}.json"
        if path.exists():
            return json.loads(path.read_text())
        if args.max_new is not None and new >= args.max_new:
            return None
        new += 1
        begun = time.perf_counter()
        with Trainer(policy, dataset, budget, seed=seeds, device="cpu",
                     threads=threads) as trainer:
            while not trainer.done:
                trainer.train_epoch()
                trainer.evaluate()
            result = {"history": trainer.history,
                      "big": evaluate(trainer.model, trainer.tasks, big.split("val"),
                                      trainer.device),
                      "seconds": time.perf_counter() - begun}
        path.write_text(json.dumps(result))
        print(f"{path.name}: {result['seconds']:.0f} s", flush=True)
        return result

    plan = [(name, policy, seeds) for s in range(n_seeds) for name, policy, seeds in (
        ("A", a, Seeds(s, s, s)), ("B", b, Seeds(s, s, s)),
        ("A", a, Seeds(0, 0, AUGMENT_ONLY + s)))]
    done = {(name, seeds): run(name, policy, seeds) for name, policy, seeds in plan}
    if any(r is None for r in done.values()):
        missing = sum(r is None for r in done.values())
        print(f"stopped with {missing} of {len(plan)} runs still to train (--max-new); run "
              "again to go on", flush=True)
        return

    def last(r: dict[str, Any]) -> dict[str, dict[str, float]]:
        return r["history"][-1]

    def tail(r: dict[str, Any]) -> dict[str, dict[str, float]]:
        return mean_metrics(r["history"][-LAST:])

    def big_val_of(r: dict[str, Any]) -> dict[str, dict[str, float]]:
        return r["big"]

    def dm(x: dict, ref: dict) -> float:
        return delta_m(x, ref, info)[0]

    A = {s: done[("A", Seeds(s, s, s))] for s in range(n_seeds)}
    B = {s: done[("B", Seeds(s, s, s))] for s in range(n_seeds)}
    F = {s: done[("A", Seeds(0, 0, AUGMENT_ONLY + s))] for s in range(n_seeds)}

    def measures(view) -> dict[str, list[float]]:  # noqa: ANN001
        return {
            "seed": [dm(view(A[s]), view(A[0])) for s in range(1, n_seeds)],
            "augment": [dm(view(F[s]), view(A[0])) for s in range(n_seeds)],
            "paired": [dm(view(B[s]), view(A[s])) for s in range(n_seeds)],
        }

    base = measures(last)
    n_val = len(dataset.split("val"))
    levers = {f"last epoch, {n_val} validation images (what a search uses today)": base,
              f"metrics averaged over the last {LAST} epochs": measures(tail),
              f"{big_val} validation images": measures(big_val_of)}
    ref_avg = mean_metrics([last(A[s]) for s in range(REFERENCE_SEEDS)])
    ref_seed = [dm(last(A[s]), ref_avg) for s in range(REFERENCE_SEEDS, n_seeds)]

    def cell(values: list[float]) -> str:
        sd, lo, hi = sd_interval(values)
        return f"{sd:.2f} [{lo:.2f}–{hi:.2f}] (n = {len(values)})"

    def terms(view) -> dict[str, dict[str, float]]:  # noqa: ANN001
        found = {"seed": [task_deltas(view(A[s]), view(A[0]), info)[0]
                          for s in range(1, n_seeds)],
                 "augment": [task_deltas(view(F[s]), view(A[0]), info)[0]
                             for s in range(n_seeds)]}
        # A task whose reference metric is ~0 is left out of Δm% (and of this table).
        return {k: {t: statistics.stdev(d[t] for d in v) for t in tasks
                    if all(t in d for d in v)} for k, v in found.items()}

    by_task = {f"last epoch, {n_val} images": terms(last),
               f"{big_val} validation images": terms(big_val_of)}
    primary = [(t, m) for t, ms in info.items() for m, i in ms.items() if i["primary"]]
    sigma_d = sd_interval(base["paired"])[0]
    best_sigma = min(sd_interval(m["paired"])[0] for m in levers.values())
    seconds = [r["seconds"] for r in done.values()]
    lines = [
        "# Noise of one trial's Δm%, and what lowers it",
        "",
        f"Machine: {cpu_model()}, {threads} cores, no GPU. Command: "
        f"`.venv/bin/python benchmarks/noise.py{' --smoke-test' if smoke else ''}` "
        f"({len(plan)} trainings, median {statistics.median(seconds):.0f} s each, stored under "
        f"`{store}`; this run {(time.perf_counter() - started) / 60:.1f} min).",
        "",
        f"Default space: `shapes` ({len(dataset.split('train'))} training, "
        f"{len(dataset.split('val'))} validation images), {budget.epochs} epochs, batch "
        f"{budget.batch_size}, encoder `{budget.encoder}`. Validation data only. A: "
        f"`{a.summary()}`; B: A + {EXTRA['op']} (p {EXTRA['p']}, magnitude {EXTRA['magnitude']}); "
        "every loss weighs 1.",
        "",
        "Standard deviation of Δm% (points), with its 95% chi-square interval:",
        "",
        "| scoring | 1. one trial, training seed varies | 2. augmentation draws only | "
        "3. σ_d, A vs B paired by seed |",
        "|---|---|---|---|",
        *(f"| {name} | {cell(m['seed'])} | {cell(m['augment'])} | {cell(m['paired'])} |"
          for name, m in levers.items()),
        f"| reference averaged over {REFERENCE_SEEDS} seeds (last epoch, {n_val} images) | "
        f"{cell(ref_seed)} | – | – |",
        "",
        f"Mean Δm% of B against A over seeds (last epoch, {n_val} images): "
        f"{statistics.fmean(base['paired']):+.2f}.",
        "",
        "## Seeds a paired comparison needs",
        "",
        "Pairs (seeds) for a two-sided paired t-test to detect a true difference of δ Δm% points "
        "with power 0.8 at α = 0.05 / k (Holm's strictest step with k contenders in a table), "
        f"with σ_d = {sigma_d:.2f} as measured today and σ_d = {best_sigma:.2f} with the best "
        "lever above:",
        "",
        "| δ | " + " | ".join(f"k = {k}, σ_d today | k = {k}, best lever" for k in CONTENDERS)
        + " |",
        "|---|" + "---|---|" * len(CONTENDERS),
        *(f"| {delta} | " + " | ".join(
            f"{_n(seeds_needed(sigma_d, delta, 0.05 / k))} | "
            f"{_n(seeds_needed(best_sigma, delta, 0.05 / k))}"
            for k in CONTENDERS) + " |" for delta in (3, 5, 10)),
        "",
        "## Where the noise comes from",
        "",
        "Δm% is the mean over tasks of each task's relative change (its primary metrics "
        "averaged). The standard deviation of each task's term, training seed varying (measure "
        "1) and augmentation draws only (measure 2), and the spread of the primary metrics "
        "themselves over A's seeds:",
        "",
        "| scoring | " + " | ".join(f"{t}: seed / draws" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
        *(f"| {name} | " + " | ".join(
            f"{terms['seed'][t]:.1f} / {terms['augment'][t]:.1f}"
            if t in terms["seed"] and t in terms["augment"] else "–" for t in tasks) + " |"
          for name, terms in by_task.items()),
        "",
        "| primary metric | mean over A's seeds (last epoch) | sd | sd, "
        f"{big_val} images |",
        "|---|---|---|---|",
        *(f"| {t} {m} | {statistics.fmean(last(A[s])[t][m] for s in A):.3f} | "
          f"{statistics.stdev(last(A[s])[t][m] for s in A):.3f} | "
          f"{statistics.stdev(A[s]['big'][t][m] for s in A):.3f} |"
          for t, m in primary),
        "",
        f"None of the levers measured here reaches the target (sd ≤ 2 points): the floor at "
        f"this budget is about {min(sd_interval(m['seed'])[0] for m in levers.values()):.1f} "
        "points for one trial. Scoring more validation images helps only a little because most "
        "of the spread is the trained network's, not the sampling of the scored images, and "
        "the last epochs of a cosine schedule, whose learning rate is near zero there, hardly "
        "differ, so averaging their metrics changes nothing. An average of weights (EMA or SWA) "
        "was not measured. Averaging k "
        "training seeds per trial divides the sd by √k: reaching 2 points from "
        f"{sd_interval(base['seed'])[0]:.1f} takes about "
        f"{math.ceil((sd_interval(base['seed'])[0] / 2) ** 2)} seeds per trial. The largest "
        "term is the task whose head is furthest from converged at this budget (above); a "
        "budget where it converges is the other way to lower the floor.",
        "",
        f"## Every run (Δm% against A(0), last epoch, {n_val} validation images)",
        "",
        "| seed s | A(s) | B(s) | B(s) − A(s) paired | augmentation-only run 100+s |",
        "|---|---|---|---|---|",
        *(f"| {s} | {dm(last(A[s]), last(A[0])):+.2f} | {dm(last(B[s]), last(A[0])):+.2f} | "
          f"{dm(last(B[s]), last(A[s])):+.2f} | {dm(last(F[s]), last(A[0])):+.2f} |"
          for s in range(n_seeds)),
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
