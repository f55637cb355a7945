"""What a search is given: ``SearchOptions`` (everything ``policysearch search`` takes) and
``SearchRun`` (what the driver resolved once — space, dataset, tasks, folders — and hands to an
engine; each ``--workers`` process resolves its own with ``load_run``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policysearch.config import SearchSpace, SpaceOverrides, load_space
from policysearch.errors import UserError
from policysearch.events import DatasetLoaded, SearchEvent, SearchListener, SpaceAdapted

if TYPE_CHECKING:
    from policysearch.augment import Policy
    from policysearch.data.base import MultiTaskDataset
    from policysearch.records import MetricsInfo, StudyRecords
    from policysearch.training import Reporter, TrialResult

OBJECTIVES = ("delta_m", "pareto")
# How a search proposes trials (``--method``; None: the space's ``sampler``): ``tpe`` and
# ``random`` set the space's sampler, so the choice is part of the study's definition;
# ``density`` trains fold models once and scores candidates without training under them
# (``search.density``).
METHODS = ("tpe", "random", "density")


@dataclass
class SearchOptions(SpaceOverrides):
    """Everything ``policysearch search`` takes; None means "the space file's value"."""

    space: str | Path = "default"
    engine: str = "optuna"
    trials: int = 8
    skip_bad_samples: bool | None = None
    storage: str | None = None
    study: str | None = None
    out: Path | None = None
    workers: int = 1
    device: str = "auto"
    seed: int = 0
    timeout: float | None = None
    threads: int | None = None
    objective: str | None = None  # delta_m | pareto (part of the study's definition)
    method: str | None = None  # tpe | random | density (METHODS); None: the space's sampler
    # --method density only (None: search.density.DensitySettings' defaults):
    folds: int | None = None
    heldout: float | None = None
    copies: int | None = None
    keep: int | None = None
    # --engine ray only:
    ray_address: str | None = None  # None: start a local Ray instance; "auto": join a cluster
    ray_storage: str | None = None  # experiment root (shared filesystem); default: --out
    cpus_per_trial: float | None = None  # default: --threads, else all CPUs / --workers
    gpus_per_trial: float = 0.0  # fractional: several trials share one GPU
    scheduler: str = "asha"  # asha | pbt | none
    report: bool = True  # keep OUT/report.html current (policysearch.reporting.report)
    log_to: str | None = None  # tensorboard | mlflow (policysearch.reporting.tracking)
    # After the trials: the K best trained again with S fresh seeds, the best mean exported
    # (policysearch.search.finalists); 0: off.
    finalists: int = 0
    finalist_seeds: int = 3

    def trial_threads(self) -> int:
        """CPU threads per trial: ``--threads``, else this host's CPUs shared by the workers."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def ray_resources(self) -> dict[str, float]:
        """What Ray reserves per trial: ``{"cpu": --cpus-per-trial (default: the trial's
        threads), "gpu": --gpus-per-trial}`` (a fraction lets several trials share one GPU)."""
        cpus = float(self.cpus_per_trial if self.cpus_per_trial is not None
                     else self.trial_threads())
        gpus = float(self.gpus_per_trial or 0.0)
        if not cpus > 0:
            raise UserError(f"must be > 0, got {cpus:g}", field="--cpus-per-trial")
        if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
            raise UserError(f"must be a fraction of one GPU or a whole number, got {gpus:g}",
                            field="--gpus-per-trial")
        if self.device.startswith("cuda") and gpus == 0:
            raise UserError("--device cuda with --engine ray needs --gpus-per-trial > 0 (Ray "
                            "hides the GPUs from trials that did not ask for one)",
                            field="--gpus-per-trial")
        return {"cpu": cpus, "gpu": gpus}

    def check_ray_storage(self) -> None:
        """Refuse a ``--ray-storage`` that cannot hold experiment folders, before anything is
        written: a file, or a path below one, or a folder this process cannot write in (the
        nearest existing one, when the path is still to be made)."""
        if not self.ray_storage:
            return
        path = Path(self.ray_storage).expanduser()
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None:
            return
        if not existing.is_dir():
            what = "not a folder" if existing == path else f"{existing} is not a folder"
            raise UserError(what, source=self.ray_storage, field="--ray-storage")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write in {existing} (permission denied)",
                            source=self.ray_storage, field="--ray-storage")


