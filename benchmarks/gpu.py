"""One GPU host in at most 8 minutes: ResNet-18 training at 224×224, the GPU's step rate
against the host's feed rate, and trials per hour with 1, 2 and 4 trials sharing the GPU.

Writes benchmarks/results/gpu.md (or --out). Without a GPU (``torch.cuda.is_available()``
false) it prints one line saying so, writes nothing and exits 0, with or without
``--smoke-test``. On a GPU host it trains on the ``shapes`` dataset (every task: class, mask,
boxes, depth; ``SIZES``: 1,024 distinct training images of 224×224, each shown 8 times an
epoch under its own augmentation draws, so 8,192 per epoch; batch 128), with ``cores`` = the
CPUs this process may use and W = min(15, cores − 1) loader workers, and measures:

  1. **ResNet-18 at 224×224, mixed precision** (``budget.encoder = "resnet18"``, no
     pretrained weights; ``budget.amp``: bfloat16 autocast; channels_last is automatic on
     CUDA), flipcrop, ``cores`` CPU threads, ``loader_workers`` = W and = 0 (the latter over
     the 1,024 distinct images an epoch): training images/s, GPU utilisation (mean / max of
     ``nvidia-smi`` samples every 0.25 s), the data-wait fraction of every epoch
     (``Trainer.data_wait``), memory. A fresh ``Trainer`` each: one warm-up epoch (starting
     the workers), then timed epochs until 8 s have passed, and a validation pass.
  2. **The GPU's step alone against the host's feed**, per policy (``none``, flipcrop, and a
     searched-looking policy with per-task views, ``benchmarks/input_pipeline.SEARCHED``):
       * step alone: a ``Trainer`` whose input pipeline hands out 4 batches prepared under the
         policy and already on the GPU, so that an epoch times the step only (forward, losses,
         backward, optimizer; one encoder pass per view); flipcrop has one view, as ``none``;
       * host feed: ``benchmarks/input_pipeline.py``'s ``feed_rate`` (``InputPipeline`` with W
         workers, the same data, policy and batch, a consumer of zero cost);
       * training with W workers (flipcrop: part 1's row), its GPU utilisation and data wait.
     Target: where feed ≥ step, GPU utilisation ≥ 90% while training; where feed < step it
     cannot be met, and feed ÷ step is the share of the step rate the host delivers (the gap
     is what a GPU-side augmentation backend would have to close).
  3. **Trials per hour with K = 1, 2, 4 trials sharing the GPU**: K fresh processes, each one
     flipcrop trial of part 1's model (3 epochs), ``--threads`` = cores // K and
     ``loader_workers`` = max(1, cores // K − 1); their trials start together.
     Target: 4 trials at once give ≥ 3× the trials/hour of 1.
  4. If time is left: the default space's ``small`` encoder at 128×128 (batch 64; flipcrop and
     ``none``, mixed precision off and on; ``loader_workers`` auto), as before.

The Markdown starts with the targets, met / not met, and names the device, CPU, cores,
/dev/shm, torch, the command line, the time each measurement took and the whole run's.

Time: a guard (``TIME_LIMIT_S`` = 480 s, ``--time-limit``) starts a measurement only if its
conservative estimate (from the rates measured so far, else ``GUESS``) fits in the time left
less ``RESERVE_S``; otherwise it skips it and the Markdown says so. Trial processes still
running at the limit are stopped. The measurements run in order of priority: part 1; part 2's
step alone and the feed of flipcrop and searched; part 3; part 2's training rows and the feed
of ``none``; part 4. Planned on an H200 with 16 cores (step ≈ 3,000–6,000 img/s; feed ≈
150–400 samples/s per core): setup ≤ 30 s (imports, CUDA, generating 1,296 images of
224×224), part 1 ≤ 60 s, part 2's first half ≤ 60 s, part 3 ≤ 150 s, part 2's second half
≤ 60 s, part 4 ≤ 60 s: about 4–6 minutes, at most 8.

    .venv/bin/python benchmarks/gpu.py               # ≤ 8 minutes on a GPU host
    .venv/bin/python benchmarks/gpu.py --smoke-test  # tiny sizes (still needs a GPU)
    .venv/bin/python benchmarks/gpu.py --smoke-test --device cpu --concurrency 1
        # a dry run of every code path on the CPU (under a minute on 2 cores): no GPU numbers
"""

# torch and policysearch are imported inside the functions, so that the no-GPU answer and the
# trial processes pay only for what they use.
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _machine import cpu_model, peak_rss_mib, write_result  # benchmarks/_machine.py

STARTED = time.perf_counter()  # the whole run's clock starts before torch is imported
HERE = Path(__file__).resolve().parent
NO_GPU = ("gpu.py: no GPU available (torch.cuda.is_available() is false): nothing measured, "
          "nothing written")
TIME_LIMIT_S = 480.0
RESERVE_S = 15.0  # kept back for the last evaluation, writing the Markdown, stopping workers
CONCURRENCY = (1, 2, 4)
SAMPLE_EVERY_S = 0.25
ENCODER = "resnet18"
UTIL_TARGET = 90.0  # % GPU utilisation where the host feeds at least the step rate
SCALING_TARGET = 3.0  # trials/hour of 4 at once ÷ that of 1
READY_BATCHES = 4  # batches on the GPU that the step-alone measurement cycles through


