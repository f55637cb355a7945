"""An Optuna study as policysearch stores it: the storage (a journal file by default, or any
Optuna storage URL), opening or resuming a study, reading its trials back as records, and the
runs trained beside it.

Each trial keeps its record in user attributes (``role``, ``policy``, ``metrics``, ``epochs``,
``error``, ``reference_task``, ``final_weights``, ``device``, ``worker``; a complete trial also
``data_wait`` and ``loader_workers``, which trials stored before they were measured lack); the
study keeps its definition (``definition``: space and seed, which a resume must match),
``metrics_info``, ``tasks``, ``reference``, ``dataset``, ``dataset_notes`` and, for a search on
a subset of the training split, ``subset``. Runs trained
beside the study (re-evaluations with other seeds, other references:
``policysearch.evaluation.reeval``) are study user attributes ``rerun:<subject>:<seed>``, not
trials, so they change neither trial counts nor the study's definition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from policysearch.config import SearchSpace
from policysearch.errors import UserError
from policysearch.records import (
    MetricsInfo,
    StudyRecords,
    TrialRecord,
    rerun_entry,
)
from policysearch.search.journal_file import first_bad_line, repair_partial_tail
from policysearch.search.lifecycle import check_resume, definition
from policysearch.search.locks import exclusive
from policysearch.training import TrialResult

JOURNAL_NAME = "study.journal"
_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Database storages: how often a running trial's process beats, after how long without a
# beat its trial counts as dead (defaults; the environment variables below change them), and
# how often one trial's parameters are retried.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 40
MAX_RETRY = 2
HEARTBEAT_ENV = "POLICYSEARCH_HEARTBEAT_S"
GRACE_ENV = "POLICYSEARCH_GRACE_S"
POSTGRES_DRIVER_HINT = "pip install 'policysearch[postgres]' (psycopg 3)"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_location(storage: str | None, out_dir: Path) -> str:
    """The storage URL or journal path a search uses (for messages and resume hints)."""
    return storage or str(out_dir / JOURNAL_NAME)


def _seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"expected a whole number of seconds, at least 1, got {raw!r}",
                        source=name)
    return value


def heartbeat_settings() -> tuple[int, int]:
    """``(heartbeat interval, grace period)`` in seconds for a database storage: the defaults
    (``HEARTBEAT_INTERVAL_S``, ``GRACE_PERIOD_S``) unless ``POLICYSEARCH_HEARTBEAT_S`` /
    ``POLICYSEARCH_GRACE_S`` set them. Every host of a study must use the same values: a host
    judges the others' trials by its own grace period. A bad value is a ``UserError``."""
    interval = _seconds(HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S)
    grace = _seconds(GRACE_ENV, GRACE_PERIOD_S)
    if grace <= interval:
        raise UserError(f"the grace period ({grace} s) must be longer than the heartbeat "
                        f"interval ({HEARTBEAT_ENV}={interval} s), or live trials count as dead",
                        source=GRACE_ENV)
    return interval, grace


