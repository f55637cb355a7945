"""The input pipeline alone, and its effect on a real trial: feed rate (samples/s) with 0, 1,
2, … loader workers and a stand-in model of zero cost; scaling against the one-worker rate;
the data-wait fraction of a default trial with and without workers.

Writes benchmarks/results/input_pipeline.md (or --out). Method:
  * feed rate: ``policysearch.input_pipeline.InputPipeline`` over the training split of
    ``shapes`` (every target: class, mask, boxes, depth), batch 32, the batches consumed and
    dropped (the stand-in model). The workers persist; the first epoch starts them and fills the
    dataset's cache, so each configuration is timed over the next epochs, for at least
    ``SECONDS`` (each next epoch asked for ahead, as a trial does), in interleaved rounds.
    64×64 and 224×224 images; the baselines and a searched policy with per-task views
    (``SEARCHED``). With 0 workers the batches are prepared in this process.
  * scaling efficiency: rate(k workers) / (k × rate(1 worker)), up to the cores present; the
    projection to a 16-core GPU host assumes the efficiency measured at the most workers here.
  * the machine's ceiling: k independent processes preparing the same batches with no
    DataLoader at all (started together, their rates summed): what k cores of this machine
    deliver, so that the pipeline's own efficiency (rate ÷ ceiling) is told apart from the
    machine's (a VM's cores may not run k processes at k times one's speed).
  * data wait: a trial of the default search space (its dataset and budget, fewer epochs), the
    share of each epoch's wall time its step waited for a batch, and the trial's time, with 0
    and 1 loader worker, on this CPU (``threads`` = all cores for the model in both).

GPU rows are measured by benchmarks/gpu.py where a GPU is lent.

    .venv/bin/python benchmarks/input_pipeline.py             # ~12 minutes on 2 cores
    .venv/bin/python benchmarks/input_pipeline.py --smoke-test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from _machine import cpu_model, write_result  # benchmarks/_machine.py, beside this script

HERE = Path(__file__).resolve().parent
BASELINE_NAMES = ("flipcrop", "randaugment", "trivialaugment", "autoaugment")
# A policy of the default space's shape: shared slots and a per-task view for seg and depth.
SEARCHED = {
    "shared": [{"op": "hflip", "p": 0.5, "magnitude": 1.0},
               {"op": "crop", "p": 0.6, "magnitude": 0.3},
               {"op": "rotate", "p": 0.4, "magnitude": 0.4}],
    "per_task": {"seg": [{"op": "brightness", "p": 0.5, "magnitude": 0.5},
                         {"op": "contrast", "p": 0.3, "magnitude": 0.4}],
                 "depth": [{"op": "blur", "p": 0.3, "magnitude": 0.5}]},
}
BATCH = 32
SECONDS = 3.0  # the least a feed-rate measurement is timed for (an epoch is 0.2-0.5 s)
ROUNDS = 3  # interleaved repetitions of every measurement (a shared VM's speed drifts)
# One process of the ceiling measurement: prepares the batches of whole epochs in-process, for
# at least ``seconds``
# (one OpenCV and torch thread, as a loader worker) after a warm-up batch, says it is ready, waits
# for the go on stdin (all start together), prints samples/s.
_CEILING = """
import sys, time
sys.path.insert(0, {here!r})
import cv2, numpy as np, torch
cv2.setNumThreads(1); torch.set_num_threads(1)
from input_pipeline import policies
from policysearch.data import get_dataset
from policysearch.input_pipeline import BatchRequest, PreparedBatches
from policysearch.tasks import make_task
dataset = get_dataset("shapes", size={size}, n_train={n}, n_val=8, n_test=8)
tasks = {{t.name: t.kind for t in dataset.tasks}}
policy = policies(tasks)[{name!r}]
batches = PreparedBatches(dataset.split("train"), [make_task(t) for t in dataset.tasks])
def epoch(e):
    return [BatchRequest(epoch=e, indices=tuple(range(s, min(s + {batch}, {n}))), seed=0,
                         phase=policy, key=policy.augmentation_key())
            for s in range(0, {n}, {batch})]
batches.prepare(epoch(0)[0])
print("ready", flush=True)
sys.stdin.readline()
began, count, e = time.perf_counter(), 0, 0
while time.perf_counter() - began < {seconds}:
    count += sum(batches.prepare(r)["size"] for r in epoch(e))
    e += 1
