"""The HTML report of a study: one self-contained file (plotly.js and the preview images are
inlined; nothing is fetched from the network) that opens in a browser without a server.

Sections: a summary (best trial, trials by state, search cost), the optimisation history,
parameter importances, per-task metrics of the top trials, the Pareto front (multi-objective
studies), the preview grid of the best policy beside the reference's, the search cost (with the
trials' data wait) and the ranked results table. A search writes ``report.html`` into its
``--out`` after every trial; ``policysearch report`` / ``policysearch.reporting.report``
rebuild it from the storage at any time.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from policysearch.errors import UserError
from policysearch.events import SearchEvent, TrialEnded
from policysearch.records import StudyRecords, search_cost
from policysearch.reporting.tables import data_wait_stats, loader_workers_text, results_frame

REPORT_NAME = "report.html"
REPORT_EVERY_S = 60.0  # during a search: rewrite the report at most this often
PREVIEW_SAMPLES, PREVIEW_DRAWS, PREVIEW_CELL = 3, 3, 96

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;
 background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:18px 32px}
header h1{margin:0 0 6px;font-size:22px}
header p{margin:0;color:#cbd5e1;font-size:14px}
nav{padding:8px 32px;background:#e5e7eb;font-size:14px}
nav a{margin-right:16px;color:#1f2937}
main{padding:8px 32px 40px}
section{background:#fff;border-radius:8px;padding:12px 20px;margin:16px 0;
 box-shadow:0 1px 2px rgba(0,0,0,.08)}
section h2{font-size:17px;margin:4px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#f3f4f6;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}
.card span{font-size:12px;color:#4b5563}
.note{color:#4b5563;font-size:13px}
.previews{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:20px;
 align-items:start}
.previews figure{margin:0}
.previews img{width:100%;height:auto;image-rendering:pixelated}
.previews figcaption{font-size:13px;margin-bottom:4px;font-weight:600}
.scroll{overflow-x:auto}
table.results,table.cost{border-collapse:collapse;font-size:12px}
table.results th,table.results td,table.cost th,table.cost td{border-bottom:1px solid #e5e7eb;
 padding:4px 8px;text-align:right;white-space:nowrap}
table.results td:nth-last-child(-n+2){text-align:left}
table.results th{position:sticky;top:0;background:#f9fafb}
table.cost th{text-align:left}
"""


def render_report(study: StudyRecords, *, dataset: Any = None, preview: bool = True,
                  top: int = 5, task_weights: dict[str, float] | None = None) -> str:
    """The report as HTML text.

    ``dataset``: where the preview draws its samples (default: the study's dataset, built
    again from its stored search space); ``preview=False`` leaves the preview out.
    """
    import plotly.offline

    from policysearch.reporting.figures import (
        figure_html,
        history_figure,
        importance_figure,
        pareto_figure,
        task_bars_figure,
    )
    from policysearch.reporting.importance import param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = results_frame(study, warn=False, task_weights=task_weights)
    for col in ("role", "policy"):  # a study without trials has a bare table
        if col not in frame.columns:
            frame[col] = pd.Series(dtype=object)
    tasks = list(study.metrics_info)
    sections: list[tuple[str, str, str]] = [("summary", "Summary", _summary(study, frame))]

    def plot(key: str, title: str, fig: Any, empty: str, note: str = "") -> None:
        body = figure_html(fig, f"plot-{key}") if fig is not None else ""
        text = note if fig is not None else empty
        if text:
            body += f'<p class="note">{html.escape(text)}</p>'
        sections.append((key, title, body))

    plot("history", "Optimisation history", history_figure(frame),
         "No search trial has a Δm% yet.",
         "Δm% on the validation split against the reference (dashed line at 0); the red line "
         "is the best complete trial so far. Hover a point for its policy.")
    scored = frame[frame["delta_m"].notna()]
    importances = param_importances(study, dict(zip(scored["trial"], scored["delta_m"],
                                                    strict=True)))
    plot("importance", "Parameter importances", importance_figure(importances.values),
         f"No importances yet: {importances.note}.",
         f"Optuna's fANOVA over {importances.trials} complete search trials (seed "
         f"{study.seed}); with few trials the order is rough.")
    plot("tasks", "Per-task metrics of the top trials",
         task_bars_figure(frame, study.metrics_info, top), "No complete search trial yet.",
         f"The primary validation metric of each task for the {top} best trials by Δm% and the "
         "reference.")
    if study.objective == "pareto":
        plot("pareto", "Pareto front", pareto_figure(frame, tasks),
             "No complete search trial yet.",
             "Each task's Δ% against the reference, per pair of tasks; orange trials are "
             "Pareto-optimal over all tasks.")
    if preview:
        sections.append(("preview", "Preview: best policy vs reference",
                         _preview_section(study, frame, dataset)))
    sections.append(("cost", "Search cost", _cost_section(study)))
    sections.append(("results", "Results table", _table_section(frame)))
    return _page(study, frame, sections, plotly.offline.get_plotlyjs())