@dataclass(frozen=True)
class Sizes:
    """What one run trains on. ``repeat``: each distinct training image appears this many
    times an epoch (each time under its own augmentation draws: the draws are keyed by the
    sample's index), so that epochs are long enough for the pipeline without generating and
    holding more images."""

    image: int
    n_train: int
    n_val: int
    n_test: int
    repeat: int
    batch: int
    min_timed_s: float  # training: timed epochs until this much time has passed (≥ 1 epoch)
    min_step_s: float  # the step alone: the same
    feed_epochs: int  # feed_rate: timed epochs after the one that starts the workers
    trial_epochs: int  # part 3
    small_image: int  # part 4
    small_n_train: int
    small_repeat: int
    small_batch: int


SIZES = Sizes(image=224, n_train=1024, n_val=256, n_test=16, repeat=8, batch=128,
              min_timed_s=8.0, min_step_s=4.0, feed_epochs=1, trial_epochs=3,
              small_image=128, small_n_train=512, small_repeat=4, small_batch=64)
SMOKE_SIZES = Sizes(image=32, n_train=48, n_val=16, n_test=8, repeat=2, batch=16,
                    min_timed_s=0.0, min_step_s=0.0, feed_epochs=1, trial_epochs=1,
                    small_image=32, small_n_train=48, small_repeat=1, small_batch=16)
# Rates assumed (conservatively) before one is measured, images or samples per second, for the
# guard's estimates; measured rates replace them as the run goes.
GUESS = {"train": 800.0, "serial": 60.0, "step": 1000.0, "feed": 800.0, "small": 800.0}
START_WORKERS_S = 10.0  # starting W loader workers (forkserver, dataset in shared memory)
START_PROCESS_S = 25.0  # a trial process: interpreter, torch, CUDA context, dataset


# --- the dataset, repeated ----------------------------------------------------------------------

class Repeated:
    """A split seen ``times`` over: sample ``i`` is ``split[i % len(split)]``. Picklable (a
    generated split travels to loader workers in shared memory, this wrapper by value)."""

    def __init__(self, split: Any, times: int):
        self.split, self.times = split, times

    def __len__(self) -> int:
        return len(self.split) * self.times

    def __getitem__(self, i: int) -> Any:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.split[i % len(self.split)]


class RepeatedTrain:
    """A dataset whose training split is ``Repeated``; the other splits as they are."""

    def __init__(self, dataset: Any, times: int):
        self.dataset, self.name, self.tasks = dataset, dataset.name, dataset.tasks
        self.train = Repeated(dataset.split("train"), times)

    def split(self, name: str) -> Any:
        return self.train if name == "train" else self.dataset.split(name)


def make_space(sizes: Sizes, *, small: bool = False, **budget: Any) -> Any:
    """The default search space with this run's dataset and budget (part 1–3's ResNet-18, or
    part 4's default ``small`` encoder)."""
    from policysearch.config import load_space

    space = load_space("default")
    data = space.dataset_options.model_copy(update={
        "n_train": sizes.small_n_train if small else sizes.n_train, "n_val": sizes.n_val,
        "n_test": sizes.n_test})
    update: dict[str, Any] = (
        {"image_size": sizes.small_image, "batch_size": sizes.small_batch} if small else
        {"image_size": sizes.image, "batch_size": sizes.batch, "encoder": ENCODER,
         "encoder_weights": None, "amp": True})
    new_budget = space.budget.model_copy(update={**update, **budget})
    return space.model_copy(update={"name": "gpu", "dataset_options": data,
                                    "budget": new_budget})


def write_space(space: Any, path: Path) -> Path:
    """``space`` as a search-space file, for the trial processes."""
    import yaml

    path.write_text(yaml.safe_dump(space.canonical(), sort_keys=False))
    return path


# --- GPU sampling -------------------------------------------------------------------------------

def _smi_id() -> str:
    """nvidia-smi's id of torch's ``cuda:0``: the first entry of CUDA_VISIBLE_DEVICES (an
    index or a UUID), else 0."""
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
              if d.strip()]
    return listed[0] if listed else "0"


def read_gpu() -> tuple[float | None, float | None]:
    """(utilisation %, memory used MiB over all processes) of the GPU now; None where no tool
    says."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run(
                [smi, f"--id={_smi_id()}", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            util, used = (float(x) for x in done.stdout.strip().splitlines()[0].split(","))
            return util, used
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    try:
        import torch

        return float(torch.cuda.utilization()), None
    except Exception:  # no pynvml, no GPU, a driver without NVML …
        return None, None


class GpuSampler:
    """Reads utilisation and memory every ``SAMPLE_EVERY_S`` in a thread; ``samples`` holds
    (time, util, MiB) with None where nothing could be read."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.samples: list[tuple[float, float | None, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            util, used = read_gpu()
            self.samples.append((time.time(), util, used))
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """Mean and max utilisation and max memory used within [start, end]: text, and the mean
        as a number (None where nothing was read)."""
        inside = [s for s in self.samples
                  if (start is None or s[0] >= start) and (end is None or s[0] <= end)]
        utils = [u for _, u, _ in inside if u is not None]
        used = [m for _, _, m in inside if m is not None]
        mean = statistics.mean(utils) if utils else None
        return {"util": mean,
                "util_text": f"{mean:.0f}% / {max(utils):.0f}%" if utils else "—",
                "used_max": f"{max(used):,.0f}" if used else "—",
                "samples": len(inside)}


