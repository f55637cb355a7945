"""Pruning: the same search with and without successive halving — trial-epochs spent against the
best validation Δm% found.

Search A is benchmarks/quality.py's search on shapes (successive halving, first rung at a third
of the budget; reused when runs/quality-shapes/search exists, else run here). Search B is the
same space with the first rung at epoch 2 and more trials; search C has `pruner: {name: none}`
and as many full-length trials as fit in A's trial-epochs. All share the reference trial's
definition (flipcrop, seed 0, same budget), so their Δm% compare. Writes
benchmarks/results/pruning.md (or --out). The searches resume.

    .venv/bin/python benchmarks/pruning.py            # ~25 min when search A exists
    .venv/bin/python benchmarks/pruning.py --smoke-test
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _machine import cpu_model  # benchmarks/_machine.py, beside this script
from quality import TRIALS as QUALITY_TRIALS_BY_DATASET  # benchmarks/quality.py

from policysearch.records import StudyRecords, search_cost
from policysearch.reporting.tables import results_frame
from policysearch.search.driver import load_study_records

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUALITY_TRIALS = QUALITY_TRIALS_BY_DATASET["shapes"]
# Trials of the early-rung search: sized, like the first, to about 10 full trainings.
EARLY_TRIALS = 31


def _write_space(source: Path, folder: Path, name: str, pruner: dict, smoke: bool) -> Path:
    data = yaml.safe_load(source.read_text())
    data["name"] = name
    data["pruner"] = pruner
    if smoke:
        data["dataset_options"] = {**data["dataset_options"], "n_train": 48, "n_val": 24,
                                   "n_test": 24}
        data["budget"] = {**data["budget"], "epochs": 4, "image_size": 32}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _search(space: Path, out: Path, trials: int) -> float:
    args = ["search", "--space", str(space), "--trials", str(trials), "--out", str(out),
            "--device", "cpu", "--threads", "2", "--seed", "0"]
    print("$ policysearch " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "policysearch", *args], check=True, cwd=ROOT)
    return time.perf_counter() - started


def _curve(records: StudyRecords, marks: list[int]) -> list[float]:
    """Best complete trial's Δm% once ``mark`` trial-epochs were spent (trials in order)."""
    frame = results_frame(records, warn=False).set_index("trial")
    spent, best, at = 0, -math.inf, {}
    for r in sorted(records.records, key=lambda r: r.number):
        spent += int(r.epochs or 0)
        if r.state == "complete" and r.role == "search":
            best = max(best, float(frame.loc[r.number, "delta_m"]))
        for mark in marks:
            if spent <= mark:
                at[mark] = best
    return [at.get(m, -math.inf) for m in marks]


def _row(name: str, records: StudyRecords) -> str:
    cost = search_cost(records)
    frame = results_frame(records, warn=False)
    search = frame[frame["role"].eq("search") & frame["rank"].notna()]
    best = float(search["delta_m"].max()) if len(search) else math.nan
    states = {s: sum(r.state == s for r in records.records) for s in ("complete", "pruned")}
    return (f"| {name} | {len(records.records)} | {states['complete']} | {states['pruned']} | "
            f"{cost.trial_epochs} | {cost.full_trainings:.1f} | {best:+.2f} | "
            f"{cost.trial_seconds / 60:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pruning.md")
    args = parser.parse_args()

    source = HERE / "spaces" / "quality_shapes.yaml"
    configured = yaml.safe_load(source.read_text())["pruner"]
    if args.smoke_test:
        work = Path(tempfile.mkdtemp(prefix="pruning-smoke-"))
        configured = {"name": "successive_halving", "min_resource": 2, "reduction_factor": 2}
        pruned_space = _write_space(source, work, "quality_shapes", configured, True)
        pruned_out, trials = work / "search", 6
    else:
        work = ROOT / "runs" / "pruning"
        work.mkdir(parents=True, exist_ok=True)
        pruned_space = source.relative_to(ROOT)
        pruned_out, trials = Path("runs/quality-shapes/search"), QUALITY_TRIALS
    seconds = [_search(pruned_space, pruned_out, trials)]
    pruned = load_study_records(ROOT / pruned_out, None, None)
    epochs = pruned.budget_epochs or 1
    spent = search_cost(pruned).trial_epochs

    # The same pruner with its first rung at epoch 1 (smoke) or 2: many more, shorter trials
    # for about the same trial-epochs.
    early = {**configured, "min_resource": 1 if args.smoke_test else 2}
    early_trials = EARLY_TRIALS if not args.smoke_test else 8
    early_space = _write_space(source, work, "quality_shapes_early", early, args.smoke_test)
    early_out = work / "search-early"
    seconds.append(_search(early_space, early_out, early_trials))
    early_records = load_study_records(early_out, None, None)

    full = max(2, round(spent / epochs))  # the reference and at least one search trial
    plain_space = _write_space(source, work, "quality_shapes_nopruner", {"name": "none"},
                               args.smoke_test)
    plain_out = work / "search-nopruner"
    seconds.append(_search(plain_space, plain_out, full))
    plain = load_study_records(plain_out, None, None)

    # Optuna counts steps from 0: min_resource r prunes after epoch r + 1.
    studies = [(f"successive halving, min_resource {configured['min_resource']}", pruned),
               (f"successive halving, min_resource {early['min_resource']}", early_records),
               ("no pruner", plain)]
    marks = sorted({max(epochs, round(spent * f)) for f in (0.25, 0.5, 0.75, 1.0)})
    head = "| search | trials | complete | pruned | trial-epochs | full trainings | " \
           "best validation Δm% | trial time (min) |"
    lines = [
        "# Pruning: successive halving against full-length trials",
        "",
        f"Produced by `python benchmarks/pruning.py{' --smoke-test' if args.smoke_test else ''}`"
        f" on {cpu_model()}, 2 CPU threads, torch {torch.__version__}, no GPU. Space "
        f"`benchmarks/spaces/quality_shapes.yaml` ({epochs} epochs per full trial), searched "
        f"three ways: with its successive-halving pruner ({trials} finished trials, the search "
        f"of benchmarks/quality.py), with the same pruner's min_resource "
        f"{early['min_resource']} ({early_trials} trials; a trial reaching rung `min_resource` "
        f"r has trained r + 1 epochs), and with `pruner: none` ({full} "
        f"trials, about the trial-epochs of the first). Δm% on the validation split against "
        f"the reference trial (flipcrop, seed 0), which every study trains identically. "
        f"This run: {' + '.join(f'{s / 60:.1f}' for s in seconds)} min (finished trials "
        f"reused).",
        "",
        head, "|---|" + "---:|" * 7,
        *(_row(name, records) for name, records in studies),
        "",
        "## Best validation Δm% found after a given number of trial-epochs",
        "",
        "| trial-epochs spent | " + " | ".join(map(str, marks)) + " |",
        "|---|" + "---:|" * len(marks),
    ]
    for name, records in studies:
        values = _curve(records, marks)
        lines.append(f"| {name} | " + " | ".join(
            f"{v:+.2f}" if math.isfinite(v) else "–" for v in values) + " |")
    lines += ["", "`–`: no complete search trial yet. A best validation Δm% is the maximum over "
              "the trials tried, so more trials raise it by chance as well as by skill; "
              "benchmarks/results/quality_shapes.md measures the chosen policy on the test "
              "split over several seeds.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