def database_url(url: str) -> str:
    """``url`` as SQLAlchemy should open it: ``postgresql://`` (SQLAlchemy's default driver is
    psycopg2) goes through psycopg 3 when it is installed, else psycopg2; with neither, a
    ``UserError`` says what to install. Any other URL is returned as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "postgresql":
        return url
    # psycopg: the driver the `postgres` extra installs; psycopg2: SQLAlchemy's default.
    for module, driver_url in (("psycopg", f"postgresql+psycopg://{rest}"), ("psycopg2", url)):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return driver_url
    raise UserError(f"postgresql:// needs a PostgreSQL driver: {POSTGRES_DRIVER_HINT}",
                    source=url, field="--storage")


def open_storage(storage: str | None, out_dir: Path) -> tuple[BaseStorage | str, bool]:
    """An Optuna storage and whether it is a local file that only this driver writes.

    A database URL gets Optuna's heartbeat: a trial whose process stops beating for the grace
    period (``heartbeat_settings``) is failed by the next worker that looks, and re-enqueued
    with the same parameters (at most ``MAX_RETRY`` times).
    """
    if storage is None or storage.endswith(".journal"):
        path = Path(storage) if storage else out_dir / JOURNAL_NAME
        lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's writers take
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            note = repair_partial_tail(path, lock)
            backend = JournalFileBackend(str(path), lock_obj=lock)
        except OSError as err:
            raise UserError(f"cannot create the study storage: {err.strerror}",
                            source=str(path)) from None
        if note:  # rare, and the user should know the file was changed
            print(f"note: {note}", file=sys.stderr)
        try:
            return JournalStorage(backend), True
        except ValueError:  # a record that is not JSON (json.JSONDecodeError is a ValueError)
            line = first_bad_line(path)
            raise UserError(
                f"line {line} is not a complete journal record (a write was cut off and "
                "records were appended after it), so the study cannot be read; restore the "
                f"file from a backup, or keep lines 1-{(line or 1) - 1} (the trials recorded "
                "before it) and search again to continue", source=str(path)) from None
    if "://" not in storage:
        raise UserError("expected a database URL (postgresql://…) or a *.journal file",
                        field="--storage", source=storage)
    interval, grace = heartbeat_settings()
    url = database_url(storage)
    for attempt in range(4):
        try:
            with warnings.catch_warnings():  # (heartbeats are "experimental": not the user's)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url, heartbeat_interval=interval, grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY))
            return rdb, False
        except Exception as err:  # unreachable server, bad URL, missing driver, …
            # Hosts starting at once race to create Optuna's tables: the loser tries again.
            if attempt == 3 or "already exists" not in str(err) and "duplicate key" not in str(err):
                raise UserError(f"cannot open the study storage: {err}".splitlines()[0],
                                source=storage, field="--storage") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def journal_lock(storage: str | None, out_dir: Path) -> Iterator[None]:
    """Hold the study's journal for this search alone (a second search on the same journal
    would fail this one's running trials as stale); a database storage needs no lock."""
    if storage is not None and not storage.endswith(".journal"):
        yield
        return
    journal = Path(storage_location(storage, out_dir))
    # (not ``<journal>.lock``: Optuna's journal backend locks that file for each write)
    with exclusive(journal.with_name(journal.name + ".owner"), what="study",
                   source=str(journal), hint="wait for it to end, or run one search with "
                   "--workers K"):
        yield


def open_study(space: SearchSpace, *, storage: str | None, study_name: str, out_dir: Path,
               seed: int, metrics_info: MetricsInfo, tasks: Mapping[str, str],
               dataset: str, dataset_notes: Sequence[str] = (),
               subset: Mapping[str, Any] | None = None) -> tuple[optuna.Study, bool]:
    """Create or resume the study; refuse a resume whose space (or seed) differs. ``subset``:
    the training subset the trials train on (``data.subset.SubsetChoice.to_dict``), stored
    as the study's ``subset`` (none for the whole training split).

    A pareto space makes a study with one "maximize" direction per task, in ``tasks`` order.
    """
    store, is_file = open_storage(storage, out_dir)
    n_objectives = len(tasks) if space.objective == "pareto" else 1
    try:
        try:  # loaded first: a resume refused below writes nothing into the storage
            study = optuna.load_study(study_name=study_name, storage=store)
        except KeyError:  # no such study yet
            study = optuna.create_study(storage=store, study_name=study_name,
                                        directions=["maximize"] * n_objectives,
                                        load_if_exists=True)
    except Exception as err:  # unreachable database, bad URL, …
        raise UserError(f"cannot open the study storage: {err}".splitlines()[0],
                        source=storage_location(storage, out_dir), field="--storage") from None
    stored = study.user_attrs.get("definition")
    check_resume(stored, space, seed, where=storage_location(storage, out_dir),
                 study_name=study_name)
    if stored is None:
        study.set_user_attr("definition", definition(space, seed))
        study.set_user_attr("metrics_info", metrics_info)
        study.set_user_attr("tasks", dict(tasks))
        study.set_user_attr("reference", space.reference)
        study.set_user_attr("dataset", dataset)
    if study.user_attrs.get("dataset_notes") != list(dataset_notes):
        study.set_user_attr("dataset_notes", list(dataset_notes))
    if subset is not None and study.user_attrs.get("subset") != dict(subset):
        study.set_user_attr("subset", dict(subset))
    return study, is_file


def _fail_and_retry(study: optuna.Study, trial: FrozenTrial, error: str) -> None:
    """Mark a trial whose process died failed and enqueue its parameters again (as Optuna's
    heartbeat does for database storages), at most ``MAX_RETRY`` times per trial."""
    study._storage.set_trial_user_attr(trial._trial_id, "error", error)
    try:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except Exception:  # another process finished it in the meantime
        return
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(
        study, study._storage.get_trial(trial._trial_id))


