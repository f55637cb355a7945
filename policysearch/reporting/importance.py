"""Which searched parameters mattered: Optuna's fANOVA importances of a study's parameters
for Δm%, for either engine.

The trials' recorded parameter values (``TrialRecord.params``) and the search space's
distributions go into an in-memory Optuna study, so a Ray experiment is scored the same way
as an Optuna study. Only complete search trials count (a pruned trial's Δm% is from an
earlier epoch, not comparable); fANOVA is seeded with the study's seed, so the numbers repeat.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policysearch.records import StudyRecords

MIN_TRIALS = 4  # fewer complete trials say nothing about importance


@dataclass(frozen=True)
class Importances:
    """``values``: parameter name -> share of Δm%'s variance it explains (sum 1), largest
    first; empty with ``note`` saying why when there is nothing to score."""

    values: dict[str, float] = field(default_factory=dict)
    trials: int = 0
    note: str = ""


def _distributions(study: StudyRecords) -> dict[str, Any]:
    import optuna

    from policysearch.config import SearchSpace
    from policysearch.search.space import parameters

    space = SearchSpace.model_validate(study.space)
    found: dict[str, Any] = {}
    for p in parameters(space, list(study.metrics_info)):
        if p.kind == "categorical":
            found[p.name] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            found[p.name] = optuna.distributions.IntDistribution(int(p.low), int(p.high))
        else:
            found[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
    return found


def param_importances(study: StudyRecords, delta_m: Mapping[int, float]) -> Importances:
    """fANOVA importances of the searched parameters for Δm% (``delta_m``: trial number ->
    its Δm%, as the results table has it)."""
    import optuna

    scored = [r for r in study.records
              if r.role == "search" and r.state == "complete" and r.params
              and math.isfinite(delta_m.get(r.number, math.nan))]
    if len(scored) < MIN_TRIALS:
        return Importances(trials=len(scored), note=(
            f"{len(scored)} complete search trial(s) with recorded parameters; importances "
            f"need at least {MIN_TRIALS}"))
    try:
        dists = _distributions(study)
    except Exception as err:  # a space stored by another version: say so, keep the report
        return Importances(trials=len(scored),
                           note=f"the stored search space cannot be read: {err}".splitlines()[0])
    if len({float(delta_m[r.number]) for r in scored}) == 1:
        # fANOVA cannot split a constant target (it raises): nothing to attribute.
        return Importances(trials=len(scored), note=(
            f"every one of the {len(scored)} complete search trials has the same Δm% "
            f"({float(delta_m[scored[0].number]):+.2f}): no parameter made a difference"))
    memory = optuna.create_study(direction="maximize", study_name=study.name)
    for rec in scored:
        params = {k: v for k, v in (rec.params or {}).items() if k in dists}
        memory.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params},
            value=float(delta_m[rec.number])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=study.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(memory, evaluator=evaluator)
    if not values:
        return Importances(trials=len(scored), note="no parameter is shared by every scored "
                                                    "trial")
    ordered = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
    return Importances(values={k: float(v) for k, v in ordered.items()}, trials=len(scored))
