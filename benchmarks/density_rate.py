"""How fast density matching scores candidates on this machine, and what a candidate costs in
full trainings: the numbers that size ``--method density`` for a budget.

For each of the protocol's datasets (shapes, multidigits, scenes: the final spaces'
budgets and ops, loss weights equal, development data, no test split read), one fold network
is trained under the reference on 60% of the training split and scores ``--candidates``
TPE candidates on the other 40%, with 5 copies per sample (``policysearch search --method
density --folds 1``). Reported per dataset: the fold's training time, candidates/s, the
scoring time of one candidate as a share of one full training (estimated from the fold: its
seconds over its 0.6 share), and the candidates per fold that fit a total cost of about 3 and
about 10 full trainings with 3 and 5 folds.

    .venv/bin/python benchmarks/density_rate.py               # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/density_rate.py --smoke-test  # tiny, for CI
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import yaml
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

from policysearch import api
from policysearch.events import CandidateScored

HERE = Path(__file__).resolve().parent
DATASETS = ("shapes", "multidigits", "scenes")


def _space(dataset: str, folder: Path, smoke: bool) -> Path:
    """The final space of ``dataset`` with equal loss weights (smoke: tiny sizes)."""
    data = yaml.safe_load((HERE / "spaces" / f"final_{dataset}.yaml").read_text())
    data["name"] = f"density_rate_{dataset}"
    data["weights"] = {"method": "equal"}
    if smoke:
        data["dataset_options"].update({"n_train": 40, "n_val": 16, "n_test": 16})
        data["budget"].update({"epochs": 1, "image_size": 32})
    path = folder / f"{dataset}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def measure(dataset: str, folder: Path, candidates: int, smoke: bool) -> dict[str, float]:
    rates: list[float] = []

    def progress(event: object) -> None:
        if isinstance(event, CandidateScored):
            rates.append(event.rate)

    outcome = api.search(_space(dataset, folder, smoke), out=folder / dataset,
                         method="density", folds=1, trials=candidates, copies=5, keep=1,
                         device="cpu", threads=2, report=False, progress=progress)
    cost = outcome.cost or {}
    per_candidate = cost["scoring_seconds"] / cost["candidates"]
    full = cost["full_training_seconds"]
    return {"fold_seconds": cost["fold_seconds"], "full_seconds": full,
            "rate": cost["candidates_per_second"], "per_candidate": per_candidate,
            "candidate_trainings": per_candidate / full}


def _fit(folds: int, total: float, share: float, candidate: float) -> int:
    """Candidates per fold that a total cost of ``total`` full trainings leaves room for."""
    left = total - folds * share
    return max(0, int(left / (folds * candidate)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "density_rate.md")
    args = parser.parse_args()
    candidates = 2 if args.smoke_test else args.candidates
    rows = []
    with tempfile.TemporaryDirectory(prefix="density-rate-") as tmp:
        for dataset in DATASETS:
            m = measure(dataset, Path(tmp), candidates, args.smoke_test)
            rows.append((dataset, m))
    command = "python benchmarks/density_rate.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    smoke = " (smoke test: tiny sizes, not a result)" if args.smoke_test else ""
    lines = [f"# Density matching: candidates per second{smoke}", "",
             f"`{command}` on {cpu_model()}, 2 CPU threads, no GPU. One fold per dataset "
             "(trained under the reference on 60% of the development training split), "
             f"{candidates} TPE candidates scored on the other 40% with 5 copies per sample; "
             "the final spaces' budgets and ops, loss weights equal. A full training's time is "
             "the fold's over its 0.6 share.", "",
             "| dataset | fold training (s) | full training (s, est.) | candidates/s | "
             "one candidate (full trainings) | candidates per fold at ~3 (3 folds) | "
             "at ~10 (5 folds) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for dataset, m in rows:
        lines.append(
            f"| {dataset} | {m['fold_seconds']:.1f} | {m['full_seconds']:.1f} | "
            f"{m['rate']:.2f} | {m['candidate_trainings']:.4f} | "
            f"{_fit(3, 3.0, 0.6, m['candidate_trainings'])} | "
            f"{_fit(5, 10.0, 0.6, m['candidate_trainings'])} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
