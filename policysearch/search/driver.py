"""The search as one call: validate the options, load the dataset once, hand the run to its
engine, and keep the results, the best policy and the report written."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from policysearch.errors import UserError
from policysearch.events import Interrupted, ReportFailed, SearchEvent, SearchListener
from policysearch.exports.best_policy import (
    ExportResult,
    export_policy,
    pick_finalist,
    pick_trial,
)
from policysearch.records import StudyRecords
from policysearch.reporting.tables import results_frame, write_results
from policysearch.search.finalists import check_finalists, race_finalists
from policysearch.search.options import (
    OBJECTIVES,
    SearchOptions,
    SearchRun,
    load_run,
    resolve_space,
)

ENGINES = ("optuna", "ray")
SCHEDULERS = ("asha", "pbt", "none")
Engine = Callable[[SearchRun], StudyRecords]

__all__ = ["ENGINES", "OBJECTIVES", "SCHEDULERS", "SearchOptions", "SearchOutcome",
           "load_study_records", "resolve_space", "search"]


@dataclass
class SearchOutcome:
    """What a search produced: its study's records (None for ``--method density``, which has
    no trials), the results table, the files written, the exported best policy, and for
    ``--method density`` its cost (``search.density.DensitySearch.cost``)."""

    study: StudyRecords | None
    table: pd.DataFrame
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    export: ExportResult | None = None
    cost: dict[str, Any] | None = None


def load_study_records(out: Path | None, storage: str | None,
                       study: str | None) -> StudyRecords:
    """A study's records from a search's ``--out`` folder (Optuna journal or Ray
    experiment) or from ``--storage URL --study NAME``."""
    from policysearch.search.stores import load_records

    return load_records(out, storage, study)


def check_options(options: SearchOptions) -> None:
    """The options' own consistency, before anything is loaded or written."""
    from policysearch.training import resolve_device

    if options.engine not in ENGINES:
        raise UserError(f"expected one of {', '.join(ENGINES)}, got {options.engine!r}",
                        field="--engine")
    if options.scheduler not in SCHEDULERS:
        raise UserError(f"expected one of {', '.join(SCHEDULERS)}, got {options.scheduler!r}",
                        field="--scheduler")
    if options.method is not None and options.engine == "ray" and options.scheduler == "pbt":
        raise UserError("--scheduler pbt draws its population at random and explores by "
                        "perturbing it: it takes no --method", field="--method")
    _check_density_options(options)
    if options.workers < 1:
        raise UserError("must be at least 1", field="--workers")
    if (options.engine == "optuna" and options.workers > 1 and options.storage
            and options.storage.startswith("sqlite")):
        raise UserError("SQLite does not tolerate several writers: with --workers use a "
                        ".journal file (the default) or a PostgreSQL URL", field="--storage")
    if options.trials < 1:
        raise UserError("must be at least 1", field="--trials")
    if options.threads is not None and options.threads < 1:
        raise UserError("must be at least 1", field="--threads")
    if options.timeout is not None and not options.timeout > 0:
        raise UserError(f"must be > 0 seconds, got {options.timeout:g}", field="--timeout")
    if options.engine == "optuna":  # (Ray trials run on the cluster's GPUs, not this host's)
        resolve_device(options.device)  # a missing GPU is a user error before any trial
    else:
        if options.storage is not None:
            raise UserError("is the Optuna engine's storage; with --engine ray, results go to "
                            "--out or --ray-storage (a folder every node sees)",
                            field="--storage")
        options.ray_resources()
        options.check_ray_storage()


_DENSITY_FLAGS = ("folds", "heldout", "copies", "keep")


def _check_density_options(options: SearchOptions) -> None:
    """The density flags only with ``--method density``, which runs in this process on its own
    folder (no Ray, no workers, no finalists, no database, no tracker, no timeout)."""
    if options.method != "density":
        for name in _DENSITY_FLAGS:
            if getattr(options, name) is not None:
                raise UserError("is a setting of --method density", field=f"--{name}")
        return
    refused = {"--engine ray": options.engine != "optuna",
               "--workers": options.workers > 1, "--finalists": options.finalists > 0,
               "--storage": options.storage is not None, "--log-to": options.log_to is not None,
               "--timeout": options.timeout is not None}
    for flag, given in refused.items():
        if given:
            raise UserError(f"--method density trains its fold models and scores candidates "
                            f"in this process, into --out: it takes no {flag.split()[0]}",
                            field=flag.split()[0])
    from policysearch.search.density import settings_of

    settings_of(options).check()


