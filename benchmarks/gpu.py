"""On one GPU: mixed precision on/off, training images/s, GPU utilisation and memory, and
trials per hour with 1, 2 and 4 trials sharing the GPU.

Writes benchmarks/results/gpu.md (or --out). Without a GPU (``torch.cuda.is_available()``
false) it prints one line saying so, writes nothing and exits 0, with or without
``--smoke-test``. Measures, on the default search space's ops and model with a larger
dataset and images (see ``GPU_DATA`` / ``GPU_BUDGET``):
  * training images/s of an epoch (``Trainer.train_epoch``: augmentation on the CPU, forward,
    backward and optimizer step on the GPU) with mixed precision off and on (``budget.amp``:
    bfloat16 autocast), and without augmentation (baseline ``none``) for the GPU side alone;
    validation images/s;
  * GPU utilisation and memory while training: ``nvidia-smi`` sampled in a thread (falling
    back to ``torch.cuda.utilization()``), and the peak memory torch allocated
    (``torch.cuda.max_memory_allocated``);
  * trials per hour with K = 1, 2, 4 trials at once on the GPU: K fresh processes, each
    training one reference trial on ``cuda`` with (cpu_count − 1) / K threads.

    .venv/bin/python benchmarks/gpu.py               # ~4 minutes on an H100 host
    .venv/bin/python benchmarks/gpu.py --smoke-test
"""

# torch and policysearch are imported inside the functions, so that the no-GPU answer and the
# trial processes pay only for what they use.
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _machine import cpu_model, peak_rss_mib, write_result  # benchmarks/_machine.py

HERE = Path(__file__).resolve().parent
NO_GPU = ("gpu.py: no GPU available (torch.cuda.is_available() is false): nothing measured, "
          "nothing written")
# Larger than the default space's (400 images of 64×64, batch 16), so that a step gives the
# GPU some work; the ops, model and optimizer stay the default space's.
GPU_DATA = {"n_train": 2048, "n_val": 256, "n_test": 16}
GPU_BUDGET = {"image_size": 128, "batch_size": 64, "epochs": 3}
SMOKE_DATA = {"n_train": 64, "n_val": 16, "n_test": 16}
SMOKE_BUDGET = {"image_size": 32, "batch_size": 16, "epochs": 1}
CONCURRENCY = (1, 2, 4)
SAMPLE_EVERY_S = 0.25


def make_space(*, smoke: bool, amp: bool = False) -> Any:
    """The default search space with the GPU benchmark's dataset and budget."""
    from policysearch.config import load_space

    space = load_space("default")
    data = space.dataset_options.model_copy(update=SMOKE_DATA if smoke else GPU_DATA)
    budget = space.budget.model_copy(update={**(SMOKE_BUDGET if smoke else GPU_BUDGET),
                                             "amp": amp})
    return space.model_copy(update={"name": "gpu", "dataset_options": data, "budget": budget})


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

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, str]:
        """Mean and max utilisation and max memory used within [start, end], as text."""
        inside = [s for s in self.samples
                  if (start is None or s[0] >= start) and (end is None or s[0] <= end)]
        utils = [u for _, u, _ in inside if u is not None]
        used = [m for _, _, m in inside if m is not None]
        return {"util_mean": f"{statistics.mean(utils):.0f}%" if utils else "—",
                "util_max": f"{max(utils):.0f}%" if utils else "—",
                "used_max": f"{max(used):,.0f}" if used else "—",
                "n": str(len(inside))}


# --- measurements -------------------------------------------------------------------------------

def cpu_threads(k: int) -> int:
    """Torch CPU threads for each of ``k`` processes: one core is left to the sampler (torch's
    threads wait for each other, so one busy core slows them all)."""
    return max(1, ((os.cpu_count() or 1) - 1) // k)


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


def measure_epochs(policy: Any, dataset: Any, budget: Any, *, amp: bool, device: str,
                   timed_epochs: int) -> dict[str, Any]:
    """A fresh Trainer: one warm-up epoch, then ``timed_epochs`` timed epochs (GPU sampled)
    and a timed validation pass."""
    import torch

    from policysearch.training import Trainer

    budget = budget.model_copy(update={"amp": amp, "epochs": 1 + timed_epochs})
    trainer = Trainer(policy, dataset, budget, seed=0, device=device,
                      threads=cpu_threads(1))
    trainer.train_epoch()  # warm-up: cuDNN algorithm choice, allocator, first kernels
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler(enabled=device.startswith("cuda")) as sampler:
        start = time.perf_counter()
        for _ in range(timed_epochs):
            trainer.train_epoch()
        _sync(device)
        train_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.evaluate()
    _sync(device)
    val_s = time.perf_counter() - start
    peak = peak_memory_mib(device)
    n_train, n_val = len(trainer.train), len(trainer.evaluation)
    del trainer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"train_rate": n_train * timed_epochs / train_s, "val_rate": n_val / val_s,
            "peak_mib": peak, **sampler.summary()}


