"""Per-trial metrics to TensorBoard or MLflow (``search --log-to``), in local files only.

A tracker listens to the search's progress events (``policysearch.events``), which reach the
driver from every engine (Optuna with one or several workers, Ray Tune), so both engines log the
same way:

- ``TrialStarted``: a run per trial (``trial-00003``), tagged with its role and policy;
- ``EpochEnded``: every task's validation metrics at that epoch (step = epochs trained);
- ``TrialEnded``: its state and, when complete, its Δm% (and each task's Δ% for a pareto
  study);
- after each trial (``record``): the searched parameter values the trial's policy came from.

TensorBoard: one event folder per trial under ``OUT/tensorboard`` (``tensorboard --logdir
OUT/tensorboard``). MLflow: the SQLite file ``OUT/mlflow.db``, one experiment per study, one
run per trial (``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``). Both need the
package extra ``tracking``. With ``--engine ray``, Ray Tune's own loggers (CSV, JSON and,
with tensorboardX installed, TensorBoard) also write into each trial's folder of the
experiment.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from policysearch.errors import UserError
from policysearch.events import (
    EpochEnded,
    SearchEvent,
    SearchListener,
    TrackingFailed,
    TrialEnded,
    TrialStarted,
)
from policysearch.records import StudyRecords

LOG_TARGETS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"


def run_name(number: int) -> str:
    return f"trial-{number:05d}"


def _scalars(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{task}/{name}": float(v) for task, found in metrics.items()
            for name, v in found.items()
            if isinstance(v, int | float) and math.isfinite(v)}


class _Tracker:
    """What both trackers share: the progress-event dispatch and the trials seen."""

    def __init__(self) -> None:
        self.steps: dict[int, int] = {}
        self.params_logged: set[int] = set()

    def __call__(self, event: SearchEvent) -> None:
        match event:
            case TrialStarted(trial=number):
                self.steps[number] = 0
                self.start(number, role=event.role, policy=event.policy)
            case EpochEnded(trial=number) if number in self.steps:
                step = event.epoch + 1
                self.steps[number] = step
                self.metrics(number, _scalars(event.metrics or {}), step)
            case TrialEnded(trial=number) if number in self.steps:
                final: dict[str, float] = {}
                if event.state == "complete" and event.delta_m is not None:
                    final["delta_m"] = float(event.delta_m)
                    final.update({f"delta/{t}": float(v)
                                  for t, v in (event.task_deltas or {}).items()})
                final = {k: v for k, v in final.items() if math.isfinite(v)}
                self.end(number, event.state, final, max(self.steps.get(number, 0), 1))

    def record(self, study: StudyRecords) -> None:
        """Log the searched parameter values of trials that ended since the last call."""
        for rec in study.records:
            if (rec.number in self.steps and rec.number not in self.params_logged
                    and rec.state != "running"):
                self.params_logged.add(rec.number)
                if rec.params:
                    self.params(rec.number, dict(rec.params))

    # Implemented by each tracker:
    def start(self, number: int, *, role: str, policy: str) -> None: ...
    def metrics(self, number: int, values: dict[str, float], step: int) -> None: ...
    def end(self, number: int, state: str, final: dict[str, float], step: int) -> None: ...
    def params(self, number: int, values: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker(_Tracker):
    """Event files under ``root/trial-NNNNN`` (torch's SummaryWriter)."""

    def __init__(self, root: Path):
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--log-to tensorboard needs the tensorboard package: pip install "
                            "'policysearch[tracking]'", field="--log-to") from None
        self.root, self._writer_class = Path(root), SummaryWriter
        self.writers: dict[int, Any] = {}

    def _writer(self, number: int) -> Any:
        if number not in self.writers:
            self.writers[number] = self._writer_class(log_dir=str(self.root / run_name(number)))
        return self.writers[number]

    def start(self, number: int, *, role: str, policy: str) -> None:
        writer = self._writer(number)
        writer.add_text("policy", policy or "(no ops)", 0)
        writer.add_text("role", role, 0)

    def metrics(self, number: int, values: dict[str, float], step: int) -> None:
        writer = self._writer(number)
        for key, value in values.items():
            writer.add_scalar(key, value, step)

    def end(self, number: int, state: str, final: dict[str, float], step: int) -> None:
        writer = self._writer(number)
        writer.add_text("state", state, step)
        for key, value in final.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def params(self, number: int, values: dict[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(values.items()))
        writer = self._writer(number)
        writer.add_text("params", text, 0)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class MlflowTracker(_Tracker):
    """One MLflow run per trial in a local SQLite store (MLflow's client API; no server)."""

    def __init__(self, db: Path, experiment: str):
        super().__init__()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("--log-to mlflow needs the mlflow-skinny package: pip install "
                            "'policysearch[tracking]'", field="--log-to") from None
        db = Path(db).resolve()
        # Checked here: MLflow itself retries a database it cannot open for minutes.
        if db.exists() and not db.is_file():
            raise UserError("cannot open the mlflow log: not a file", source=str(db),
                            field="--log-to")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            db.touch(exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot open the mlflow log: {err.strerror}", source=str(db),
                            field="--log-to") from None
        self.uri = f"sqlite:///{db}"
        # MLflow announces each table it creates at INFO: quiet while the store opens.
        logger = logging.getLogger("mlflow")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (found.experiment_id if found is not None else
                                  self.client.create_experiment(
                                      experiment, artifact_location=(db.parent / "mlartifacts")
                                      .as_uri()))
        finally:
            logger.setLevel(level)
        self.runs: dict[int, str] = {}

    def start(self, number: int, *, role: str, policy: str) -> None:
        run = self.client.create_run(self.experiment_id, run_name=run_name(number), tags={
            "policysearch.trial": str(number), "policysearch.role": role,
            "policysearch.policy": policy or "(no ops)"})
        self.runs[number] = run.info.run_id

    def metrics(self, number: int, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if number in self.runs and values:
            stamp = _now_ms()
            self.client.log_batch(self.runs[number], metrics=[
                Metric(k, v, stamp, step) for k, v in values.items()])

    def end(self, number: int, state: str, final: dict[str, float], step: int) -> None:
        if number not in self.runs:
            return
        self.metrics(number, final, step)
        run_id = self.runs[number]
        self.client.set_tag(run_id, "policysearch.state", state)
        status = {"complete": "FINISHED", "pruned": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(run_id, status=status)

    def params(self, number: int, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if number in self.runs:
            self.client.log_batch(self.runs[number], params=[
                Param(k, str(v)) for k, v in sorted(values.items())])


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def make_tracker(target: str, out_dir: Path, study_name: str) -> _Tracker:
    """The tracker for ``--log-to TARGET``, writing under ``out_dir``."""
    if target not in LOG_TARGETS:
        raise UserError(f"expected one of {', '.join(LOG_TARGETS)}, got {target!r}",
                        field="--log-to")
    path = Path(out_dir) / (TENSORBOARD_DIR if target == "tensorboard" else MLFLOW_DB)
    try:
        if target == "tensorboard":
            return TensorBoardTracker(path)
        return MlflowTracker(path, study_name)
    except UserError:
        raise
    except Exception as err:  # a store that cannot be opened: before any trial runs
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cannot open the {target} log: {reason}", source=str(path),
                        field="--log-to") from None


class TrackedProgress:
    """The search's progress listener with a tracker listening in. A tracker that fails
    (a locked database, a full disk) is switched off with one ``TrackingFailed`` event: the
    trials go on."""

    def __init__(self, tracker: _Tracker, progress: SearchListener | None = None):
        self.tracker: _Tracker | None = tracker
        self.progress = progress

    def _guard(self, call: Any, *args: Any) -> None:
        if self.tracker is None:
            return
        try:
            call(*args)
        except Exception as err:  # noqa: BLE001 - logging is a view; the search goes on
            self.tracker = None
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if self.progress is not None:
                self.progress(TrackingFailed(error=reason))

    def __call__(self, event: SearchEvent) -> None:
        if self.tracker is not None:
            self._guard(self.tracker, event)
        if self.progress is not None:
            self.progress(event)

    def record(self, study: StudyRecords) -> None:
        if self.tracker is not None:
            self._guard(self.tracker.record, study)

    def close(self) -> None:
        if self.tracker is not None:
            self._guard(self.tracker.close)