def _engine(options: SearchOptions) -> Engine:
    """The function that runs the search's trials."""
    if options.engine == "ray":
        if options.scheduler == "pbt":
            from policysearch.search.ray_pbt import optimize_pbt

            return optimize_pbt
        from policysearch.search.ray_engine import optimize_ray

        return optimize_ray
    return _search_with_workers if options.workers > 1 else _search_in_process


@contextlib.contextmanager
def _study_lock(options: SearchOptions, out_dir: Path) -> Iterator[None]:
    """The Optuna engine's journal held for this search alone (the Ray engines lock their
    experiment themselves)."""
    if options.engine != "optuna":
        yield
        return
    from policysearch.search.optuna_study import journal_lock

    with journal_lock(options.storage, out_dir):
        yield


class _Checkpoint:
    """What is rewritten after every trial: the results table and the trackers' study view;
    with ``final`` (Ctrl-C) the report too. During the search the report follows the events
    (``ReportWriter`` is a listener)."""

    def __init__(self, run: SearchRun, tracked: Any):
        from policysearch.reporting.report import REPORT_EVERY_S, REPORT_NAME, ReportWriter

        options = run.options
        self.out_dir = run.out_dir
        self.tracked = tracked
        self.emit = run.emit
        self.report = None
        if options.report:
            self.report = ReportWriter(
                run.out_dir / REPORT_NAME, dataset=run.dataset, every_s=REPORT_EVERY_S,
                records=lambda: load_study_records(None if options.storage else run.out_dir,
                                                   options.storage, run.study_name))

    def __call__(self, study: StudyRecords, final: bool = False) -> None:
        write_results(results_frame(study, warn=False), self.out_dir)
        if self.tracked is not None:
            self.tracked.record(study)
        if final:
            self.final_report(study)

    def final_report(self, study: StudyRecords) -> Path | None:
        """The report written at the end; a failure is one ``ReportFailed`` line, never the
        end of a search whose results stand."""
        if self.report is None:
            return None
        path = self.report.final(study)
        if path is None:
            self.emit(ReportFailed(error=self.report.error or "unknown error",
                                   out=str(self.out_dir)))
        return path


def _fan_out(*listeners: SearchListener | None) -> SearchListener:
    """One listener passing each event to every given one, in order."""
    chosen = [listener for listener in listeners if listener is not None]

    def emit(event: SearchEvent) -> None:
        for listener in chosen:
            listener(event)

    return emit


def search(options: SearchOptions, progress: SearchListener | None = None) -> SearchOutcome:
    """Run (or resume) a policy search and write results and the best policy into ``out``.

    With ``objective: pareto`` the study has one objective per task and runs without a pruner
    (Optuna cannot prune multi-objective trials; progress gets a ``pruning_off`` event when the
    space asks for one); ``best_policy.yaml`` is then the Pareto front's best Δm%.
    """
    check_options(options)
    space = resolve_space(options)
    check_finalists(options, space.objective)
    # A bad encoder name or weights file is a user error before any trial, not inside one.
    options.check_encoder(space)
    study_name = options.study or space.name
    out_dir = options.out or Path("runs") / study_name
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("not a folder", source=str(out_dir), field="--out")
    if options.engine == "optuna" and options.storage is None:
        from policysearch.search.ray_results import is_ray_experiment

        if is_ray_experiment(out_dir):
            raise UserError("this folder holds a Ray experiment: resume it with --engine ray, "
                            "or give another --out", source=str(out_dir), field="--out")
    tracked = None
    if options.log_to is not None:
        from policysearch.reporting.tracking import TrackedProgress, make_tracker

        tracked = TrackedProgress(make_tracker(options.log_to, out_dir, study_name), progress)
        progress = tracked
    if options.method == "density":
        return _search_density(options, space, study_name, out_dir, progress)
    try:
        run = load_run(options, space, study_name=study_name, out_dir=out_dir,
                       threads=options.trial_threads(), progress=progress)
        checkpoint = run.on_trial_end = _Checkpoint(run, tracked)
        run.progress = _fan_out(run.progress, checkpoint.report)
        try:
            with _study_lock(options, out_dir):
                records = race_finalists(run, _engine(options)(run))
        except KeyboardInterrupt:
            _report_interrupt(run, lambda study: checkpoint(study, final=True))
            raise
    finally:
        if tracked is not None:
            tracked.close()
    return _finish(run, records, checkpoint)


