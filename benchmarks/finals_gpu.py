"""The protocol's final run on one GPU host, in calls of at most 8 minutes (``--time-limit``).

The same protocol as benchmarks/finals.py (benchmarks/protocol.yaml: its final space, search
trials, study seed, finalist race, contenders, ablations, seed count, statistics and target),
run on a GPU with these differences, all fixed here before any GPU run:

  * its own test split: the generator seed is the protocol's ``final_seed`` + ``SEED_OFFSET``
    (train, validation and test all new, and not the CPU final run's data), so the CPU run's
    test split is scored once;
  * ``--parallel K`` (default 4) trainings share the GPU in the benchmark: K processes that
    each train one seed's contenders, then one call that reuses every stored run and writes
    the table (it trains only what is missing: the best contender's ablation when a seed's own
    best contender differed from the table's). The search runs one trial at a time, as on the
    CPU: K workers would start up to K − 1 trials beyond the target, past the cost cap;
  * the protocol's budget (image size, epochs, batch, learning rate, encoder) as it stands:
    it was chosen and checked on development data (every head learns at it:
    results/heads_learn.md); 14 seeds × 13 contenders + 10 search trainings in 8 minutes
    leave no room for larger images, and a larger budget would be a configuration that no
    development run has checked.

Each call stops its trainings at the time limit and exits 0 saying so; the next call
continues (the search's journal and the benchmark's stored runs resume), on the same GPU and
CPU model (``machine.json``). It enters its ledger row before its first training and fills in
the outcome when the table is written, to ``benchmarks/results/final_<dataset>_v<version>_gpu.md``.
Without a GPU it prints one line and exits 0, writing nothing.

    .venv/bin/python benchmarks/finals_gpu.py --dataset shapes         # ≤ 8 min a call
    .venv/bin/python benchmarks/finals_gpu.py --smoke-test --device cpu  # every code path, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import finals  # benchmarks/finals.py, beside this script

SEED_OFFSET = 10  # the GPU run's generator seed: final_seed + 10
TIME_LIMIT_S = 480
RESERVE_S = 30  # for writing the table once every training is done


def _ledger_key(version: int, dataset: str) -> str:
    return f"final run on a GPU, protocol v{version}, `{dataset}`"


def _gpu_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "no GPU (smoke test)"


def _machine(work: Path, device: str) -> str:
    """CPU model and GPU of this host; a chunk on another of either is refused."""
    cpu = finals._machine(work)
    gpu = _gpu_name(device)
    path = work / "gpu.json"
    if path.exists():
        started = json.loads(path.read_text())["gpu"]
        if started != gpu:
            finals._refuse(f"this run started on {started!r}, this host has {gpu!r} ({path})")
    else:
        path.write_text(json.dumps({"gpu": gpu}) + "\n")
    return f"{cpu}, {gpu}"


class Clock:
    """The time left in this call; a step that does not finish in it is stopped."""

    def __init__(self, limit_s: float):
        self.end = time.monotonic() + limit_s

    def left(self) -> float:
        return self.end - time.monotonic()


def _start(args: list[str]) -> subprocess.Popen:
    print("$ policysearch " + " ".join(args), flush=True)
    return subprocess.Popen([sys.executable, "-m", "policysearch", *args], cwd=finals.ROOT,
                            start_new_session=True)


def _wait_all(procs: list[subprocess.Popen], clock: Clock) -> bool:
    """Wait for every process until the clock runs out; stop them all then. True if all
    finished with status 0; a failure stops the call (exit status 1)."""
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, clock.left()))
        except subprocess.TimeoutExpired:
            for other in procs:
                if other.poll() is None:
                    os.killpg(other.pid, 15)
            for other in procs:
                try:
                    other.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(other.pid, 9)
            return False
    failed = [p for p in procs if p.returncode != 0]
    if failed:
        print(f"finals_gpu.py: {len(failed)} step(s) failed (exit status "
              f"{failed[0].returncode}); nothing written", file=sys.stderr)
        raise SystemExit(1)
    return True


def benchmark_seeds(policy: Path, search: Path, count: int) -> list[int]:
    """The benchmark's seeds, as ``policysearch benchmark --seed 1 --seeds count`` picks them
    (the seeds the policy was selected on left out)."""
    from policysearch.augment import load_policy
    from policysearch.evaluation.benchmark import benchmark_seeds as seeds_from
    from policysearch.evaluation.benchmark import selection_seeds
    from policysearch.search.driver import load_study_records

    records = load_study_records(search, None, None)
    return seeds_from(1, count, selection_seeds(load_policy(policy), records, str(policy)))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--parallel", type=int, default=4, help="trainings sharing the GPU")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                        help="seconds this call may run (default %(default)s)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu only with --smoke-test")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny sizes and 2 seeds in a temporary folder; no ledger row")
    parser.add_argument("--out", type=Path, help="Markdown file to write (a .png beside it)")
    parser.add_argument("--work", type=Path, help="folder of the search and benchmark runs")
    parser.add_argument("--protocol", type=Path, default=finals.PROTOCOL,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke, device = args.smoke_test, args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("finals_gpu.py: no GPU available (torch.cuda.is_available() is false): nothing "
              "run, nothing written")
        return
    if device == "cpu" and not smoke:
        finals._refuse("--device cpu: only with --smoke-test (the CPU final run is finals.py)")
    clock = Clock(args.time_limit)

    protocol, entry = finals.load_protocol(args.protocol, args.dataset, smoke)
    entry["final_seed"] += SEED_OFFSET
    protocol = finals.with_entry(protocol, args.dataset, entry)
    version = protocol["version"]
    block = protocol["search"]
    seeds = 2 if smoke else protocol["seeds"]["count"]
    trials = 3 if smoke else block["trials"]
    finalists, finalist_seeds = (1, 1) if smoke else (block["finalists"],
                                                      block["finalist_seeds"])
    contenders = finals._contenders(protocol, entry)
    work = args.work or (Path(tempfile.mkdtemp(prefix="finals-gpu-smoke-")) if smoke
                         else finals.ROOT / "runs" / "finals" / f"v{version}-{args.dataset}-gpu")
    out = args.out or finals.HERE / "results" / f"final_{args.dataset}_v{version}_gpu.md"
    work.mkdir(parents=True, exist_ok=True)
    if not smoke:
        finals.refuse_a_second_run(out, version, args.dataset)
    machine = _machine(work, device)
    space = finals._final_space(protocol, args.dataset, work, smoke)
    if smoke:
        from policysearch.config import load_space

        contenders = list(dict.fromkeys([contenders[0], load_space(space).reference]))
    k = max(1, args.parallel)
    threads = max(1, len(os.sched_getaffinity(0)) // k)
    common = ["--device", device, "--threads", str(threads)]
    search, bench = work / "search", work / "benchmark"
    short = finals._short
    search_cmd = ["search", "--space", short(space), "--trials", str(trials), "--finalists",
                  str(finalists), "--finalist-seeds", str(finalist_seeds), "--seed",
                  str(block["study_seed"]), *common, "--out", short(search)]
    policy = search / "best_policy.yaml"
    bench_args = ["benchmark", "--policy", short(policy), "--search", short(search),
                  "--baselines", ",".join(contenders), *common, "--out", short(bench)]
    bench_cmd = [*bench_args, "--seeds", str(seeds), "--seed", "1"]
    command = f"python benchmarks/finals_gpu.py --dataset {args.dataset}"
    key = _ledger_key(version, args.dataset)
    if not smoke:
        finals.enter_ledger(finals.LEDGER, key, command, finals.configuration(
            entry, block, trials, finalists, finalist_seeds, contenders, seeds)
            + f"; {k} trainings sharing the GPU", machine)

    def stopped() -> None:
        print(f"finals_gpu.py: stopped at the time limit ({args.time_limit:g} s); run the same "
              "command again to continue")

    if not policy.is_file() and not _wait_all([_start(search_cmd)], clock):
        return stopped()
    pending = benchmark_seeds(policy, search, seeds)
    # One process per seed, K at a time; each trains that seed's contenders and ablations.
    while pending:
        batch, pending = pending[:k], pending[k:]
        if clock.left() < RESERVE_S or not _wait_all(
                [_start([*bench_args, "--seeds", "1", "--seed", str(s)]) for s in batch], clock):
            return stopped()
    if not _wait_all([_start(bench_cmd)], clock):
        return stopped()
    met = finals.write_result(
        out, title=f"# Final run on a GPU, protocol version {version}: `{args.dataset}`"
        + (" (smoke test: tiny sizes, not a result)" if smoke else ""),
        command=command + (" --smoke-test --device cpu" if smoke else ""),
        where=f"{machine}, {k} trainings sharing it, {threads} CPU threads each", key=key,
        entry=entry, space=space, search_cmd=search_cmd, bench_cmd=bench_cmd, bench=bench,
        cap=float(protocol["targets"]["search_cost_full_trainings"]))
    if not smoke:
        finals.finish_ledger(finals.LEDGER, key, f"**Target {'met' if met else 'not met'}** "
                              f"(`{short(out)}`)")
    print(f"wrote {short(out)} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
