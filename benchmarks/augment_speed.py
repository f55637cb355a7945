"""Samples/s of every baseline policy through policysearch vs the same albumentations Compose.

Our pipeline (``policy.transform()``) must stay within 10% of calling the exported
albumentations transform directly on the same targets. A second table prices the surface-normals
step: the same policies on samples that also carry a normal map, which plain albumentations
can only resample as a mask (its vectors left unturned) while policysearch also turns them.
Writes benchmarks/results/augment_speed.md (or --out).

Method: one core (CPU affinity and OpenCV threads pinned), the two sides timed on alternating
blocks of samples so that machine drift hits both alike; each round gives a time ratio, and the
reported overhead is the median ratio over rounds (throughputs: the best round).

    .venv/bin/python benchmarks/augment_speed.py             # ~2 minutes
    .venv/bin/python benchmarks/augment_speed.py --smoke-test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from _machine import cpu_model  # benchmarks/_machine.py, beside this script

from policysearch.augment import BASELINES, get_baseline
from policysearch.data import get_dataset

HERE = Path(__file__).resolve().parent

TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}
BLOCK = 25  # samples per timed block


def pin_one_core() -> str:
    """Run on one core with one OpenCV thread; returns what was pinned, for the report."""
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        core = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"core {core}, 1 OpenCV thread"
    return "1 OpenCV thread"


def _seconds(fn: Callable, samples: list[dict]) -> float:  # type: ignore[type-arg]
    start = time.perf_counter()
    for s in samples:
        fn(s)
    return time.perf_counter() - start


def measure(name: str, samples: list[dict], rounds: int, *, normals: bool = False
            ) -> tuple[float, float, float]:
    """(ours samples/s, direct samples/s, median time ratio ours/direct) for baseline ``name``."""
    policy = get_baseline(name, TASKS)
    ours = policy.transform(seed=0)
    size = samples[0]["image"].shape[:2]
    # The detection file carries boxes; mask, depth (and normals) are passed as albumentations'
    # mask-type targets so that both sides move the same arrays.
    direct = policy.to_albumentations("objects", size=size)
    extra = {"mask": "mask", "depth": "mask"}
    if normals:
        extra["normals"] = "mask"
    direct.add_targets(extra)
    direct.set_random_seed(0)

    def call_direct(s: dict) -> dict:
        more = {"normals": s["normals"]} if normals else {}
        return direct(image=s["image"], mask=s["mask"], depth=s["depth"], bboxes=s["boxes"],
                      labels=s["box_labels"], **more)

    ours(samples[0])
    call_direct(samples[0])
    blocks = [samples[i:i + BLOCK] for i in range(0, len(samples), BLOCK)]
    best_ours = best_direct = float("inf")
    ratios = []
    for r in range(rounds):
        t_ours = t_direct = 0.0
        for i, block in enumerate(blocks):
            if (i + r) % 2:  # alternate which side goes first
                t_direct += _seconds(call_direct, block)
                t_ours += _seconds(ours, block)
            else:
                t_ours += _seconds(ours, block)
                t_direct += _seconds(call_direct, block)
        best_ours, best_direct = min(best_ours, t_ours), min(best_direct, t_direct)
        ratios.append(t_ours / t_direct)
    return len(samples) / best_ours, len(samples) / best_direct, statistics.median(ratios)


def _with_normals(samples: list[dict]) -> list[dict]:
    """The samples with a normal map: a tilted plane, the same unit vector at every pixel."""
    n = np.array([0.3, -0.5, 0.8], dtype=np.float32)
    n /= np.linalg.norm(n)
    return [{**s, "normals": np.tile(n, (*s["image"].shape[:2], 1))} for s in samples]


def _table(rows: list[tuple[str, float, float, float]], direct_label: str) -> list[str]:
    lines = [
        f"| baseline | policysearch samples/s | {direct_label} samples/s | our overhead |",
        "|---|---:|---:|---:|",
    ]
    for name, ours, direct, ratio in rows:
        overhead = "— (nothing to do)" if name == "none" else f"{(ratio - 1) * 100:+.1f}%"
        lines.append(f"| {name} | {ours:,.0f} | {direct:,.0f} | {overhead} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "augment_speed.md")
    args = parser.parse_args()
    n, rounds = (BLOCK, 1) if args.smoke_test else (400, 9)
    pinned = pin_one_core()
    dataset = get_dataset("shapes", size=64, n_train=max(n, 16), n_val=16, n_test=16)
    samples = [dataset.split("train")[i] for i in range(n)]

    plain = [(name, *measure(name, samples, rounds)) for name in BASELINES]
    with_normals = [(name, *measure(name, _with_normals(samples), rounds, normals=True))
                    for name in BASELINES if name != "none"]
    smoke = " --smoke-test" if args.smoke_test else ""
    lines = [
        "# Baselines through policysearch vs albumentations directly",
        "",
        f"Produced by `python benchmarks/augment_speed.py{smoke}` on {cpu_model()} "
        f"({pinned}), {n} shapes samples of 64×64 with image, mask, depth and boxes. The direct "
        "side is the policy's exported albumentations Compose called on the same arrays. Both "
        f"sides run on alternating blocks of {BLOCK} samples; overhead is the median over "
        f"{rounds} rounds of (our time / direct time − 1), throughputs the best round.",
        "",
        *_table(plain, "albumentations"),
        "",
        "Target: within 10%. Our side also marks pixels brought in from outside the image as "
        "invalid depth and returns the sample-dict convention. `none` has no transform: "
        "policysearch returns the sample as it is, albumentations still runs its checks.",
        "",
        "## With surface normals",
        "",
        "The same samples with an H×W×3 normal map. Plain albumentations can only resample it "
        "as a mask (vectors left as they were: wrong after a flip or rotation); policysearch "
        "resamples it and turns the vectors (policysearch.augment.normals). The overhead is the "
        "price of that step; there is no target for it.",
        "",
        *_table(with_normals, "albumentations (normals as a mask)"),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