def _search_density(options: SearchOptions, space: Any, study_name: str, out_dir: Path,
                    progress: SearchListener | None) -> SearchOutcome:
    """``--method density`` (``search.density``): no trials, no study records."""
    from policysearch.search.density import check_space, search_density, settings_of

    check_space(space)
    run = load_run(options, space, study_name=study_name, out_dir=out_dir,
                   threads=options.trial_threads(), progress=progress)
    with _study_lock(options, out_dir):
        found = search_density(run, settings_of(options))
    return SearchOutcome(study=None, table=found.table, out_dir=out_dir, files=found.files,
                         export=found.export, cost=found.cost)


def _finish(run: SearchRun, records: StudyRecords, checkpoint: _Checkpoint) -> SearchOutcome:
    """The final results table, the best policy exported (with ``--finalists`` the finalist
    with the best mean Δm% over its fresh seeds), the final report."""
    table = results_frame(records)
    outcome = SearchOutcome(study=records, table=table, out_dir=run.out_dir,
                            files=write_results(table, run.out_dir))
    front = run.space.objective == "pareto"
    if (bool(table.get("pareto", pd.Series(dtype=bool)).any()) if front
            else table["rank"].notna().any()):
        if run.options.finalists and not front:
            policy, _ = pick_finalist(records, run.options.finalists)
        else:
            policy, _ = pick_trial(records, rank=None if front else 1, front=front)
        outcome.export = export_policy(policy, run.out_dir / "best_policy.yaml")
        outcome.files.append(outcome.export.yaml_path)
        outcome.files.extend(outcome.export.albumentations.values())
    report = checkpoint.final_report(records)
    if report is not None:
        outcome.files.append(report)
    return outcome


def _report_interrupt(run: SearchRun, checkpoint: Callable[[StudyRecords], None]) -> None:
    """After Ctrl-C: write the results table and report of what finished and emit an
    ``interrupted`` summary (counts by state, best Δm%). Best effort: the interrupt itself
    goes on."""
    storage = run.options.storage
    try:
        records = (load_study_records(run.out_dir, None, None) if storage is None
                   else load_study_records(None, storage, run.study_name))
        checkpoint(records)
    except Exception:  # noqa: BLE001 - nothing readable yet (no study): nothing to summarise
        return
    states: dict[str, int] = {}
    for record in records.records:
        states[record.state] = states.get(record.state, 0) + 1
    frame = results_frame(records, warn=False)
    ranked = frame[frame["rank"].notna()].sort_values("rank")
    best = (None if ranked.empty
            else (float(ranked["delta_m"].iloc[0]), int(ranked["trial"].iloc[0])))
    run.emit(Interrupted(states=states, best=best, out=str(run.out_dir)))


def _search_in_process(run: SearchRun) -> StudyRecords:
    """The Optuna engine in this process."""
    import os

    from policysearch.search.optuna_engine import optimize
    from policysearch.search.workers import worker_label
    from policysearch.training import resolve_device

    options = run.options
    # On a shared database other hosts may sample from the same history at the same moment:
    # a per-process salt keeps their suggestions apart.
    shared_db = options.storage is not None and not options.storage.endswith(".journal")
    return optimize(run.space, tasks=run.tasks, metrics_info=run.metrics_info,
                    dataset_name=run.dataset.name, dataset_notes=run.dataset_notes,
                    runner=run.runner(), n_trials=options.trials, out_dir=run.out_dir,
                    storage=options.storage, study_name=run.study_name, seed=options.seed,
                    timeout=options.timeout, progress=run.progress,
                    on_trial_end=run.on_trial_end, worker=worker_label(),
                    dataset_subset=run.subset,
                    sampler_salt=os.getpid() if shared_db else 0,
                    device=resolve_device(options.device).type)


def _search_with_workers(run: SearchRun) -> StudyRecords:
    """``--workers K`` with the Optuna engine: the driver opens the study once (definition,
    stale trials), then K worker processes share it (policysearch.search.workers)."""
    from policysearch.search.optuna_engine import prepare_study
    from policysearch.search.workers import run_workers

    options = run.options
    study = prepare_study(run.space, tasks=run.tasks, metrics_info=run.metrics_info,
                          dataset_name=run.dataset.name, dataset_notes=run.dataset_notes,
                          out_dir=run.out_dir, storage=options.storage,
                          study_name=run.study_name, seed=options.seed, target=options.trials,
                          emit=run.emit, workers=options.workers,
                          dataset_subset=run.subset)
    return run_workers(options, n_workers=options.workers, threads=run.threads,
                       study_name=run.study_name, out_dir=run.out_dir, study=study,
                       progress=run.progress, on_trial_end=run.on_trial_end)
