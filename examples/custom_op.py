"""Your own augmentation op: register it, list it in a search space, search.

An op (policysearch/augment/ops.py) maps a magnitude m in [0, 1] — the exact strength — onto
an albumentations transform applied with p=1 (the slot's probability is added around it):

- ``factory(m)``: the transform at strength m;
- a *signed* op also has ``negative_factory(m)``; each application picks a sign at random;
- ``kind``: ``photometric`` ops change only the image; ``geometric`` ops must move every
  spatial target too, which albumentations' spatial transforms do (a geometric op and a
  surface-normals task also need ``policysearch.augment.normals.register_rule``);
- optional ``ranged(lo, hi, scale)``: a transform drawing its strength in [lo, hi], used by
  TrivialAugment-style structures (without it they draw from 31 exact strengths).

Use stock albumentations transforms (not ``A.Lambda``) so the exported
``*.albumentations.json`` files load with albumentations alone. A policy file that uses the op
loads in a process that registered it (import your module before ``ps.load_policy``).

    python examples/custom_op.py      # writes ./runs/custom_op/
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import yaml

import policysearch as ps
from policysearch.augment.ops import Op, register_op

OUT = Path("runs/custom_op")
os.environ.setdefault("POLICYSEARCH_CACHE", str(Path("runs/cache").resolve()))
MAX_CHANGE = 0.5  # gamma 1 ± 0.5 at magnitude 1


def gamma(sign: int):  # noqa: ANN201 - returns the factory of one sign
    def factory(m: float) -> A.BasicTransform:
        value = 100.0 * (1.0 + sign * MAX_CHANGE * m)  # albumentations counts gamma in percent
        return A.RandomGamma(gamma_limit=(value, value), p=1.0)  # exact: a one-point range
    return factory


register_op(Op(
    name="gamma",
    kind="photometric",
    signed=True,
    description=f"gamma correction with gamma 1±{MAX_CHANGE}*m",
    range_at_1=f"γ {1 - MAX_CHANGE:g} .. {1 + MAX_CHANGE:g}",  # shown by `ps.ops()`
    factory=gamma(+1),
    negative_factory=gamma(-1),
))

ops = ps.ops()  # the op table (`policysearch ops`) now lists it
print(ops[ops["op"] == "gamma"][["op", "kind", "signed", "range_at_1"]].to_string(index=False))

SPACE = {
    "name": "custom_op",
    "dataset": "shapes",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate"]},
    # The new op is the one op of the classification task's own view: every search trial
    # uses it (with a searched probability and magnitude).
    "per_task": {"tasks": ["shape"], "slots": 1, "ops": ["gamma"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}
# A search into a folder that holds a study resumes it; this demo starts afresh every time.
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
space_file = OUT / "space.yaml"
space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))
ps.check(space=space_file)  # an unknown op would be refused here, before any training

outcome = ps.search(space=space_file, trials=3, out=OUT, device="cpu", threads=1, seed=0)
table = outcome.table
print(table[["rank", "trial", "role", "delta_m", "policy"]].to_string(index=False))

# Export the best *search* trial (the reference trial is the flipcrop baseline, without it).
search_rows = table[(table["role"] == "search") & table["rank"].notna()]
if search_rows.empty or not all("gamma(" in p for p in search_rows["policy"]):
    sys.exit("the registered op is not in the searched policies")
rank = int(search_rows["rank"].min())
exported = ps.export(OUT, rank=rank, to=OUT / "with_gamma.yaml")
slots = [slot.op for slot in exported.policy.per_task["shape"]]
print(f"exported rank {rank}: {exported.yaml_path}, shape's slots {slots}")
if slots != ["gamma"]:
    sys.exit("the exported policy lacks the registered op")

# The op in use: the task's own view gets the gamma slot; the JSON file is plain albumentations.
views = exported.policy.transform()({"image": np.full((32, 32, 3), 128, np.uint8), "label": 0})
print(f"views: {sorted(views)}; albumentations file: "
      f"{exported.albumentations['shape'].name}")
restored = A.load(str(exported.albumentations["shape"]), data_format="json")
print(f"it loads with albumentations alone: {type(restored).__name__}")
print("custom op OK")
