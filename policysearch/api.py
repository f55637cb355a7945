"""The Python API: every CLI command as one call. The CLI commands parse their options, call
these functions and print what they return, so both do the same thing.

Heavy dependencies (torch, optuna, ray, plotly) are imported inside the calls, so
``import policysearch`` stays light.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policysearch.augment import Policy
from policysearch.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from policysearch.config import SearchSpace
    from policysearch.evaluation.benchmark import BenchmarkOutcome
    from policysearch.events import BenchmarkListener, SearchListener
    from policysearch.exports.best_policy import ExportResult
    from policysearch.records import MetricsInfo, StudyRecords
    from policysearch.search.driver import SearchOutcome

EXPORT_FORMATS = ("yaml", "albumentations", "python")
RESULTS_FORMATS = ("frame", "csv", "md", "json")
# policysearch.evaluation.benchmark.ALL_BASELINES (not imported: it needs pandas)
BENCHMARK_BASELINES = ("none", "flipcrop", "randaugment", "trivialaugment", "autoaugment")
PathLike = str | Path
Say = Callable[[str], None]
"""Line progress: called with each line."""


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _task_weights(weights: Mapping[str, float] | None,
                  known: MetricsInfo) -> dict[str, float] | None:
    """``weights`` checked against the study's tasks: every task known, every weight > 0."""
    if not weights:
        return None
    for task, weight in weights.items():
        if not weight > 0:
            raise UserError(f"expected TASK=WEIGHT with a weight > 0, got '{task}={weight}'",
                            field="--task-weight")
        if task not in known:
            raise UserError(f"unknown task {task!r}; the study has {', '.join(known)}",
                            field="--task-weight")
    return dict(weights)


def search(space: str | Path = "default", *, dataset: str | None = None,
           engine: str = "optuna", trials: int = 8, epochs: int | None = None,
           batch_size: int | None = None, lr: float | None = None,
           image_size: int | tuple[int, int] | None = None, amp: bool | None = None,
           encoder: str | None = None, weights: str | None = None,
           loader_workers: int | str | None = None,
           skip_bad_samples: bool | None = None, storage: str | None = None,
           study: str | None = None, out: PathLike | None = None, workers: int = 1,
           device: str = "auto", seed: int = 0, timeout: float | None = None,
           threads: int | None = None, objective: str | None = None,
           method: str | None = None, folds: int | None = None,
           heldout: float | None = None, copies: int | None = None, keep: int | None = None,
           ray_address: str | None = None,
           ray_storage: str | None = None,
           cpus_per_trial: float | None = None, gpus_per_trial: float = 0.0,
           scheduler: str = "asha", report: bool = True, log_to: str | None = None,
           finalists: int = 0, finalist_seeds: int = 3, subset: int | None = None,
           progress: SearchListener | None = None) -> SearchOutcome:
    """Run or resume a search (``policysearch search``) and return its outcome.

    The keyword arguments are the fields of ``policysearch.search.options.SearchOptions``, with
    the same defaults (None: the space file's value); they are the command's options.
    ``space``: a shipped space name or a YAML path. ``engine``: optuna or ray (``ray_address``,
    ``ray_storage``, ``cpus_per_trial``, ``gpus_per_trial``, ``scheduler``: asha, pbt or none,
    apply to ray). ``objective``: delta_m or pareto. ``method``: how trials are proposed, ``tpe``
    or ``random`` (None: the space's ``sampler``), or ``density``: density matching
    (``policysearch.search.density``: ``folds``, ``heldout``, ``copies``, ``keep``; ``trials``
    candidates per fold; the outcome's ``study`` is None and its ``cost`` says what it
    spent). ``log_to``: tensorboard or mlflow.
    ``report``: keep ``out/report.html`` current. ``finalists=K``: after the trials, train
    the K best search trials and the reference again with ``finalist_seeds`` seeds no trial
    used and export the finalist with the best mean Δm% over them (0: off, export rank 1).
    ``subset=N``: train every trial on N samples of the training split (the space's
    ``subset``, with its seed, else seed 0; stratified by the first classification task's
    label), validation whole. ``progress``: a callable taking each event,
    a ``policysearch.events.SearchEvent``, e.g.
    ``policysearch.reporting.progress.JsonLogPrinter()``.
    Running the same call again resumes the study.
    """
    from policysearch.search.driver import SearchOptions
    from policysearch.search.driver import search as _search

    options = SearchOptions(
        space=space, dataset=dataset, engine=engine, trials=trials, epochs=epochs,
        batch_size=batch_size, lr=lr, image_size=image_size, amp=amp, encoder=encoder,
        weights=weights, loader_workers=loader_workers, skip_bad_samples=skip_bad_samples,
        storage=storage, study=study,
        out=_path(out), workers=workers, device=device, seed=seed, timeout=timeout,
        threads=threads, objective=objective, method=method, folds=folds, heldout=heldout,
        copies=copies, keep=keep, ray_address=ray_address,
        ray_storage=ray_storage,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, scheduler=scheduler,
        report=report, log_to=log_to, finalists=finalists, finalist_seeds=finalist_seeds,
        subset=subset)
    return _search(options, progress=progress)