def write_report(study: StudyRecords, path: str | Path, **options: Any) -> Path:
    """``render_report`` written to ``path`` atomically (a reader never sees half a file);
    options are those of ``render_report``."""
    path = Path(path)
    text = render_report(study, **options)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:  # (e.g. ``path`` is a folder: the temporary file is not left there)
            Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write the report: {err.strerror or type(err).__name__}",
                        source=str(path), field="--to") from None
    return path


class ReportWriter:
    """Keeps ``report.html`` current during a search. As a search listener (``__call__``) it
    rewrites the report when a trial ends (``TrialEnded``), from the study as ``records``
    reads it; ``after_trial`` does the same with the study given. Either writes only when
    ``every_s`` seconds have passed since the last write (the first trial's end always writes);
    ``final`` always does. A failure never stops the search: it is kept in ``error``, the
    next trial tries again, and a failed final write is reported (``ReportFailed``)."""

    def __init__(self, path: Path, *, dataset: Any = None, every_s: float = 60.0,
                 records: Callable[[], StudyRecords] | None = None):
        self.path, self.dataset, self.every_s = Path(path), dataset, every_s
        self.records = records
        self.last: float | None = None
        self.error: str | None = None

    def _due(self) -> bool:
        return self.last is None or time.monotonic() - self.last >= self.every_s

    def __call__(self, event: SearchEvent) -> None:
        if not isinstance(event, TrialEnded) or self.records is None or not self._due():
            return
        try:
            study = self.records()
        except Exception as err:  # noqa: BLE001 - the report is a view; the trials go on
            self.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            return
        self.after_trial(study)

    def after_trial(self, study: StudyRecords) -> None:
        if not self._due():
            return
        try:
            write_report(study, self.path, dataset=self.dataset)
            self.error = None
        except Exception as err:  # noqa: BLE001 - the report is a view; the trials go on
            self.error = str(err).splitlines()[0] if str(err) else type(err).__name__
        self.last = time.monotonic()

    def final(self, study: StudyRecords) -> Path | None:
        """Write the report whatever the time since the last write; ``None`` when it cannot
        be written (the reason in ``error``): the search's results stand without it."""
        self.last = time.monotonic()
        try:
            path = write_report(study, self.path, dataset=self.dataset)
        except Exception as err:  # noqa: BLE001 - the report is a view; the search has ended
            self.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            return None
        self.error = None
        return path


# --- sections ---------------------------------------------------------------------------------


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


def _summary(study: StudyRecords, frame: pd.DataFrame) -> str:
    states = frame["state"].value_counts().to_dict() if not frame.empty else {}
    ranked = frame[frame["rank"].notna() & frame["role"].eq("search")].sort_values("rank")
    cost = search_cost(study)
    cards = []
    if not ranked.empty:
        best = ranked.iloc[0]
        cards.append(_card(f"{best['delta_m']:+.2f}", f"best Δm% (trial {int(best['trial'])})"))
    raced = (ranked[ranked["delta_m_mean"].notna()] if "delta_m_mean" in ranked.columns
             else ranked.iloc[0:0])
    if not raced.empty:  # finalists / re-evaluated trials: the best mean, as the export picks
        top = raced.loc[raced["delta_m_mean"].idxmax()]
        cards.append(_card(f"{top['delta_m_mean']:+.2f}",
                           f"best mean Δm% over re-run seeds (trial {int(top['trial'])}, "
                           f"{int(top['seeds'])} seeds)"))
    cards.append(_card(str(len(frame)), ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                       or "trials"))
    if cost.full_trainings is not None:
        cards.append(_card(f"{cost.full_trainings:.1f}",
                           f"full trainings ({cost.trial_epochs} trial-epochs)"))
    if cost.wall_seconds is not None:
        cards.append(_card(f"{cost.wall_seconds / 60:.1f} min", "wall time"))
    body = f'<div class="cards">{"".join(cards)}</div>'
    if not ranked.empty:
        body += (f'<p>Best policy: <code>{html.escape(str(ranked.iloc[0]["policy"]))}</code>'
                 "</p>")
    if frame.attrs.get("reference"):
        body += f'<p class="note">Δm% is measured against {html.escape(frame.attrs["reference"])}.'
        body += "</p>"
    for note in [*frame.attrs.get("dataset_notes", []), *frame.attrs.get("notes", [])]:
        body += f'<p class="note">{html.escape(str(note))}</p>'
    return body


def _png_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _study_dataset(study: StudyRecords) -> Any:
    from policysearch.config import SearchSpace
    from policysearch.data.loading import load_dataset

    return load_dataset(SearchSpace.model_validate(study.space))


