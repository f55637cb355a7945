"""The ``policysearch`` command.

Every command parses its options, calls the function of ``policysearch.api`` of the same name
(through the module, so that a test can replace it) and prints what it returns.

Exit status: 0 done; 2 bad input (one line naming the file and field); 1 an internal error;
130 interrupted (finished trials are kept; the same command resumes).
"""

from __future__ import annotations

import errno
import functools
import json
import sys
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from policysearch import __version__, api
from policysearch.errors import SearchAborted, UserError

# typer bundles its own copy of click (typer._click) from 0.2x on, click itself before: the
# usage-error class is found through the public BadParameter, which derives from it.
_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLineUsageErrors(TyperGroup):
    """Usage errors (a bad option type or choice, an unknown or missing option or argument,
    an unknown command) as one line naming the option, exit status 2, like ``UserError``:
    click would print a usage block and a boxed message instead. ``policysearch`` alone still
    prints the help."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except _UsageError as err:  # policysearch's own options (policysearch --bogus)
            if type(err).__name__ == "NoArgsIsHelpError":  # (typer tells it by name too)
                raise
            _usage_line(err)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _UsageError as err:  # a command's options, an unknown command
            _usage_line(err)


def _usage_line(err: Any) -> NoReturn:
    message = " ".join(err.format_message().replace("Value error, ", "").split()).rstrip(".")
    where = err.ctx.command_path if err.ctx is not None else None
    hint = f" (see {where} --help)" if where else ""
    typer.echo(f"error: {message}{hint}", err=True)
    raise typer.Exit(2) from None


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_OneLineUsageErrors,
                  help="Search augmentation policies and loss weights for multi-task vision.")
# Piped output (CI logs, files) would otherwise be wrapped at 80 columns, splitting the table.
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
F = TypeVar("F", bound=Callable[..., Any])


# I/O errors the user fixes (space, permissions, paths): exit 2; any other OSError: exit 1.
_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                   errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def _handles_errors(func: F) -> F:
    """User errors and fixable I/O errors: one line, exit 2; a search that keeps failing:
    one line, exit 1; Ctrl-C: exit 130. Finished trials are in the study in every case."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:  # a full disk, a read-only folder, …: not a bug of ours
            where = f"{err.filename}: " if err.filename else ""
            fixable = err.errno in _FIXABLE_ERRNOS
            typer.echo(f"error: {where}{err.strerror or err}"
                       + ("" if fixable else " (an unexpected I/O error)"), err=True)
            raise typer.Exit(2 if fixable else 1) from None
        except SearchAborted as err:
            typer.echo(f"error: {err} (finished trials are kept)", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished trials are kept; run the same command again "
                       "to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"policysearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """policysearch: augmentation-policy search for multi-task networks."""


class Engine(StrEnum):
    optuna = "optuna"
    ray = "ray"


class Method(StrEnum):
    tpe = "tpe"
    random = "random"
    density = "density"


class Scheduler(StrEnum):
    asha = "asha"
    pbt = "pbt"
    none = "none"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Objective(StrEnum):
    delta_m = "delta_m"
    pareto = "pareto"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    md = "md"
    json = "json"


def _print_table(frame: Any, info: dict, top: int | None, console: Console) -> None:
    import pandas as pd

    from policysearch.reporting.tables import compact_columns

    shown = frame.head(top) if top else frame
    table = Table(title="policies ranked by Δm% (higher is better)", title_justify="left")
    columns = compact_columns(frame, info)
    headers = {"delta_m": "Δm%", "duration_s": "s", "delta_m_mean": "Δm% mean",
               "delta_m_low": "95% low", "delta_m_high": "95% high", "data_wait": "wait %"}
    for col in columns:
        table.add_column(headers.get(col, col),
                         justify="left" if col in ("state", "policy") else "right",
                         no_wrap=col != "policy", overflow="fold")
    for _, row in shown.iterrows():
        cells = []
        for col in columns:
            value = row[col]
            if value is None or value is pd.NA or (isinstance(value, float) and value != value):
                cells.append("-")
            elif col == "delta_m" or col.startswith("delta"):
                cells.append(f"{value:.2f}" if col == "delta_m_std" else f"{value:+.2f}")
            elif col == "pareto":
                cells.append("yes" if value else "")
            elif isinstance(value, float) and col in ("duration_s", "data_wait"):
                cells.append(f"{value:.1f}")
            elif isinstance(value, float):
                # three significant digits for small metrics (an early mAP of 0.0003 is not 0)
                cells.append(f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    console.print(table)
    ref = frame.attrs.get("reference")
    if ref:
        console.print(f"Δm% is measured against {ref}.", highlight=False)
    if frame.attrs.get("task_weights"):
        from policysearch.reporting.tables import weights_text

        console.print(f"Δm% weighs the tasks: {weights_text(frame.attrs['task_weights'])} "
                      "(others 1).", highlight=False)
    from policysearch.reporting.tables import footer_lines

    for line in footer_lines(frame):  # plain text: "[a, b]" is no markup tag
        console.print(line, highlight=False, markup=False)
    for note in frame.attrs.get("dataset_notes", []):
        console.print(f"dataset {frame.attrs.get('dataset', '')}: {note}", highlight=False)
    for note in frame.attrs.get("notes", []):
        console.print(f"warning: {note}", style="yellow", highlight=False)


class LogTarget(StrEnum):
    tensorboard = "tensorboard"
    mlflow = "mlflow"


@app.command()
@_handles_errors
def search(
    space: Annotated[str, typer.Option(help="Shipped space name or YAML path.")] = "default",
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the space's).")] = None,
    engine: Annotated[Engine, typer.Option(help="Search engine.")] = Engine.optuna,
    trials: Annotated[int, typer.Option(help="Finished trials to reach, reference included.")] = 8,
    epochs: Annotated[int | None, typer.Option(help="Epochs per trial.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    image_size: Annotated[str | None, typer.Option(
        help="Resize every split to S×S or HxW pixels (e.g. 64 or 288x384).")] = None,
    encoder: Annotated[str | None, typer.Option(
        help="Shared encoder: small, resnet18/34/50, mobilenet_v3_small/large, timm:NAME.")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Local state-dict file to initialise the encoder from (never downloaded).")] = None,
    skip_bad_samples: Annotated[bool | None, typer.Option(
        "--skip-bad-samples/--no-skip-bad-samples",
        help="Leave out (and count) samples whose files are bad instead of stopping.")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp",
                                             help="bf16 mixed precision (CUDA only).")] = None,
    loader_workers: Annotated[str | None, typer.Option(
        help="Processes preparing each trial's batches ahead of the step: a number, or auto "
             "(0 on the CPU; on a GPU, the trial's CPUs but one).")] = None,
    storage: Annotated[str | None,
                       typer.Option(help="Optuna storage URL or .journal file.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the space's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default runs/<study>).")] = None,
    workers: Annotated[int, typer.Option(help="Concurrent trials.")] = 1,
    device: Annotated[Device, typer.Option(help="Where trials train.")] = Device.auto,
    seed: Annotated[int, typer.Option(help="Training seed shared by all trials.")] = 0,
    timeout: Annotated[float | None, typer.Option(help="Start no trial after SECONDS.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per trial.")] = None,
    objective: Annotated[Objective | None, typer.Option(
        help="delta_m: maximise Δm%; pareto: one objective per task (its Δ%), no pruning "
             "(default: the space's).")] = None,
    method: Annotated[Method | None, typer.Option(
        help="How policies are found: tpe or random trials (default: the space's sampler), "
             "or density matching (no training under the candidates; --trials is then the "
             "candidates per fold).")] = None,
    folds: Annotated[int | None, typer.Option(
        help="--method density: fold models (default 5).")] = None,
    heldout: Annotated[float | None, typer.Option(
        help="--method density: each fold's held-out share (default 0.4).")] = None,
    copies: Annotated[int | None, typer.Option(
        help="--method density: augmented copies per held-out sample (default 5).")] = None,
    keep: Annotated[int | None, typer.Option(
        help="--method density: best candidates per fold in the union (default 10).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="--engine ray: a cluster's address, or 'auto' to join the running one "
             "(default: start a local Ray instance).")] = None,
    ray_storage: Annotated[str | None, typer.Option(
        help="--engine ray: experiment folder on a filesystem every node sees "
             "(default: --out).")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(
        help="--engine ray: CPUs per trial (default: --threads, else CPUs / --workers).")
    ] = None,
    gpus_per_trial: Annotated[float, typer.Option(
        help="--engine ray: GPUs per trial; a fraction lets trials share one GPU.")] = 0.0,
    scheduler: Annotated[Scheduler, typer.Option(
        help="--engine ray: asha (early stopping), pbt (population-based augmentation: a "
             "policy schedule) or none.")] = None,
    log_to: Annotated[LogTarget | None, typer.Option(
        help="Log every trial's metrics per epoch, Δm% and parameters to TensorBoard "
             "(OUT/tensorboard) or MLflow (OUT/mlflow.db); local files only.")] = None,
    report: Annotated[bool, typer.Option(
        "--report/--no-report",
        help="Keep OUT/report.html current (after trials, at most once a minute, and at the "
             "end).")] = True,
    finalists: Annotated[int, typer.Option(
        help="After the trials, train the K best (by Δm%) and the reference again with "
             "--finalist-seeds seeds no trial used; export the best mean (0: off).")] = 0,
    finalist_seeds: Annotated[int, typer.Option(
        help="Seeds per finalist: the study's seed + 1 … + S.")] = 3,
    subset: Annotated[int | None, typer.Option(
        help="Train every trial on N samples of the training split (stratified by the first "
             "classification task's label; the space's subset seed, else 0); validation "
             "stays whole. Part of the study. benchmark trains on everything.",
        metavar="N")] = None,
    quiet: QuietOption = False,
    json_logs: JsonLogsOption = False,
) -> None:
    """Search policies (and loss weights); resume by running the same command again.

    With --finalists K the K best trials are raced over --finalist-seeds fresh seeds after the
    trials (stored beside the study, reused on resume) and best_policy.yaml is the finalist
    with the best mean Δm% over them.

    With --objective pareto (or ``objective: pareto`` in the space) the study is
    multi-objective and runs without a pruner: Optuna cannot prune multi-objective trials.
    """
    size = parse_image_size(image_size)
    _amp_on_the_cpu(amp, device, here=engine is Engine.optuna)
    if engine is Engine.optuna:
        _ray_flags_ignored({"--ray-address": ray_address, "--ray-storage": ray_storage,
                            "--cpus-per-trial": cpus_per_trial,
                            "--gpus-per-trial": gpus_per_trial or None,
                            "--scheduler": scheduler})
    with warnings.catch_warnings(record=True), _printer(quiet, json_logs) as printer:
        outcome = api.search(
            space=space, dataset=dataset, engine=engine.value, trials=trials, epochs=epochs,
            batch_size=batch_size, lr=lr, image_size=size, amp=amp, encoder=encoder,
            weights=weights, loader_workers=parse_loader_workers(loader_workers),
            skip_bad_samples=skip_bad_samples, storage=storage, study=study,
            out=out, workers=workers, device=device.value, seed=seed, timeout=timeout,
            threads=threads, objective=objective.value if objective else None,
            method=method.value if method else None, folds=folds, heldout=heldout,
            copies=copies, keep=keep,
            ray_address=ray_address, ray_storage=ray_storage, cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial, scheduler=(scheduler or Scheduler.asha).value,
            report=report, log_to=log_to.value if log_to else None, finalists=finalists,
            finalist_seeds=finalist_seeds, subset=subset, progress=printer)
    if outcome.study is None:  # --method density
        _density_done(outcome, quiet, printer if json_logs else None)
        return
    if json_logs:
        printer.write("done", {"files": [str(p) for p in outcome.files],
                               "best": _best_row(outcome.table)})
        return
    if not quiet:
        _print_table(outcome.table, outcome.study.metrics_info, 10, out_console)
    out_console.print(f"wrote {', '.join(str(p) for p in outcome.files)}", highlight=False)
    if outcome.export is not None:
        provenance = outcome.export.policy.provenance if outcome.export.policy else {}
        if "finalists" in provenance:
            out_console.print(f"{outcome.export.yaml_path}: trial {provenance['trial']}, "
                              f"{provenance['picked']}: Δm% {provenance['delta_m_mean']:+.2f}",
                              highlight=False)
        for task, why in outcome.export.skipped.items():
            out_console.print(f"no albumentations file for task {task}: {why}", highlight=False)
        for note in getattr(outcome.export, "notes", ()):
            out_console.print(note, highlight=False)


QuietOption = Annotated[bool, typer.Option(
    "--quiet", help="Print no progress, only the files written (and errors).")]
JsonLogsOption = Annotated[bool, typer.Option(
    "--json-logs", help="Print one JSON object per event on standard output instead.")]


def _printer(quiet: bool, json_logs: bool) -> Any:
    """The progress callable (a context manager) for ``--quiet`` / ``--json-logs`` / neither."""
    from policysearch.reporting.progress import JsonLogPrinter, ProgressPrinter, QuietPrinter

    if json_logs:
        return JsonLogPrinter()
    return QuietPrinter() if quiet else ProgressPrinter(out_console)


def _density_done(outcome: Any, quiet: bool, json_printer: Any) -> None:
    """The end of a density search: the kept candidates, the files and the exported union."""
    policy = outcome.export.policy if outcome.export is not None else None
    if json_printer is not None:
        json_printer.write("done", {"files": [str(p) for p in outcome.files],
                                    "cost": outcome.cost,
                                    "policy": policy.summary() if policy else None})
        return
    table = outcome.table
    kept = table[table["kept"]] if not table.empty else table
    if not quiet and not kept.empty:
        out_console.print(kept.to_string(index=False, max_colwidth=70), highlight=False,
                          markup=False)
    out_console.print(f"wrote {', '.join(str(p) for p in outcome.files)}", highlight=False)
    if policy is not None:
        out_console.print(f"{outcome.export.yaml_path}: the union of the {len(kept)} kept "
                          f"candidates: {policy.summary()}", highlight=False, markup=False)


def _best_row(table: Any) -> dict[str, Any] | None:
    ranked = table[table["rank"].notna()].sort_values("rank")
    if ranked.empty:
        return None
    row = ranked.iloc[0]
    return {"trial": int(row["trial"]), "delta_m": float(row["delta_m"]),
            "policy": str(row.get("policy", ""))}


def _amp_on_the_cpu(amp: bool | None, device: Device, *, here: bool = True) -> None:
    """``--amp`` where training runs on the CPU: one line on standard error saying that it is
    ignored (bf16 mixed precision is CUDA-only), never silence. ``here``: training runs on
    this host (with ``--engine ray`` and ``--device auto`` the cluster's nodes decide)."""
    if not amp or device is Device.cuda:
        return
    if device is Device.auto:
        import torch

        if not here or torch.cuda.is_available():
            return
    typer.echo("warning: --amp: bf16 mixed precision is CUDA-only; ignored on the CPU "
               "(training runs in float32)", err=True)


def _ray_flags_ignored(given: dict[str, Any]) -> None:
    """The Ray engine's flags given to an Optuna-engine search: one line on standard error
    naming them, as they change nothing there (its trials run here, pruned by the space's
    pruner), never silence."""
    names = [flag for flag, value in given.items() if value is not None]
    if names:
        typer.echo(f"warning: {', '.join(names)}: only for --engine ray; ignored with --engine "
                   "optuna (trials run on this host, pruned by the space's pruner)", err=True)


def parse_image_size(text: str | None) -> int | tuple[int, int] | None:
    """``--image-size``: ``S`` or ``HxW``."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2):
        raise UserError(f"expected S or HxW (e.g. 64 or 288x384), got {text!r}",
                        field="--image-size")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def parse_loader_workers(text: str | None) -> int | str | None:
    """``--loader-workers``: ``auto`` or a count of processes (0: in the training process)."""
    if text is None or text == "auto":
        return text
    if not text.isdigit() or int(text) > 64:
        raise UserError(f"expected 'auto' or a number of processes from 0 to 64, got {text!r}",
                        field="--loader-workers")
    return int(text)


def parse_task_weights(items: list[str] | None) -> dict[str, float] | None:
    """``--task-weight TASK=W`` (repeatable) as a dict; None when not given. The API checks
    the tasks against the study's."""
    if not items:
        return None
    weights: dict[str, float] = {}
    for item in items:
        task, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not weight > 0:
            raise UserError(f"expected TASK=WEIGHT with a weight > 0, got {item!r}",
                            field="--task-weight")
        weights[task] = weight
    return weights


TaskWeightOption = Annotated[list[str] | None, typer.Option(
    "--task-weight", help="TASK=W: weigh a task in Δm% (repeatable; others weigh 1).")]


@app.command()
@_handles_errors
def results(
    out: Annotated[Path | None, typer.Option(help="A search's output folder.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    format: Annotated[Format, typer.Option(help="Output format.")] = Format.table,
    top: Annotated[int | None, typer.Option(help="Show the K best rows.")] = None,
    task_weight: TaskWeightOption = None,
    reeval: Annotated[int | None, typer.Option(
        help="Train the K best trials (by Δm%) and the reference again with --seeds extra "
             "seeds; stored beside the study, reused when run again.")] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Extra seeds for --reeval: the study's seed + 1 … + S (default 2).")] = None,
    reference: Annotated[str | None, typer.Option(
        help="Rank against this baseline, trained (once) under the study's budget and seed.")
    ] = None,
    device: Annotated[Device, typer.Option(help="Where --reeval/--reference train.")
                      ] = Device.auto,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training.")] = None,
) -> None:
    """Print the ranked results table of a study.

    --reeval K --seeds S re-trains the K best trials and the reference with S more seeds and
    adds the mean and std of Δm% over all seeds; --reference NAME ranks against another
    baseline. Both train beside the study: its trials and definition are unchanged.
    """
    found = api.results(out, storage=storage, study=study,
                        task_weights=parse_task_weights(task_weight), reeval=reeval,
                        seeds=seeds, reference=reference, device=device.value, threads=threads,
                        format="frame" if format is Format.table else format.value, top=top,
                        warn=False, progress=lambda line: typer.echo(line, err=True))
    if isinstance(found, str):
        sys.stdout.write(found)
    else:
        _print_table(found, found.attrs["metrics_info"], None, out_console)


class ExportFormat(StrEnum):
    yaml = "yaml"
    albumentations = "albumentations"
    python = "python"


@app.command()
@_handles_errors
def export(
    out: Annotated[Path | None, typer.Option(help="A search's output folder.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    policy: Annotated[Path | None, typer.Option(
        help="Convert this policy YAML instead of picking a study's trial.")] = None,
    rank: Annotated[int | None, typer.Option(
        help="Which trial ranked by Δm% (1 = best; the default); with --front, the rank "
             "within the Pareto front.")] = None,
    front: Annotated[bool, typer.Option(
        "--front", help="Pick from the Pareto front (pareto studies), ranked by Δm%.")] = False,
    priority: Annotated[str | None, typer.Option(
        help="With --front (implied): rank the front by TASK's Δ%, ties by Δm%.")
    ] = None,
    format: Annotated[ExportFormat, typer.Option(
        help="yaml: the policy YAML and one albumentations JSON per task; albumentations: "
             "the JSON files only; python: print an albumentations Compose(...) per task to "
             "paste into a training script (written to --to when given).")
    ] = ExportFormat.yaml,
    epoch: Annotated[int | None, typer.Option(
        help="--format python, a policy with a schedule: the phase in force at this epoch.")
    ] = None,
    to: Annotated[Path | None, typer.Option(
        help="File to write (default OUT/best_policy.yaml; python: standard output).")] = None,
    task_weight: TaskWeightOption = None,
) -> None:
    """Write a ranked trial's policy (or --policy FILE) as YAML plus one albumentations file
    per task, or as Python source."""
    weights = parse_task_weights(task_weight) if policy is None else None
    result = api.export(out, storage=storage, study=study, policy=policy, rank=rank,
                        front=front, priority=priority, format=format.value, to=to,
                        epoch=epoch, task_weights=weights)
    if isinstance(result, str):
        if to is None:
            sys.stdout.write(result)
        else:
            out_console.print(f"wrote {to}", highlight=False)
        return
    provenance = result.policy.provenance if policy is None and result.policy else None
    if provenance:
        out_console.print(f"trial {provenance['trial']} ({provenance['picked']}; rank "
                          f"{provenance['rank']}, Δm% {provenance['delta_m']:+.2f}): "
                          f"{result.policy.summary() or '(no ops)'}", highlight=False)
    if format is ExportFormat.yaml and not (policy is not None and to is None):
        out_console.print(f"wrote {result.yaml_path}", highlight=False)
    for path in result.albumentations.values():
        out_console.print(f"wrote {path}", highlight=False)
    for task, why in result.skipped.items():
        out_console.print(f"no albumentations file for task {task}: {why}", highlight=False)
    for note in getattr(result, "notes", ()):
        out_console.print(note, highlight=False)


@app.command()
@_handles_errors
def report(
    out: Annotated[Path | None, typer.Option(help="A search's output folder.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    to: Annotated[Path | None, typer.Option(
        help="HTML file to write (default OUT/report.html, else report-<study>.html).")] = None,
    preview: Annotated[bool, typer.Option(
        "--preview/--no-preview",
        help="Draw the preview grid (builds the study's dataset again).")] = True,
    task_weight: TaskWeightOption = None,
) -> None:
    """Write the HTML report of a study (one self-contained file), also while it runs."""
    path = api.report(out, storage=storage, study=study, to=to, preview=preview,
                      task_weights=parse_task_weights(task_weight))
    out_console.print(f"wrote {path}", highlight=False)


@app.command()
@_handles_errors
def show(
    policy: Annotated[Path, typer.Argument(help="Policy YAML file (e.g. best_policy.yaml).")],
) -> None:
    """Print a policy as a table: one row per slot (by view, and by phase for a schedule),
    then its tasks, loss weighting and provenance."""
    from policysearch.reporting.policy_table import policy_table

    frame = api.show(policy)
    out_console.print(policy_table(frame.attrs["policy"], title=str(policy)))
    for line in frame.attrs["notes"]:
        out_console.print(line, highlight=False, markup=False)


class Significance(StrEnum):
    ttest = "ttest"
    wilcoxon = "wilcoxon"


@app.command()
@_handles_errors
def benchmark(
    policy: Annotated[Path, typer.Option(help="The searched policy (best_policy.yaml).")],
    baselines: Annotated[str, typer.Option(
        help="Comma-separated baselines to compare with (names or timm-style strings).")
    ] = "none,flipcrop,randaugment,trivialaugment,autoaugment",
    reference: Annotated[str, typer.Option(help="Baseline that Δm% is measured against.")
                         ] = "flipcrop",
    search: Annotated[Path | None, typer.Option(
        help="The search's --out folder: its dataset and budget, and its search cost "
             "(default: the policy file's folder when a search wrote it).")] = None,
    storage: Annotated[str | None, typer.Option(help="The search's storage URL.")] = None,
    study: Annotated[str | None, typer.Option(help="The search's study name.")] = None,
    space: Annotated[str | None, typer.Option(
        help="Take dataset and budget from this space instead (name or YAML path).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the search's).")
                       ] = None,
    seeds: Annotated[int, typer.Option(help="Training seeds per contender.")] = 5,
    seed: Annotated[int, typer.Option(
        help="First seed (seeds SEED, SEED+1, …; those the policy was selected on skipped)."
    )] = 1,
    ablations: Annotated[bool, typer.Option(
        "--ablations/--no-ablations",
        help="Also train searched/equal-weights and the reference and best baseline with the "
             "searched loss weights.")] = True,
    epochs: Annotated[int | None, typer.Option(help="Epochs per run.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    image_size: Annotated[str | None, typer.Option(help="S or HxW.")] = None,
    encoder: Annotated[str | None, typer.Option(help="Shared encoder.")] = None,
    weights: Annotated[str | None, typer.Option(help="Local encoder state-dict file.")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp",
                                             help="bf16 mixed precision (CUDA only).")] = None,
    loader_workers: Annotated[str | None, typer.Option(
        help="Processes preparing each trial's batches ahead of the step: a number, or auto "
             "(0 on the CPU; on a GPU, the trial's CPUs but one).")] = None,
    subset: Annotated[int | None, typer.Option(
        help="Train every run on N samples of the training split (default: all of it, "
             "whatever subset the search used).", metavar="N")] = None,
    significance: Annotated[Significance, typer.Option(
        help="Paired test of searched vs each contender, paired by seed; p-values "
             "Holm-adjusted.")
    ] = Significance.ttest,
    device: Annotated[Device, typer.Option(help="Where runs train.")] = Device.auto,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder; stored runs there are reused.")
                   ] = Path("runs/benchmark"),
    quiet: QuietOption = False,
    json_logs: JsonLogsOption = False,
) -> None:
    """Train the searched policy and the baselines under one budget for several seeds,
    evaluate on the test split, and write benchmark.md/.csv/.json/.png and runs.csv.

    Running the same command again reuses the stored runs and trains only what is missing.
    """
    size = parse_image_size(image_size)
    _amp_on_the_cpu(amp, device)
    printer = _printer(quiet, json_logs)

    def progress(line: str) -> None:
        if json_logs:
            printer.write("benchmark", {"message": line})
        elif not quiet:
            out_console.print(line, highlight=False)

    from policysearch.reporting.progress import BenchmarkBar

    bar = BenchmarkBar(out_console, live=None if not quiet else False)
    with warnings.catch_warnings(record=True), bar:
        outcome = api.benchmark(
            policy, baselines=[b.strip() for b in baselines.split(",") if b.strip()],
            reference=reference, search=search, storage=storage, study=study, space=space,
            dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, image_size=size,
            amp=amp, encoder=encoder, weights=weights,
            loader_workers=parse_loader_workers(loader_workers), subset=subset, seeds=seeds,
            seed=seed,
            ablations=ablations, device=device.value, threads=threads,
            significance=significance.value, out=out,
            progress=progress, events=printer if json_logs else bar)
    if json_logs:
        found = [p for p in outcome.files if p.name == "benchmark.json"]
        report = json.loads(found[0].read_text()) if found else {}
        printer.write("done", {"files": [str(p) for p in outcome.files],
                               "summary": report.get("summary")})
        return
    if not quiet:
        out_console.print((outcome.files[0]).read_text().split("\n## Every run")[0],
                          highlight=False, markup=False)
    out_console.print(f"wrote {', '.join(str(p) for p in outcome.files)}", highlight=False)


@app.command()
@_handles_errors
def preview(
    policy: Annotated[str, typer.Option(help="Policy YAML file or baseline name.")],
    to: Annotated[Path, typer.Option(help="PNG file to write.")],
    dataset: Annotated[str, typer.Option(help="Dataset to draw samples from.")] = "shapes",
    n: Annotated[int, typer.Option(help="Samples (rows).")] = 8,
    draws: Annotated[int, typer.Option(help="Augmented draws per sample.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    image_size: Annotated[str | None, typer.Option(
        help="Resize samples to S×S or HxW first (file datasets keep their size otherwise).")
    ] = None,
) -> None:
    """Render N samples × K augmented draws of a policy, with masks, boxes and depth."""
    image = api.preview(policy, dataset, n=n, draws=draws, seed=seed, to=to,
                        image_size=parse_image_size(image_size))
    out_console.print(f"wrote {to} ({image.width}×{image.height})", highlight=False)


@app.command()
@_handles_errors
def check(
    space: Annotated[list[str] | None, typer.Option(
        help="Search-space YAML file (or shipped name) to validate; repeatable.")] = None,
    policy: Annotated[list[Path] | None, typer.Option(
        help="Policy YAML file to validate; repeatable.")] = None,
) -> None:
    """Validate search-space and policy files without training: prints what each holds, or
    the first problem as one line naming the file and field (exit status 2)."""
    if not space and not policy:
        raise UserError("give --space FILE and/or --policy FILE", field="--space")
    for name in space or []:
        found = api.check(space=name)
        out_console.print(f"ok: {name}: space {found.name} on {found.dataset}, "
                          f"{found.searched()}, weights {found.weights.method}, "
                          f"{found.budget.epochs} epochs"
                          + (f", trials on a subset of {found.subset.n} training samples "
                             f"(seed {found.subset.seed})" if found.subset else ""),
                          highlight=False, markup=False)
    for path in policy or []:
        loaded = api.check(policy=path)
        out_console.print(f"ok: {path}: policy for {', '.join(loaded.tasks)}: "
                          f"{loaded.summary() or '(no ops)'}", highlight=False, markup=False)


@app.command()
@_handles_errors
def init(
    dataset: Annotated[str, typer.Option(
        help="Dataset: shapes, multidigits, scenes, coco:PATH, nyuv2:PATH, attributes:PATH, "
             "folder:PATH.")],
    to: Annotated[Path | None, typer.Option(
        help="File to write (default: print the YAML on standard output).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --to if it exists.")
                     ] = False,
    space: Annotated[str, typer.Option(
        help="Bundled space (see `policysearch spaces`) or YAML file to start from.")
    ] = "default",
) -> None:
    """Write a commented starter search space for a dataset: its tasks, the ops that suit its
    targets, explicit per-task views, loss weights, the reference and a CPU budget sized to
    the data; edit it, then `policysearch search --space FILE`."""
    text = api.init(dataset, space=space, to=to, force=force)
    if to is None:
        sys.stdout.write(text)
    else:
        out_console.print(f"wrote {to}", highlight=False)


@app.command()
@_handles_errors
def spaces() -> None:
    """List the bundled search spaces (for --space), one line each: name and description."""
    found = api.spaces()
    width = max(map(len, found), default=0)
    for name, description in found.items():
        out_console.print(f"{name:<{width}}  {description}", highlight=False, markup=False)


@app.command()
@_handles_errors
def ops() -> None:
    """List every op (kind, whether signed, its range at magnitude 1), how other tools'
    magnitudes read on our scale (torchvision's RandAugment M=9 of 30 is 0.3, timm's rand-m9
    is 0.9), and the baselines."""
    table = Table(title="augmentation ops (magnitude in [0, 1] maps linearly onto the range)",
                  title_justify="left")
    for col in ("op", "kind", "signed", "range at 1 (standard)", "range at 1 (wide)",
                "description"):
        table.add_column(col, overflow="fold")
    found = api.ops()
    for row in found.to_dict("records"):
        table.add_row(row["op"], row["kind"], "±" if row["signed"] else "",
                      row["range_at_1"], _text(row.get("range_wide_at_1")), row["description"])
    out_console.print(table)
    scales = Table(title="magnitude scales: other tools' notation as our magnitude",
                   title_justify="left")
    for col in ("convention", "value", "of", "magnitude"):
        scales.add_column(col)
    for scale in found.attrs["scales"]:
        scales.add_row(*(f"{scale[c]:.2f}" if isinstance(scale[c], float) else str(scale[c])
                         for c in ("convention", "value", "of", "magnitude")))
    out_console.print(scales)
    named = Table(title="baselines (benchmark --baselines, reference: in a space, preview "
                        "--policy)", title_justify="left")
    for col in ("baseline", "policy"):
        named.add_column(col, overflow="fold")
    for row in found.attrs["baselines"]:
        named.add_row(row["name"], row["policy"])
    out_console.print(named)


def _text(value: Any) -> str:
    """A table cell: missing (None, NaN) is empty."""
    return "" if value is None or value != value else str(value)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