def records(out: PathLike | None = None, *, storage: str | None = None,
            study: str | None = None) -> StudyRecords:
    """A study's trials as ``StudyRecords``, from a search's ``out`` folder (Optuna journal or
    Ray experiment) or from ``storage`` + ``study``."""
    from policysearch.search.driver import load_study_records

    return load_study_records(_path(out), storage, study)


def results(out: PathLike | None = None, *, storage: str | None = None,
            study: str | None = None, task_weights: Mapping[str, float] | None = None,
            reeval: int | None = None, seeds: int | None = None, reference: str | None = None,
            device: str = "auto", threads: int | None = None, format: str = "frame",
            top: int | None = None, warn: bool = True,
            progress: Say | None = None) -> pd.DataFrame | str:
    """The ranked results table (``policysearch results``): a pandas DataFrame (its ``attrs``
    hold the reference, notes, search cost and ``metrics_info``), or for ``format`` csv, md
    or json the text the command prints.

    ``task_weights``: weigh tasks in Δm% (others 1). ``reeval=K``: first train the K best
    trials and the reference again with ``seeds`` more seeds (default 2) and add the mean and
    std of Δm% over all seeds; ``reference``: rank against this baseline, trained (once) under
    the study's budget and seed. Both train on ``device`` with ``threads`` CPU threads, store
    their runs beside the study (reused when called again) and tell ``progress`` a line per
    step. ``top``: the K best rows only. ``warn``: warn about the notes (they are in
    ``attrs["notes"]`` either way).
    """
    from policysearch.reporting import tables

    if format not in RESULTS_FORMATS:
        raise UserError(f"expected one of {', '.join(RESULTS_FORMATS)}, got {format!r}",
                        field="--format")
    if seeds is not None and reeval is None:
        raise UserError("--seeds needs --reeval K", field="--seeds")
    for value, flag in ((top, "--top"), (threads, "--threads")):
        if value is not None and value < 1:
            raise UserError("must be at least 1", field=flag)
    found = records(out, storage=storage, study=study)
    weights = _task_weights(task_weights, found.metrics_info)
    if reeval is not None or reference is not None:
        from policysearch.evaluation.reeval import reevaluate

        found = reevaluate(out_dir=_path(out), storage=storage, study_name=study, top=reeval,
                           seeds=2 if seeds is None else seeds, reference=reference,
                           task_weights=weights, device=device, threads=threads,
                           progress=progress)
    if warn:
        frame = tables.results_frame(found, task_weights=weights)
    else:
        with warnings.catch_warnings(record=True):
            frame = tables.results_frame(found, task_weights=weights)
    frame.attrs["metrics_info"] = found.metrics_info
    if format == "csv":
        return tables.to_csv(frame, top)
    if format == "md":
        return tables.to_markdown(frame, top) + "\n"
    if format == "json":
        return tables.to_json(frame, top) + "\n"
    return frame.head(top) if top else frame


def export(out: PathLike | None = None, *, storage: str | None = None,
           study: str | None = None, policy: PathLike | Policy | None = None,
           rank: int | None = None, front: bool = False, priority: str | None = None,
           format: str = "yaml", to: PathLike | None = None, epoch: int | None = None,
           task_weights: Mapping[str, float] | None = None) -> ExportResult | str:
    """A ranked trial's policy (or ``policy``, a file or a Policy) exported
    (``policysearch export``).

    The trial: ``rank`` (1 = best by Δm%, the default; Δm% weighs the tasks by
    ``task_weights``), or with ``front`` the rank within the Pareto front, ranked by
    ``priority``'s Δ% when given. ``format="yaml"`` writes ``to`` (default
    ``out/best_policy.yaml``) plus one albumentations JSON per task and returns the
    ``ExportResult``; ``"albumentations"`` writes the JSON files only; ``"python"`` returns
    the source of an albumentations ``Compose(...)`` per task (the phase in force at ``epoch``
    for a policy with a schedule; also written to ``to`` when given).
    """
    from policysearch.augment import load_policy
    from policysearch.exports.best_policy import export_policy, pick_trial
    from policysearch.exports.python_source import policy_source

    if format not in EXPORT_FORMATS:
        raise UserError(f"expected one of {', '.join(EXPORT_FORMATS)}, got {format!r}",
                        field="--format")
    if epoch is not None and epoch < 0:
        raise UserError(f"an epoch is a whole number >= 0, got {epoch}", field="--epoch")
    to, out = _path(to), _path(out)
    source_file = None
    if isinstance(policy, Policy):
        chosen = policy
    elif policy is not None:
        source_file = Path(policy)
        chosen = load_policy(source_file)
    else:
        found = records(out, storage=storage, study=study)
        weights = _task_weights(task_weights, found.metrics_info)
        chosen, _ = pick_trial(found, rank, weights, front=front, priority=priority)
    if format == "python":
        text = policy_source(chosen, epoch=epoch)
        if to is not None:
            try:
                to.parent.mkdir(parents=True, exist_ok=True)
                to.write_text(text, encoding="utf-8")
            except OSError as err:
                raise UserError(f"cannot write: {err.strerror}", source=str(to),
                                field="--to") from None
        return text
    # A policy file without ``to``: the albumentations files go beside it, which stays as is.
    target = to or source_file or (out or Path(".")) / "best_policy.yaml"
    write_yaml = format == "yaml" and not (source_file is not None and to is None)
    return export_policy(chosen, target, write_yaml=write_yaml)


