"""Optuna's side of a search, for every engine that asks Optuna for suggestions (the Optuna
engine, and the Ray engine through Ray Tune's OptunaSearch): the sampler, the pruner, and
suggesting a trial's parameter values from the engine-neutral ``search.space`` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import Trial

from policysearch.config import SearchSpace
from policysearch.search.space import Param


def make_sampler(space: SearchSpace, seed: int, n_existing: int,
                 salt: int = 0) -> optuna.samplers.BaseSampler:
    """The space's Optuna sampler (TPE, random, NSGA-II), seeded for this point of the search."""
    # Offsetting the seed by the trials already present keeps a resumed search from replaying
    # the random start-up suggestions it already tried; ``salt`` keeps concurrent workers that
    # see the same trials from suggesting the same values.
    sampler_seed = (seed * 100_003 + n_existing + salt * 7_919) % 2**32
    if space.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=sampler_seed)
    if space.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=sampler_seed,
                                             population_size=space.sampler.population_size)
    return optuna.samplers.TPESampler(seed=sampler_seed,
                                      n_startup_trials=space.sampler.n_startup_trials)


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The space's pruner. Its steps are the epochs that ``OptunaReporter`` reports (from 0);
    Hyperband's ``max_resource: auto`` is the budget's epochs, the number of steps a full
    trial reports (Optuna's own ``auto`` counts the same, but only once a search trial has
    finished: the reference trial reports no steps)."""
    pruner = space.pruner
    if pruner.name == "none":
        return optuna.pruners.NopPruner()
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=pruner.min_early_stopping_rate)
    if pruner.name == "hyperband":
        max_resource = (space.budget.epochs if pruner.max_resource == "auto"
                        else pruner.max_resource)
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max(max_resource, pruner.min_resource),
            reduction_factor=pruner.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials,
                                       n_warmup_steps=pruner.n_warmup_steps)


def suggest(trial: Trial, params: Sequence[Param]) -> dict[str, Any]:
    """A trial's values of ``params`` (define-by-run: a weighting method's parameters only
    when it is picked)."""
    values: dict[str, Any] = {}
    for p in params:
        if p.when is not None and values.get(p.when[0]) != p.when[1]:
            continue  # belongs to a weighting method this trial did not pick
        if p.kind == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values