def _preview_section(study: StudyRecords, frame: pd.DataFrame, dataset: Any) -> str:
    from policysearch.augment import Policy, get_baseline
    from policysearch.reporting.preview import render_preview

    ranked = frame[frame["rank"].notna() & frame["role"].eq("search")].sort_values("rank")
    if ranked.empty:
        return '<p class="note">No complete search trial yet.</p>'
    best_number = int(ranked.iloc[0]["trial"])
    record = next(r for r in study.records if r.number == best_number)
    try:
        data = dataset if dataset is not None else _study_dataset(study)
        best = Policy.from_dict(record.policy or {})
        reference = get_baseline(study.reference_name, dict(best.tasks))
        val = data.split("val")
        samples = [val[i] for i in range(min(PREVIEW_SAMPLES, len(val)))]
        tasks = tuple(data.tasks)
        figures = []
        for caption, policy in ((f"best: trial {best_number}", best),
                                (f"reference: {study.reference_name}", reference)):
            image = render_preview(policy, samples, tasks, draws=PREVIEW_DRAWS, seed=study.seed,
                                   cell=PREVIEW_CELL)
            figures.append(f'<figure><figcaption>{html.escape(caption)}</figcaption>'
                           f'<img alt="{html.escape(caption)}" src="{_png_uri(image)}" '
                           f'width="{image.width}" height="{image.height}"></figure>')
    except Exception as err:  # the report must not fail for its preview: say why instead
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f'<p class="note">No preview: {html.escape(reason)}</p>'
    return (f'<div class="previews">{"".join(figures)}</div><p class="note">The first '
            f"{len(samples)} validation samples, then {PREVIEW_DRAWS} independent draws of "
            f"each policy (seed {study.seed}).</p>")


def _minutes(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / 60:.1f} min"


def _cost_section(study: StudyRecords) -> str:
    cost = search_cost(study)
    rows: list[tuple[str, str]] = [
        ("trials that trained", str(cost.trials)),
        ("trial-epochs (every trained epoch: reference, pruned and failed trials included)",
         str(cost.trial_epochs)),
    ]
    if cost.full_trainings is not None:
        rows.append((f"full trainings of {study.budget_epochs} epochs",
                     f"{cost.full_trainings:.2f}"))
    rows.append(("trial time (sum over trials)", _minutes(cost.trial_seconds)))
    if cost.wall_seconds is not None:
        rows.append(("wall time (while at least one trial ran)", _minutes(cost.wall_seconds)))
    rows += [(f"{kind}-hours", f"{s / 3600:.2f}") for kind, s in cost.device_seconds.items()]
    if cost.rerun_runs:
        units = (f" = {cost.rerun_epochs / study.budget_epochs:.2f} full trainings"
                 if study.budget_epochs else "")
        rows += [("re-runs beside the study (finalists, re-evaluation; not trials)",
                  str(cost.rerun_runs)),
                 ("their trial-epochs", f"{cost.rerun_epochs}{units}"),
                 ("their time", _minutes(cost.rerun_seconds))]
    wait = data_wait_stats(study)
    if wait is not None:
        percent, workers, trials = wait
        loaders = f" ({loader_workers_text(workers)})" if workers else ""
        over = f"{trials} complete trial{'' if trials == 1 else 's'}"
        rows.append((f"data wait (mean over {over}: the share of each epoch's wall time the "
                     "training step waited for its next batch)",
                     f"{percent:.1f}%{loaders}"))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return f'<table class="cost">{cells}</table>'


def _table_section(frame: pd.DataFrame) -> str:
    if frame.empty:
        return '<p class="note">No trial yet.</p>'
    shown = frame.drop(columns=["role"], errors="ignore").copy()
    for col in shown.columns:
        if shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
        else:
            shown[col] = shown[col].map(lambda v: "" if v is None or v is pd.NA else v)
    table = shown.to_html(index=False, classes="results", na_rep="", escape=True, border=0)
    footer = "".join(f'<p class="note">{html.escape(line)}</p>'
                     for line in _footer(frame))
    return f'<div class="scroll">{table}</div>{footer}'


def _footer(frame: pd.DataFrame) -> list[str]:
    from policysearch.reporting.tables import footer_lines

    shown_above = ("search cost", "data wait")  # the cost section has them
    return [line for line in footer_lines(frame) if not line.startswith(shown_above)]


def _page(study: StudyRecords, frame: pd.DataFrame, sections: list[tuple[str, str, str]],
          plotly_js: str) -> str:
    running = int(frame["state"].eq("running").sum()) if not frame.empty else 0
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = [f"dataset {study.dataset}" if study.dataset else "",
                f"objective {study.objective}", f"reference {study.reference_name}",
                f"{running} trial(s) running" if running else "", f"written {stamp}"]
    return html_page(study.name, subtitle, sections, plotly_js)


def html_page(name: str, subtitle: list[str], sections: list[tuple[str, str, str]],
              script: str = "") -> str:
    """A self-contained report page: ``name`` in its title, the non-empty ``subtitle`` parts,
    and one section per (anchor, title, HTML content), linked from the navigation bar."""
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>policysearch report: {html.escape(name)}</title>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<style>{_CSS}</style><script>{script}</script></head><body>"
        f"<header><h1>policysearch report: {html.escape(name)}</h1>"
        f"<p>{html.escape(' · '.join(s for s in subtitle if s))}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )

