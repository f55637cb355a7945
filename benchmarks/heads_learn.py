"""Does every head learn at each final search space's budget? Development data only.

For every dataset of benchmarks/protocol.yaml, trains its search space's reference augmentation
with every loss weighing 1, at the space's budget (epochs, batch, image size, encoder, training
images), with seeds 1 … N (``--seeds``, default 3) on the development data (the space's own
dataset options: generator seed 0), and scores the validation split. The untrained network of
the same seed is scored on the same images. A head *learned* when its trained primary metric
beats the untrained one in every seed and the paired 95% t interval of the gain excludes 0. A
Δm% built on a head that did not learn is noise, so a space whose heads do not all learn is not
fit for a final run. No test split is scored.

Each training is stored under ``--runs`` (default runs/heads) as it finishes; a re-run reuses
them. Writes benchmarks/results/heads_learn.md (or --out).

    .venv/bin/python benchmarks/heads_learn.py                # ~4 minutes on 2 quiet cores
    .venv/bin/python benchmarks/heads_learn.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from _machine import cpu_model, write_result  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    import torch

    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.evaluation.benchmark import paired_test
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup
    from policysearch.training import Trainer, evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "heads_learn.md")
    args = parser.parse_args()
    smoke = args.smoke_test
    started = time.perf_counter()
    protocol = yaml.safe_load((HERE / "protocol.yaml").read_text())
    seeds = list(range(1, 1 + (2 if smoke else args.seeds)))
    threads = os.cpu_count() or 1
    store = args.runs or (args.out.parent / "heads-smoke-runs" if smoke else ROOT / "runs/heads")
    store.mkdir(parents=True, exist_ok=True)
    smoke_flag = " --smoke-test" if smoke else ""
    lines = [
        "# Does every head learn at the final spaces' budgets? (development data)",
        "",
        f"Produced by `.venv/bin/python benchmarks/heads_learn.py{smoke_flag}` on {cpu_model()}, "
        f"{threads} CPU threads, torch {torch.__version__}, no GPU. For each dataset of "
        "`benchmarks/protocol.yaml`: its search space's reference augmentation, every loss "
        f"weighing 1, trained at the space's budget with seeds {', '.join(map(str, seeds))} on "
        "the development data and scored on its validation split, beside the untrained network "
        "of the same seed on the same images. **No test split is scored.** A head learned when "
        "its primary metric is better than untrained in every seed and the paired 95% t "
        "interval of the gain excludes 0.",
        "",
    ]
    verdicts: list[str] = []
    for name, entry in protocol["datasets"].items():
        if not entry.get("space"):
            lines += [f"## `{name}`", "", "No search space named in the protocol yet.", ""]
            verdicts.append(f"{name}: no space")
            continue
        space = load_space(ROOT / entry["space"])
        budget = space.budget
        if smoke:
            data = space.dataset_options.model_copy(update={"n_train": 32, "n_val": 16,
                                                            "n_test": 8})
            space = space.model_copy(update={"dataset_options": data})
            budget = budget.model_copy(update={"image_size": 32, "epochs": 2})
        dataset = load_dataset(space.model_copy(update={"budget": budget}))
        val = dataset.split("val")
        tasks, info = task_setup(dataset)
        primary = [(t, m) for t, metrics in info.items() for m, i in metrics.items()
                   if i["primary"]]
        reference = reference_policy(space.reference, tasks)

        def run(seed: int, trained: bool, *, name: str = name, dataset: Any = dataset,
                budget: Any = budget, reference: Any = reference, val: Any = val) -> dict:
            path = store / f"{name}-{'trained' if trained else 'untrained'}-s{seed}.json"
            if path.exists():
                return json.loads(path.read_text())
            begun = time.perf_counter()
            with Trainer(reference, dataset, budget, seed=seed, device="cpu",
                         threads=threads) as trainer:
                while trained and not trainer.done:
                    trainer.train_epoch()
                result = {"val": evaluate(trainer.model, trainer.tasks, val, trainer.device),
                          "seconds": time.perf_counter() - begun}
            path.write_text(json.dumps(result))
            print(f"{path.name}: {result['seconds']:.0f} s", flush=True)
            return result

        trained = [run(s, True) for s in seeds]
        blank = [run(s, False) for s in seeds]
        options = space.dataset_options
        lines += [
            f"## `{name}` — `{entry['space']}`",
            "",
            f"{len(dataset.split('train'))} training and {len(val)} validation images "
            f"(generator seed {options.seed}) at {budget.image_size}×{budget.image_size}; "
            f"{budget.epochs} epochs, batch {budget.batch_size}, lr {budget.lr:g}, "
            f"{budget.optimizer}, encoder `{budget.encoder}`; reference `{space.reference}`. "
            f"One training: {statistics.fmean(r['seconds'] for r in trained):.0f} s (mean).",
            "",
            "| task | primary metric | untrained | trained | gain [95% CI] | better in | learned |",
            "|---|---|---:|---:|---|---:|---|",
        ]
        all_learned = True
        for t, m in primary:
            higher = info[t][m]["higher"]
            after = [r["val"][t][m] for r in trained]
            before = [r["val"][t][m] for r in blank]
            sign = 1.0 if higher else -1.0
            gains = [sign * (a - b) for a, b in zip(after, before, strict=True)]
            test = paired_test(gains, [0.0] * len(gains))
            better = sum(g > 0 for g in gains)
            learned = better == len(gains) and test["ci_low"] > 0
            all_learned &= learned
            lines.append(
                f"| {t} | {m} {'↑' if higher else '↓'} | "
                f"{statistics.fmean(before):.3f} ± {statistics.stdev(before):.3f} | "
                f"{statistics.fmean(after):.3f} ± {statistics.stdev(after):.3f} | "
                f"{test['diff']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] | "
                f"{better} of {len(gains)} | {'yes' if learned else '**no**'} |")
        lines += ["", "Gain: trained minus untrained, signed so that positive is better.", ""]
        verdicts.append(f"{name}: {'every head learned' if all_learned else 'NOT every head'}")
    lines += [
        "## Verdict",
        "",
        "; ".join(verdicts) + f". ({(time.perf_counter() - started) / 60:.1f} min for this "
        "invocation; stored runs are read back.)",
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
