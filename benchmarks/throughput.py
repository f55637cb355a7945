"""Images/s of augmentation and training, trial start-up overhead, peak memory of one trial.

Writes benchmarks/results/throughput.md (or --out). On the default search space (dataset
``shapes`` with its options, the space's budget), on the CPU with 2 torch threads:
  * images/s of the augmentation pipeline alone (``policy.transform()`` over the training
    split) for the baselines and one policy sampled from the space;
  * images/s of one training epoch under the same policies (``Trainer.train_epoch``:
    augmentation, forward, backward, optimizer step) and of a validation pass;
  * trial start-up overhead: a real Optuna search in this process (the function behind
    ``policysearch search``: ``policysearch.search.driver.search``), each trial's wall time in
    the study against the training time the trial measured itself, plus the search's one-time
    start-up and finish; once with one process and once with ``--workers 2``;
  * peak resident memory of a fresh process that runs one trial.
Search trials train fewer epochs than the budget's (``--epochs``, default 3), which makes the
overhead's share larger than in a full trial; the Markdown also projects it to the full budget.

    .venv/bin/python benchmarks/throughput.py             # ~4 minutes on 2 cores
    .venv/bin/python benchmarks/throughput.py --smoke-test
"""

# torch and policysearch are imported inside the functions: ``--workers 2`` spawns worker
# processes that import this script as their main module, and a worker of ``policysearch
# search`` imports nothing before it starts.
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import (  # benchmarks/_machine.py, beside this script
    cpu_model,
    load_average,
    peak_rss_mib,
    rss_mib,
    write_result,
)

HERE = Path(__file__).resolve().parent
THREADS = 2
BASELINE_NAMES = ("none", "flipcrop", "randaugment", "trivialaugment", "autoaugment")
FULL_TRIALS = 8  # `policysearch search`'s default --trials, to amortise one-time costs over


def make_space(tmp: Path, *, smoke: bool, epochs: int) -> tuple[Any, Path]:
    """The default search space (smoke: tiny dataset and images) with ``epochs`` epochs per
    trial, and a file holding it for the search."""
    import yaml

    from policysearch.config import load_space

    space = load_space("default")
    data = space.dataset_options
    budget = space.budget.model_copy(update={"epochs": epochs})
    if smoke:
        data = data.model_copy(update={"n_train": 32, "n_val": 16, "n_test": 16})
        budget = budget.model_copy(update={"image_size": 32})
    space = space.model_copy(update={"name": "throughput", "dataset_options": data,
                                     "budget": budget})
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space.canonical(), sort_keys=False))
    return load_space(path), path


def sampled_policy(space: Any, tasks: dict[str, str], seed: int = 0) -> Any:
    """One policy drawn uniformly from the space, as a random-sampler trial would get it."""
    from policysearch.search.space import parameters, policy_from_params

    rng = random.Random(seed)
    values: dict[str, Any] = {}
    for p in parameters(space, list(tasks)):
        if p.kind == "categorical":
            values[p.name] = rng.choice(p.choices)
        elif p.kind == "int":
            values[p.name] = rng.randint(int(p.low), int(p.high))
        else:
            values[p.name] = rng.uniform(p.low, p.high)
    return policy_from_params(space, tasks, values)


def policies(space: Any, tasks: dict[str, str]) -> list[tuple[str, Any]]:
    from policysearch.augment import get_baseline

    named = [(name, get_baseline(name, tasks)) for name in BASELINE_NAMES]
    drawn = sampled_policy(space, tasks)
    return [*named, (f"sampled: {drawn.summary()}", drawn)]


# --- augmentation and training throughput ---------------------------------------------------

def augment_rate(policy: Any, samples: list[dict], rounds: int) -> float:
    """Images/s of ``policy.transform()`` over ``samples``: the best of ``rounds`` passes."""
    augment = policy.transform(seed=0)
    augment(samples[0])
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for sample in samples:
            augment(sample)
        best = min(best, time.perf_counter() - start)
    return len(samples) / best


