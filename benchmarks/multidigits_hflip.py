"""Are horizontal flips harmful on MultiDigits, as the dataset is built to make them?

Trains the multi-task network on ``multidigits`` under no augmentation and under a horizontal
flip (p 0.5), over several seeds, and reports the *test* split's metrics (mean ± std) and Δm%
of the flip against no augmentation. Writes benchmarks/results/multidigits_hflip.md (or --out).

    .venv/bin/python benchmarks/multidigits_hflip.py             # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/multidigits_hflip.py --smoke-test
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

from policysearch.augment import Policy, Slot
from policysearch.config import Budget
from policysearch.data import get_dataset
from policysearch.records import delta_m, metrics_info_from_tasks
from policysearch.tasks import make_task
from policysearch.training import run_trial

HERE = Path(__file__).resolve().parent
METRICS = (("left_digit", "accuracy"), ("right_digit", "accuracy"), ("seg", "miou"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "multidigits_hflip.md")
    args = parser.parse_args()
    if args.smoke_test:
        sizes, budget, seeds = (32, 16, 16), Budget(epochs=1, batch_size=16, image_size=32), [0]
    else:
        sizes, budget, seeds = (1000, 300, 500), Budget(epochs=20, batch_size=32,
                                                        image_size=32), [0, 1, 2]
    torch.set_num_threads(2)
    dataset = get_dataset("multidigits", size=32, n_train=sizes[0], n_val=sizes[1],
                          n_test=sizes[2])
    tasks = {t.name: t.kind for t in dataset.tasks}
    info = metrics_info_from_tasks([make_task(spec) for spec in dataset.tasks])
    policies = {"none": Policy(tasks=tasks), "hflip (p 0.5)": Policy(
        tasks=tasks, shared=(Slot("hflip", 0.5, 1.0),))}
    runs = {name: [run_trial(p, dataset, budget, seed=s, device="cpu", eval_split="test")
                   .metrics for s in seeds] for name, p in policies.items()}
    deltas = [delta_m(flip, plain, info)[0]
              for flip, plain in zip(runs["hflip (p 0.5)"], runs["none"], strict=True)]

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    smoke = " --smoke-test" if args.smoke_test else ""
    lines = [
        "# Horizontal flips on MultiDigits",
        "",
        f"Produced by `python benchmarks/multidigits_hflip.py{smoke}` on {cpu_model()}, "
        f"{torch.get_num_threads()} CPU threads. `multidigits` at 32×32: {sizes[0]} training "
        f"canvases, test split of {sizes[2]} (handwriting never seen in training); "
        f"{budget.epochs} epochs, batch {budget.batch_size}, encoder `{budget.encoder}`; "
        f"seeds {', '.join(map(str, seeds))}; metrics on the test split, mean ± std over seeds.",
        "",
        "| policy | " + " | ".join(f"{t} {m}" for t, m in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, results in runs.items():
        lines.append(f"| {name} | " + " | ".join(cell([r[t][m] for r in results])
                                               for t, m in METRICS) + " |")
    lines += [
        "",
        f"Δm% of the flip against no augmentation, per seed: "
        f"{', '.join(f'{d:+.1f}' for d in deltas)} (mean {statistics.mean(deltas):+.1f}).",
        "",
        "A flip mirrors both digits and swaps their places while `left_digit` and "
        "`right_digit` keep naming what was left and right: a search on this dataset should "
        "learn to leave `hflip` out.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