# --- the guard ----------------------------------------------------------------------------------

class OutOfTime(Exception):
    """A measurement stopped at the time limit."""


class Guard:
    """The wall-clock guard: a measurement starts only if its estimate fits before the limit
    (less ``RESERVE_S``); what was skipped or failed, and how long each part took, is noted."""

    def __init__(self, limit_s: float, *, strict: bool, started: float):
        self.started = started
        self.limit_s = limit_s
        self.strict = strict  # the CPU dry run: an error ends the script (the tests see it)
        self.notes: list[str] = []
        self.timings: list[tuple[str, float]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.limit_s - RESERVE_S - self.elapsed()

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {text}", file=sys.stderr, flush=True)

    def run(self, what: str, estimate_s: float, measure: Callable[[], Any]) -> Any:
        """``measure()`` if ``estimate_s`` fits in the time left, else None (noted as
        skipped); on a GPU run a failure is noted and gives None, so that one failing
        measurement does not lose the others."""
        left = self.left()
        if estimate_s > left:
            self.notes.append(f"{what}: **skipped** at {self.elapsed():.0f} s (estimated "
                              f"{estimate_s:.0f} s; {max(0.0, left):.0f} s left)")
            self.log(self.notes[-1])
            return None
        start = self.elapsed()
        self.log(f"{what} (estimated ≤ {estimate_s:.0f} s)")
        try:
            result = measure()
        except Exception as err:
            if self.strict and not isinstance(err, OutOfTime):
                raise
            first = (str(err).strip().splitlines() or [""])[0][:300]
            self.notes.append(f"{what}: **failed** after {self.elapsed() - start:.0f} s: "
                              f"{type(err).__name__}: {first}")
            self.log(self.notes[-1])
            return None
        finally:
            self.timings.append((what, self.elapsed() - start))
            release_gpu()
        self.log(f"{what}: {self.elapsed() - start:.1f} s")
        return result


def release_gpu() -> None:
    """Between measurements: collect the last one's objects and give its cached GPU memory
    back (trial processes share the GPU)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- measurements -------------------------------------------------------------------------------

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    """Peak memory torch allocated on the GPU (the CPU dry run: peak resident memory)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


@dataclass
class Run:
    """One run's settings, datasets, policies and what it measured so far."""

    device: str
    sizes: Sizes
    cores: int
    guard: Guard
    dataset: Any = None  # part 1–3's, training split repeated
    distinct: Any = None  # the same, each training image once an epoch
    tasks: dict[str, str] = field(default_factory=dict)
    task_objects: list[Any] = field(default_factory=list)
    policies: dict[str, Any] = field(default_factory=dict)
    budget: Any = None
    rates: dict[str, float] = field(default_factory=dict)  # measured, for later estimates
    # Part 2, by policy (None: skipped or failed).
    steps: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    feeds: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    trainings: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def workers(self) -> int:
        """W: the loader workers of one trial that has the whole host."""
        return min(15, max(1, self.cores - 1))

    def threads(self, k: int) -> int:
        """Torch CPU threads of each of ``k`` trials. The CPU dry run gives the model one
        thread: its numbers mean nothing, and threads spinning against the loader workers on
        a small machine only slow the tests down."""
        return max(1, self.cores // k) if self.cuda else 1

    def epoch_images(self, distinct: bool = False) -> int:
        return self.sizes.n_train * (1 if distinct else self.sizes.repeat)

    def rate(self, key: str) -> float:
        """A rate measured so far, else the guess."""
        return self.rates.get(key, GUESS[key])


def estimate_training(run: Run, images: int, rate: float, workers: int,
                      min_timed_s: float) -> float:
    """Seconds a training measurement may take: starting its workers, a warm-up epoch, timed
    epochs until ``min_timed_s`` (overshooting by up to one) and the evaluation."""
    epoch = images / rate
    return (START_WORKERS_S if workers else 2.0) + 2 * epoch + max(min_timed_s, epoch) + 5.0


def timed_epochs(run: Run, trainer: Any, min_s: float) -> tuple[int, float, int]:
    """Train epochs until ``min_s`` have passed (at least one), or until another would not
    fit in the time left; (epochs, seconds, images)."""
    seen, epochs = trainer.images_seen, 0
    start = time.perf_counter()
    while True:
        trainer.train_epoch()
        epochs += 1
        _sync(run.device)
        spent = time.perf_counter() - start
        per_epoch = spent / epochs
        if spent >= min_s or trainer.done or run.guard.left() < 1.5 * per_epoch + 5.0:
            return epochs, spent, trainer.images_seen - seen


def measure_training(run: Run, policy: Any, dataset: Any, budget: Any, *, workers: int | str,
                     threads: int, min_s: float) -> dict[str, Any]:
    """A fresh Trainer: one warm-up epoch (first kernels, allocator, starting the workers),
    then timed epochs (GPU sampled) and a timed validation pass."""
    import torch

    from policysearch.training import Trainer

    budget = budget.model_copy(update={"epochs": 1000, "loader_workers": workers})
    built = time.perf_counter()
    with Trainer(policy, dataset, budget, seed=0, device=run.device, threads=threads) as trainer:
        trainer.train_epoch()
        _sync(run.device)
        warm_s = time.perf_counter() - built
        if run.cuda:
            torch.cuda.reset_peak_memory_stats()
        with GpuSampler(enabled=run.cuda) as sampler:
            epochs, train_s, images = timed_epochs(run, trainer, min_s)
        start = time.perf_counter()
        trainer.evaluate()
        _sync(run.device)
        val_s = time.perf_counter() - start
        return {"rate": images / train_s, "val_rate": len(trainer.evaluation) / val_s,
                "wait": list(trainer.data_wait), "epochs": epochs, "warm_s": warm_s,
                "workers": trainer.loader_workers, "threads": threads,
                "peak_mib": peak_memory_mib(run.device), **sampler.summary()}


class ReadyBatches:
    """Stands in for a Trainer's ``InputPipeline``: every request is answered at once with one
    of a few batches prepared beforehand and already on the device."""

    def __init__(self, batches: list[dict[str, Any]]):
        self.batches = batches

    def epoch(self, requests: list[Any]) -> Iterator[dict[str, Any]]:
        for i in range(len(requests)):
            yield self.batches[i % len(self.batches)]

    def prefetch(self, requests: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def measure_step(run: Run, policy: Any) -> dict[str, Any]:
    """Images/s of the training step alone under ``policy``: a Trainer (0 loader workers)
    whose pipeline is replaced by ``READY_BATCHES`` batches augmented under ``policy`` and
    moved to the device beforehand; a warm-up epoch, then timed epochs (GPU sampled)."""
    import numpy as np
    import torch

    from policysearch.input_pipeline import BatchRequest
    from policysearch.training import Trainer

    budget = run.budget.model_copy(update={"epochs": 1000, "loader_workers": 0})
    dev = torch.device(run.device)
    with Trainer(policy, run.dataset, budget, seed=0, device=run.device,
                 threads=run.threads(1)) as trainer:
        order = np.random.default_rng(0).permutation(len(trainer.train))
        key = policy.augmentation_key()
        ready = []
        for b in range(READY_BATCHES):
            indices = tuple(int(i) for i in order[b * budget.batch_size:
                                                  (b + 1) * budget.batch_size])
            batch = trainer.pipeline.batches.prepare(
                BatchRequest(epoch=0, indices=indices, seed=0, phase=policy, key=key))
            ready.append({"images": {v: x.to(dev) for v, x in batch["images"].items()},
                          "targets": {t.name: t.to_device(batch["targets"][t.name], dev)
                                      for t in trainer.tasks},
                          "views": batch["views"], "size": batch["size"]})
        trainer.pipeline.close()
        trainer.pipeline = ReadyBatches(ready)  # type: ignore[assignment]
        trainer.train_epoch()  # warm-up
        _sync(run.device)
        with GpuSampler(enabled=run.cuda) as sampler:
            epochs, spent, images = timed_epochs(run, trainer, run.sizes.min_step_s)
        return {"rate": images / spent, "epochs": epochs, "views": len(ready[0]["images"]),
                **sampler.summary()}


def measure_feed(run: Run, policy: Any) -> dict[str, Any]:
    """The host's feed rate (samples/s) under ``policy`` with W workers:
    ``benchmarks/input_pipeline.py``'s ``feed_rate`` at this run's batch size."""
    import input_pipeline  # benchmarks/input_pipeline.py, beside this script

    input_pipeline.BATCH = run.sizes.batch  # feed_rate's batch: the trainings'
    rate = input_pipeline.feed_rate(run.dataset.split("train"), run.task_objects, policy,
                                    run.workers, run.sizes.feed_epochs)
    return {"rate": rate}


# --- trials sharing the GPU ---------------------------------------------------------------------

def one_trial(space_file: Path, device: str, threads: int, workers: int, repeat: int,
              seed: int) -> None:
    """(Run in a subprocess.) Get ready (imports, CUDA context, dataset), say ``ready`` and
    wait for a line on stdin, so that K processes start their trials together; then one
    reference trial on ``device``; prints JSON."""
    started = time.time()
    import torch

    from policysearch.config import load_space
    from policysearch.data.loading import load_dataset
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup
    from policysearch.training import train_policy

    torch.zeros(1, device=device)  # the CUDA context, before the trial's clock starts
    space = load_space(space_file)
    dataset = RepeatedTrain(load_dataset(space), repeat)
    tasks, _ = task_setup(dataset)
    policy = reference_policy(space.reference, tasks)
    budget = space.budget.model_copy(update={"loader_workers": workers})
    ready = time.time()
    print("ready", flush=True)
    sys.stdin.readline()
    trial_start = time.time()
    result = train_policy(policy, dataset, budget, seed=seed, device=device, threads=threads)
    trial_end = time.time()
    print(json.dumps({"ready_s": ready - started, "start": trial_start, "end": trial_end,
                      "trial_s": result.seconds, "images": result.train_images,
                      "wait": statistics.mean(result.data_wait),
                      "workers": result.loader_workers, "peak_mib": peak_memory_mib(device)}))


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def concurrent_trials(run: Run, space_file: Path, k: int) -> dict[str, Any]:
    """K processes, each one trial on the device; once all are ready, their trials start
    together. Trials per hour. Processes still running at the time limit are stopped."""
    threads = run.threads(k)
    workers = max(1, run.cores // k - 1)
    cmd = [sys.executable, __file__, "--one-trial", str(space_file), "--device", run.device,
           "--threads", str(threads), "--loader-workers", str(workers),
           "--repeat", str(run.sizes.repeat)]
    deadline = time.perf_counter() + run.guard.left() + RESERVE_S / 2
    results = []
    with contextlib.ExitStack() as stack:
        # stderr to files: a pipe nobody reads before "ready" could fill and block a child.
        errs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(k)]
        sampler = stack.enter_context(GpuSampler(enabled=run.cuda))
        launched = time.time()
        procs = [subprocess.Popen([*cmd, "--seed", str(i)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=errs[i], text=True)
                 for i in range(k)]
        stack.callback(_stop, procs)
        for proc in procs:  # each says "ready" (or ends early, failing: reported below)
            assert proc.stdout is not None and proc.stdin is not None
            if not select.select([proc.stdout], [], [], max(0.0, deadline -
                                                            time.perf_counter()))[0]:
                raise OutOfTime(f"the trial processes were not ready at the time limit "
                                f"({k} at once)")
            proc.stdout.readline()
        for proc in procs:  # go, all at once
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write("go\n")  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                raise OutOfTime(f"the trial processes ({k} at once) were stopped at the time "
                               "limit") from None
        done = time.time()
        for proc, err in zip(procs, errs, strict=True):
            out = proc.stdout.read()  # type: ignore[union-attr]
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"a trial process failed ({proc.returncode}): "
                                   f"{err.read()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    first, last = min(r["start"] for r in results), max(r["end"] for r in results)
    return {"k": k, "threads": threads, "workers": workers,
            "trial_s": statistics.mean(r["trial_s"] for r in results),
            "per_hour": k / (last - first) * 3600,
            "per_hour_wall": k / (done - launched) * 3600,
            "ready_s": statistics.mean(r["ready_s"] for r in results),
            "img_rate": sum(r["images"] for r in results) / (last - first),
            "wait": statistics.mean(r["wait"] for r in results),
            "peak_mib": max(r["peak_mib"] for r in results),
            "span_s": last - first, **sampler.summary(first, last)}


# --- the parts ----------------------------------------------------------------------------------

def part_workers(run: Run) -> dict[int, dict[str, Any]]:
    """Part 1: ResNet-18, flipcrop, amp, with W and with 0 loader workers."""
    rows: dict[int, dict[str, Any]] = {}
    flipcrop = run.policies["flipcrop"]
    for workers in (run.workers, 0):
        distinct = workers == 0
        images = run.epoch_images(distinct)
        rate = run.rate("train") if workers else run.rate("serial")
        row = run.guard.run(
            f"part 1: {ENCODER}, flipcrop, {_workers(workers)}",
            estimate_training(run, images, rate, workers, run.sizes.min_timed_s),
            lambda w=workers, d=distinct: measure_training(
                run, flipcrop, run.distinct if d else run.dataset, run.budget, workers=w,
                threads=run.threads(1), min_s=run.sizes.min_timed_s))
        if row is not None:
            rows[workers] = row
            run.rates["train" if workers else "serial"] = row["rate"]
    return rows


# Views per policy: the step encodes each view once; the feed augments each view.
VIEWS = {"none": 1, "flipcrop": 1, "searched": 3}


def part_step_and_feed(run: Run, *, extras: bool) -> None:
    """Part 2, into ``run.steps``, ``run.feeds``, ``run.trainings``. First the step alone (none,
    searched; flipcrop's batches have one view, as none's: the same step) and the host's feed
    of flipcrop and searched; with ``extras`` (after part 3, if time is left) training with W
    workers (searched, none) and the feed of none."""
    sizes, epoch = run.sizes, run.epoch_images()
    if not extras:
        for name in ("none", "searched"):
            step = run.steps[name] = run.guard.run(
                f"part 2: the step alone, {name}",
                estimate_training(run, epoch, run.rate("step") / VIEWS[name], 0,
                                  sizes.min_step_s),
                lambda n=name: measure_step(run, run.policies[n]))
            if step is not None and name == "none":
                run.rates["step"] = step["rate"]
        run.steps["flipcrop"] = run.steps["none"]
    for name in ("none",) if extras else ("flipcrop", "searched"):
        feed = run.feeds[name] = run.guard.run(
            f"part 2: host feed, {name}",
            START_WORKERS_S + (1 + sizes.feed_epochs) * epoch / (run.rate("feed") / VIEWS[name]),
            lambda n=name: measure_feed(run, run.policies[n]))
        if feed is not None and name == "flipcrop":
            run.rates["feed"] = feed["rate"]
    if not extras:
        return
    for name in ("searched", "none"):
        measured = [r["rate"] for r in (run.steps.get(name), run.feeds.get(name))
                    if r is not None]
        rate = min(measured) if len(measured) == 2 else run.rate("train") / VIEWS[name]
        run.trainings[name] = run.guard.run(
            f"part 2: training with {_workers(run.workers)}, {name}",
            estimate_training(run, epoch, rate, run.workers, sizes.min_timed_s),
            lambda n=name: measure_training(
                run, run.policies[n], run.dataset, run.budget, workers=run.workers,
                threads=run.threads(1), min_s=sizes.min_timed_s))


def estimate_trials(run: Run, k: int, one: dict[str, Any] | None) -> float:
    """Seconds ``k`` trials at once may take: their processes' start, and k times the span of
    one trial alone (the GPU shared: an upper bound) or, before that is known, of a trial at
    part 1's rate."""
    if one is None:
        images = run.sizes.trial_epochs * run.epoch_images()
        span = START_WORKERS_S + images / run.rate("train") + 3.0 * run.sizes.trial_epochs
        return START_PROCESS_S + k * span + 5.0
    return one["ready_s"] + 5.0 + k * one["span_s"] + 5.0


def part_trials(run: Run, space_file: Path, ks: list[int]) -> list[dict[str, Any]]:
    """Part 3: K trials at once, K in ``ks``."""
    rows: list[dict[str, Any]] = []
    for k in ks:
        one = next((r for r in rows if r["k"] == 1), None)
        row = run.guard.run(f"part 3: {k} trial{'s' if k > 1 else ''} at once",
                            estimate_trials(run, k, one),
                            lambda k=k: concurrent_trials(run, space_file, k))
        if row is not None:
            rows.append(row)
    return rows


def part_small(run: Run) -> list[tuple[str, bool, dict[str, Any]]]:
    """Part 4: the default space's small encoder, as earlier versions of this script."""
    from policysearch.data.loading import load_dataset

    sizes = run.sizes
    space = make_space(sizes, small=True)
    generate = run.guard.run("part 4: generating its dataset", 20.0,
                             lambda: RepeatedTrain(load_dataset(space), sizes.small_repeat))
    if generate is None:
        return []
    rows = []
    images = sizes.small_n_train * sizes.small_repeat
    min_s = sizes.min_timed_s / 2
    for name, amp in (("flipcrop", False), ("flipcrop", True), ("none", False), ("none", True)):
        row = run.guard.run(
            f"part 4: small encoder, {name}, amp {'on' if amp else 'off'}",
            estimate_training(run, images, run.rate("small"), run.workers, min_s),
            lambda n=name, a=amp: measure_training(
                run, run.policies[n], generate, space.budget.model_copy(update={"amp": a}),
                workers="auto", threads=run.threads(1), min_s=min_s))
        if row is not None:
            rows.append((name, amp, row))
            run.rates["small"] = min(row["rate"], run.rates.get("small", row["rate"]))
    return rows


# --- the Markdown -------------------------------------------------------------------------------

def shm_text() -> str:
    """The size of /dev/shm, where loader workers find the dataset's arrays."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return "no /dev/shm"
    return f"/dev/shm {stat.f_blocks * stat.f_frsize / 2**30:,.1f} GiB"


def _workers(n: int) -> str:
    return f"{n} loader worker{'' if n == 1 else 's'}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _waits(wait: list[float]) -> str:
    """Data wait per epoch, the warm-up epoch's in brackets."""
    return f"({_pct(wait[0])}) " + ", ".join(_pct(w) for w in wait[1:])


def _rate(row: dict[str, Any] | None) -> str:
    return "not measured" if row is None else f"{row['rate']:,.0f}"


def util_target(run: Run, feed: dict | None, step: dict | None, train: dict | None
                ) -> tuple[str, str]:
    """(what was measured, met / not met) for one policy's GPU-utilisation target."""
    if feed is None or step is None:
        return "feed or step not measured", "not measured"
    ratio = feed["rate"] / step["rate"]
    if ratio < 1:
        return (f"feed < step: feed ÷ step = {ratio:.2f} (the host delivers {ratio:.0%} of "
                f"the step rate; the gap, {1 - ratio:.0%}, is a GPU-side augmentation "
                "backend's to close)", "**not met**")
    if train is None:
        return f"feed ≥ step ({ratio:.2f}×); training not measured", "not measured"
    if train["util"] is None:
        return (f"feed ≥ step ({ratio:.2f}×); no GPU utilisation on this device",
                "not measured")
    met = train["util"] >= UTIL_TARGET
    return (f"feed ≥ step ({ratio:.2f}×): GPU utilisation {train['util']:.0f}% while training "
            f"with {_workers(run.workers)}", "**met**" if met else "**not met**")


def scaling_target(trials: list[dict[str, Any]]) -> tuple[str, str]:
    by_k = {r["k"]: r for r in trials}
    if 1 not in by_k or 4 not in by_k:
        return "1 and 4 at once not both measured", "not measured"
    ratio = by_k[4]["per_hour"] / by_k[1]["per_hour"]
    return (f"4 at once: {ratio:.2f}× the trials/hour of 1",
            "**met**" if ratio >= SCALING_TARGET else "**not met**")


def markdown(run: Run, *, generate_s: float, part1: dict[int, dict[str, Any]],
             trials: list[dict[str, Any]], small: list[tuple[str, bool, dict[str, Any]]]) -> str:
    import torch

    steps, feeds, trainings = run.steps, run.feeds, run.trainings

    sizes, budget, w = run.sizes, run.budget, run.workers
    if not run.cuda:
        device_text = ("the CPU (**a dry run of the script: these are not GPU numbers**; mixed "
                       "precision is off on the CPU whatever the tables say)")
    else:
        props = torch.cuda.get_device_properties(0)
        device_text = (f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, "
                       f"CUDA {torch.version.cuda})")
    command = shlex.join(["python", "benchmarks/gpu.py", *sys.argv[1:]])
    epoch = run.epoch_images()
    lines = [
        "# Training on one GPU",
        "",
        f"Produced by `{command}` on {device_text}; host CPU {cpu_model()}, {run.cores} cores "
        f"(W = {_workers(w)} for a trial that has them all), {shm_text()}, torch "
        f"{torch.__version__}. "
        f"Whole run: {run.guard.elapsed():.0f} s (limit {run.guard.limit_s:.0f} s).",
        "",
        f"Data: `shapes` (tasks: {', '.join(run.tasks)}), {sizes.n_train:,} distinct training "
        f"images of {sizes.image}×{sizes.image}, each {sizes.repeat} times an epoch under its "
        f"own augmentation draws ({epoch:,} per epoch), {sizes.n_val} validation images "
        f"(generating them took {generate_s:.0f} s). Model: encoder `{budget.encoder}` (no "
        f"pretrained weights) and the tasks' heads, {budget.optimizer}, batch {budget.batch_size}, "
        "mixed precision (`budget.amp`: bfloat16 autocast; channels_last on CUDA). GPU "
        f"utilisation: `nvidia-smi` every {SAMPLE_EVERY_S} s during the timed epochs, mean / max. "
        "Data wait: the share of an epoch's wall time the training step waited for its next "
        "batch (`Trainer.data_wait`), per epoch, the warm-up epoch's in brackets.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for name in ("flipcrop", "searched"):
        train = part1.get(w) if name == "flipcrop" else trainings.get(name)
        said, verdict = util_target(run, feeds.get(name), steps.get(name), train)
        lines.append(f"| {name}: GPU utilisation ≥ {UTIL_TARGET:.0f}% where the host's feed ≥ "
                     f"the GPU's step rate | {said} | {verdict} |")
    said, verdict = scaling_target(trials)
    lines.append(f"| 4 trials sharing the GPU give ≥ {SCALING_TARGET:.0f}× the trials/hour of 1 "
                 f"| {said} | {verdict} |")
    lines += [
        "",
        f"## 1. {budget.encoder} at {sizes.image}×{sizes.image}, mixed precision: loader workers",
        "",
        f"A fresh `Trainer` (flipcrop, {run.threads(1)} CPU threads) per row: one warm-up "
        "epoch (starting the workers), then timed epochs (at least one) until "
        f"{sizes.min_timed_s:.0f} s had passed, and one validation pass. With 0 workers the "
        "batches are prepared in the training process, between steps, over the "
        f"{sizes.n_train:,} distinct images an epoch.",
        "",
        "| policy | mixed precision | loader workers | training images/s | validation images/s "
        "| GPU utilisation mean / max | data wait per epoch | timed epochs | GPU memory used, "
        "max (MiB) | peak allocated by torch (MiB) |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for workers in (w, 0):
        r = part1.get(workers)
        if r is None:
            lines.append(f"| flipcrop | on | {workers} | not measured | | | | | | |")
            continue
        lines.append(f"| flipcrop | on | {workers} | {r['rate']:,.0f} | {r['val_rate']:,.0f} | "
                     f"{r['util_text']} | {_waits(r['wait'])} | {r['epochs']} | "
                     f"{r['used_max']} | {r['peak_mib']:,.0f} |")
    lines += [
        "",
        "## 2. The GPU's step alone and the host's feed",
        "",
        f"Step alone: a `Trainer` whose input pipeline hands out {READY_BATCHES} batches "
        "prepared under the policy and already on the GPU (no augmentation, collation or "
        "transfer in the time): forward, losses, backward and optimizer step, one encoder pass "
        f"per view; a warm-up epoch, then epochs (at least one) until {sizes.min_step_s:.0f} s. "
        "Host feed: "
        f"`benchmarks/input_pipeline.py`'s `feed_rate`, `InputPipeline` with {_workers(w)} over "
        f"the same data and policy, batch {sizes.batch}, a consumer of zero cost (best of "
        f"{sizes.feed_epochs} epoch(s) after the one that starts the workers). Training: a "
        f"`Trainer` with {_workers(w)} as in part 1 (flipcrop: part 1's row). The "
        "searched-looking policy is `input_pipeline.SEARCHED`: shared slots, and per-task "
        "views for seg and depth.",
        "",
        "| policy | views | GPU step alone (images/s) | GPU utilisation, step alone | host "
        f"feed, W = {w} (samples/s) | feed ÷ step | training images/s, W = {w} | GPU "
        "utilisation, training | data wait per epoch, training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("none", "flipcrop", "searched"):
        step, feed = steps.get(name), feeds.get(name)
        train = part1.get(w) if name == "flipcrop" else trainings.get(name)
        ratio = f"{feed['rate'] / step['rate']:.2f}" if feed and step else "—"
        lines.append(
            f"| {name} | {step['views'] if step else '—'} | {_rate(step)} | "
            f"{step['util_text'] if step else '—'} | {_rate(feed)} | {ratio} | {_rate(train)} | "
            f"{train['util_text'] if train else '—'} | {_waits(train['wait']) if train else '—'} |")
    lines += [
        "",
        "## 3. Trials sharing the GPU",
        "",
        f"K fresh processes, each one flipcrop trial of the model above ({sizes.trial_epochs} "
        f"epoch{'s' if sizes.trial_epochs > 1 else ''} of {epoch:,} images, a validation pass "
        "after each) with `--threads` = cores // K and `loader_workers` = max(1, cores // K − 1); "
        "once every process is ready (imports, CUDA context, dataset from the cache) their "
        "trials start together. Trials/hour: K ÷ (last trial's end − first trial's start); with "
        "start-up: K ÷ the processes' wall time. Images/s: every trial's training images ÷ the "
        "same span. Utilisation and memory are sampled over that span.",
        "",
        "| trials at once | threads each | loader workers each | process start-up, mean (s) | "
        "trial time, mean (s) | trials/hour | trials/hour with start-up | training images/s, "
        "all trials | data wait, mean | GPU utilisation mean / max | GPU memory used, max "
        "(MiB) | peak allocated by one trial (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if not trials:
        lines.append("| — | not measured | | | | | | | | | | |")
    for r in trials:
        lines.append(f"| {r['k']} | {r['threads']} | {r['workers']} | {r['ready_s']:.1f} | "
                     f"{r['trial_s']:.1f} | {r['per_hour']:,.0f} | {r['per_hour_wall']:,.0f} | "
                     f"{r['img_rate']:,.0f} | {_pct(r['wait'])} | {r['util_text']} | "
                     f"{r['used_max']} | {r['peak_mib']:,.0f} |")
    if len(trials) > 1:
        lines += ["", f"Trials/hour against {trials[0]['k']} at once: " + ", ".join(
            f"{r['k']} at once {r['per_hour'] / trials[0]['per_hour']:.2f}×"
            for r in trials[1:]) + "."]
    lines += ["", "## 4. The default small encoder", ""]
    if small:
        lines += [
            f"Encoder `small` at {sizes.small_image}×{sizes.small_image}, batch "
            f"{sizes.small_batch}, {sizes.small_n_train:,} distinct training images each "
            f"{sizes.small_repeat} times an epoch, `loader_workers` auto ({small[0][2]['workers']} "
            f"here); as part 1, timed epochs (at least one) until {sizes.min_timed_s / 2:.0f} s.",
            "",
            "| policy | mixed precision | training images/s | validation images/s | GPU "
            "utilisation mean / max | data wait per epoch | GPU memory used, max (MiB) | peak "
            "allocated by torch (MiB) |",
            "|---|---|---:|---:|---:|---|---:|---:|",
            *(f"| {name} | {'on' if amp else 'off'} | {r['rate']:,.0f} | {r['val_rate']:,.0f} | "
              f"{r['util_text']} | {_waits(r['wait'])} | {r['used_max']} | {r['peak_mib']:,.0f} |"
              for name, amp, r in small),
        ]
    else:
        lines.append("Not measured in this run (no time left, or it failed: see below).")
    lines += ["", "## The run", "", "Each measurement's time, in the order they ran; what was "
              "skipped or failed.", "",
              *(f"- {what}: {secs:.0f} s" for what, secs in run.guard.timings),
              *(f"- {note}" for note in run.guard.notes),
              f"- whole run: {run.guard.elapsed():.0f} s of the {run.guard.limit_s:.0f} s limit",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.md")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                        help="seconds; a part that would not finish in time is skipped")
    # --device cpu: a dry run of this script's logic on a machine without a GPU (its numbers
    # are no GPU numbers, and the Markdown says so); the rest are the trial processes' options.
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--one-trial", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help=argparse.SUPPRESS)  # K values, e.g. 1 for a quick dry run
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--loader-workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_trial is not None:
        one_trial(args.one_trial, args.device, args.threads, args.loader_workers, args.repeat,
                  args.seed)
        return

    import torch

    dry_run = not args.device.startswith("cuda")
    if not dry_run and not torch.cuda.is_available():
        print(NO_GPU)
        return

    guard = Guard(args.time_limit, strict=dry_run, started=STARTED)
    from input_pipeline import SEARCHED  # benchmarks/input_pipeline.py, beside this script

    from policysearch.augment import SCHEMA, Policy
    from policysearch.data.loading import load_dataset
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import make_task, task_setup

    smoke = args.smoke_test
    sizes = SMOKE_SIZES if smoke else SIZES
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    run = Run(device=args.device, sizes=sizes, cores=cores or 1, guard=guard)
    if run.cuda:
        torch.zeros(1, device=run.device)  # the CUDA context
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["POLICYSEARCH_CACHE"] = str(tmp / "cache")  # inherited by trial processes
        space = make_space(sizes)
        run.budget = space.budget
        started = time.perf_counter()
        dataset = load_dataset(space)  # generated once here; the trial processes read it
        generate_s = time.perf_counter() - started
        guard.log(f"setup: dataset generated in {generate_s:.0f} s")
        run.dataset, run.distinct = RepeatedTrain(dataset, sizes.repeat), dataset
        run.tasks, _ = task_setup(dataset)
        run.task_objects = [make_task(spec) for spec in dataset.tasks]
        run.policies = {name: reference_policy(name, run.tasks) for name in ("none", "flipcrop")}
        run.policies["searched"] = Policy.from_dict(
            {"schema": SCHEMA, "tasks": run.tasks, **SEARCHED}, source="gpu.py")
        ks = [int(k) for k in args.concurrency.split(",")]
        guard.timings.append(("setup: imports, CUDA context, the dataset", guard.elapsed()))
        space_file = write_space(make_space(sizes, epochs=sizes.trial_epochs),
                                 tmp / "space.yaml")

        # In the order of priority: what the guard skips for lack of time comes last.
        part1 = part_workers(run)
        part_step_and_feed(run, extras=False)
        trials = part_trials(run, space_file, ks)
        part_step_and_feed(run, extras=True)
        small = part_small(run)

    write_result(args.out, markdown(run, generate_s=generate_s, part1=part1, trials=trials,
                                    small=small))


if __name__ == "__main__":
    main()
