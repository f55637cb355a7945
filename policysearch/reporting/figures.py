"""The report's plots as Plotly figures, built from the results table (``results_frame``).

Every figure is SVG-drawn (no WebGL), so it renders in any browser, headless ones included.
A function returns None when its figure has nothing to show; the report says why instead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from policysearch.records import MetricsInfo

# One colour per role of a point; the trials of the per-task bars use Plotly's palette.
COMPLETE, PRUNED, BEST, REFERENCE, FRONT = "#1f77b4", "#b0b0b0", "#d62728", "#2ca02c", "#ff7f0e"
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
           "font": {"family": "system-ui, sans-serif", "size": 13}}


def _hover(frame: pd.DataFrame) -> list[str]:
    return [f"trial {int(r.trial)} ({r.state})<br>Δm% {r.delta_m:+.2f}<br>{r.policy}"
            for r in frame.itertuples()]


def history_figure(frame: pd.DataFrame) -> go.Figure | None:
    """Δm% per trial in trial order: complete and pruned trials (a pruned trial at its last
    reported epoch) and the best complete Δm% so far."""
    search = frame[frame["role"].eq("search") & frame["delta_m"].notna()].sort_values("trial")
    if search.empty:
        return None
    fig = go.Figure()
    complete = search[search["state"].eq("complete")]
    pruned = search[search["state"].eq("pruned")]
    if not pruned.empty:
        fig.add_trace(go.Scatter(x=pruned["trial"], y=pruned["delta_m"], mode="markers",
                                 name="pruned (at its last epoch)", hovertext=_hover(pruned),
                                 hoverinfo="text", marker={"color": PRUNED, "symbol": "x"}))
    if not complete.empty:
        fig.add_trace(go.Scatter(x=complete["trial"], y=complete["delta_m"], mode="markers",
                                 name="complete", hovertext=_hover(complete), hoverinfo="text",
                                 marker={"color": COMPLETE, "size": 9}))
        best = complete["delta_m"].cummax()
        fig.add_trace(go.Scatter(x=complete["trial"], y=best, mode="lines", name="best so far",
                                 line={"color": BEST, "shape": "hv"}))
    fig.add_hline(y=0.0, line={"color": REFERENCE, "dash": "dash"},
                  annotation_text="reference", annotation_position="bottom right")
    fig.update_layout(**_LAYOUT, height=380, xaxis_title="trial", yaxis_title="Δm% (val)",
                      legend={"orientation": "h", "y": 1.12})
    return fig


def importance_figure(values: Mapping[str, float]) -> go.Figure | None:
    """Horizontal bars, the most important parameter on top."""
    if not values:
        return None
    names = list(values)[::-1]
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h",
                           marker={"color": COMPLETE},
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(**_LAYOUT, height=max(260, 26 * len(names) + 90),
                      xaxis_title="importance for Δm% (fANOVA, sums to 1)")
    return fig


def _primary(info: MetricsInfo, task: str) -> tuple[str, bool]:
    for metric, meta in info[task].items():
        if meta.get("primary"):
            return metric, bool(meta.get("higher", True))
    metric = next(iter(info[task]))
    return metric, bool(info[task][metric].get("higher", True))


def task_bars_figure(frame: pd.DataFrame, info: MetricsInfo, top: int = 5) -> go.Figure | None:
    """One panel per task: its primary validation metric for the ``top`` ranked trials and the
    reference trial."""
    ranked = frame[frame["rank"].notna()].sort_values("rank")
    shown = ranked[ranked["role"].eq("search")].head(top)
    reference = frame[frame["role"].eq("reference") & frame["state"].eq("complete")]
    if shown.empty:
        return None
    rows = pd.concat([shown, reference.head(1)]) if not reference.empty else shown
    labels = [("reference" if r.role == "reference" else f"#{int(r.rank)} trial {int(r.trial)}")
              for r in rows.itertuples()]
    tasks = [t for t in info if f"{t}.{_primary(info, t)[0]}" in frame.columns]
    titles = []
    for task in tasks:
        metric, higher = _primary(info, task)
        titles.append(f"{task}: {metric} ({'higher' if higher else 'lower'} is better)")
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=titles)
    palette = [COMPLETE, FRONT, "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"]
    colours = [REFERENCE if label == "reference" else palette[i % len(palette)]
               for i, label in enumerate(labels)]
    for col, task in enumerate(tasks, start=1):
        metric, _ = _primary(info, task)
        fig.add_trace(go.Bar(x=labels, y=rows[f"{task}.{metric}"], marker={"color": colours},
                             showlegend=False,
                             hovertemplate=f"%{{x}}<br>{task}.{metric}: %{{y:.4f}}<extra></extra>"),
                      row=1, col=col)
    fig.update_layout(**_LAYOUT, height=380)
    fig.update_annotations(font={"size": 12})
    return fig


def pareto_figure(frame: pd.DataFrame, tasks: Sequence[str]) -> go.Figure | None:
    """Each pair of tasks' Δ% for the complete search trials, the Pareto front highlighted
    (the front is over all tasks, so a front member may look dominated in one pair). Tasks
    whose Δ% is undefined for every trial are left out."""
    if "pareto" not in frame.columns or len(tasks) < 2:
        return None
    done = frame[frame["role"].eq("search") & frame["rank"].notna()]
    # A task whose Δ% is undefined (its reference metric ~0) would only draw empty panels.
    tasks = [t for t in tasks if done[f"delta.{t}"].notna().any()]
    if done.empty or len(tasks) < 2:
        return None
    pairs = list(itertools.combinations(tasks, 2))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = make_subplots(rows=rows, cols=cols,
                        horizontal_spacing=0.08, vertical_spacing=0.12)
    on_front = done["pareto"].astype(bool)
    for i, (a, b) in enumerate(pairs):
        row, col = divmod(i, cols)
        for part, name, colour in ((done[~on_front], "dominated", COMPLETE),
                                   (done[on_front], "Pareto front", FRONT)):
            if part.empty:
                continue
            fig.add_trace(go.Scatter(
                x=part[f"delta.{a}"], y=part[f"delta.{b}"], mode="markers", name=name,
                legendgroup=name, showlegend=i == 0, hovertext=_hover(part), hoverinfo="text",
                marker={"color": colour, "size": 9}), row=row + 1, col=col + 1)
        fig.update_xaxes(title_text=f"{a} Δ%", row=row + 1, col=col + 1)
        fig.update_yaxes(title_text=f"{b} Δ%", row=row + 1, col=col + 1)
    fig.update_layout(**_LAYOUT, height=340 * rows, legend={"orientation": "h", "y": 1.08})
    return fig


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A figure as a ``<div>`` plus its script; plotly.js itself is inlined once by the page."""
    config: dict[str, Any] = {"displaylogo": False, "responsive": True}
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=config)
