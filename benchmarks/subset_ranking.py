"""Does a search on a subset of the training split rank policies as one on all of it would?

"Search on a subset, train on everything" (``--subset``) rests on one assumption: the policies
that score best when trained on a subset are those that score best when trained on the whole
split. This measures it, on development data only (the default search space on `shapes`,
every score on its 200 validation images; no test split is scored):

  * K policies (``--policies``, default 8): the space's reference (flipcrop), `none`, and
    K − 2 drawn at random from the default space (uniform in its parameters, with their
    searched loss weights) by a generator seeded with ``POLICY_SEED`` — a spread of
    policies, good and bad, like a search's early trials;
  * each trained with S seeds (``--seeds``, default 4) on the whole training split (400
    images) and on a subset of it (``--fraction``, default 1/4: 100 images, chosen as
    ``--subset`` chooses them — stratified by the shape label — with subset seed
    ``--subset-seed``, default 0, the same subset for every seed, as one search uses one),
    the seeds paired across the two, at the space's budget (24 epochs) — a search on a
    subset keeps the budget and trains on fewer images;
  * each scored by Δm% on validation against the reference trained on the *same* data with
    the same seed, and averaged over the seeds.

Reported: Spearman's ρ between the subset ranking and the whole-split ranking of the K
policies (seed means), with a 95% interval from Fisher's z with the Bonett–Wright standard
error √((1 + ρ²/2)/(K − 3)) (approximate with so few policies; a bootstrap over 8 policies
would be no better), set beside the split-half agreement of the whole-split scores
themselves — ρ between the means over the first and the second half of the seeds (2 + 2
with S = 4), the agreement that seed noise alone allows, stepped up to S seeds by
Spearman–Brown (2ρ / (1 + ρ)) — and beside the like-for-like cross-half ρ (subset means
over one half against whole-split means over the other, averaged over the two ways), which
shares no seed between its two sides, as the split-half ρ does not.

Each training is stored under ``--runs`` (default runs/subset_ranking) as a JSON file when it
finishes and reused when the script runs again (with what it trained, so a changed setting
trains again); ``--max-new N`` stops after N new trainings. Writes
benchmarks/results/subset_ranking.md (or ``--out``).

Expected run time: 2 × K × S = 64 trainings; a default-space training takes about 40 s on 2
cores on the whole split and about a quarter of that (plus the evaluation) on the subset, so
about 30 minutes on 2 quiet cores.

    .venv/bin/python benchmarks/subset_ranking.py             # ~30 minutes on 2 quiet cores
    .venv/bin/python benchmarks/subset_ranking.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _machine import cpu_model, write_result  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
POLICY_SEED = 0  # the generator of the random policies
Z95 = 1.959964


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's ρ of two scorings of the same policies; None when either is constant (no
    ranking to compare)."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def fisher_interval(rho: float, k: int) -> tuple[float, float] | None:
    """95% interval of Spearman's ρ of ``k`` pairs: Fisher's z with the Bonett–Wright
    standard error; None for k ≤ 3. |ρ| = 1 is taken as ±0.9999 (z is infinite there)."""
    if k <= 3:
        return None
    r = max(-0.9999, min(0.9999, rho))
    se = math.sqrt((1 + r * r / 2) / (k - 3))
    z = math.atanh(r)
    return math.tanh(z - Z95 * se), math.tanh(z + Z95 * se)


def spearman_brown(rho: float) -> float:
    """The agreement of means over twice as many seeds, from that of two halves."""
    return 2 * rho / (1 + rho) if rho > -1 else -1.0


def fmt(value: float | None, digits: int = 2) -> str:
    return "undefined (a constant ranking)" if value is None else f"{value:+.{digits}f}"


def ranks(values: Sequence[float]) -> list[int]:
    """1 = the highest; ties share the better rank."""
    return [1 + sum(v > x for v in values) for x in values]


def main() -> None:
    import torch

    from policysearch.config import TrainSubset, load_space
    from policysearch.data.loading import load_dataset
    from policysearch.records import delta_m
    from policysearch.search.lifecycle import reference_policy
    from policysearch.search.space import draw_params, parameters, policy_from_params
    from policysearch.space_adapt import load_adapted
    from policysearch.tasks import task_setup
    from policysearch.training import Trainer, evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--policies", type=int, default=8, help="K, at least 4")
    parser.add_argument("--seeds", type=int, default=4, help="S, at least 2")
    parser.add_argument("--fraction", type=float, default=0.25,
                        help="the subset's share of the training split")
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per training (default: every CPU; smoke test: 1)")
    parser.add_argument("--max-new", type=int, default=None,
                        help="train at most this many runs not stored yet, then stop")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "subset_ranking.md")
    args = parser.parse_args()
    smoke = args.smoke_test
    if args.policies < 4 or args.seeds < 2 or not 0 < args.fraction < 1:
        parser.error("needs --policies >= 4, --seeds >= 2 and 0 < --fraction < 1")
    started = time.perf_counter()
    n_policies, n_seeds = (4, 2) if smoke else (args.policies, args.seeds)
    space = load_space("default")
    if smoke:
        data = space.dataset_options.model_copy(update={"n_train": 32, "n_val": 16, "n_test": 8})
        budget = space.budget.model_copy(update={"image_size": 32, "epochs": 2})
        space = space.model_copy(update={"dataset_options": data, "budget": budget})
    adapted, whole = load_adapted(space)
    space, budget = adapted.space, adapted.space.budget
    n_train = len(whole.split("train"))
    subset_n = max(2, round(args.fraction * n_train))
    subset = TrainSubset(n=subset_n, seed=args.subset_seed)
    part = load_dataset(space.model_copy(update={"subset": subset}))
    stratified = getattr(part, "subset", None)
    datasets = {"whole": whole, "subset": part}
    val = whole.split("val")
    tasks, info = task_setup(whole)
    primary = [(t, m) for t, metrics in info.items() for m, i in metrics.items() if i["primary"]]

    # The policies: the reference, none, and random draws from the space.
    policies = {space.reference: reference_policy(space.reference, tasks),
                "none": reference_policy("none", tasks)}
    params = parameters(space, list(tasks))
    rng = random.Random(POLICY_SEED)
    for k in range(n_policies - len(policies)):
        values = draw_params(params, rng)
        policies[f"random{k + 1}"] = policy_from_params(space, tasks, values)
    names = list(policies)
    seeds = list(range(1, 1 + n_seeds))
    threads = args.threads or (1 if smoke else os.cpu_count() or 1)
    store = args.runs or (args.out.parent / "subset-ranking-smoke-runs" if smoke
                          else Path("runs/subset_ranking"))
    store.mkdir(parents=True, exist_ok=True)
    new = 0

    def train(data: str, name: str, seed: int) -> dict[str, Any] | None:
        """Train (or read back) one run: its validation metrics, seconds, images trained."""
        nonlocal new
        key = {"data": data, "n_train": len(datasets[data].split("train")),
               "subset": subset.model_dump() if data == "subset" else None,
               "dataset_options": space.dataset_options.model_dump(mode="json"),
               "budget": budget.model_dump(mode="json"), "seed": seed,
               "policy": policies[name].to_dict()}
        path = store / f"{data}-{name}-s{seed}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("key") == json.loads(json.dumps(key)):
                return stored
        if args.max_new is not None and new >= args.max_new:
            return None
        new += 1
        begun = time.perf_counter()
        with Trainer(policies[name], datasets[data], budget, seed=seed, device="cpu",
                     threads=threads) as trainer:
            while not trainer.done:
                trainer.train_epoch()
            result = {"key": key,
                      "metrics": evaluate(trainer.model, trainer.tasks, val, trainer.device),
                      "seconds": time.perf_counter() - begun,
                      "train_images": trainer.images_seen}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
        print(f"{path.name}: {result['seconds']:.0f} s", flush=True)
        return result

    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for seed in seeds:  # whole seeds first: a run stopped by --max-new leaves whole pairs
        for data in datasets:
            for name in names:
                run = train(data, name, seed)
                if run is None:
                    total = 2 * len(names) * len(seeds)
                    print(f"stopped with {total - len(runs)} of {total} runs still to train "
                          "(--max-new); run again to go on", flush=True)
                    return
                runs[(data, name, seed)] = run

    def score(data: str, name: str, seed: int) -> float:
        ref = runs[(data, space.reference, seed)]["metrics"]
        return delta_m(runs[(data, name, seed)]["metrics"], ref, info)[0]

    scores = {(d, n): [score(d, n, s) for s in seeds] for d in datasets for n in names}
    mean = {key: statistics.fmean(v) for key, v in scores.items()}
    half_a, half_b = seeds[:len(seeds) // 2], seeds[len(seeds) // 2:]

    def means(data: str, half: Sequence[int]) -> list[float]:
        return [statistics.fmean(scores[(data, n)][seeds.index(s)] for s in half)
                for n in names]

    whole_means = [mean[("whole", n)] for n in names]
    subset_means = [mean[("subset", n)] for n in names]
    rho = spearman(subset_means, whole_means)
    interval = fisher_interval(rho, len(names)) if rho is not None else None
    split_half = spearman(means("whole", half_a), means("whole", half_b))
    stepped = spearman_brown(split_half) if split_half is not None else None
    cross = [spearman(means("subset", a), means("whole", b))
             for a, b in ((half_a, half_b), (half_b, half_a))]
    cross_mean = statistics.fmean(c for c in cross if c is not None) if any(
        c is not None for c in cross) else None
    seconds = {d: statistics.fmean(r["seconds"] for (dd, _, _), r in runs.items() if dd == d)
               for d in datasets}
    images = {d: len(datasets[d].split("train")) for d in datasets}
    for (d, _, _), r in runs.items():  # every run trained on its split, every epoch
        assert r["train_images"] == images[d] * budget.epochs, (d, r["train_images"])

    whole_rank, subset_rank = ranks(whole_means), ranks(subset_means)
    how = (f"stratified by {stratified.stratified_by}" if stratified is not None
           and stratified.stratified_by else "a random sample")
    invocation = " ".join(["benchmarks/subset_ranking.py", *map(shlex.quote, sys.argv[1:])])
    interval_text = (f"[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval is not None
                     else "none (too few policies)")
    lines = [
        "# Search on a subset: does it rank policies as the whole training split does?",
        "",
        f"Produced by `.venv/bin/python {invocation}` on "
        f"{cpu_model()}, {threads} CPU thread{'' if threads == 1 else 's'}, "
        f"torch {torch.__version__}, no GPU; "
        f"{(time.perf_counter() - started) / 60:.1f} minutes for this invocation (stored runs "
        f"under `{store}` are read back). The default search space on `{space.dataset}` "
        f"({budget.epochs} epochs, batch {budget.batch_size}, image size {budget.image_size}, "
        f"encoder `{budget.encoder}`): {len(names)} policies × {len(seeds)} seeds (paired), "
        f"each trained on the whole training split ({images['whole']} images) and on a subset "
        f"of {images['subset']} ({how}, subset seed {args.subset_seed}, the same for every "
        f"seed), as `--subset {images['subset']}` chooses it. **No test split is scored**: "
        f"Δm% on the {len(val)} validation images, against `{space.reference}` trained on the "
        "same data with the same seed; primary metrics "
        + ", ".join(f"{t} {m}" for t, m in primary) + ".",
        "",
        "| policy | Δm% whole split (mean ± sd) | rank | Δm% subset (mean ± sd) | rank |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(names):
        w, s = scores[("whole", name)], scores[("subset", name)]
        lines.append(f"| {name} | {statistics.fmean(w):+.2f} ± {statistics.stdev(w):.2f} | "
                     f"{whole_rank[i]} | {statistics.fmean(s):+.2f} ± "
                     f"{statistics.stdev(s):.2f} | {subset_rank[i]} |")
    seeds_a = ", ".join(map(str, half_a))
    seeds_b = ", ".join(map(str, half_b))
    lines += [
        "",
        "| agreement (Spearman's ρ over the policies) | ρ | 95% interval |",
        "|---|---:|---:|",
        f"| subset vs whole split, means over all {len(seeds)} seeds | {fmt(rho)} | "
        f"{interval_text} |",
        f"| whole split vs itself: seeds {seeds_a} vs seeds {seeds_b} (split-half) | "
        f"{fmt(split_half)} | — |",
        f"| … stepped up to {len(seeds)} seeds (Spearman–Brown, the ceiling noise allows) | "
        f"{fmt(stepped)} | — |",
        f"| subset vs whole split across halves (no shared seed), mean of both ways | "
        f"{fmt(cross_mean)} | — |",
        "",
        f"Interval: Fisher's z of ρ with the Bonett–Wright standard error, over {len(names)} "
        "policies (approximate with so few). Read the first row against the Spearman–Brown "
        "ceiling, and the cross-half row against the split-half row (the same number of "
        "seeds on each side): a subset that ranks as the whole split does comes close to "
        "them; one that does not falls clearly below.",
        "",
        f"Seconds per training (mean): whole split {seconds['whole']:.1f}, subset "
        f"{seconds['subset']:.1f} ({seconds['whole'] / seconds['subset']:.1f}× faster).",
        "",
        "Policies: " + "; ".join(f"{n}: {policies[n].summary() or '(no ops)'}"
                                 for n in names) + ".",
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