def fail_trials_of(study: optuna.Study, worker: str | None, error: str) -> list[int]:
    """Fail (and retry) the trials still running in ``worker`` (a ``host:pid`` label; None:
    every running trial)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker is None or trial.user_attrs.get("worker") == worker:
            _fail_and_retry(study, trial, error)
            failed.append(trial.number)
    return failed


def to_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    started = trial.datetime_start.timestamp() if trial.datetime_start is not None else None
    return TrialRecord(
        number=trial.number,
        state=_STATES.get(trial.state, trial.state.name.lower()),
        role=attrs.get("role", "search"),
        metrics=attrs.get("metrics"),
        policy=attrs.get("policy"),
        duration_s=duration,
        epochs=attrs.get("epochs"),
        error=attrs.get("error"),
        reference_task=attrs.get("reference_task"),
        final_weights=attrs.get("final_weights"),
        started_at=started,
        device=attrs.get("device"),
        params=dict(trial.params) or None,
        data_wait=attrs.get("data_wait"),
        loader_workers=attrs.get("loader_workers"),
    )


STALE_HEARTBEAT_ERROR = ("its process stopped sending heartbeats for the grace period (a lost "
                         "host, or a killed process)")


def _with_stale_reasons(trials: Sequence[FrozenTrial],
                        records: list[TrialRecord]) -> list[TrialRecord]:
    """Optuna's heartbeat fails a trial whose process stopped beating without a reason (a
    finished trial takes no attribute): give those the reason, and the trial its parameters
    ran again as."""
    # A retry names the first trial of its parameters (``failed_trial``), whichever failed.
    first = {t.number: t.system_attrs.get("failed_trial", t.number) for t in trials}
    out = []
    for trial, record in zip(trials, records, strict=True):
        if record.state == "failed" and record.error is None:  # every other failure says why
            again = min((n for n, origin in first.items()
                         if origin == first[trial.number] and n > trial.number), default=None)
            reason = STALE_HEARTBEAT_ERROR + (f"; its parameters ran again as trial {again}"
                                              if again is not None else "")
            record = dataclasses.replace(record, error=reason)
        out.append(record)
    return out


def study_records(study: optuna.Study) -> StudyRecords:
    """Every trial of ``study`` as a record, with what is needed to score them."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    records = _with_stale_reasons(trials, [to_record(t) for t in trials])
    return StudyRecords.from_stored(study.study_name, attrs, records, attrs)


def load_records(*, out_dir: Path | None, storage: str | None,
                 study_name: str | None) -> StudyRecords:
    """Read a finished or running study from ``--out`` or ``--storage/--study``."""
    return study_records(load_study(out_dir=out_dir, storage=storage, study_name=study_name))


class OptunaStudyStore:
    """A study of the Optuna engine as a ``StudyStore`` (``policysearch.search.stores``)."""

    def __init__(self, study: optuna.Study, location: str):
        self.study = study
        self.location = location

    def records(self) -> StudyRecords:
        return study_records(self.study)

    def save_rerun(self, subject: str, seed: int, result: TrialResult) -> None:
        """One user attribute per run, so that concurrent writers never overwrite each
        other's runs."""
        self.study.set_user_attr(*rerun_entry(subject, seed, result))


def load_study(*, out_dir: Path | None, storage: str | None,
               study_name: str | None) -> optuna.Study:
    """Open an existing study from ``--out`` or ``--storage/--study``."""
    if storage is None:
        if out_dir is None:
            raise UserError("give --out DIR or --storage URL --study NAME", field="--out")
        path = out_dir / JOURNAL_NAME
        if not path.exists():
            raise UserError("no study here (study.journal not found)", source=str(out_dir),
                            field="--out")
        storage = str(path)
    store, _ = open_storage(storage, out_dir or Path("."))
    try:
        names = optuna.get_all_study_names(storage=store)
    except Exception as err:
        raise UserError(f"cannot open the study storage: {err}".splitlines()[0],
                        source=storage, field="--storage") from None
    if study_name is None:
        if len(names) != 1:
            raise UserError(f"name the study with --study (found: {', '.join(names) or 'none'})",
                            source=storage, field="--study")
        study_name = names[0]
    elif study_name not in names:
        raise UserError(f"no study named {study_name!r} (found: {', '.join(names) or 'none'})",
                        source=storage, field="--study")
    return optuna.load_study(study_name=study_name, storage=store)




def open_study_store(*, out_dir: Path | None, storage: str | None,
                     study_name: str | None) -> OptunaStudyStore:
    """An existing study, from ``--out`` or ``--storage/--study``, as a ``StudyStore``."""
    study = load_study(out_dir=out_dir, storage=storage, study_name=study_name)
    location = storage or str(Path(out_dir or ".") / JOURNAL_NAME)
    return OptunaStudyStore(study, location)