def one_trial(space_file: Path, device: str, threads: int, seed: int) -> None:
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
    dataset = load_dataset(space)
    tasks, _ = task_setup(dataset)
    policy = reference_policy(space.reference, tasks)
    ready = time.time()
    print("ready", flush=True)
    sys.stdin.readline()
    trial_start = time.time()
    result = train_policy(policy, dataset, space.budget, seed=seed, device=device,
                          threads=threads)
    trial_end = time.time()
    print(json.dumps({"ready_s": ready - started, "start": trial_start, "end": trial_end,
                      "trial_s": result.seconds, "images": result.train_images,
                      "peak_mib": peak_memory_mib(device)}))


def concurrent_trials(space_file: Path, k: int, device: str) -> dict[str, Any]:
    """K processes, each one trial on ``device``; once all are ready, their trials start
    together. Trials per hour."""
    threads = cpu_threads(k)
    cmd = [sys.executable, __file__, "--one-trial", str(space_file), "--device", device,
           "--threads", str(threads)]
    results = []
    with contextlib.ExitStack() as files:
        # stderr to files: a pipe nobody reads before "ready" could fill and block a child.
        errs = [files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(k)]
        with GpuSampler(enabled=device.startswith("cuda")) as sampler:
            launched = time.time()
            procs = [subprocess.Popen([*cmd, "--seed", str(i)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=errs[i], text=True)
                     for i in range(k)]
            for proc in procs:  # each says "ready" (or ends early, failing: reported below)
                proc.stdout.readline()
            for proc in procs:  # go, all at once
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.write("go\n")
                    proc.stdin.close()
            outputs = [p.stdout.read() for p in procs]  # (a line of JSON each)
            for proc in procs:
                proc.wait()
                proc.stdout.close()
            done = time.time()
        for proc, out, err in zip(procs, outputs, errs, strict=True):
            if proc.returncode != 0:
                err.seek(0)
                raise SystemExit(f"a trial process failed ({proc.returncode}): "
                                 f"{err.read()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    first, last = min(r["start"] for r in results), max(r["end"] for r in results)
    return {"k": k, "threads": threads,
            "trial_s": statistics.mean(r["trial_s"] for r in results),
            "per_hour": k / (last - first) * 3600,
            "per_hour_wall": k / (done - launched) * 3600,
            "ready_s": statistics.mean(r["ready_s"] for r in results),
            "img_rate": sum(r["images"] for r in results) / (last - first),
            "peak_mib": max(r["peak_mib"] for r in results),
            **sampler.summary(first, last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.md")
    # --device cpu: a dry run of this script's logic on a machine without a GPU (its numbers
    # are no GPU numbers, and the Markdown says so); the rest are the trial processes' options.
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--one-trial", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help=argparse.SUPPRESS)  # K values, e.g. 1 for a quick dry run
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_trial is not None:
        one_trial(args.one_trial, args.device, args.threads, args.seed)
        return

    import torch

    dry_run = not args.device.startswith("cuda")
    if not dry_run and not torch.cuda.is_available():
        print(NO_GPU)
        return

    from policysearch.data.loading import load_dataset
    from policysearch.search.lifecycle import reference_policy
    from policysearch.tasks import task_setup

    smoke = args.smoke_test
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["POLICYSEARCH_CACHE"] = str(tmp / "cache")  # inherited by trial processes
        space = make_space(smoke=smoke)
        budget = space.budget
        started = time.perf_counter()
        dataset = load_dataset(space)  # generated once here; the trial processes read it
        generate_s = time.perf_counter() - started
        tasks, _ = task_setup(dataset)
        reference = reference_policy(space.reference, tasks)
        none = reference_policy("none", tasks)
        timed = 1 if smoke else 2
        configs = [(space.reference, reference, False), (space.reference, reference, True),
                   ("none", none, False), ("none", none, True)]
        epoch_rows = [(name, amp, measure_epochs(policy, dataset, budget, amp=amp,
                                                 device=args.device, timed_epochs=timed))
                      for name, policy, amp in configs]
        # Concurrent trials use the faster precision setting with the reference policy.
        ref_rows = [row for row in epoch_rows if row[0] == space.reference]
        amp = max(ref_rows, key=lambda row: row[2]["train_rate"])[1]
        space_file = write_space(make_space(smoke=smoke, amp=amp), tmp / "space.yaml")
        trial_rows = [concurrent_trials(space_file, int(k), args.device)
                      for k in args.concurrency.split(",")]

    opts = space.dataset_options
    size = budget.image_size
    if dry_run:
        device_text = "the CPU (**a dry run of the script: these are not GPU numbers**)"
    else:
        props = torch.cuda.get_device_properties(0)
        device_text = (f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, "
                       f"CUDA {torch.version.cuda})")
    cmd = "python benchmarks/gpu.py" + (" --smoke-test" if smoke else "")
    lines = [
        "# Training on one GPU",
        "",
        f"Produced by `{cmd}` on {device_text}; host CPU {cpu_model()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}. The default search space's ops, encoder "
        f"`{budget.encoder}` and {budget.optimizer}, with a larger dataset and images: "
        f"`{space.dataset}`, {opts.n_train} training and {opts.n_val} validation images of "
        f"{size}×{size}, batch {budget.batch_size} (generating the dataset once took "
        f"{generate_s:.0f} s).",
        "",
        "## One training epoch",
        "",
        f"A fresh `Trainer` on the GPU with {cpu_threads(1)} CPU threads; one warm-up epoch, "
        f"then {timed} timed epoch{'s' if timed > 1 else ''} and one validation pass. "
        "Augmentation runs on the CPU in the training loop (one sample after another, no "
        "loader processes); `none` has no augmentation and shows the rest of the step alone. "
        "Mixed precision: `budget.amp` (bfloat16 autocast). Utilisation: `nvidia-smi` every "
        f"{SAMPLE_EVERY_S} s during the timed epochs (mean / max); memory used: nvidia-smi's, "
        "every process on the GPU; peak allocated: `torch.cuda.max_memory_allocated()` during "
        "the timed epochs and the validation pass.",
        "",
        "| policy | mixed precision | training images/s | validation images/s | GPU "
        "utilisation mean / max | GPU memory used, max (MiB) | peak allocated by torch (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, amp_on, r in epoch_rows:
        lines.append(f"| {name} | {'on' if amp_on else 'off'} | {r['train_rate']:,.0f} | "
                     f"{r['val_rate']:,.0f} | {r['util_mean']} / {r['util_max']} | "
                     f"{r['used_max']} | {r['peak_mib']:,.0f} |")
    lines += [
        "",
        "## Trials sharing the GPU",
        "",
        f"K fresh processes, each training one {space.reference} reference "
        f"trial ({budget.epochs} epoch{'s' if budget.epochs > 1 else ''}, mixed precision "
        f"{'on' if amp else 'off'}: the faster above) on the one GPU with (cpu_count − 1) / K CPU "
        "threads; once every process is ready (imports, CUDA context, dataset from the cache) "
        "their trials start together. Trials per hour: K ÷ (last trial's end − first trial's "
        "start), the trials' training only; with start-up: K ÷ "
        "the processes' wall time (interpreter, imports, CUDA context, dataset from the "
        "cache), what a worker pays once. Images/s: every trial's training images ÷ the same "
        "span (validation passes included in the time). Utilisation and memory are sampled "
        "between the first trial's start and the last trial's end.",
        "",
        "| trials at once | threads each | process start-up, mean (s) | trial time, mean (s) "
        "| trials/hour | trials/hour with start-up | training images/s, all trials | GPU "
        "utilisation mean / max | GPU memory used, max (MiB) | peak allocated by one trial "
        "(MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in trial_rows:
        lines.append(f"| {r['k']} | {r['threads']} | {r['ready_s']:.1f} | {r['trial_s']:.1f} | "
                     f"{r['per_hour']:,.0f} | "
                     f"{r['per_hour_wall']:,.0f} | {r['img_rate']:,.0f} | {r['util_mean']} / "
                     f"{r['util_max']} | {r['used_max']} | {r['peak_mib']:,.0f} |")
    one = trial_rows[0]["per_hour"]
    if len(trial_rows) > 1:
        lines += ["", f"Trials/hour against {trial_rows[0]['k']} at once: " + ", ".join(
            f"{r['k']} at once {r['per_hour'] / one:.2f}×" for r in trial_rows[1:]) + "."]
    write_result(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