def epoch_rates(policy: Any, dataset: Any, budget: Any) -> dict[str, float]:
    """One fresh Trainer: its set-up time, one training epoch and one validation pass."""
    from policysearch.training import Trainer

    start = time.perf_counter()
    trainer = Trainer(policy, dataset, budget, seed=0, device="cpu", threads=THREADS)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train_epoch()
    train = time.perf_counter() - start
    start = time.perf_counter()
    trainer.evaluate()
    val = time.perf_counter() - start
    return {"setup_s": setup, "train_s": train, "val_s": val,
            "train_rate": len(trainer.train) / train, "val_rate": len(trainer.evaluation) / val}


# --- the search ------------------------------------------------------------------------------

def run_search(space_file: Path, out: Path, *, trials: int, workers: int) -> dict[str, Any]:
    """A real search (``policysearch search`` without its command line) in this process;
    returns the timings of its trials and of what happened around them."""
    from policysearch.events import SearchEvent, TrialEnded, WaitingForReference
    from policysearch.search.driver import SearchOptions, search
    from policysearch.search.optuna_study import FINISHED, load_study

    events: list[tuple[float, SearchEvent]] = []

    def progress(event: SearchEvent) -> None:
        events.append((time.time(), event))

    threads = max(1, THREADS // workers)
    options = SearchOptions(space=str(space_file), trials=trials, out=out, workers=workers,
                            threads=threads, device="cpu", seed=0)
    called = time.time()
    search(options, progress=progress)
    returned = time.time()

    study = load_study(out_dir=out, storage=None, study_name=None)
    trained = {e.trial: e.seconds for _, e in events
               if isinstance(e, TrialEnded) and e.seconds is not None}
    rows = []
    for t in sorted(study.get_trials(deepcopy=False, states=FINISHED),
                    key=lambda t: t.datetime_start):
        if t.number not in trained:
            raise SystemExit(f"trial {t.number} ({t.state.name.lower()}) reported no training "
                             "time: the overhead cannot be measured (was it pruned?)")
        rows.append({"trial": t.number, "role": t.user_attrs.get("role", "search"),
                     "worker": t.user_attrs.get("worker", "?"),
                     "start": t.datetime_start.timestamp(),
                     "end": t.datetime_complete.timestamp(), "train": trained[t.number]})
    if not rows:
        raise SystemExit("the search finished no trial")
    by_worker: dict[str, list[dict]] = {}
    for row in rows:
        by_worker.setdefault(row["worker"], []).append(row)
    # When each worker was ready to train: the first trial's start; a worker that found the
    # reference trial taken says so (progress event ``waiting_reference``) before it waits.
    ready_events = [when for when, e in events if isinstance(e, WaitingForReference)]
    startup: dict[str, float] = {}
    for worker, mine in by_worker.items():
        first = mine[0]
        if first["role"] != "reference" and ready_events:
            startup[worker] = ready_events[0] - called
        else:
            startup[worker] = first["start"] - called
        for row, nxt in zip(mine, [*mine[1:], None], strict=True):
            row["in_trial"] = row["end"] - row["start"] - row["train"]
            # From this trial's end to the same process's next trial (results written, the
            # next trial asked for); the last trial's tail is the search's finish.
            row["between"] = nxt["start"] - row["end"] if nxt else 0.0
            row["one_time_share"] = startup[worker] / len(mine)
    finish = returned - max(r["end"] for r in rows)
    for row in rows:
        row["one_time_share"] += finish / len(rows)
        row["overhead"] = row["in_trial"] + row["between"] + row["one_time_share"]
        row["share"] = row["overhead"] / (row["train"] + row["overhead"])
    wall = returned - called
    total_train = sum(r["train"] for r in rows)
    total_overhead = sum(r["overhead"] for r in rows)
    return {"workers": workers, "threads": threads, "rows": rows, "wall": wall,
            "startup": startup, "finish": finish, "train": total_train,
            "overhead": total_overhead, "share": total_overhead / (total_train + total_overhead),
            # Worker time spent neither training nor on overhead: a worker waiting for the
            # reference trial, or done while the other still trains.
            "idle": workers * wall - total_train - total_overhead}


# --- one trial in a fresh process ---------------------------------------------------------------

def one_trial(space_file: Path) -> None:
    """(Run in a subprocess.) Import what a search imports, load the dataset, train the
    reference policy once; print timings and peak memory as JSON."""
    start = time.perf_counter()
    import torch  # noqa: F401

    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup
    from policysearch.training import train_policy

    imports = time.perf_counter() - start
    space = load_space(space_file)
    start = time.perf_counter()
    dataset = load_dataset(space)
    tasks, _ = task_setup(dataset)
    data_s = time.perf_counter() - start
    ready_mib, ready_now = peak_rss_mib(), rss_mib()
    result = train_policy(reference_policy(space.reference, tasks), dataset, space.budget,
                          seed=0, device="cpu", threads=THREADS)
    print(json.dumps({"imports_s": imports, "dataset_s": data_s, "ready_mib": ready_mib,
                      "ready_now_mib": ready_now, "peak_mib": peak_rss_mib(),
                      "trial_s": result.seconds,
                      "epochs": result.epochs}))


def trial_in_fresh_process(space_file: Path) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--one-trial", str(space_file)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the one-trial process failed: {done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall}


# --- the report --------------------------------------------------------------------------------

def _n(count: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{count} {noun if count == 1 else plural}"


def _workers(run: dict) -> str:
    return "one process" if run["workers"] == 1 else f"{run['workers']} workers"


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def search_tables(runs: list[dict]) -> list[str]:
    lines = [
        "| set-up | trial | role | Optuna span (s) | training (s) | in-trial overhead (s) | "
        "to next trial (s) | one-time, amortised (s) | overhead share |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        label = f"--workers {run['workers']} --threads {run['threads']}"
        for r in run["rows"]:
            lines.append(
                f"| {label} | {r['trial']} | {r['role']} | {r['end'] - r['start']:.2f} | "
                f"{r['train']:.2f} | {r['in_trial']:.2f} | {r['between']:.2f} | "
                f"{r['one_time_share']:.2f} | {_pct(r['share'])} |")
    lines += [
        "",
        "| set-up | finished trials | search wall (s) | one-time start-up (s) | "
        "one-time finish (s) | Σ training (s) | Σ overhead (s) | overhead share | "
        "largest trial share | idle worker time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        startup = " / ".join(f"{s:.1f}" for s in run["startup"].values())
        lines.append(
            f"| --workers {run['workers']} --threads {run['threads']} | {len(run['rows'])} | "
            f"{run['wall']:.1f} | {startup} | {run['finish']:.2f} | {run['train']:.1f} | "
            f"{run['overhead']:.1f} | **{_pct(run['share'])}** | "
            f"{_pct(max(r['share'] for r in run['rows']))} | {max(0.0, run['idle']):.1f} |")
    return lines


def projection(run: dict, epochs: int, full_epochs: int, setup_s: float,
               imports_s: float) -> tuple[float, float]:
    """The overhead share of a ``full_epochs`` trial (training time per epoch as measured,
    the Trainer's set-up once), with one-time costs over ``FULL_TRIALS`` trials; without and
    with a command's interpreter start-up and imports."""
    rows = run["rows"]
    per_trial = statistics.mean(r["in_trial"] + r["between"] for r in rows)
    one_time = sum(run["startup"].values()) + run["finish"]
    train = statistics.mean((r["train"] - setup_s) / epochs * full_epochs + setup_s for r in rows)
    plain = per_trial + one_time / FULL_TRIALS
    cli = plain + imports_s / FULL_TRIALS
    return plain / (train + plain), cli / (train + cli)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "throughput.md")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per search trial (default 3; smoke test 1)")
    parser.add_argument("--trials", type=int, default=None,
                        help="finished trials per search, reference included (default 5)")
    parser.add_argument("--one-trial", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_trial is not None:
        one_trial(args.one_trial)
        return
    smoke = args.smoke_test
    epochs = args.epochs or (1 if smoke else 3)
    trials = args.trials or (2 if smoke else 5)
    rounds = 1 if smoke else 3
    load_before = load_average()

    import torch

    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.tasks import task_setup

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # A fresh dataset cache: its one-time generation is timed here, outside the search.
        os.environ["POLICYSEARCH_CACHE"] = str(tmp / "cache")
        space, space_file = make_space(tmp, smoke=smoke, epochs=epochs)
        budget = space.budget
        started = time.perf_counter()
        dataset = load_dataset(space)  # generates and caches train and val
        generate_s = time.perf_counter() - started
        tasks, _ = task_setup(dataset)
        train = dataset.split("train")
        samples = [train[i] for i in range(len(train))]
        named = policies(load_space("default").for_tasks(tasks), tasks)

        aug_rows = [(name, len(p.views()), augment_rate(p, samples, rounds))
                    for name, p in named]
        epoch_rates(named[1][1], dataset, budget)  # warm-up: first kernels, allocator
        epoch_rows = [(name, epoch_rates(p, dataset, budget)) for name, p in named]
        setup_s = statistics.median(r["setup_s"] for _, r in epoch_rows)

        # The smoke test leaves out --workers 2: each spawned worker imports torch (seconds).
        runs = [run_search(space_file, tmp / f"search-w{w}", trials=trials, workers=w)
                for w in ((1,) if smoke else (1, 2))]
        fresh = trial_in_fresh_process(space_file)
    load_after = load_average()

    full_epochs = load_space("default").budget.epochs
    projected = [projection(run, epochs, full_epochs, setup_s, fresh["imports_s"])
                 for run in runs]
    single = runs[0]
    cmd = "python benchmarks/throughput.py" + (" --smoke-test" if smoke else "")
    opts = space.dataset_options
    size = budget.image_size
    busy = ""
    if load_before is not None and load_after is not None:
        busy = (f" The 1-minute load average was {load_before:.2f} before the run and "
                f"{load_after:.2f} after it")
        busy += (" (this run's own processes included): timings were taken on a shared "
                 f"{os.cpu_count()}-core machine, with other work running beside them, and "
                 "are noisy." if load_before > 0.5 else ".")
    lines = [
        "# Throughput and trial start-up overhead (CPU)",
        "",
        f"Produced by `{cmd}` on {cpu_model()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {THREADS} torch threads (`torch.set_num_threads({THREADS})`; "
        f"with `--workers 2`, 1 thread per worker), no GPU. Default search space: dataset "
        f"`{space.dataset}`, {opts.n_train} training and {opts.n_val} validation images of "
        f"{size}×{size}, batch {budget.batch_size}, encoder `{budget.encoder}`, "
        f"{budget.optimizer}.{busy}",
        "",
        "## Images per second",
        "",
        f"Augmentation alone: `policy.transform()` over the {len(samples)} training samples "
        f"(image, mask, boxes, depth), best of {_n(rounds, 'pass')}, in the main thread. "
        "Training: one epoch of a fresh `Trainer` (augmentation, collate, forward, backward, "
        "optimizer step; after one warm-up epoch of another Trainer), and one validation pass. "
        "The augmentation share is the augmentation-alone time of the epoch's images over the "
        "epoch's time.",
        "",
        "| policy | views | augmentation images/s | training images/s | augmentation share "
        "of the epoch | validation images/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (name, views, rate), (_, er) in zip(aug_rows, epoch_rows, strict=True):
        share = len(samples) / rate / er["train_s"]
        lines.append(f"| {name} | {views} | {rate:,.0f} | {er['train_rate']:,.0f} | "
                     f"{_pct(share)} | {er['val_rate']:,.0f} |")
    lines += [
        "",
        f"A second view (the sampled policy's per-task view) runs the encoder twice. Building "
        f"a Trainer (network, optimizer, schedule) takes {setup_s:.2f} s (median).",
        "",
        "## Trial start-up overhead",
        "",
        f"A real search of the default space with {_n(epochs, 'epoch')} per trial (instead "
        f"of {full_epochs}) and {trials} finished trials, the reference included, run in this "
        "process by `policysearch.search.driver.search` (what `policysearch search` calls) on "
        "a fresh journal, with a dataset cache made before it "
        f"(generating the dataset once took {generate_s:.1f} s)"
        + ("; the smoke test runs no `--workers 2` search" if len(runs) == 1 else "")
        + ". What the columns count:",
        "",
        "- **training**: the time the trial measured itself, `TrialResult.seconds` (from the "
        "start of `Trainer(...)` to its result: network and optimizer built, every epoch "
        "trained and validated, the pruner told each epoch's Δm%). It is not stored in the "
        "study; the driver's `trial_end` progress event carries it.",
        "- **Optuna span**: the trial's `datetime_start` → `datetime_complete` in the study "
        "(asked or claimed → told).",
        "- **in-trial overhead** = span − training: suggesting the parameters (the sampler), "
        "building the policy, the storage writes of the trial's attributes, metrics and "
        "result, the dataset subset wrapper.",
        "- **to next trial**: from the trial's end to the start of the next trial of the same "
        "process: results table rewritten (single process; with workers the driver does "
        "that), the study re-read, the sampler made, the next trial asked for. The last trial "
        "of a process has none (its tail is the finish).",
        "- **one-time start-up**: the `search()` call → the first trial's start (space "
        "validated, encoder checked, dataset loaded from its cache, journal locked, study "
        "created); with workers, per worker: the call → the worker is ready (its first trial "
        "starts, or it starts waiting for the reference trial another worker runs) — worker "
        "processes are spawned, import torch, optuna and policysearch and load the dataset. "
        "**one-time finish**: the last trial's end → `search()` returns (final results, "
        "best-policy export; with workers, the workers exit). Start-up is amortised over the "
        "trials of its process, the finish over all trials.",
        "- **overhead share** of a trial = (in-trial + to next trial + one-time amortised) ÷ "
        "(that + training); of a set-up: Σ overhead ÷ (Σ training + Σ overhead) — for one "
        "process that is exactly (search wall − Σ training) ÷ search wall.",
        "- Not counted: the interpreter start-up and imports of a `policysearch search` "
        f"command ({fresh['imports_s']:.1f} s in a fresh process, below), and idle worker time "
        "(with workers: waiting for the reference trial, or done while another worker still "
        "trains), shown apart.",
        "",
        *search_tables(runs),
        "",
        f"Target: start-up overhead under 5% of trial time. Measured on {epochs}-epoch trials: "
        f"**{_pct(single['share'])}** with one process"
        + (f", **{_pct(runs[1]['share'])}** with two workers. " if len(runs) > 1 else ". ")
        + f"Projected to the budget's {full_epochs}-epoch trials (training time per epoch as "
        "measured in each set-up, the same overhead in seconds per trial, one-time costs over "
        f"{FULL_TRIALS} trials, `policysearch search`'s default): "
        + "; ".join(f"**{_pct(plain)}** with {_workers(run)} ({_pct(cli)} counting the "
                    "command's interpreter start-up and imports too)"
                    for run, (plain, cli) in zip(runs, projected, strict=True))
        + f". If the Trainer's set-up ({setup_s:.2f} s, "
        "inside the training time) were counted as start-up as well, add about "
        f"{_pct(setup_s / statistics.mean(r['train'] for r in single['rows']))} at "
        f"{_n(epochs, 'epoch')}.",
        "",
        "## One trial in a fresh process",
        "",
        f"`python benchmarks/throughput.py --one-trial SPACE` in a new interpreter: the imports "
        f"of a search, the dataset from its cache, then one trial of the reference policy "
        f"({_n(fresh['epochs'], 'epoch')}, {THREADS} threads). Peak resident memory is the "
        "process's `ru_maxrss`, so earlier work in this script does not count.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| imports (torch, optuna, policysearch's search and training) (s) | "
        f"{fresh['imports_s']:.2f} |",
        f"| dataset loaded from the cache (s) | {fresh['dataset_s']:.2f} |",
        f"| resident memory after imports and dataset (MiB) | {_mib(fresh['ready_now_mib'])} |",
        f"| peak resident memory before the trial (MiB) | {fresh['ready_mib']:,.0f} |",
        f"| **peak resident memory after one trial (MiB)** | **{fresh['peak_mib']:,.0f}** |",
        f"| the trial's training time (s) | {fresh['trial_s']:.2f} |",
        f"| the process, start to exit (s) | {fresh['wall_s']:.2f} |",
    ]
    if fresh["peak_mib"] <= fresh["ready_mib"] * 1.01:
        lines += ["", "The peak was reached before the trial, while importing (torch maps its "
                  "libraries): the trial itself stays under that high-water mark."]
    write_result(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