print(count / (time.perf_counter() - began))
"""


def policies(tasks: dict[str, str]) -> dict[str, object]:
    from policysearch.augment import SCHEMA, Policy, get_baseline

    found: dict[str, object] = {name: get_baseline(name, tasks) for name in BASELINE_NAMES}
    found["searched (per-task views)"] = Policy.from_dict({"schema": SCHEMA, "tasks": tasks,
                                                           **SEARCHED},
                                                          source="input_pipeline.py")
    return found


def feed_rate(samples, tasks, policy, workers: int, seconds: float) -> float:  # noqa: ANN001
    """Samples/s over whole epochs timed for at least ``seconds``, after one that starts the
    workers; each next epoch is asked for (prefetched) as the last one ends, as a trial does."""
    import numpy as np
    import torch

    from policysearch.input_pipeline import BatchRequest, InputPipeline

    pipeline = InputPipeline(samples, tasks, workers=workers, device=torch.device("cpu"))
    key = policy.augmentation_key()

    def requests(epoch: int) -> list[BatchRequest]:
        order = np.random.default_rng(epoch).permutation(len(samples))
        return [BatchRequest(epoch=epoch, indices=tuple(int(i) for i in order[s:s + BATCH]),
                             seed=0, phase=policy, key=key) for s in range(0, len(order), BATCH)]

    try:
        sum(batch["size"] for batch in pipeline.epoch(requests(0)))  # starts the workers
        pipeline.prefetch(requests(1))
        epoch, count, start = 1, 0, time.perf_counter()
        while True:
            count += sum(batch["size"] for batch in pipeline.epoch(requests(epoch)))
            if time.perf_counter() - start >= seconds:
                return count / (time.perf_counter() - start)
            epoch += 1
            pipeline.prefetch(requests(epoch))
    finally:
        pipeline.close()


def ceiling(size: int, n: int, name: str, processes: int, seconds: float) -> float:
    """Summed samples/s of ``processes`` independent processes preparing batches in-process."""
    import subprocess
    import sys

    code = _CEILING.format(here=str(HERE), size=size, n=n, name=name, batch=BATCH,
                           seconds=seconds)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        for proc in procs:  # every process has imported, generated its data, warmed up
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise SystemExit("a ceiling process failed before it was ready")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if any(p.returncode for p in procs):
        raise SystemExit("a ceiling process failed")
    return sum(float(out.strip().splitlines()[-1]) for out in outputs)


def feed_table(sizes: tuple[int, ...], n_train: dict[int, int], worker_counts: list[int],
               seconds: float, rounds: int
               ) -> tuple[list[str], dict[tuple[int, str], dict[int, float]],
                          dict[tuple[int, str], dict[int, float]]]:
    """Per (size, policy): the median over ``rounds`` of each worker count's rate (key -1: the
    ceiling), and the median over rounds of each round's own ratios (efficiency per worker
    count, key -1: most workers ÷ ceiling). A round measures every configuration once, in an
    order rotated from round to round, so that a slow spell of a shared machine falls on all
    of them alike and a ratio compares measurements taken minutes apart, not a whole run."""
    from policysearch.data import get_dataset
    from policysearch.tasks import make_task

    rows, rates, ratios = [], {}, {}
    most = worker_counts[-1]
    for size in sizes:
        dataset = get_dataset("shapes", size=size, n_train=n_train[size], n_val=8, n_test=8)
        tasks = {t.name: t.kind for t in dataset.tasks}
        task_objects = [make_task(spec) for spec in dataset.tasks]
        samples = dataset.split("train")
        for name, policy in policies(tasks).items():
            configs = worker_counts + ([-1] if most >= 1 else [])
            measured: dict[int, list[float]] = {c: [] for c in configs}
            for r in range(rounds):
                for c in configs[r % len(configs):] + configs[:r % len(configs)]:
                    measured[c].append(
                        ceiling(size, n_train[size], name, most, seconds) if c == -1
                        else feed_rate(samples, task_objects, policy, c, seconds))
            by_workers = {c: statistics.median(v) for c, v in measured.items()}
            paired = {w: statistics.median(measured[w][r] / (w * measured[1][r])
                                           for r in range(rounds))
                      for w in worker_counts if w >= 1}
            if most >= 1:
                paired[-1] = statistics.median(measured[most][r] / measured[-1][r]
                                               for r in range(rounds))
            rates[(size, name)], ratios[(size, name)] = by_workers, paired
            cells = [f"{by_workers[w]:,.0f}" + (f" ({paired[w]:.2f})" if w >= 1 else "")
                     for w in worker_counts]
            top = (f"{by_workers[-1]:,.0f} | {paired[-1]:.2f}" if most >= 1 else "– | –")
            rows.append(f"| {size}×{size} | {name} | " + " | ".join(cells) + f" | {top} |")
            print(rows[-1], flush=True)
    return rows, rates, ratios


def trial_wait(workers: int, threads: int, epochs: int, smoke: bool
               ) -> tuple[list[float], float]:
    """Per-epoch data-wait fractions and the wall time of one default trial."""
    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.search.lifecycle import reference_policy
    from policysearch.training import run_trial

    space = load_space("default")
    budget = space.budget.model_copy(update={"epochs": epochs, "loader_workers": workers})
    if smoke:
        data = space.dataset_options.model_copy(update={"n_train": 64, "n_val": 16, "n_test": 8})
        space = space.model_copy(update={"dataset_options": data})
        budget = budget.model_copy(update={"image_size": 32})
    space = space.model_copy(update={"budget": budget})
    dataset = load_dataset(space)
    tasks = {t.name: t.kind for t in dataset.tasks}
    policy = reference_policy(space.reference, tasks)
    start = time.perf_counter()
    result = run_trial(policy, dataset, budget, seed=0, device="cpu", threads=threads)
    return result.data_wait, time.perf_counter() - start


def start_up(samples, tasks, policy, repeats: int = 5) -> tuple[float, float]:  # noqa: ANN001
    """Median seconds from a fresh one-worker pipeline's first request to its first batch (the
    worker starts, then prepares it), and of preparing that batch in this process."""
    import torch

    from policysearch.input_pipeline import BatchRequest, InputPipeline, PreparedBatches

    key = policy.augmentation_key()
    n = min(len(samples), 4 * BATCH)
    requests = [BatchRequest(epoch=0, indices=tuple(range(s, min(n, s + BATCH))), seed=0,
                             phase=policy, key=key) for s in range(0, n, BATCH)]
    firsts, inline = [], []
    for _ in range(repeats):
        pipeline = InputPipeline(samples, tasks, workers=1, device=torch.device("cpu"))
        try:
            start = time.perf_counter()
            pipeline.prefetch(requests)
            next(pipeline.epoch(requests))
            firsts.append(time.perf_counter() - start)
        finally:
            pipeline.close()
        batches = PreparedBatches(samples, tasks)
        start = time.perf_counter()
        batches.prepare(requests[0])
        inline.append(time.perf_counter() - start)
    return statistics.median(firsts), statistics.median(inline)


def first_batch_times(smoke: bool, repeats: int) -> tuple[float, float]:
    """``start_up`` on the default space's dataset and reference policy."""
    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import make_task

    space = load_space("default")
    if smoke:
        data = space.dataset_options.model_copy(update={"n_train": 64, "n_val": 16, "n_test": 8})
        space = space.model_copy(update={"dataset_options": data})
    dataset = load_dataset(space)
    tasks = {t.name: t.kind for t in dataset.tasks}
    return start_up(dataset.split("train"), [make_task(t) for t in dataset.tasks],
                    reference_policy(space.reference, tasks), repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "input_pipeline.md")
    args = parser.parse_args()
    smoke = args.smoke_test
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    worker_counts = list(range(0, min(cores, 2 if smoke else 8) + 1))
    sizes = (32,) if smoke else (64, 224)
    n_train = {32: 64} if smoke else {64: 1024, 224: 256}
    seconds = 0.5 if smoke else SECONDS
    started = time.perf_counter()

    rounds = 1 if smoke else ROUNDS
    rows, rates, ratios = feed_table(sizes, n_train, worker_counts, seconds, rounds)
    trial_epochs = 1 if smoke else 4
    setups = [(0, cores), (1, cores), (1, max(1, cores - 1))]
    runs: dict[tuple[int, int], list[tuple[list[float], float]]] = {s: [] for s in setups}
    for _ in range(rounds):  # interleaved, as the feed rates
        for w, t in setups:
            runs[(w, t)].append(trial_wait(w, t, trial_epochs, smoke))
    waits = {s: ([statistics.median(r[0][e] for r in found) for e in range(trial_epochs)],
                 statistics.median(r[1] for r in found)) for s, found in runs.items()}
    repeats = 2 if smoke else 5
    first, prepared = first_batch_times(smoke, repeats)

    most = worker_counts[-1]
    effs = [r[most] for r in ratios.values() if most >= 1]
    of_ceiling = [r[-1] for r in ratios.values() if -1 in r]
    low = min(effs) if effs else float("nan")
    median_eff = statistics.median(effs) if effs else float("nan")
    head = " | ".join(f"{w} workers" if w != 1 else "1 worker" for w in worker_counts)
    lines = [
        "# Input pipeline: feed rate, scaling, data wait",
        "",
        f"Machine: {cpu_model()}, {cores} cores, no GPU. Command: "
        f"`.venv/bin/python benchmarks/input_pipeline.py{' --smoke-test' if smoke else ''}` "
        f"({(time.perf_counter() - started) / 60:.1f} min).",
        "",
        "## Feed rate (samples/s), stand-in model of zero cost",
        "",
        f"Batches of {BATCH} from the `shapes` training split (class, mask, boxes, depth), "
        "augmented and collated by `InputPipeline` and dropped; a measurement times whole "
        f"epochs for at least {seconds:g} s, after the one that starts the workers, each next "
        "epoch asked for as the last one ends (as a trial does). Each configuration is "
        f"measured {rounds} time(s), in interleaved rounds (every configuration once per round, "
        "the order rotated), and the table gives the median. In brackets: scaling efficiency, "
        "rate ÷ (workers × the 1-worker rate), each round's own ratio, median over the rounds; "
        "likewise the last column. 0 workers: prepared in the training process.",
        "",
        f"| image | policy | {head} | ceiling: {most} plain processes | {most} workers ÷ "
        "ceiling |",
        "|---|---|" + "---|" * (len(worker_counts) + 2),
        *rows,
        "",
        f"Scaling efficiency at {most} worker(s) (the cores present): median {median_eff:.2f}, "
        f"lowest {low:.2f} (target ≥ 0.8). Against the machine's ceiling — {most} independent "
        "processes doing the same work without a DataLoader — the pipeline delivers "
        + (f"{statistics.median(of_ceiling):.0%} (median; lowest {min(of_ceiling):.0%})"
           if of_ceiling else "–")
        + f". The ceiling over {most} × the 1-worker rate (medians), median "
        + (f"{statistics.median([r[-1] / (most * r[1]) for r in rates.values() if r.get(1)]):.2f}"
           if most >= 1 else "–")
        + ", says how far this machine's cores run side by side at all.",
        "",
    ]
    if most >= 1:
        per_worker = {k: r[1] for k, r in rates.items()}
        lines += [
            "Projection to a 16-core GPU host (15 loader workers, one core feeding the GPU, "
            f"the lowest efficiency measured here, {low:.2f}): "
            + "; ".join(f"{size}×{size} {name}: ~{per_worker[(size, name)] * 15 * low:,.0f}/s"
                        for (size, name) in per_worker if name in ("flipcrop", "randaugment")
                        or name.startswith("searched")) + ". Measured on a GPU host by "
            "benchmarks/gpu.py.",
            "",
        ]
    lines += [
        "## Data wait of a default trial on this CPU",
        "",
        f"The default space's dataset and budget, {trial_epochs} epoch(s), reference policy "
        "(flipcrop), seed 0; the model on `threads` torch threads. Data wait: the share "
        "of each epoch's wall time the step waited for its next batch (with 0 workers the "
        f"whole preparation). Each setting is run {rounds} time(s), interleaved; the table "
        "gives the median of each epoch's fraction and of the trial time. The last row leaves "
        "a core to the worker.",
        "",
        "| loader workers | model threads | data wait per epoch | trial time |",
        "|---|---|---|---|",
        *(f"| {w} | {t} | {', '.join(f'{x:.1%}' for x in wait)} | {secs:.1f} s |"
          for (w, t), (wait, secs) in waits.items()),
        "",
        "The workers are started when the trial is set up, on the first epoch's batches, and "
        "start on each next epoch's during the evaluation, so that an epoch begins with "
        "batches ready. The first epoch still waits for the workers' start-up: a fresh "
        f"one-worker pipeline hands over its first batch {first * 1000:.0f} ms after it is asked "
        f"for (median of {repeats}), of which preparing the batch takes {prepared * 1000:.0f} ms "
        "(in-process); the rest is the worker's start (forked from the forkserver, the "
        "dataset's shared arrays received, the policy compiled). That is a one-off per trial, "
        "a larger share of these 1.5-second epochs than of a real trial's. (A process's first "
        "trial also starts the forkserver, a few seconds that count in its set-up, not in "
        "its data wait.)",
        "",
        "## GPU",
        "",
        "Images/s with mixed precision and channels_last, GPU utilisation, data wait and trials "
        "per hour with 1, 2 and 4 trials sharing one GPU: **not measured** here (no GPU was "
        "lent); `benchmarks/gpu.py` measures them in at most 8 minutes where one is.",
        "",
    ]
    write_result(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
