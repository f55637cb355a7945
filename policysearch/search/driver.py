"""The search as one call: validate inputs, load the dataset once, run the engine, write outputs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from policysearch.augment import Policy
from policysearch.config import SearchSpace, load_space, validate_tasks
from policysearch.data.base import MultiTaskDataset
from policysearch.data.loading import dataset_notes, load_dataset
from policysearch.errors import UserError
from policysearch.exports.best_policy import ExportResult, export_policy, pick_trial
from policysearch.records import StudyRecords
from policysearch.reporting.tables import results_frame, write_results

OBJECTIVES = ("delta_m", "pareto")
ENGINES = ("optuna", "ray")
SCHEDULERS = ("asha", "pbt", "none")

if TYPE_CHECKING:
    from policysearch.training import Reporter, TrialResult


@dataclass
class SearchOptions:
    """Everything ``policysearch search`` takes; None means "the space file's value"."""

    space: str | Path = "default"
    dataset: str | None = None
    engine: str = "optuna"
    trials: int = 8
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    image_size: int | tuple[int, int] | None = None
    amp: bool | None = None
    encoder: str | None = None
    weights: str | None = None
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
    # --engine ray only:
    ray_address: str | None = None  # None: start a local Ray instance; "auto": join a cluster
    ray_storage: str | None = None  # experiment root (shared filesystem); default: --out
    cpus_per_trial: float | None = None  # default: --threads, else all CPUs / --workers
    gpus_per_trial: float = 0.0  # fractional: several trials share one GPU
    scheduler: str = "asha"  # asha | pbt | none
    report: bool = True  # keep OUT/report.html current (policysearch.reporting.report)
    log_to: str | None = None  # tensorboard | mlflow (policysearch.reporting.tracking)


@dataclass
class SearchOutcome:
    study: StudyRecords
    table: pd.DataFrame
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    export: ExportResult | None = None


def resolve_space(options: SearchOptions) -> SearchSpace:
    space = load_space(options.space)
    space = space.with_budget(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                              image_size=options.image_size, amp=options.amp,
                              encoder=options.encoder, encoder_weights=options.weights)
    if options.dataset is not None:
        space = space.model_copy(update={"dataset": options.dataset})
    if options.objective is not None:
        if options.objective not in OBJECTIVES:
            raise UserError(f"expected one of {', '.join(OBJECTIVES)}, got {options.objective!r}",
                            field="--objective")
        space = space.model_copy(update={"objective": options.objective})
    if options.skip_bad_samples is not None:
        data_opts = space.dataset_options.model_copy(
            update={"skip_bad_samples": options.skip_bad_samples})
        space = space.model_copy(update={"dataset_options": data_opts})
    return space


def load_study_records(out: Path | None, storage: str | None,
                       study: str | None) -> StudyRecords:
    """A study's records from a search's ``--out`` folder (Optuna journal or Ray
    experiment) or from ``--storage URL --study NAME``."""
    from policysearch.search.optuna_engine import load_records
    from policysearch.search.ray_results import is_ray_experiment, load_ray_records

    if storage is None and out is None:
        raise UserError("give --out DIR or --storage URL --study NAME", field="--out")
    if storage is None and out is not None and is_ray_experiment(out):
        return load_ray_records(out)
    return load_records(out_dir=out, storage=storage, study_name=study)


def make_runner(dataset: MultiTaskDataset, space: SearchSpace, options: SearchOptions,
                threads: int | None) -> Callable[[Policy, Reporter], TrialResult]:
    """How every trial of a search trains: its policy on the dataset, under the budget."""
    from policysearch.training import train_policy

    def runner(policy: Policy, reporter: Reporter) -> TrialResult:
        return train_policy(policy, dataset, space.budget, seed=options.seed,
                            device=options.device, threads=threads, reporter=reporter)

    return runner



def search(options: SearchOptions,
           progress: Callable[[str, dict[str, Any]], None] | None = None) -> SearchOutcome:
    """Run (or resume) a policy search and write results and the best policy into ``out``.

    With ``objective: pareto`` the study has one objective per task and runs without a pruner
    (Optuna cannot prune multi-objective trials; progress gets a ``pruning_off`` event when the
    space asks for one); ``best_policy.yaml`` is then the Pareto front's best Δm%.
    """
    from policysearch.models import make_encoder
    from policysearch.search.optuna_engine import journal_lock, optimize
    from policysearch.training import resolve_device

    if options.engine not in ENGINES:
        raise UserError(f"expected one of {', '.join(ENGINES)}, got {options.engine!r}",
                        field="--engine")
    if options.scheduler not in SCHEDULERS:
        raise UserError(f"expected one of {', '.join(SCHEDULERS)}, got {options.scheduler!r}",
                        field="--scheduler")
    if options.workers < 1:
        raise UserError("must be at least 1", field="--workers")
    if (options.engine == "optuna" and options.workers > 1 and options.storage
            and options.storage.startswith("sqlite")):
        raise UserError("SQLite does not tolerate several writers: with --workers use a "
                        ".journal file (the default) or a PostgreSQL URL", field="--storage")
    if options.trials < 1:
        raise UserError("must be at least 1", field="--trials")
    if options.engine == "optuna":  # (Ray trials run on the cluster's GPUs, not this host's)
        resolve_device(options.device)  # a missing GPU is a user error before any trial
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.workers)
    space = resolve_space(options)
    # A bad encoder name or weights file is a user error before any trial, not inside one.
    make_encoder(space.budget.encoder, weights=space.budget.encoder_weights)
    study_name = options.study or space.name
    out_dir = options.out or Path("runs") / study_name
    if options.engine == "optuna" and options.storage is None:
        from policysearch.search.ray_results import is_ray_experiment

        if is_ray_experiment(out_dir):
            raise UserError("this folder holds a Ray experiment: resume it with --engine ray, "
                            "or give another --out", source=str(out_dir), field="--out")
    dataset = load_dataset(space)
    tracked = None
    if options.log_to is not None:
        from policysearch.reporting.tracking import TrackedProgress, make_tracker

        tracked = TrackedProgress(make_tracker(options.log_to, out_dir, study_name), progress)
        progress = tracked
    notes = dataset_notes(dataset)
    if progress is not None:
        progress("dataset", {"name": space.dataset, "notes": notes,
                             "sizes": {s: len(dataset.split(s)) for s in ("train", "val", "test")}})
    from policysearch.tasks import task_setup

    task_kinds, info = task_setup(dataset)
    validate_tasks(space, list(task_kinds), f"search space {space.name}")

    from policysearch.reporting.report import REPORT_EVERY_S, REPORT_NAME, ReportWriter

    report = (ReportWriter(out_dir / REPORT_NAME, dataset=dataset, every_s=REPORT_EVERY_S)
              if options.report else None)

    def checkpoint(study: StudyRecords, final: bool = False) -> None:
        write_results(results_frame(study, warn=False), out_dir)
        if tracked is not None:
            tracked.record(study)
        if report is not None:
            report.final(study) if final else report.after_trial(study)

    try:
        with contextlib.ExitStack() as stack:
            if options.engine == "optuna":
                stack.enter_context(journal_lock(options.storage, out_dir))
            if options.engine == "ray":
                from policysearch.search.ray_engine import optimize_ray

                records = optimize_ray(space, options=options, dataset=dataset, tasks=task_kinds,
                                       metrics_info=info, dataset_notes=notes, out_dir=out_dir,
                                       study_name=study_name, threads=threads, progress=progress,
                                       on_trial_end=checkpoint)
            elif options.workers > 1:
                records = _search_with_workers(options, space, task_kinds, info, dataset.name,
                                               notes, out_dir, study_name, threads, progress,
                                               checkpoint)
            else:
                from policysearch.search.workers import worker_label

                # On a shared database other hosts may sample from the same history at the
                # same moment: a per-process salt keeps their suggestions apart.
                shared_db = (options.storage is not None
                             and not options.storage.endswith(".journal"))
                records = optimize(
                    space, tasks=task_kinds, metrics_info=info, dataset_name=dataset.name,
                    dataset_notes=notes, runner=make_runner(dataset, space, options, threads),
                    n_trials=options.trials, out_dir=out_dir, storage=options.storage,
                    study_name=study_name, seed=options.seed, timeout=options.timeout,
                    progress=progress, on_trial_end=checkpoint, worker=worker_label(),
                    sampler_salt=os.getpid() if shared_db else 0,
                    device=resolve_device(options.device).type)
    except KeyboardInterrupt:
        _report_interrupt(options, out_dir, study_name,
                          lambda study: checkpoint(study, final=True), progress)
        raise
    finally:
        if tracked is not None:
            tracked.close()
    table = results_frame(records)
    files = write_results(table, out_dir)
    outcome = SearchOutcome(study=records, table=table, out_dir=out_dir, files=files)
    front = space.objective == "pareto"
    if (bool(table.get("pareto", pd.Series(dtype=bool)).any()) if front
            else table["rank"].notna().any()):
        policy, _ = pick_trial(records, rank=None if front else 1, front=front)
        outcome.export = export_policy(policy, out_dir / "best_policy.yaml")
        outcome.files.append(outcome.export.yaml_path)
        outcome.files.extend(outcome.export.albumentations.values())
    if report is not None:
        outcome.files.append(report.final(records))
    return outcome


def _report_interrupt(options: SearchOptions, out_dir: Path, study_name: str,
                      checkpoint: Callable[[StudyRecords], None],
                      progress: Callable[[str, dict[str, Any]], None] | None) -> None:
    """After Ctrl-C: write the results table and report of what finished and emit an
    ``interrupted`` summary (counts by state, best Δm%). Best effort: the interrupt itself
    goes on."""
    try:
        records = (load_study_records(out_dir, None, None) if options.storage is None
                   else load_study_records(None, options.storage, study_name))
        checkpoint(records)
    except Exception:  # noqa: BLE001 - nothing readable yet (no study): nothing to summarise
        return
    if progress is None:
        return
    states: dict[str, int] = {}
    for record in records.records:
        states[record.state] = states.get(record.state, 0) + 1
    frame = results_frame(records, warn=False)
    ranked = frame[frame["rank"].notna()].sort_values("rank")
    best = (None if ranked.empty
            else (float(ranked["delta_m"].iloc[0]), int(ranked["trial"].iloc[0])))
    progress("interrupted", {"states": states, "best": best, "out": str(out_dir)})


def _search_with_workers(options: SearchOptions, space: SearchSpace, tasks: dict[str, str],
                         info: dict, dataset_name: str, notes: list[str], out_dir: Path,
                         study_name: str, threads: int,
                         progress: Callable[[str, dict[str, Any]], None] | None,
                         checkpoint: Callable[[StudyRecords], None]) -> StudyRecords:
    """``--workers K`` with the Optuna engine: the driver opens the study once (definition,
    stale trials), then K worker processes share it (policysearch.search.workers)."""
    from policysearch.search.optuna_engine import (
        FINISHED,
        PRUNING_OFF,
        fail_trials_of,
        open_study,
    )
    from policysearch.search.workers import run_workers

    emit = progress or (lambda event, data: None)
    study, is_file = open_study(space, storage=options.storage, study_name=study_name,
                                out_dir=out_dir, seed=options.seed, metrics_info=info,
                                tasks=tasks, dataset=dataset_name, dataset_notes=notes)
    if is_file:  # only this driver writes a local journal (its lock says so)
        for number in fail_trials_of(study, None, "left running by an interrupted search"):
            emit("stale", {"trial": number})
    if space.objective == "pareto" and space.pruner.name != "none":
        emit("pruning_off", {"message": PRUNING_OFF})
    emit("start", {"study": study_name, "target": options.trials, "workers": options.workers,
                   "finished": len(study.get_trials(deepcopy=False, states=FINISHED))})
    return run_workers(options, n_workers=options.workers, threads=threads,
                       study_name=study_name, out_dir=out_dir, study=study, progress=progress,
                       on_trial_end=checkpoint)
