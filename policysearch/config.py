"""Validated schemas of the search-space YAML and of a trial's training budget."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from policysearch.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    lo, hi = value
    if not (low <= lo <= hi <= high):
        raise ValueError(f"must be [low, high] with {low} <= low <= high <= {high}, "
                         f"got {list(value)}")
    return value


def _check_n_range(value: tuple[int, int]) -> tuple[int, int]:
    """A RandAugment N range: [low, high] with 1 <= low <= high <= 16."""
    lo, hi = value
    if not 1 <= lo <= hi <= 16:
        raise ValueError(f"must be [low, high] with 1 <= low <= high <= 16, got {list(value)}")
    return value


class SlotSpace(_Strict):
    """How many slots to search, over which ops, and the ranges of probability and magnitude."""

    slots: int = Field(2, ge=0, le=8)
    ops: list[str] = Field(default_factory=list, description="empty: every op")
    p: tuple[float, float] = (0.0, 1.0)
    magnitude: tuple[float, float] = (0.0, 1.0)

    @field_validator("p", "magnitude")
    @classmethod
    def _unit_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_range(value, 0.0, 1.0)

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        from policysearch.augment import OPS

        for i, name in enumerate(ops):
            if name not in OPS:
                raise ValueError(f"unknown op {name!r} (item {i}); "
                                 "run 'policysearch ops' to list them")
        if len(set(ops)) != len(ops):
            raise ValueError("lists an op twice")
        return ops

    @model_validator(mode="after")
    def _default_ops(self) -> SlotSpace:
        # No 'ops' list means every registered op.
        if not self.ops:
            from policysearch.augment import OPS

            object.__setattr__(self, "ops", sorted(OPS))
        return self


class FixedSlot(_Strict):
    """One slot of a space's ``base``: fixed, never searched."""

    op: str
    p: float = Field(ge=0.0, le=1.0)
    magnitude: float = Field(ge=0.0, le=1.0)

    @field_validator("op")
    @classmethod
    def _known_op(cls, name: str) -> str:
        from policysearch.augment import OPS

        if name not in OPS:
            raise ValueError(f"unknown op {name!r}; run 'policysearch ops' to list them")
        return name


class SharedSpace(SlotSpace):
    """The shared policy's space; ``subpolicies`` and ``n`` matter only for their structures.

    subpolicies: K sub-policies of ``slots`` slots each, one picked per sample (AutoAugment).
    randaugment: N (searched in ``n``) ops of magnitude M (searched in ``magnitude``) drawn
    per sample from ``ops``; ``p`` is unused.
    """

    subpolicies: int = Field(5, ge=1, le=64)
    n: tuple[int, int] = (1, 3)

    @field_validator("n")
    @classmethod
    def _n_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _check_n_range(value)


# The task kinds ``per_task.tasks: auto`` gives views: the image-level ones (a label or labels
# per image), the tasks the default space's photometric per-task ops are meant for.
AUTO_VIEW_KINDS: tuple[str, ...] = ("classification", "multilabel")


