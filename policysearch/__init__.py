"""policysearch: search data-augmentation policies and loss weights for multi-task vision.

Importing the package imports neither torch, optuna nor ray; ``load_policy`` and ``Policy``
come from the augment package, which needs only albumentations. The search entry points
import their heavy dependencies when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from policysearch.augment import Policy, Slot, Weighting, get_baseline, load_policy  # noqa: E402
from policysearch.errors import DataError, UserError  # noqa: E402

if TYPE_CHECKING:
    from policysearch.benchmark import BenchmarkOutcome
    from policysearch.search.driver import SearchOutcome


def search(**options: Any) -> SearchOutcome:
    """Run or resume a search; keyword arguments are those of ``SearchOptions``."""
    from policysearch.search.driver import SearchOptions
    from policysearch.search.driver import search as _search

    return _search(SearchOptions(**options))


def results(out: str | None = None, *, storage: str | None = None,
            study: str | None = None) -> Any:
    """The ranked results table (a pandas DataFrame) of a study."""
    from pathlib import Path

    from policysearch.results_table import results_frame
    from policysearch.search.optuna_engine import load_records

    records = load_records(out_dir=Path(out) if out else None, storage=storage,
                           study_name=study)
    return results_frame(records)


def benchmark(policy: str, **options: Any) -> BenchmarkOutcome:
    """Benchmark a searched policy against the baselines on the test split; keyword arguments
    are those of ``policysearch.benchmark.BenchmarkOptions``."""
    from pathlib import Path

    from policysearch.benchmark import BenchmarkOptions, run_benchmark

    for key in ("search", "out"):
        if isinstance(options.get(key), str):
            options[key] = Path(options[key])
    return run_benchmark(BenchmarkOptions(policy=Path(policy), **options))


__all__ = [
    "DataError",
    "Policy",
    "Slot",
    "UserError",
    "Weighting",
    "__version__",
    "benchmark",
    "get_baseline",
    "load_policy",
    "results",
    "search",
]
