"""Your own encoder: register an nn.Module factory, then name it in the budget.

The contract of a shared encoder (policysearch/models/encoders.py):

- ``forward(x)`` takes a B×3×H×W float batch and returns a *list* of feature maps, fine to
  coarse (the dense heads — segmentation, depth, detection — fuse them FPN-style; the
  classification head pools the last one);
- attributes ``channels`` and ``strides``: the channels of each returned map and its stride
  relative to the input (the heads are built from them).

Subclassing ``policysearch.models.Encoder`` is optional; a plain ``nn.Module`` with these two
attributes works. Encoders start randomly initialised; ``weights=`` (``--weights FILE``) loads
a local state dict.

    python examples/custom_encoder.py      # writes ./runs/custom_encoder/
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
import yaml
from torch import nn

import policysearch as ps
from policysearch.models import register_encoder

OUT = Path("runs/custom_encoder")
# The built-in `shapes` dataset is generated once and cached; keep the cache beside the outputs.
os.environ.setdefault("POLICYSEARCH_CACHE", str(Path("runs/cache").resolve()))


def separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3 (with the stride) + pointwise 1×1, MobileNet style."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class TinySeparableEncoder(nn.Module):
    """Stem at stride 2, then three separable stages; features at strides 4, 8, 16."""

    built = 0  # how many networks were built with this encoder (checked below)

    def __init__(self, width: int = 16):
        super().__init__()
        TinySeparableEncoder.built += 1
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        widths = (width, 2 * width, 3 * width, 4 * width)
        self.stages = nn.ModuleList(separable(a, b, stride=2)
                                    for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.channels = widths[1:]  # (32, 48, 64)
        self.strides = (4, 8, 16)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


# Register a factory: any callable returning the module (a class, functools.partial, a lambda).
# Then `encoder: tiny_sep` in a space's budget, ps.search(encoder="tiny_sep") or
# `policysearch search --encoder tiny_sep` from a script that registered it.
register_encoder("tiny_sep", TinySeparableEncoder)

SPACE = {
    "name": "custom_encoder",
    "dataset": "shapes",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "brightness"]},
    "weights": {"method": "static", "range": [0.5, 2.0]},
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32,
               "encoder": "tiny_sep"},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}
# A search into a folder that holds a study resumes it; this demo starts afresh every time.
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
space_file = OUT / "space.yaml"
space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))

trials = 3
outcome = ps.search(space=space_file, trials=trials, out=OUT, device="cpu", threads=1, seed=0)
best = outcome.table.sort_values("rank").iloc[0]
stored = outcome.study.space["budget"]["encoder"]  # the study remembers its budget
print(f"searched {len(outcome.table)} trials with encoder {stored!r}; "
      f"{TinySeparableEncoder.built} networks built with it")
print(f"best: trial {int(best['trial'])} Δm% {best['delta_m']:+.2f}  {best['policy']}")
print(f"wrote {outcome.export.yaml_path}")
# One build to validate the name before any trial, then one network per trial.
if stored != "tiny_sep" or TinySeparableEncoder.built < trials:
    sys.exit("the registered encoder was not used")
print("custom encoder OK")
