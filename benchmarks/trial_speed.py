"""Time one trial; check that every head learns something real.

Writes benchmarks/results/trial_speed.md (or --out). Measures:
  * one trial of the default search space (flipcrop reference): seconds per epoch, training
    images/s, peak resident memory;
  * validation metrics of that trial next to those of the untrained network, per task;
  * seed noise: the same reference trial with seeds 1 and 2, as Δm% against seed 0.
The augmentation pipeline alone is timed by benchmarks/augment_speed.py.

    .venv/bin/python benchmarks/trial_speed.py            # full run, ~1-2 minutes
    .venv/bin/python benchmarks/trial_speed.py --smoke-test
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

from policysearch.augment import get_baseline
from policysearch.config import load_space
from policysearch.data import get_dataset
from policysearch.models import build_network
from policysearch.records import delta_m, metrics_info_from_tasks
from policysearch.tasks import make_task
from policysearch.training import evaluate, run_trial

HERE = Path(__file__).resolve().parent



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "trial_speed.md")
    args = parser.parse_args()

    space = load_space("default")
    budget = space.budget
    opts = space.dataset_options
    n_train, n_val = opts.n_train, opts.n_val
    if args.smoke_test:
        budget = budget.model_copy(update={"epochs": 1, "image_size": 32})
        n_train, n_val = 32, 16
    torch.set_num_threads(2)
    dataset = get_dataset(space.dataset, size=budget.image_size, seed=opts.seed,
                          n_train=n_train, n_val=n_val, n_test=16)
    tasks = {t.name: t.kind for t in dataset.tasks}

    task_objs = [make_task(spec) for spec in dataset.tasks]
    torch.manual_seed(0)
    untrained = evaluate(build_network(task_objs, budget.encoder), task_objs,
                         dataset.split("val"), torch.device("cpu"))
    result = run_trial(get_baseline(space.reference, tasks), dataset, budget, seed=0,
                       device="cpu", threads=2)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_epoch = result.seconds / result.epochs

    smoke = " --smoke-test" if args.smoke_test else ""
    rate = result.train_images / result.seconds
    lines = [
        "# One trial",
        "",
        f"Produced by `python benchmarks/trial_speed.py{smoke}`"
        f" on {cpu_model()} with {torch.get_num_threads()} CPU threads, torch "
        f"{torch.__version__}, no GPU. Dataset `shapes`, {n_train} training and {n_val} "
        f"validation images of {budget.image_size}×{budget.image_size}; budget of the default "
        f"search space ({budget.epochs} epochs, batch {budget.batch_size}, encoder "
        f"`{budget.encoder}`).",
        "",
        f"## One trial ({space.reference} reference policy)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| whole trial (s) | {result.seconds:.1f} |",
        f"| seconds per epoch (train + validation) | {per_epoch:.2f} |",
        f"| training images/s (augmentation included) | {rate:,.0f} |",
        f"| peak resident memory of the process (MiB) | {peak_mib:,.0f} |",
        "",
        "## Does every head learn? (validation split)",
        "",
        "| task | metric | untrained network | after the trial |",
        "|---|---|---:|---:|",
    ]
    for task, metrics in result.metrics.items():
        for metric, value in metrics.items():
            lines.append(f"| {task} | {metric} | {untrained[task][metric]:.3f} | {value:.3f} |")
    if not args.smoke_test:
        info = metrics_info_from_tasks(task_objs)
        lines += [
            "",
            "## Seed noise (same policy and budget, different training seed)",
            "",
            "| seed | Δm% against seed 0 |",
            "|---:|---:|",
        ]
        values = []
        for seed in (1, 2):
            other = run_trial(get_baseline(space.reference, tasks), dataset, budget, seed=seed,
                              device="cpu", threads=2)
            value, _ = delta_m(other.metrics, result.metrics, info)
            values.append(value)
            lines.append(f"| {seed} | {value:+.2f} |")
        lines += ["", f"A policy's Δm% must differ by more than about "
                  f"{max(abs(v) for v in values):.1f} points before a single-seed comparison "
                  "means anything at this budget."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    assert all(np.isfinite(v) for m in result.metrics.values() for v in m.values())


if __name__ == "__main__":
    main()
