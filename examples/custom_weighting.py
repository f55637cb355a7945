"""Your own loss-weighting method: register a ``Weighting`` subclass, search with it.

A weighting (policysearch/weighting/base.py) turns the per-task losses into gradients; the
training loop calls, per trial:

- ``Cls(tasks, *, <hyper-parameters>, shared=encoder params, seed=..., device=...)``;
- ``backward(losses)`` every step (the base class backpropagates Σ weights()[t] · loss_t;
  gradient methods override it), then ``optimizer.step()``;
- ``end_epoch(epoch, mean_losses)`` after each epoch — where a dynamic method updates;
- ``weights()`` for logs and the results table (the ``w.<task>`` columns);
- ``parameters()`` when the weights themselves are learned (added to the optimizer).

Keyword-only constructor arguments with numeric defaults are the method's hyper-parameters
(``params`` in the policy YAML; a space searches them under ``weights.params``).

The method here, ``loss_ratio``, gives more weight to the tasks whose loss has fallen least
since the first epoch: w_t ∝ (L_t(e) / L_t(0)) ** alpha, scaled so the weights sum to the
number of tasks.

    python examples/custom_weighting.py      # writes ./runs/custom_weighting/
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import yaml

import policysearch as ps
from policysearch.weighting import Weighting, register_weighting
from policysearch.weighting_schema import HyperParam, register_method

OUT = Path("runs/custom_weighting")
os.environ.setdefault("POLICYSEARCH_CACHE", str(Path("runs/cache").resolve()))


class LossRatioWeighting(Weighting):
    name = "loss_ratio"  # the name in search spaces and policy files

    def __init__(self, tasks: Sequence[str], *, alpha: float = 1.0,
                 shared: Iterable[torch.Tensor] = (), seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__(tasks, shared=shared, seed=seed, device=device)
        self.alpha = float(alpha)
        self.first: dict[str, float] | None = None
        self._weights = {t: 1.0 for t in self.tasks}  # equal until two epochs are seen

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def end_epoch(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        losses = {t: float(mean_losses[t]) for t in self.tasks}
        if self.first is None:
            self.first = losses
            return
        ratio = {t: losses[t] / self.first[t] if self.first[t] > 0 and math.isfinite(losses[t])
                 else 1.0 for t in self.tasks}
        raw = {t: r ** self.alpha for t, r in ratio.items()}
        scale = len(raw) / sum(raw.values())
        self._weights = {t: w * scale for t, w in raw.items()}


# Optional: declare the hyper-parameter's bounds (policy files are checked against them).
# Without this line register_weighting reads `alpha` and its default from the constructor.
register_method("loss_ratio", {"alpha": HyperParam(1.0, low=0.0, high=4.0,
                                                   doc="strength of the rebalancing")})
register_weighting(LossRatioWeighting)

SPACE = {
    "name": "custom_weighting",
    "dataset": "shapes",
    "dataset_options": {"n_train": 48, "n_val": 24, "n_test": 24, "seed": 0},
    "shared": {"slots": 1, "ops": ["identity", "hflip", "rotate", "brightness"]},
    # One method for every search trial, its `alpha` searched in [0.25, 2] (a number would
    # fix it). A list, e.g. [equal, dwa, loss_ratio], makes the method a searched choice.
    # (The reference trial always weighs every task 1.)
    "weights": {"method": "loss_ratio", "params": {"loss_ratio": {"alpha": [0.25, 2.0]}}},
    "budget": {"epochs": 2, "batch_size": 16, "lr": 0.003, "image_size": 32},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}
# A search into a folder that holds a study resumes it; this demo starts afresh every time.
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
space_file = OUT / "space.yaml"
space_file.write_text(yaml.safe_dump(SPACE, sort_keys=False))

outcome = ps.search(space=space_file, trials=3, out=OUT, device="cpu", threads=1, seed=0)
table = outcome.table
weight_columns = [c for c in table.columns if c.startswith("w.")]
print(table[["rank", "trial", "role", "delta_m", *weight_columns]].round(3).to_string(index=False))

# Every search trial trained with the registered method, and its weights moved off 1.0.
search_trials = [r for r in outcome.study.records if r.role == "search" and r.state == "complete"]
methods = {r.policy["weighting"]["method"] for r in search_trials}
moved = all(any(abs(w - 1.0) > 1e-6 for w in (r.final_weights or {}).values())
            for r in search_trials)
alphas = [r.policy["weighting"]["params"]["alpha"] for r in search_trials]
searched = len(set(alphas)) == len(alphas) and all(0.25 <= a <= 2.0 for a in alphas)
print(f"search trials' weighting methods: {sorted(methods)}; learned weights moved: {moved}")
print(f"searched alpha: {', '.join(f'{a:.3f}' for a in alphas)}")

# Export the best search trial: its policy file carries the method and its parameters.
rank = int(table.loc[table["role"] == "search", "rank"].min())
exported = ps.export(OUT, rank=rank, to=OUT / "loss_ratio_policy.yaml")
print(f"exported rank {rank} to {exported.yaml_path}: weighting {exported.policy.weighting}")
if not (search_trials and methods == {"loss_ratio"} and moved and searched
        and exported.policy.weighting.method == "loss_ratio"):
    sys.exit("the registered weighting method was not used")
print("custom weighting OK")
