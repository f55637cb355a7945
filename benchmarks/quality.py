"""Does the searched policy beat the standard augmentations on data the search never saw?

Runs the two commands a user would run — a search with successive halving on the space
benchmarks/spaces/quality_<dataset>.yaml, then `policysearch benchmark` of its best policy
against none, flipcrop, randaugment, trivialaugment and autoaugment over 5 seeds on the test
split — and writes benchmarks/results/quality_<dataset>.md and .png (or --out). Both steps
resume: the search continues its journal and the benchmark reuses its stored runs, so an
interrupted run is finished by running the same command again.

    .venv/bin/python benchmarks/quality.py --dataset shapes         # ~35 min on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --dataset multidigits
    .venv/bin/python benchmarks/quality.py --dataset shapes --smoke-test

Every run trains on the CPU with 2 threads and fixed seeds: the search's trials (seed 0) and
the benchmark's runs (seeds 1-5) give the same numbers when run again on the same CPU type.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Finished trials (reference included) per dataset: sized so that the search spends about
# 10 full trainings or less under successive halving with its first rung at a third of the
# budget (13 trials x 1/3 + the promoted ones' remaining 2/3 + the full reference trial).
TRIALS = {"shapes": 14, "multidigits": 14}
TARGET_FULL_TRAININGS = 10.0
SEEDS = 5


def _smoke_space(space: Path, folder: Path) -> Path:
    data = yaml.safe_load(space.read_text())
    data["dataset_options"] = {**data.get("dataset_options", {}), "n_train": 48, "n_val": 24,
                               "n_test": 24}
    data["budget"] = {**data["budget"], "epochs": 2, "image_size": 32}
    data["pruner"] = {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2}
    path = folder / space.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _short(path: Path) -> Path:
    """``path`` relative to the repository (where the commands run) when inside it."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _run(args: list[str]) -> float:
    started = time.perf_counter()
    print("$ policysearch " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "policysearch", *args], check=True, cwd=ROOT)
    return time.perf_counter() - started


def _search_summary(search: Path) -> dict:
    from policysearch.search.driver import load_study_records

    records = load_study_records(search, None, None)
    states: dict[str, int] = {}
    for r in records.records:
        states[r.state] = states.get(r.state, 0) + 1
    return {"states": states, "epochs": sorted(int(r.epochs or 0) for r in records.records)}


def _target_line(report: dict) -> str:
    from policysearch.evaluation.benchmark import WINS

    summary = {row["contender"]: row for row in report["summary"]}
    cost = (report.get("cost") or {}).get("full_trainings_by_epochs")
    beats = [name for name in ("randaugment", "trivialaugment")
             if summary.get(name, {}).get("verdict") == WINS]
    cheap = cost is not None and cost <= TARGET_FULL_TRAININGS
    met = len(beats) == 2 and cheap
    return (f"**Target** (searched beats RandAugment and TrivialAugment, each significantly by "
            f"the paired test Holm-adjusted over the table's comparisons at α = 0.05, at a "
            f"search cost of at most {TARGET_FULL_TRAININGS:g} full trainings): "
            f"**{'met' if met else 'not met'}** — beaten significantly: "
            f"{', '.join(beats) or 'neither'}; search cost "
            f"{'unknown' if cost is None else f'{cost:.1f} full trainings'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(TRIALS), default="shapes")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, help="Markdown file to write (a .png beside it)")
    parser.add_argument("--work", type=Path,
                        help="folder of the search and the benchmark runs (kept: resume)")
    args = parser.parse_args()

    space = HERE / "spaces" / f"quality_{args.dataset}.yaml"
    out = args.out or HERE / "results" / f"quality_{args.dataset}.md"
    work = args.work or (Path(tempfile.mkdtemp(prefix="quality-smoke-")) if args.smoke_test
                         else ROOT / "runs" / f"quality-{args.dataset}")
    work.mkdir(parents=True, exist_ok=True)
    trials, seeds = TRIALS[args.dataset], SEEDS
    if args.smoke_test:
        space, trials, seeds = _smoke_space(space, work), 4, 2
    search, bench = _short(work / "search"), _short(work / "benchmark")
    space = _short(space)
    search_cmd = ["search", "--space", str(space), "--trials", str(trials), "--out", str(search),
                  "--device", "cpu", "--threads", "2", "--seed", "0"]
    bench_cmd = ["benchmark", "--policy", str(search / "best_policy.yaml"), "--search",
                 str(search), "--seeds", str(seeds), "--seed", "1", "--device", "cpu",
                 "--threads", "2", "--out", str(bench)]
    search_s = _run(search_cmd)
    bench_s = _run(bench_cmd)

    bench = ROOT / bench if not bench.is_absolute() else bench
    search = ROOT / search if not search.is_absolute() else search
    report = json.loads((bench / "benchmark.json").read_text())
    body = (bench / "benchmark.md").read_text().split("\n", 2)[2]  # without its title
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bench / "benchmark.png", png)
    found = _search_summary(search)
    states = ", ".join(f"{n} {s}" for s, n in sorted(found["states"].items()))
    lines = [
        f"# Quality on `{args.dataset}`: searched policy vs standard augmentations",
        "",
        f"Produced by `python benchmarks/quality.py --dataset {args.dataset}"
        f"{' --smoke-test' if args.smoke_test else ''}` on {cpu_model()}, 2 CPU threads, "
        f"torch {torch.__version__}, no GPU. It ran these two commands:",
        "",
        "```",
        "policysearch " + " ".join(search_cmd),
        "policysearch " + " ".join(bench_cmd),
        "```",
        "",
        f"Search: `{space}`, {trials} finished trials wanted ({states}); epochs trained "
        f"per trial: {', '.join(map(str, found['epochs']))}. This run: search "
        f"{search_s / 60:.1f} min, benchmark {bench_s / 60:.1f} min (stored runs reused).",
        "",
        _target_line(report),
        "",
        f"![Δm% per contender]({png.name})",
        "",
        body.rstrip(),
        "",
    ]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
