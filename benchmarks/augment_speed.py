"""Samples/s of every baseline policy through policysearch vs the same albumentations Compose.

Our pipeline (``policy.transform()``) must stay within 10% of calling the exported
albumentations transform directly on the same targets. Writes
benchmarks/results/augment_speed.md (or --out).

    .venv/bin/python benchmarks/augment_speed.py             # ~1 minute
    .venv/bin/python benchmarks/augment_speed.py --smoke-test
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

from policysearch.augment import BASELINES, get_baseline
from policysearch.data import get_dataset

HERE = Path(__file__).resolve().parent


def _seconds(fn: Callable, samples: list[dict]) -> float:  # type: ignore[type-arg]
    start = time.perf_counter()
    for s in samples:
        fn(s)
    return time.perf_counter() - start


def measure(name: str, samples: list[dict], rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` samples/s (ours, direct), the two interleaved to share any drift."""
    tasks = {"shape": "classification", "seg": "segmentation", "objects": "detection",
             "depth": "depth"}
    policy = get_baseline(name, tasks)
    ours = policy.transform(seed=0)
    size = samples[0]["image"].shape[:2]
    # The detection file carries boxes; masks and depth are passed as albumentations'
    # mask-type targets so that both sides move the same arrays.
    direct = policy.to_albumentations("objects", size=size)
    direct.add_targets({"mask": "mask", "depth": "mask"})
    direct.set_random_seed(0)

    def call_direct(s: dict) -> dict:
        return direct(image=s["image"], mask=s["mask"], depth=s["depth"], bboxes=s["boxes"],
                      labels=s["box_labels"])

    ours(samples[0])
    call_direct(samples[0])
    best_ours = best_direct = float("inf")
    for _ in range(rounds):
        best_ours = min(best_ours, _seconds(ours, samples))
        best_direct = min(best_direct, _seconds(call_direct, samples))
    return len(samples) / best_ours, len(samples) / best_direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "augment_speed.md")
    args = parser.parse_args()
    n, rounds = (16, 1) if args.smoke_test else (400, 5)
    dataset = get_dataset("shapes", size=64, n_train=max(n, 16), n_val=16, n_test=16)
    samples = [dataset.split("train")[i] for i in range(n)]

    rows = [(name, *measure(name, samples, rounds)) for name in BASELINES]
    smoke = " --smoke-test" if args.smoke_test else ""
    lines = [
        "# Baselines through policysearch vs albumentations directly",
        "",
        f"Produced by `python benchmarks/augment_speed.py{smoke}` on {platform.machine()}, one "
        f"core, {n} shapes samples of 64×64 with image, mask, depth and boxes; best of "
        f"{rounds} interleaved rounds. The direct side is the policy's exported albumentations "
        "Compose called on the same arrays.",
        "",
        "| baseline | policysearch samples/s | albumentations samples/s | our overhead |",
        "|---|---:|---:|---:|",
    ]
    for name, ours, direct in rows:
        overhead = (direct / ours - 1) * 100
        lines.append(f"| {name} | {ours:,.0f} | {direct:,.0f} | {overhead:+.1f}% |")
    lines += [
        "",
        "Overhead = extra time per sample relative to albumentations alone (target: within "
        "10%). Our side also marks pixels brought in from outside the image as invalid depth "
        "and returns the sample-dict convention.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