def resolve_space(options: SearchOptions) -> SearchSpace:
    """The space file with the options' overrides (budget, dataset, objective, method, data,
    ``--subset``)."""
    space = options.apply(load_space(options.space))
    if options.objective is not None:
        if options.objective not in OBJECTIVES:
            raise UserError(f"expected one of {', '.join(OBJECTIVES)}, got {options.objective!r}",
                            field="--objective")
        space = space.model_copy(update={"objective": options.objective})
    if options.method is not None:
        if options.method not in METHODS:
            raise UserError(f"expected one of {', '.join(METHODS)}, got {options.method!r}",
                            field="--method")
        if options.method != "density":
            sampler = space.sampler.model_copy(update={"name": options.method})
            space = space.model_copy(update={"sampler": sampler})
    if options.skip_bad_samples is not None:
        data_opts = space.dataset_options.model_copy(
            update={"skip_bad_samples": options.skip_bad_samples})
        space = space.model_copy(update={"dataset_options": data_opts})
    return space


@dataclass
class SearchRun:
    """One search as an engine runs it."""

    options: SearchOptions
    space: SearchSpace
    dataset: MultiTaskDataset
    tasks: dict[str, str]  # name -> kind, in the dataset's order
    metrics_info: MetricsInfo
    dataset_notes: list[str]
    study_name: str
    out_dir: Path
    threads: int
    progress: SearchListener | None = None
    on_trial_end: Callable[[StudyRecords], None] | None = field(default=None, repr=False)

    @property
    def subset(self) -> dict[str, Any] | None:
        """The training subset the trials train on (``{n, seed, of, stratified_by}``, what the
        study records), None for the whole training split."""
        from policysearch.data.subset import subset_of

        choice = subset_of(self.dataset)
        return choice.to_dict() if choice is not None else None

    def emit(self, event: SearchEvent) -> None:
        """Pass ``event`` to the search's listener, if any."""
        if self.progress is not None:
            self.progress(event)

    def runner(self) -> Callable[[Policy, Reporter], TrialResult]:
        """How every trial of the search trains: its policy on the dataset, under the
        budget, with the search's seed (``training.train_policy``)."""
        from policysearch.training import train_policy

        def run(policy: Policy, reporter: Reporter) -> TrialResult:
            return train_policy(policy, self.dataset, self.space.budget, seed=self.options.seed,
                                device=self.options.device, threads=self.threads,
                                reporter=reporter)

        return run


def load_run(options: SearchOptions, space: SearchSpace, *, study_name: str, out_dir: Path,
             threads: int, progress: SearchListener | None = None) -> SearchRun:
    """Load the dataset once and resolve the space against it (``space_adapt.load_adapted``:
    its task rule, its tasks checked, with ``adapt: true`` its ops and reference fitted), read
    the tasks: the run every engine (and every worker process) is given. Emits ``dataset``,
    then ``space_adapted`` when resolving changed something or has a warning."""
    from policysearch.data.loading import dataset_notes
    from policysearch.data.subset import SubsetError, subset_of
    from policysearch.space_adapt import load_adapted
    from policysearch.tasks import task_setup

    try:
        adapted, dataset = load_adapted(space)
    except SubsetError as err:  # name where the subset came from: the flag or the space file
        from policysearch.config import shipped_spaces

        flag = options.subset is not None
        source = str(shipped_spaces().get(str(options.space), options.space))
        raise UserError(err.message, source=None if flag else source,
                        field="--subset" if flag else "subset.n") from None
    space = adapted.space
    notes = dataset_notes(dataset)
    if progress is not None:
        choice = subset_of(dataset)
        progress(DatasetLoaded(name=space.dataset, notes=notes, sizes={
            s: len(dataset.split(s)) for s in ("train", "val", "test")},
            subset=choice.to_dict() if choice is not None else None))
        if adapted.changes or adapted.warnings:
            progress(SpaceAdapted(space=space.name, dataset=space.dataset,
                                  changes=list(adapted.changes),
                                  warnings=list(adapted.warnings)))
    tasks, info = task_setup(dataset)
    return SearchRun(options=options, space=space, dataset=dataset, tasks=tasks,
                     metrics_info=info, dataset_notes=notes, study_name=study_name,
                     out_dir=out_dir, threads=threads, progress=progress)
