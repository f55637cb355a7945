"""Common random numbers: does keying each augmentation draw by (seed, epoch, sample, view,
slot) make the Δm% between two similar policies less noisy?

Writes benchmarks/results/common_random_numbers.md (or --out). Method: policy A is the default
space's reference (flipcrop: hflip, crop) and policy B the same slots plus a third
(brightness, p 0.5, magnitude 0.3), both with every loss weighing 1. For each seed s, three
trainings on the default space's dataset and budget (fewer epochs), scored on the validation
split:
  * A with seeds (model s, order s, augmentation s);
  * B with the same three seeds: its first two slots draw the numbers A's draw (common random
    numbers);
  * B with augmentation seed s + 1000: independent draws, model and order still shared.
Δm% of each B against the A of its seed. If common random numbers help, the Δm% of the first B
varies less over seeds than that of the second. Reported: both standard deviations, their ratio
with a 95% bootstrap interval (seeds resampled, paired), and the mean Δm% of each.

    .venv/bin/python benchmarks/common_random_numbers.py            # ~8 minutes on 2 cores
    .venv/bin/python benchmarks/common_random_numbers.py --smoke-test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _machine import cpu_model, write_result  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
EXTRA = {"op": "brightness", "p": 0.5, "magnitude": 0.3}
INDEPENDENT = 1000  # added to the augmentation seed of the independent arm


def main() -> None:
    from policysearch.augment import Slot
    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.records import delta_m
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup
    from policysearch.training import Seeds, run_trial

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path,
                        default=HERE / "results" / "common_random_numbers.md")
    args = parser.parse_args()
    started = time.perf_counter()
    space = load_space("default")
    budget = space.budget.model_copy(update={"epochs": 1 if args.smoke_test else args.epochs})
    n_seeds = 3 if args.smoke_test else args.seeds
    if args.smoke_test:
        data = space.dataset_options.model_copy(update={"n_train": 32, "n_val": 16, "n_test": 8})
        space = space.model_copy(update={"dataset_options": data})
        budget = budget.model_copy(update={"image_size": 32})
    space = space.model_copy(update={"budget": budget})
    dataset = load_dataset(space)
    tasks, info = task_setup(dataset)
    a = reference_policy(space.reference, tasks)
    b = replace(a, shared=(*a.shared, Slot(**EXTRA)))
    threads = os.cpu_count() or 1

    def train(policy, seeds):  # noqa: ANN001, ANN202
        return run_trial(policy, dataset, budget, seed=seeds, device="cpu",
                         threads=threads).metrics

    crn, ind = [], []
    for s in range(n_seeds):
        ref = train(a, Seeds(s, s, s))
        crn.append(delta_m(train(b, Seeds(s, s, s)), ref, info)[0])
        ind.append(delta_m(train(b, Seeds(s, s, s + INDEPENDENT)), ref, info)[0])
        print(f"seed {s}: common {crn[-1]:+.2f}, independent {ind[-1]:+.2f}", flush=True)

    sd_crn, sd_ind = statistics.stdev(crn), statistics.stdev(ind)
    rng = np.random.default_rng(0)
    pairs = np.array([crn, ind])
    ratios = []
    for _ in range(2000):
        pick = rng.integers(0, n_seeds, n_seeds)
        x, y = pairs[0, pick], pairs[1, pick]
        if np.std(y, ddof=1) > 0:
            ratios.append(np.std(x, ddof=1) / np.std(y, ddof=1))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    ratio = sd_crn / sd_ind
    verdict = ("lower: common random numbers make the comparison less noisy" if hi < 1 else
               "not shown to be lower: the interval includes 1" if lo <= 1 else
               "higher: common random numbers made it noisier")
    lines = [
        "# Common random numbers: noise of Δm% between two similar policies",
        "",
        f"Machine: {cpu_model()}, {threads} cores. Command: "
        f"`.venv/bin/python benchmarks/common_random_numbers.py"
        f"{' --smoke-test' if args.smoke_test else ''}` "
        f"({(time.perf_counter() - started) / 60:.1f} min).",
        "",
        f"A: `{a.summary()}`; B: A + `{EXTRA['op']}` (p {EXTRA['p']}, magnitude "
        f"{EXTRA['magnitude']}); every loss weighs 1. Default space's dataset "
        f"({len(dataset.split('train'))} training, {len(dataset.split('val'))} validation "
        f"images), its budget with {budget.epochs} epochs; Δm% of B against the A of the same "
        f"seed, on the validation split; {n_seeds} seeds. Common: B with A's three seeds (its "
        f"first two slots draw A's numbers). Independent: augmentation seed + {INDEPENDENT}, "
        "model and order seeds still A's.",
        "",
        "| seed | Δm% common | Δm% independent |",
        "|---|---|---|",
        *(f"| {s} | {c:+.2f} | {i:+.2f} |" for s, (c, i) in enumerate(zip(crn, ind, strict=True))),
        "",
        "| draws | mean Δm% | sd over seeds |",
        "|---|---|---|",
        f"| common | {statistics.mean(crn):+.2f} | {sd_crn:.2f} |",
        f"| independent | {statistics.mean(ind):+.2f} | {sd_ind:.2f} |",
        "",
        f"sd ratio common / independent: **{ratio:.2f}** (95% bootstrap interval "
        f"{lo:.2f}–{hi:.2f}, seeds resampled in pairs): {verdict}.",
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
