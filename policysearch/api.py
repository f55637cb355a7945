"""The Python API: every CLI command as one call. The CLI commands are thin wrappers over
these functions (printing what they return), so both do the same thing.

Heavy dependencies (torch, optuna, ray, plotly) are imported inside the calls, so
``import policysearch`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policysearch.augment import Policy
from policysearch.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from policysearch.config import SearchSpace
    from policysearch.evaluation.benchmark import BenchmarkOutcome
    from policysearch.exports.best_policy import ExportResult
    from policysearch.records import StudyRecords
    from policysearch.search.driver import SearchOutcome

EXPORT_FORMATS = ("yaml", "albumentations", "python")
PathLike = str | Path


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def search(**options: Any) -> SearchOutcome:
    """Run or resume a search (``policysearch search``); keyword arguments are those of
    ``policysearch.search.driver.SearchOptions`` (``progress=``: a callable taking each event,
    a ``policysearch.events.SearchEvent``, e.g.
    ``policysearch.reporting.progress.JsonLogPrinter()``)."""
    from policysearch.search.driver import SearchOptions
    from policysearch.search.driver import search as _search

    progress = options.pop("progress", None)
    if isinstance(options.get("out"), str):
        options["out"] = Path(options["out"])
    return _search(SearchOptions(**options), progress=progress)


def records(out: PathLike | None = None, *, storage: str | None = None,
            study: str | None = None) -> StudyRecords:
    """A study's trials as ``StudyRecords``, from a search's ``out`` folder (Optuna journal or
    Ray experiment) or from ``storage`` + ``study``."""
    from policysearch.search.driver import load_study_records

    return load_study_records(_path(out), storage, study)


def results(out: PathLike | None = None, *, storage: str | None = None,
            study: str | None = None,
            task_weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The ranked results table (``policysearch results``) as a pandas DataFrame; its
    ``attrs`` hold the reference, notes and search cost."""
    from policysearch.reporting.tables import results_frame

    return results_frame(records(out, storage=storage, study=study), task_weights=task_weights)


def export(out: PathLike | None = None, *, storage: str | None = None,
           study: str | None = None, policy: PathLike | Policy | None = None,
           rank: int | None = None, front: bool = False, priority: str | None = None,
           format: str = "yaml", to: PathLike | None = None, epoch: int | None = None,
           task_weights: Mapping[str, float] | None = None) -> ExportResult | str:
    """A ranked trial's policy (or ``policy``, a file or a Policy) exported
    (``policysearch export``).

    ``format="yaml"`` writes ``to`` (default ``out/best_policy.yaml``) plus one albumentations
    JSON per task and returns the ``ExportResult``; ``"albumentations"`` writes the JSON files
    only; ``"python"`` returns the source of an albumentations ``Compose(...)`` per task (also
    written to ``to`` when given).
    """
    from policysearch.augment import load_policy
    from policysearch.exports.best_policy import export_policy, pick_trial
    from policysearch.exports.python_source import policy_source

    if format not in EXPORT_FORMATS:
        raise UserError(f"expected one of {', '.join(EXPORT_FORMATS)}, got {format!r}",
                        field="--format")
    to, out = _path(to), _path(out)
    source_file = None
    if isinstance(policy, Policy):
        chosen = policy
    elif policy is not None:
        source_file = Path(policy)
        chosen = load_policy(source_file)
    else:
        weights = dict(task_weights) if task_weights else None
        chosen, _ = pick_trial(records(out, storage=storage, study=study), rank, weights,
                               front=front, priority=priority)
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
    else ``out/report.html``, else ``report-<study>.html``. ``dataset``: where the preview
    draws samples (default: the study's dataset, built again from its stored space; pass
    your own for a dataset registered in your code)."""
    from policysearch.reporting.report import REPORT_NAME, write_report

    found = records(out, storage=storage, study=study)
    out = _path(out)
    target = _path(to) or (out / REPORT_NAME if out is not None
                           else Path(f"report-{found.name}.html"))
    return write_report(found, target, preview=preview, dataset=dataset,
                        task_weights=dict(task_weights) if task_weights else None)


def benchmark(policy: PathLike, **options: Any) -> BenchmarkOutcome:
    """Benchmark a searched policy against the baselines on the test split
    (``policysearch benchmark``); keyword arguments are those of
    ``policysearch.evaluation.benchmark.BenchmarkOptions``; ``progress=``: a callable taking
    each line, ``events=``: one taking each run's events, a
    ``policysearch.events.BenchmarkEvent`` (start, every epoch, end)."""
    from policysearch.evaluation.benchmark import BenchmarkOptions, run_benchmark

    progress, events = options.pop("progress", None), options.pop("events", None)
    for key in ("search", "out"):
        if isinstance(options.get(key), str):
            options[key] = Path(options[key])
    return run_benchmark(BenchmarkOptions(policy=Path(policy), **options), progress=progress,
                         events=events)


def preview(policy: PathLike | Policy, dataset: Any = "shapes", *, n: int = 8, draws: int = 4,
            seed: int = 0, to: PathLike | None = None) -> Image.Image:
    """The preview grid of a policy file, Policy or baseline name on ``dataset`` (a name,
    ``format:PATH``, or a dataset object) as a PIL image, also written to ``to`` as PNG
    (``policysearch preview``)."""
    from policysearch.data import get_dataset
    from policysearch.reporting.preview import preview_grid_for, write_png

    data = get_dataset(dataset) if isinstance(dataset, str) else dataset
    image = preview_grid_for(policy, data, n=n, draws=draws, seed=seed)
    if to is not None:
        write_png(image, to)
    return image


def show(policy: PathLike | Policy) -> pd.DataFrame:
    """A policy as a table, one row per slot (``policysearch show``)."""
    import pandas as pd

    from policysearch.augment import load_policy
    from policysearch.reporting.policy_table import policy_rows

    loaded = policy if isinstance(policy, Policy) else load_policy(policy)
    return pd.DataFrame(policy_rows(loaded))


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


def ops() -> pd.DataFrame:
    """Every registered op (column ``op``): kind, whether signed, its range at magnitude 1
    (``policysearch ops``)."""
    import pandas as pd

    from policysearch.augment import ops_table

    return pd.DataFrame(ops_table()).rename(columns={"name": "op"})
