"""Pruning: does successive halving find better policies per trial-epoch than full-length
trials? Several sampler-and-training seeds per setting, on development data only.

The space benchmarks/spaces/quality_shapes.yaml is searched three ways, each with the study
seeds 0 … N−1 (``--seeds``, default 5; ``search --seed s`` seeds both the sampler and every
trial's training):

  * its successive-halving pruner (first rung at epoch 8 of 24), 14 trials;
  * the same pruner with its first rung at epoch 2, 31 trials (many more, shorter trials);
  * ``pruner: none``, 10 full-length trials (the protocol's cap of 10 full trainings).

Each search scores its trials by Δm% on the validation split against its own reference trial
(flipcrop, the study's seed). The three searches of one seed share that reference and their
sampler's start-up draws, so they are compared paired by seed: the best validation Δm% each
found, and the trial-epochs it spent. No test split is scored.

The searches run in the order seed 0 (every setting), seed 1, …, so that a partial run is
balanced; each resumes where it stopped. ``--max-searches N`` starts at most N searches not yet
finished, then writes the table of what exists (chunks of at most ~150 minutes). Writes
benchmarks/results/pruning.md (or --out).

    .venv/bin/python benchmarks/pruning.py --max-searches 8   # ~9 min per search on 2 cores
    .venv/bin/python benchmarks/pruning.py --smoke-test
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

from policysearch.evaluation.benchmark import ALPHA, holm, paired_test
from policysearch.records import StudyRecords, search_cost
from policysearch.reporting.tables import results_frame
from policysearch.search.driver import load_study_records

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCE = HERE / "spaces" / "quality_shapes.yaml"
# (key, pruner, trials): the space's own pruner first; "none" is the paired baseline. Optuna
# counts steps from 0, so a trial that reaches rung min_resource r has trained r + 1 epochs.
SETTINGS = (
    ("sh8", {"name": "successive_halving", "min_resource": 8, "reduction_factor": 3}, 14),
    ("none", {"name": "none"}, 10),
    ("sh2", {"name": "successive_halving", "min_resource": 2, "reduction_factor": 3}, 31),
)
SMOKE_SETTINGS = (
    ("sh8", {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2}, 4),
    ("none", {"name": "none"}, 2),
    ("sh2", {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3}, 4),
)
SEARCH_TIMEOUT = 4 * 3600


def _write_space(folder: Path, key: str, pruner: dict, smoke: bool) -> Path:
    data = yaml.safe_load(SOURCE.read_text())
    data["name"] = f"pruning_{key}"
    data["pruner"] = pruner
    if smoke:
        data["dataset_options"] = {**data["dataset_options"], "n_train": 32, "n_val": 16,
                                   "n_test": 8}
        data["budget"] = {**data["budget"], "epochs": 3, "image_size": 32}
    path = folder / f"{key}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _label(pruner: dict) -> str:
    if pruner["name"] == "none":
        return "no pruner (full-length trials)"
    return (f"successive halving, min_resource {pruner['min_resource']}, reduction factor "
            f"{pruner['reduction_factor']}")


def _finished(out: Path, trials: int) -> StudyRecords | None:
    """The study's records when it holds ``trials`` finished trials, else None."""
    if not out.exists():
        return None
    try:
        records = load_study_records(out, None, None)
    except (SystemExit, Exception):  # noqa: BLE001 - not started or not readable yet
        return None
    done = sum(r.state in ("complete", "pruned") for r in records.records)
    return records if done >= trials else None


def _search(space: Path, out: Path, trials: int, seed: int) -> None:
    args = ["search", "--space", str(space), "--trials", str(trials), "--out", str(out),
            "--device", "cpu", "--threads", "2", "--seed", str(seed)]
    print("$ policysearch " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "policysearch", *args], check=True, cwd=ROOT,
                   timeout=SEARCH_TIMEOUT)


def _best(records: StudyRecords) -> float:
    frame = results_frame(records, warn=False)
    search = frame[frame["role"].eq("search") & frame["rank"].notna()]
    return float(search["delta_m"].max()) if len(search) else math.nan