def report(out: PathLike | None = None, *, storage: str | None = None,
           study: str | None = None, to: PathLike | None = None, preview: bool = True,
           dataset: Any = None, task_weights: Mapping[str, float] | None = None) -> Path:
    """Write the study's HTML report (``policysearch report``) and return its path: ``to``,
    else ``out/report.html``, else ``report-<study>.html``. ``preview``: draw the preview grid;
    ``dataset``: where it draws samples (default: the study's dataset, built again from its
    stored space; pass your own for a dataset registered in your code). ``task_weights``:
    weigh tasks in Δm% (others 1)."""
    from policysearch.reporting.report import REPORT_NAME, write_report

    found = records(out, storage=storage, study=study)
    weights = _task_weights(task_weights, found.metrics_info)
    out = _path(out)
    target = _path(to) or (out / REPORT_NAME if out is not None
                           else Path(f"report-{found.name}.html"))
    return write_report(found, target, preview=preview, dataset=dataset, task_weights=weights)


def benchmark(policy: PathLike, *, baselines: Sequence[str] | str = BENCHMARK_BASELINES,
              reference: str = "flipcrop", search: PathLike | None = None,
              storage: str | None = None, study: str | None = None,
              space: str | Path | None = None, dataset: str | None = None,
              epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
              image_size: int | tuple[int, int] | None = None, amp: bool | None = None,
              encoder: str | None = None, weights: str | None = None,
              loader_workers: int | str | None = None, subset: int | None = None,
              seeds: int = 5,
              seed: int = 1, ablations: bool = True, device: str = "auto",
              threads: int | None = None,
              significance: str = "ttest", out: PathLike = Path("runs/benchmark"),
              progress: Say | None = None,
              events: BenchmarkListener | None = None) -> BenchmarkOutcome:
    """Benchmark a searched policy file against the baselines on the test split
    (``policysearch benchmark``) and return the outcome; the files go into ``out``, where
    stored runs are reused.

    The keyword arguments are the fields of
    ``policysearch.evaluation.benchmark.BenchmarkOptions``, with the same defaults (None: the
    search's value). ``baselines``: names or timm-style strings (a comma-separated string
    too); ``reference``: the baseline Δm% is measured against; ``search`` (a search's out
    folder) or ``storage`` + ``study``: the search whose dataset, budget and cost to use;
    ``space``: take dataset and budget from this space instead; every run trains on the
    whole training split, whatever subset the search (or space) used, unless ``subset=N``
    asks for N samples of it; ``seeds`` seeds from ``seed``
    up, those the policy was selected on skipped; ``ablations``: also train the searched
    augmentation with equal loss weights and the reference and the best baseline with the
    searched ones; ``significance``: ttest or wilcoxon (p-values Holm-adjusted).
    ``progress``: a callable taking each line; ``events``: one taking each run's events, a
    ``policysearch.events.BenchmarkEvent`` (start, every epoch, end).
    """
    from policysearch.evaluation.benchmark import BenchmarkOptions, run_benchmark

    if isinstance(baselines, str):
        baselines = [b.strip() for b in baselines.split(",") if b.strip()]
    options = BenchmarkOptions(
        policy=Path(policy), baselines=baselines, reference=reference, search=_path(search),
        storage=storage, study=study, space=space, dataset=dataset, epochs=epochs,
        batch_size=batch_size, lr=lr, image_size=image_size, amp=amp, encoder=encoder,
        weights=weights, loader_workers=loader_workers, subset=subset, seeds=seeds, seed=seed,
        ablations=ablations, device=device, threads=threads,
        significance=significance, out=Path(out))
    return run_benchmark(options, progress=progress, events=events)


def preview(policy: PathLike | Policy, dataset: Any = "shapes", *, n: int = 8, draws: int = 4,
            seed: int = 0, to: PathLike | None = None,
            image_size: int | tuple[int, int] | None = None) -> Image.Image:
    """The preview grid of a policy file, Policy or baseline name on ``dataset`` (a name,
    ``format:PATH``, or a dataset object) as a PIL image: ``n`` samples × ``draws`` augmented
    draws, also written to ``to`` as PNG (``policysearch preview``). ``image_size`` (S or
    (H, W)): resize a named dataset's samples first."""
    from policysearch.data import check_spec, get_dataset
    from policysearch.reporting.preview import preview_grid_for, write_png

    if n < 1 or draws < 1:
        raise UserError("must be at least 1", field="--n" if n < 1 else "--draws")
    if isinstance(dataset, str):
        check_spec(dataset, field="--dataset")
        try:
            data = get_dataset(dataset,
                               **({"size": image_size} if image_size is not None else {}))
        except UserError as err:  # the generated datasets' size check names their "size"
            if image_size is None or err.field != "size":
                raise
            raise UserError(err.message, source=err.source, field="--image-size") from None
    elif image_size is not None:
        raise UserError("resizes a dataset given by name only", field="--image-size")
    else:
        data = dataset
    image = preview_grid_for(policy, data, n=n, draws=draws, seed=seed)
    if to is not None:
        write_png(image, to)
    return image


def show(policy: PathLike | Policy) -> pd.DataFrame:
    """A policy as a table, one row per slot (``policysearch show``): columns ``epochs``,
    ``view``, ``slot``, ``op``, ``p``, ``magnitude``; ``attrs["policy"]`` is the Policy and
    ``attrs["notes"]`` the lines on its tasks, loss weighting and provenance."""
    import pandas as pd

    from policysearch.augment import load_policy
    from policysearch.reporting.policy_table import policy_notes, policy_rows

    loaded = policy if isinstance(policy, Policy) else load_policy(policy)
    frame = pd.DataFrame(policy_rows(loaded))
    frame.attrs["policy"] = loaded
    frame.attrs["notes"] = policy_notes(loaded)
    return frame


def check(space: PathLike | None = None, policy: PathLike | None = None
          ) -> SearchSpace | Policy | tuple[SearchSpace, Policy]:
    """Validate a search-space file (or shipped name) and/or a policy file without training
    (``policysearch check``); a problem raises ``UserError`` naming the file and field."""
    from policysearch.augment import load_policy
    from policysearch.config import load_space

    if space is None and policy is None:
        raise UserError("give space= and/or policy=", field="--space")
    found_space = load_space(space) if space is not None else None
    found_policy = load_policy(policy) if policy is not None else None
    if found_space is not None and found_policy is not None:
        return found_space, found_policy
    return found_space if found_space is not None else found_policy  # type: ignore[return-value]


def init(dataset: str, *, space: str | Path = "default", to: PathLike | None = None,
         force: bool = False) -> str:
    """A commented starter search-space file for ``dataset`` (anything ``search``'s
    ``dataset=`` takes), made from ``space`` (a bundled name or a file) fitted to it
    (``policysearch init``): explicit lists, ``adapt: false``, a CPU budget sized to the data.
    Returns the YAML text and writes it to ``to`` when given (an existing file only with
    ``force``). A dataset that cannot be read is a ``UserError`` and nothing is written."""
    from policysearch.space_init import init_text

    target = _path(to)
    if target is not None and target.exists() and not force:
        raise UserError("already exists; pass --force to overwrite it", source=str(target))
    text = init_text(dataset, str(space))
    if target is not None:
        target.write_text(text, encoding="utf-8")
    return text


def spaces() -> dict[str, str]:
    """The bundled search spaces (``search_spaces/*.yaml``), name -> description, sorted by
    name (``policysearch spaces``); each is loaded and validated."""
    from policysearch.config import load_space, shipped_spaces

    return {name: load_space(name).description for name in sorted(shipped_spaces())}


def ops() -> pd.DataFrame:
    """Every registered op (column ``op``): kind, whether signed, its range at magnitude 1
    (``policysearch ops``). ``attrs``: ``baselines``, a row per baseline (``name``, ``policy``:
    its summary), and ``scales``, other tools' magnitude notations as ours (torchvision's
    RandAugment M=9 is 0.3, timm's rand-m9 is 0.9)."""
    import pandas as pd

    from policysearch.augment import baselines_table, magnitude_scales, ops_table

    frame = pd.DataFrame(ops_table()).rename(columns={"name": "op"})
    frame.attrs["baselines"] = baselines_table()
    frame.attrs["scales"] = magnitude_scales()
    return frame
