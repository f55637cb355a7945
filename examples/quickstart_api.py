"""Quick start: the whole policysearch workflow from Python, on a budget that runs in seconds.

search → results → export (YAML + albumentations JSON, and Python source) → HTML report
→ benchmark against a baseline → use the policy in your own training code.

Run it from any folder: everything goes to ``./runs/quickstart/`` (and the generated
``shapes`` dataset is cached in ``./runs/cache/``)::

    python examples/quickstart_api.py

The budget below (48 training images of 32×32 px, 2 epochs, 3 trials) only demonstrates the
machinery; its numbers mean nothing. For a real search use ``space="default"`` (the shipped
``search_spaces/default.yaml``) and more trials.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import yaml

import policysearch as ps
from policysearch.data import get_dataset
from policysearch.events import BenchmarkEvent, RunEnded, SearchEvent, TrialEnded

OUT = Path("runs/quickstart")
# The built-in ``shapes`` dataset is generated on first use and cached (default:
# ~/.cache/policysearch, or $POLICYSEARCH_CACHE). Keep it beside the outputs for this demo.
os.environ.setdefault("POLICYSEARCH_CACHE", str(Path("runs/cache").resolve()))

# --- 1. a search space ---------------------------------------------------------------------------
# A search space is a YAML file (see search_spaces/default.yaml and README "Search-space
# files"). This one is tiny: one shared slot, one extra slot for the classification task
# `shape`, one static loss weight per task, and a training budget of about a second per trial.
SPACE = {
    "name": "quickstart",
    "dataset": "shapes",  # built in: tasks shape (classification), seg, objects, depth
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "brightness"]},
    "per_task": {"tasks": ["shape"], "slots": 1, "ops": ["identity", "contrast"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "reference": "flipcrop",  # Δm% of every trial is measured against this baseline
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "tpe", "n_startup_trials": 2},
    "pruner": {"name": "none"},
}
# A search into a folder that holds a study resumes it; this demo starts afresh every time.
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
space_file = OUT / "quickstart.yaml"
space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))
ps.check(space=space_file)  # validates the file without training (raises ps.UserError)

# --- 2. search -----------------------------------------------------------------------------------
# Keyword arguments are the fields of policysearch.search.options.SearchOptions (the CLI flags).
# Running the same call again resumes the study (finished trials are kept). threads=1: these
# tiny models gain nothing from more CPU threads per trial (and more threads than free cores
# slow torch down badly); device="auto" would pick a GPU when there is one.
# progress= is given every progress event, a dataclass of policysearch.events; this one prints
# a line per finished trial (the CLI's printers are listeners like it).


def progress(event: SearchEvent) -> None:
    match event:
        case TrialEnded(trial=number, state=state, role=role):
            print(f"  trial {number} ({role}): {state}")


outcome = ps.search(space=space_file, trials=3, out=OUT, device="cpu", threads=1, seed=0,
                    progress=progress)
print(f"search done: {len(outcome.table)} trials in {outcome.out_dir}")
for path in outcome.files:  # results.csv/.md, best_policy.yaml + one JSON per task, report.html
    print(f"  wrote {path}")

# --- 3. results ----------------------------------------------------------------------------------
# The ranked table as a pandas DataFrame (the same as `policysearch results --out runs/quickstart`);
# any time later, from the folder alone.
table = ps.results(OUT)
best = table.sort_values("rank").iloc[0]
print(f"best trial: #{int(best['trial'])} ({best['role']}) Δm% {best['delta_m']:+.2f}  "
      f"policy: {best['policy']}")
print(table.attrs["search_cost"])

# --- 4. export -----------------------------------------------------------------------------------
# rank=1 is the best trial; `yaml` writes the policy file and one albumentations JSON per task.
exported = ps.export(OUT, rank=1, format="yaml", to=OUT / "exported" / "policy.yaml")
print(f"exported {exported.yaml_path} and {len(exported.albumentations)} albumentations files")
# `python` returns albumentations source code (one A.Compose per task) to paste into a script.
source = ps.export(OUT, rank=1, format="python", to=OUT / "exported" / "augment.py")
print(f"python export: {len(source.splitlines())} lines, e.g. "
      f"{next(line for line in source.splitlines() if '_transform = ' in line)!r}")

# --- 5. look at the policy -----------------------------------------------------------------------
print(ps.show(exported.yaml_path).to_string(index=False))  # one row per slot

# A picture of the policy on a few validation samples: image, mask, boxes and depth move
# together. `dataset` is a name ("shapes": default options, 64 px) or a dataset object, here
# the search's own.
data = get_dataset("shapes", size=32, **SPACE["dataset_options"])
grid = ps.preview(OUT / "best_policy.yaml", data, n=2, draws=2, to=OUT / "preview.png")
print(f"preview: {OUT / 'preview.png'} ({grid.width}×{grid.height} px)")

# --- 6. HTML report ------------------------------------------------------------------------------
# (the search keeps OUT/report.html current already; this rewrites it, here without the
# preview images of augmented samples, which are the slow part).
report = ps.report(OUT, preview=False)
print(f"report: {report}")

# --- 7. benchmark --------------------------------------------------------------------------------
# The searched policy against baselines on the *test* split. The dataset and budget are the
# search's (found beside best_policy.yaml). One seed, one baseline and no ablation runs keep it
# tiny; a real benchmark uses the default 5 seeds or more, all baselines and the ablations.
# events= is given each run's events (policysearch.events.BenchmarkEvent).


def bench_events(event: BenchmarkEvent) -> None:
    match event:
        case RunEnded(run=run, runs=runs, contender=contender, seconds=seconds):
            print(f"  benchmark run {run}/{runs}: {contender} ({seconds:.1f} s)")


bench = ps.benchmark(OUT / "best_policy.yaml", baselines=["none"], reference="flipcrop",
                     seeds=1, ablations=False, device="cpu", threads=1, out=OUT / "benchmark",
                     events=bench_events)
for _, row in bench.summary.iterrows():  # one row per contender (mean ± std over seeds)
    print(f"benchmark {row['contender']:>8}: test Δm% vs flipcrop {row['delta_m']:+.2f}")
for verdict in bench.verdicts:  # with several seeds: paired test, and "beyond seed noise?"
    print(f"  {verdict}")
print(f"benchmark files: {', '.join(p.name for p in bench.files)}")

# --- 8. use the policy in your training code ------------------------------------------------------
# load_policy imports neither torch, optuna nor ray.
policy = ps.load_policy(OUT / "best_policy.yaml")
augment = policy.transform()  # sample dict -> {view name: augmented sample}
rng = np.random.default_rng(0)
sample = {
    "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
    "label": 1,  # shape (classification)
    "mask": rng.integers(0, 4, (32, 32)).astype(np.int64),  # seg
    "boxes": np.array([[4.0, 4.0, 20.0, 20.0]], dtype=np.float32),  # objects
    "box_labels": np.array([0]),
    "depth": rng.random((32, 32), dtype=np.float32),  # depth
}
views = augment(sample)
print(f"views of one sample: {sorted(views)}; shared image {views['shared']['image'].shape}")
seg_only = policy.to_albumentations("seg")  # a plain albumentations.Compose for one task
print(f"albumentations Compose for task seg: {type(seg_only).__name__} "
      f"with {len(seg_only.transforms)} transform(s)")
print("quickstart OK")