def _spread(values: list[float], digits: int, sign: bool = False) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    f = f"{{:{'+' if sign else ''}.{digits}f}}".format
    if len(values) == 1:
        return f(values[0])
    return (f"{f(statistics.fmean(values))} ± {statistics.stdev(values):.{digits}f} "
            f"(median {f(statistics.median(values))}, {f(min(values))} … {f(max(values))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-searches", type=int, default=None,
                        help="start at most this many searches not finished yet, then report")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pruning.md")
    args = parser.parse_args()
    smoke = args.smoke_test
    settings = SMOKE_SETTINGS if smoke else SETTINGS
    seeds = list(range(2 if smoke else args.seeds))
    work = Path(tempfile.mkdtemp(prefix="pruning-smoke-")) if smoke else ROOT / "runs" / "pruning"
    work.mkdir(parents=True, exist_ok=True)
    spaces = {key: _write_space(work, key, pruner, smoke) for key, pruner, _ in settings}
    started = time.perf_counter()

    records: dict[tuple[str, int], StudyRecords] = {}
    begun = 0
    for seed in seeds:
        for key, _, trials in settings:
            out = work / f"{key}-seed{seed}"
            found = _finished(out, trials)
            if found is None:
                if args.max_searches is not None and begun >= args.max_searches:
                    continue
                begun += 1
                _search(spaces[key], out, trials, seed)
                found = _finished(out, trials)
            if found is not None:
                records[(key, seed)] = found
    minutes = (time.perf_counter() - started) / 60

    epochs = next(iter(records.values())).budget_epochs if records else None
    full = {key: [s for s in seeds if (key, s) in records] for key, _, _ in settings}
    lines = [
        "# Pruning: successive halving against full-length trials, over several seeds",
        "",
        f"Produced by `.venv/bin/python benchmarks/pruning.py{' --smoke-test' if smoke else ''}` "
        f"on {cpu_model()}, 2 CPU threads, no GPU ({minutes:.1f} min in this invocation; "
        "finished searches are read back). Space `benchmarks/spaces/quality_shapes.yaml` "
        f"({epochs} epochs per full trial), development data: every Δm% is on the validation "
        "split, against the search's own reference trial (flipcrop, the study's seed). Study "
        "seed s seeds the sampler and every trial's training; the searches of one seed share "
        "their reference trial and start-up draws and are compared paired by seed.",
        "",
        "| setting | trials per search | seeds finished | best validation Δm% per seed | "
        "trial-epochs per seed |",
        "|---|---:|---:|---|---|",
    ]
    for key, pruner, trials in settings:
        label = _label(pruner)
        best = [_best(records[(key, s)]) for s in full[key]]
        spent = [search_cost(records[(key, s)]).trial_epochs for s in full[key]]
        cells = [f"{b:+.1f}" if math.isfinite(b) else "–" for b in best]
        lines.append(f"| {label} | {trials} | {len(full[key])} of {len(seeds)} | "
                     + (", ".join(cells) or "–") + " | "
                     + (", ".join(str(e) for e in spent) or "–") + " |")
    lines += [
        "",
        "## Distributions",
        "",
        "| setting | best validation Δm%: mean ± sd (median, range) | trial-epochs: mean ± sd "
        "(median, range) | pruned trials per search |",
        "|---|---|---|---|",
    ]
    for key, pruner, _ in settings:
        label = _label(pruner)
        rs = [records[(key, s)] for s in full[key]]
        lines.append(
            f"| {label} | {_spread([_best(r) for r in rs], 1, sign=True)} | "
            f"{_spread([float(search_cost(r).trial_epochs) for r in rs], 0)} | "
            f"{_spread([float(sum(x.state == 'pruned' for x in r.records)) for r in rs], 1)} |")

    baseline = "none"
    compared = [(key, _label(pruner)) for key, pruner, _ in settings if key != baseline]
    tests = {}
    for key, _ in compared:
        paired = [s for s in seeds if (key, s) in records and (baseline, s) in records]
        tests[key] = (paired, paired_test([_best(records[(key, s)]) for s in paired],
                                          [_best(records[(baseline, s)]) for s in paired]))
    adjusted = dict(zip([k for k, _ in compared], holm([t["p"] for _, t in tests.values()]),
                        strict=True))
    lines += [
        "",
        "## Paired by seed, against full-length trials",
        "",
        "Difference in the best validation Δm% found (pruned search − search without a pruner), "
        f"95% t interval, paired t-test, Holm across the {len(compared)} comparisons.",
        "",
        "| setting | seeds | difference [95% CI] | p | p (Holm) |",
        "|---|---:|---|---:|---:|",
    ]
    for key, label in compared:
        paired, test = tests[key]
        if not math.isfinite(test["p"]):
            lines.append(f"| {label} | {len(paired)} | – | – | – |")
            continue
        lines.append(f"| {label} | {len(paired)} | {test['diff']:+.1f} "
                     f"[{test['ci_low']:+.1f}, {test['ci_high']:+.1f}] | {test['p']:.2f} | "
                     f"{adjusted[key]:.2f} |")
    differs = [label for key, label in compared
               if math.isfinite(adjusted[key]) and adjusted[key] < ALPHA]
    lines += [
        "",
        ("Differs from full-length trials after Holm's correction: "
         + ("; ".join(differs) if differs else "no setting") + ". "
         if any(math.isfinite(t["p"]) for _, t in tests.values())
         else "No test yet: a paired test needs two seeds finished in both settings. ")
        + "A best validation Δm% is the maximum over the trials a search tried, scored against one "
        "reference run, so it carries the selection's optimism and one trial's noise "
        "(benchmarks/results/noise.md); it says which configuration finds high scores for its "
        "trial-epochs, not how good the chosen policy is on fresh seeds.",
        "",
    ]
    if any(len(done) < len(seeds) for done in full.values()):
        lines += ["**Incomplete**: not every search has finished yet; run the command again "
                  "to go on.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