class TaskKinds(_Strict):
    """``per_task.tasks: {kinds: [...]}``: a view for every task of these kinds."""

    kinds: list[str] = Field(min_length=1)

    @field_validator("kinds")
    @classmethod
    def _unique(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError("lists a kind twice")
        return kinds


class PerTaskSpace(SlotSpace):
    """Slots searched separately for each task ``tasks`` selects (each adds a view): a list of
    task names; ``auto``, every task of a kind in ``AUTO_VIEW_KINDS``; or ``{kinds: [...]}``,
    every task of those kinds. A rule is resolved against the dataset's tasks (``selects``)
    before a search uses the space (``SearchSpace.for_tasks``).

    ``n`` set (structure ``randaugment`` only): each selected task's view is a RandAugment of
    its own instead of slots, its N searched in ``n`` and its M in ``magnitude``, drawing from
    ``ops`` (``slots`` and ``p`` unused). Left out: slots, as in every other structure.
    """

    slots: int = Field(1, ge=0, le=8)
    tasks: list[str] | Literal["auto"] | TaskKinds = Field(default_factory=list)
    n: tuple[int, int] | None = None

    @field_validator("n")
    @classmethod
    def _n_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return None if value is None else _check_n_range(value)

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_or_rule(cls, value: Any) -> Any:
        # Checked here, so that an error names per_task.tasks rather than a member of the union.
        if value == "auto" or isinstance(value, TaskKinds):
            return value
        if isinstance(value, list):
            for i, name in enumerate(value):
                if not isinstance(name, str):
                    raise ValueError(f"item {i} must be a task name, got {name!r}")
            return value
        if isinstance(value, dict):
            try:
                return TaskKinds.model_validate(value)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                message = {"extra_forbidden": "unknown key",
                           "missing": "required key is missing"}.get(
                    first["type"], first["msg"].removeprefix("Value error, "))
                raise ValueError(f"{where}: {message}" if where else message) from None
        raise ValueError("must be a list of task names, auto, or {kinds: [KIND, ...]}, "
                         f"got {value!r}")

    def selects(self, tasks: Mapping[str, str]) -> list[str]:
        """The tasks given a view, of ``tasks`` (the dataset's, name -> kind, in order)."""
        if isinstance(self.tasks, list):
            return list(self.tasks)
        kinds = AUTO_VIEW_KINDS if self.tasks == "auto" else tuple(self.tasks.kinds)
        return [name for name, kind in tasks.items() if kind in kinds]

    @property
    def randaugment(self) -> bool:
        """Whether each task's view is a RandAugment of its own (``n`` set), not slots."""
        return self.n is not None

    @property
    def searches_views(self) -> bool:
        """Whether a selected task's view searches anything: its RandAugment, or a slot."""
        return self.randaugment or self.slots > 0

    @property
    def names(self) -> list[str]:
        """The tasks given a view; a space whose ``tasks`` is a rule must be resolved first."""
        if not isinstance(self.tasks, list):
            raise ValueError("per_task.tasks is a rule: resolve the space against its "
                             "dataset's tasks first (SearchSpace.for_tasks)")
        return self.tasks


class WeightSpace(_Strict):
    """Loss weighting: one method, or a list of methods to search among.

    ``static`` searches one log-uniform weight per task in ``range``; ``equal`` fixes 1.0;
    ``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad`` and ``cagrad`` adapt during training
    (policysearch.weighting). ``dwa``, ``gradnorm`` and ``cagrad`` hold that method's
    hyper-parameters (``temperature``; ``alpha``, ``lr``; ``c``): a number fixes one,
    ``[low, high]`` searches it (uniform), one left out takes the method's default.
    ``params`` does the same for any method by name, a registered one included:
    ``params: {loss_ratio: {alpha: [0.5, 2.0]}}``.
    """

    method: str | list[str] = "static"
    range: tuple[float, float] = (0.25, 4.0)
    dwa: dict[str, Any] = Field(default_factory=dict)
    gradnorm: dict[str, Any] = Field(default_factory=dict)
    cagrad: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("range")
    @classmethod
    def _positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_range(value, 1e-6, 1e6)

    @field_validator("method", mode="before")
    @classmethod
    def _known_methods(cls, value: Any) -> Any:
        from policysearch.weighting_schema import method_problem

        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            raise ValueError("must be a weighting method or a non-empty list of them")
        for i, name in enumerate(names):
            problem = method_problem(name)
            if problem:
                raise ValueError(problem + (f" (item {i})" if isinstance(value, list) else ""))
        if len(set(names)) != len(names):
            raise ValueError("lists a method twice")
        return value

    @field_validator("dwa", "gradnorm", "cagrad")
    @classmethod
    def _hyper_params(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        return _checked_hyper(info.field_name, value)

    @field_validator("params")
    @classmethod
    def _method_params(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from policysearch.weighting_schema import method_problem

        checked = {}
        for method, given in value.items():
            problem = method_problem(method)
            if problem:
                raise ValueError(problem)
            if not isinstance(given, dict):
                raise ValueError(f"{method} must map hyper-parameter names to a number or "
                                 f"[low, high], got {given!r}")
            checked[method] = _checked_hyper(method, given)
        return checked

    @model_validator(mode="after")
    def _params_of_chosen_methods(self) -> WeightSpace:
        for method in ("dwa", "gradnorm", "cagrad", *self.params):
            if (getattr(self, method, None) or self.params.get(method)) \
                    and method not in self.methods:
                raise ValueError(f"{method} hyper-parameters are set but {method!r} is not among "
                                 f"the methods ({', '.join(self.methods)})")
            if method in ("dwa", "gradnorm", "cagrad") and getattr(self, method) \
                    and self.params.get(method):
                raise ValueError(f"{method} hyper-parameters are set twice: under {method} and "
                                 f"under params.{method}")
        return self

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods searched among (one for a fixed method)."""
        return (self.method,) if isinstance(self.method, str) else tuple(self.method)

    def hyper(self, method: str) -> dict[str, float | tuple[float, float]]:
        """``method``'s hyper-parameters set here: a fixed value or a searched [low, high]."""
        if method in ("dwa", "gradnorm", "cagrad") and getattr(self, method):
            return dict(getattr(self, method))
        return dict(self.params.get(method, {}))


def _checked_hyper(method: str, value: dict[str, Any]) -> dict[str, Any]:
    """``method``'s hyper-parameters: a number fixes one, ``[low, high]`` searches it."""
    from policysearch.weighting_schema import param_problem

    checked: dict[str, Any] = {}
    for name, spec in value.items():
        ends = spec if isinstance(spec, list | tuple) else [spec]
        if isinstance(spec, list | tuple) and len(spec) != 2:
            raise ValueError(f"{name} must be a number or [low, high], got {spec!r}")
        for end in ends:
            problem = param_problem(method, name, end)
            if problem:
                raise ValueError(problem if name in problem else f"{name} {problem}")
        if isinstance(spec, list | tuple):
            if not ends[0] <= ends[1]:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {list(spec)}")
            checked[name] = (float(ends[0]), float(ends[1]))
        else:
            checked[name] = float(spec)
    return checked


class Budget(_Strict):
    """The training budget of one trial; CLI flags override these fields."""

    epochs: int = Field(24, ge=1, le=10_000)
    batch_size: int = Field(16, ge=1, le=65_536)
    lr: float = Field(3e-3, gt=0, le=10)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0, le=1)
    # One side (square images) or [height, width]; every split is resized to it.
    image_size: int | tuple[int, int] = 64
    amp: bool = False
    encoder: str = "small"
    encoder_weights: str | None = None
    # DataLoader worker processes preparing each trial's batches ahead of the step; "auto":
    # 0 on the CPU, the trial's CPU share but one on a GPU (input_pipeline.default_loader_workers).
    # The numbers do not depend on it, so a study may resume with another value.
    loader_workers: int | Literal["auto"] = "auto"

    @field_validator("loader_workers")
    @classmethod
    def _loader_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError(f"must be 'auto' or between 0 and 64, got {value!r}")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        sides = (value,) if isinstance(value, int) else value
        if not all(16 <= side <= 4096 for side in sides):
            raise ValueError(f"every side must be between 16 and 4096 pixels, got {value!r}")
        if not isinstance(value, int) and value[0] == value[1]:
            return value[0]
        return value


class DatasetOptions(_Strict):
    """How the dataset is made or read.

    ``n_train``/``n_val``/``n_test``: split sizes of a generated dataset (shapes, multidigits,
    scenes). ``seed``: its generator seed, and the seed of any split carved from train.
    ``test_seed`` (scenes): the seed of its test split alone (default ``seed``), so that a fresh
    test split leaves train and val as they were. ``normals`` (scenes): add the surface-normals
    task. ``val_fraction``:
    share of train carved into a missing val (or test) split of a file dataset. ``limit``: at
    most this many samples per split of a file dataset. ``skip_bad_samples``: leave out (and
    count) samples whose files fail the up-front check instead of stopping.
    """

    n_train: int = Field(400, ge=8, le=1_000_000)
    n_val: int = Field(200, ge=8, le=1_000_000)
    n_test: int = Field(500, ge=8, le=1_000_000)
    seed: int = Field(0, ge=0)
    test_seed: int | None = Field(None, ge=0)
    normals: bool | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    limit: int | None = Field(None, ge=1)
    skip_bad_samples: bool = False


class TrainSubset(_Strict):
    """``subset``: search on ``n`` samples of the training split (validation, which scores the
    trials, stays whole), chosen from ``seed`` by ``policysearch.data.subset``: stratified by
    the first classification task's label where the dataset has one, else a plain random
    sample; the same ``n`` and ``seed`` give the same samples in every process. ``seed`` is
    the subset's own (default 0), not the study's training seed: changing ``--seed`` (or a
    re-evaluation with other seeds) trains on the same data. ``benchmark`` trains on the whole
    training split."""

    n: int = Field(ge=1)
    seed: int = Field(0, ge=0)


class SamplerConfig(_Strict):
    """Optuna's sampler. ``nsga2`` (NSGA-II, ``population_size`` per generation) is meant for
    ``objective: pareto``; TPE handles both kinds of study."""

    name: Literal["tpe", "random", "nsga2"] = "tpe"
    n_startup_trials: int = Field(4, ge=0)
    population_size: int = Field(50, ge=2)


# The keys each pruner takes besides ``name``. ``none`` keeps the median's two keys, as it always
# has, so the stored definitions of existing studies still validate.
_PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps"),
    "none": ("n_startup_trials", "n_warmup_steps"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}
_RUNG_DEFAULTS: dict[str, Any] = {"min_resource": 1, "max_resource": "auto",
                                  "reduction_factor": 3, "min_early_stopping_rate": 0}


class PrunerConfig(_Strict):
    """Optuna's pruner, in epochs: a trial reports its Δm% once per epoch, at step = the epoch
    counted from 0, so a decision "at step s" comes after s + 1 trained epochs.

    median: no pruning before ``n_startup_trials`` trials have finished, nor before step
    ``n_warmup_steps``. none: no pruning. successive_halving: rung k is decided at step
    ``min_resource * reduction_factor ** (min_early_stopping_rate + k)``; a trial goes on
    when its Δm% is in the top 1/``reduction_factor`` of those recorded at that rung so far
    (the best, while fewer than ``reduction_factor`` are). hyperband: successive halving in
    brackets (``min_early_stopping_rate`` 0, 1, …; each trial lands in one) between
    ``min_resource`` and ``max_resource`` epochs; ``auto`` (the default) means the trial
    budget's ``epochs`` (resolved when the pruner is built), what Optuna's own ``auto`` would
    find only after a search trial had finished. A key of another pruner is refused; the
    keys a pruner does not take are left out of ``model_dump`` (and so of a study's stored
    definition: median and none spaces dump exactly as before these pruners existed).
    """

    name: Literal["median", "none", "successive_halving", "hyperband"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(3, ge=0)
    min_resource: Annotated[int, Field(ge=1)] | None = None
    max_resource: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    reduction_factor: Annotated[int, Field(ge=2)] | None = None
    min_early_stopping_rate: Annotated[int, Field(ge=0)] | None = None

    @field_validator("max_resource", mode="before")
    @classmethod
    def _auto_or_epochs(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not float(value).is_integer() or value < 1:
            raise ValueError(f"must be auto or a whole number of epochs >= 1, got {value!r}")
        return int(value)

    @field_validator("n_startup_trials", "n_warmup_steps", "min_resource", "max_resource",
                     "reduction_factor", "min_early_stopping_rate")
    @classmethod
    def _key_of_this_pruner(cls, value: Any, info: Any) -> Any:
        # Runs only for keys given in the file (never on defaults): ``name`` comes first.
        name = info.data.get("name")
        if name is None:  # the name itself is wrong: that error is the one to show
            return value
        if info.field_name not in _PRUNER_KEYS[name]:
            owners = [p for p, keys in _PRUNER_KEYS.items() if info.field_name in keys]
            raise ValueError(f"not a key of pruner {name!r} (it takes "
                             f"{', '.join(_PRUNER_KEYS[name])}); {info.field_name} belongs to "
                             f"{' and '.join(owners)}")
        if value is None:
            raise ValueError("needs a value (leave the key out for its default)")
        if info.field_name == "max_resource" and isinstance(value, int):
            low = info.data.get("min_resource") or _RUNG_DEFAULTS["min_resource"]
            if value < low:
                raise ValueError(f"must be >= min_resource ({low}), got {value}")
        return value

    @model_validator(mode="after")
    def _rung_defaults(self) -> PrunerConfig:
        for key in _PRUNER_KEYS[self.name]:
            if getattr(self, key) is None:
                object.__setattr__(self, key, _RUNG_DEFAULTS[key])
        return self

    @model_serializer(mode="wrap")
    def _only_own_keys(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k == "name" or k in _PRUNER_KEYS[self.name]}


class SearchSpace(_Strict):
    """A search-space file (``search_spaces/*.yaml``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    dataset: str = "shapes"
    dataset_options: DatasetOptions = DatasetOptions()
    structure: Literal["sequence", "subpolicies", "randaugment"] = "sequence"
    # Slots every trial's policy applies before its searched shared part (its ``base``), e.g.
    # [{op: hflip, p: 0.5, magnitude: 1.0}, {op: crop, p: 1.0, magnitude: 0.5}]: a search on
    # top of the standard recipe.
    base: list[FixedSlot] = Field(default_factory=list)
    shared: SharedSpace = SharedSpace()
    per_task: PerTaskSpace = PerTaskSpace(slots=0)
    weights: WeightSpace = WeightSpace()
    # Δm% is measured against the ``reference`` baseline trained under the same budget and seed,
    # first, before any other trial: as one multi-task network, or with ``single_task_reference``
    # as one network per task (Maninis et al.'s definition). ``task_weights`` weighs the tasks in
    # Δm%'s mean over tasks (default 1 each). ``objective: pareto`` makes each task's Δ% (mean over
    # its primary metrics) an objective of a multi-objective study instead.
    reference: str = "flipcrop"
    single_task_reference: bool = False
    task_weights: dict[str, float] = Field(default_factory=dict)
    objective: Literal["delta_m", "pareto"] = "delta_m"
    budget: Budget = Budget()
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    # Fit the space to the dataset it runs on (``policysearch.space_adapt``): leave out the ops
    # that the dataset declares unsafe or that cannot move its targets, replace a reference that
    # uses one, keep only the dataset_options it takes. The resolved space defines the study.
    adapt: bool = False
    # Search on a reproducible subset of the training split (``TrainSubset``): ``subset: 4000``
    # or ``subset: {n: 4000, seed: 0}``. Part of the study's definition.
    subset: TrainSubset | None = None

    @field_validator("subset", mode="before")
    @classmethod
    def _subset_shorthand(cls, value: Any) -> Any:
        # ``subset: N`` is ``subset: {n: N}``; the error of a bad N then names subset.n.
        if isinstance(value, int) and not isinstance(value, bool):
            return {"n": value}
        if value is None or isinstance(value, dict | TrainSubset):
            return value
        raise ValueError(f"must be a number of samples N or {{n: N, seed: S}}, got {value!r}")

    @field_validator("per_task")
    @classmethod
    def _randaugment_views(cls, per_task: PerTaskSpace, info: Any) -> PerTaskSpace:
        structure = info.data.get("structure")
        if per_task.randaugment and structure not in (None, "randaugment"):
            raise ValueError(f"n (a RandAugment view per task) needs structure: randaugment, "
                             f"got {structure}; per-task views of a {structure} space are "
                             "slots (per_task.slots)")
        return per_task

    @field_validator("reference")
    @classmethod
    def _known_baseline(cls, name: str) -> str:
        from policysearch.augment import BASELINES, is_baseline

        if not is_baseline(name):
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)} "
                             "or a timm-style string such as rand-n2-m9")
        return name

    @field_validator("task_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for task, w in weights.items():
            if not w > 0:
                raise ValueError(f"the weight of task {task!r} must be > 0, got {w!r}")
        return weights

    def with_budget(self, **overrides: Any) -> SearchSpace:
        """A copy whose budget has the given non-None fields replaced (CLI flags); a bad
        value is a ``UserError`` naming its flag (``--epochs``, ``--image-size``, …)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        try:
            budget = Budget(**{**self.budget.model_dump(), **changes})
        except ValidationError as err:
            found = _user_error(err, "command line")
            key = (found.field or "").split(".")[0]  # image_size.int: the flag --image-size
            if key not in changes:
                raise found from None
            flag = "--weights" if key == "encoder_weights" else f"--{key.replace('_', '-')}"
            raise UserError(found.message, field=flag) from None
        return self.model_copy(update={"budget": budget})

    def with_subset(self, n: int | None, *, field: str = "--subset") -> SearchSpace:
        """A copy that searches on ``n`` training samples (``--subset``), with the subset seed
        this space has (0 when it has none); None: drop the subset (the whole training split).
        ``n`` below 1 is a ``UserError`` naming ``field``."""
        if n is None:
            return self.model_copy(update={"subset": None}) if self.subset else self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"must be a number of training samples >= 1, got {n!r}",
                            field=field)
        seed = self.subset.seed if self.subset is not None else 0
        return self.model_copy(update={"subset": TrainSubset(n=n, seed=seed)})

    def for_tasks(self, tasks: Mapping[str, str]) -> SearchSpace:
        """A copy whose ``per_task.tasks`` lists the tasks its rule selects of ``tasks``
        (name -> kind, in the dataset's order); a list of names is kept as it is."""
        if isinstance(self.per_task.tasks, list):
            return self
        per_task = self.per_task.model_copy(update={"tasks": self.per_task.selects(tasks)})
        return self.model_copy(update={"per_task": per_task})

    def searched(self) -> str:
        """What a trial searches, in words (``policysearch check``): the shared slots, or
        RandAugment's N and M per view (the shared one, and each task's own when it has a
        RandAugment), then how many ops the trials draw from."""
        views = self._task_views()
        ops = {*self.shared.ops, *(self.per_task.ops if views else ())}
        if self.structure != "randaugment":
            return f"{self.shared.slots} shared slot(s), {len(ops)} ops"
        shared, per_task = self.shared, self.per_task
        text = (f"RandAugment N in {list(shared.n)} and M in {list(shared.magnitude)} for the "
                "shared view")
        if views and per_task.n is not None:
            text += (f", N in {list(per_task.n)} and M in {list(per_task.magnitude)} for each "
                     f"task's own view ({views})")
        elif views:
            text += f", {per_task.slots} slot(s) for each task's own view ({views})"
        return f"{text}, {len(ops)} ops"

    def _task_views(self) -> str:
        """The tasks that get a view of their own, as written (``tasks auto``, ``tasks of
        kinds …``, ``tasks a, b``); "" for none."""
        per_task = self.per_task
        if not per_task.searches_views:
            return ""
        if isinstance(per_task.tasks, list):
            return f"tasks {', '.join(per_task.tasks)}" if per_task.tasks else ""
        if per_task.tasks == "auto":
            return "tasks auto"
        return f"tasks of kinds {', '.join(per_task.tasks.kinds)}"

    def canonical(self) -> dict[str, Any]:
        """Everything that defines the study: a resume must match it exactly."""
        data = self.model_dump(mode="json")
        data.pop("description", None)
        data.pop("adapt", None)  # the space it resolved to defines the study
        data["budget"].pop("loader_workers", None)  # changes no number
        if not data["weights"].get("params"):  # as stored before the field existed
            data["weights"].pop("params", None)
        if not data["base"]:  # likewise
            data.pop("base")
        if data["per_task"].get("n") is None:  # likewise: per-task views of slots
            data["per_task"].pop("n", None)
        for key in ("test_seed", "normals"):  # likewise
            if data["dataset_options"].get(key) is None:
                data["dataset_options"].pop(key, None)
        if data.get("subset") is None:  # likewise: a space without a subset keeps its form
            data.pop("subset", None)
        return data

    def fingerprint(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(kw_only=True)
class SpaceOverrides:
    """The flags that override a space file's dataset and training budget (``search`` and
    ``benchmark`` share them); None keeps the file's value. ``subset``: train on that many
    samples of the training split (``--subset``; the space's subset seed, else 0)."""

    dataset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    image_size: int | tuple[int, int] | None = None
    amp: bool | None = None
    encoder: str | None = None
    weights: str | None = None  # the encoder's weights file
    loader_workers: int | str | None = None  # an int or "auto"
    subset: int | None = None

    def apply(self, space: SearchSpace) -> SearchSpace:
        """``space`` with these overrides."""
        space = space.with_budget(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                  image_size=self.image_size, amp=self.amp,
                                  encoder=self.encoder, encoder_weights=self.weights,
                                  loader_workers=self.loader_workers)
        if self.dataset is not None:
            from policysearch.data import check_spec

            check_spec(self.dataset, field="--dataset")
            space = space.model_copy(update={"dataset": self.dataset})
        if self.subset is not None:
            space = space.with_subset(self.subset)
        return space

    def check_encoder(self, space: SearchSpace) -> None:
        """Build ``space``'s encoder once, so that a bad encoder name or weights file is a
        ``UserError`` before any training, not inside it; one the ``--encoder`` flag gave
        names the flag."""
        from policysearch.models import make_encoder

        try:
            make_encoder(space.budget.encoder, weights=space.budget.encoder_weights)
        except UserError as err:
            if err.field != "encoder" or self.encoder is None:
                raise
            raise UserError(err.message, source=err.source, field="--encoder") from None


def _user_error(err: ValidationError, source: str) -> UserError:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    return UserError(message, source=source, field=field)


def shipped_spaces() -> dict[str, Path]:
    """Names of the search spaces that ship with the package, with their files."""
    try:
        folder = resources.files("policysearch.search_spaces")
    except ModuleNotFoundError:  # imported from a source checkout rather than the installed wheel
        folder = Path(__file__).resolve().parent.parent / "search_spaces"
    return {
        entry.name.removesuffix(".yaml"): Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def read_yaml(path: Path) -> Any:
    """Parse a YAML file with the safe loader; any problem is a UserError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise UserError("is a directory, not a YAML file", source=str(path)) from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", source=str(path)) from None
    except OSError as err:
        raise UserError(f"cannot read: {err.strerror}", source=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"invalid YAML: {problem}", source=str(path), field=where) from None


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Read a shipped space by name (``default``) or a YAML file by path, validated."""
    spaces = shipped_spaces()
    text = str(name_or_path)
    if text in spaces:
        path = spaces[text]
    else:
        path = Path(text)
        if not path.exists() and path.suffix not in (".yaml", ".yml"):
            known = ", ".join(sorted(spaces))
            raise UserError(f"no shipped space of that name and no such file (shipped: {known})",
                            source=text, field="--space")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError("must be a YAML mapping of keys to values", source=str(path))
    data.setdefault("name", path.stem)
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        raise _user_error(err, str(path)) from None


def validate_tasks(space: SearchSpace, task_names: list[str], source: str) -> None:
    """Check that per-task policies name tasks the dataset has."""
    for i, task in enumerate(space.per_task.names):
        if task not in task_names:
            raise UserError(f"unknown task {task!r}; the dataset has {', '.join(task_names)}",
                            source=source, field=f"per_task.tasks[{i}]")
    for task in space.task_weights:
        if task not in task_names:
            raise UserError(f"unknown task {task!r}; the dataset has {', '.join(task_names)}",
                            source=source, field=f"task_weights.{task}")
    if space.per_task.names and not space.per_task.searches_views:
        raise UserError("per_task.tasks is set but per_task.slots is 0", source=source,
                        field="per_task.slots")
