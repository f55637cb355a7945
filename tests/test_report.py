"""The HTML report: written by a search and by ``policysearch report``, self-contained, and
complete when a real browser (headless Chromium) renders it."""

from __future__ import annotations

import copy
import dataclasses
import re
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import policysearch as ps
from policysearch.cli import app
from policysearch.reporting.importance import MIN_TRIALS, param_importances
from policysearch.reporting.report import REPORT_NAME, ReportWriter, render_report
from policysearch.reporting.tables import results_frame
from tests.browser import open_page, require_chromium
from tests.conftest import TINY_SPACE
from tests.reliability_counts import Recorder

runner = CliRunner()
REPORT_TIMEOUT_S = 300  # `policysearch report` in a subprocess (a few seconds, unloaded)
SECTIONS = ("summary", "history", "importance", "tasks", "preview", "cost", "results")


def _search(tmp: Path, name: str, trials: int, **space_changes) -> Path:
    space = {**copy.deepcopy(TINY_SPACE), "name": name, **space_changes}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = tmp / name
    ps.search(space=path, trials=trials, out=out, device="cpu", threads=1)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished single-objective study: the reference and 6 search trials."""
    return _search(tmp_path_factory.mktemp("report"), "single", 7)


@pytest.fixture(scope="module")
def pareto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished multi-objective study (one objective per task)."""
    return _search(tmp_path_factory.mktemp("report"), "multi", 5, objective="pareto")


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data")]
        if tag in ("link", "iframe", "object", "embed"):
            self.refs.append(f"<{tag}>")


def _references(text: str) -> list[str]:
    """Every URL an element of the page refers to (scripts' text is not parsed)."""
    parser = _Refs()
    parser.feed(text)
    return parser.refs


def _delta_m(records) -> dict[int, float]:
    frame = results_frame(records, warn=False)
    return dict(zip(frame["trial"], frame["delta_m"], strict=True))


# --- content, without a browser ---------------------------------------------------------------


def test_search_writes_a_self_contained_report(single: Path) -> None:
    text = (single / REPORT_NAME).read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in text, key
    assert '<section id="pareto">' not in text  # single objective: no Pareto front
    # Nothing to fetch: no element refers to anything but the page and inline data.
    refs = _references(text)
    assert refs and all(r.startswith(("#", "data:")) for r in refs), refs
    assert "@import" not in text
    assert 'src="data:image/png;base64,' in text  # the previews are inlined
    records = ps.records(single)
    assert f"policysearch report: {records.name}" in text


def _text(html: str) -> str:
    """The page's visible text, one space between elements."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_report_shows_the_data_wait(single: Path) -> None:
    records = ps.records(single)
    complete = [r for r in records.records if r.state == "complete"]
    # The search stored each complete trial's data wait: one fraction per trained epoch.
    assert complete and all(r.data_wait and len(r.data_wait) == r.epochs for r in complete)
    assert all(0.0 <= w <= 1.0 for r in complete for w in r.data_wait or [])
    html = render_report(records, preview=False)
    cost = html[html.index('<section id="cost">'):html.index('<section id="results">')]
    means = [100.0 * statistics.mean(r.data_wait or []) for r in complete]
    workers = sorted({r.loader_workers for r in complete})
    plural = "" if workers == [1] else "s"
    assert re.search(rf"data wait \(mean over {len(complete)} complete trials?.*"
                     rf"{statistics.mean(means):.1f}% \({' or '.join(map(str, workers))} "
                     rf"loader worker{plural}\)", _text(cost)), _text(cost)
    # The results table has each trial's mean, in %, beside its duration.
    table = html[html.index('<section id="results">'):]
    assert "<th>data_wait</th>" in table and "<th>loader_workers</th>" in table
    frame = results_frame(records, warn=False)
    assert list(frame["data_wait"].dropna()) and all(
        f"<td>{v:.4g}</td>" in table for v in frame["data_wait"].dropna())


def test_pareto_study_has_a_pareto_section(pareto: Path) -> None:
    text = (pareto / REPORT_NAME).read_text()
    assert '<section id="pareto">' in text and 'id="plot-pareto"' in text


def test_report_of_a_running_study_says_so(single: Path) -> None:
    records = ps.records(single)
    last = records.records[-1]
    records.records[-1] = dataclasses.replace(last, state="running", metrics=None)
    html = render_report(records, preview=False)
    assert "1 trial(s) running" in html
    assert '<section id="preview">' not in html


def test_importances_are_seeded_and_sum_to_one(single: Path) -> None:
    records = ps.records(single)
    first = param_importances(records, _delta_m(records))
    again = param_importances(records, _delta_m(records))
    assert first == again and first.trials == 6
    assert sum(first.values.values()) == pytest.approx(1.0)
    searched = {k for r in records.records if r.params for k in r.params}
    assert first.values and set(first.values) <= searched
    assert list(first.values.values()) == sorted(first.values.values(), reverse=True)


def test_importances_need_enough_trials(single: Path) -> None:
    records = ps.records(single)
    keep = [r for r in records.records if r.role == "reference"]
    keep += [r for r in records.records if r.role == "search"][:MIN_TRIALS - 1]
    few = dataclasses.replace(records, records=keep)
    found = param_importances(few, _delta_m(few))
    assert not found.values and f"at least {MIN_TRIALS}" in found.note
    assert "No importances yet" in render_report(few, preview=False)


def test_importances_of_trials_that_all_score_the_same(single: Path) -> None:
    # fANOVA raises on a constant target (every trial's network learned the same thing): the
    # report says so instead of failing at the end of the search.
    records = ps.records(single)
    same = {number: 0.0 for number in _delta_m(records)}
    found = param_importances(records, same)
    assert not found.values and found.trials == 6
    assert "the same Δm% (+0.00)" in found.note


def test_report_writer_throttles_and_never_raises(single: Path, tmp_path: Path) -> None:
    records = ps.records(single)
    writer = ReportWriter(tmp_path / "r.html", every_s=3600.0)
    writer.after_trial(records)
    assert (tmp_path / "r.html").exists() and writer.error is None
    (tmp_path / "r.html").write_text("stale")
    writer.after_trial(records)  # within the hour: not rewritten
    assert (tmp_path / "r.html").read_text() == "stale"
    writer.final(records)  # the end of a search always writes
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    (tmp_path / "file").write_text("")
    broken = ReportWriter(tmp_path / "file" / "r.html", every_s=0.0)
    broken.after_trial(records)  # a folder that is a file: kept in .error, not raised
    assert broken.error and "cannot write the report" in broken.error


def test_a_report_that_cannot_be_written_never_ends_a_search(tiny_space: Path, tmp_path: Path,
                                                             reliability: Recorder) -> None:
    """Inside a real search: ``report.html`` is a folder, so every write of the report fails,
    during the search and at its end. The search still reaches ``--trials``, exits 0 with its
    results and export, and says once, at the end, that the report is missing and how to
    write it."""
    out = tmp_path / "out"
    (out / REPORT_NAME).mkdir(parents=True)
    result = runner.invoke(app, ["search", "--space", str(tiny_space), "--out", str(out),
                                 "--trials", "2", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "report could not be written" in line]
    assert len(lines) == 1 and f"policysearch report --out {out}" in lines[0], result.output
    assert "cannot write the report" in lines[0]
    assert (out / "results.csv").exists() and (out / "best_policy.yaml").exists()
    assert [r.state for r in ps.records(out).records] == ["complete", "complete"]
    reliability.fault("the report cannot be written", trials=2)
    assert (out / REPORT_NAME).is_dir()  # nothing was written in its place


def test_report_writer_listens_to_the_search_events(single: Path, tmp_path: Path) -> None:
    from policysearch.events import EpochEnded, TrialEnded
    from policysearch.records import StudyRecords

    reads: list[int] = []

    def records() -> StudyRecords:
        reads.append(1)
        return ps.records(single)

    path = tmp_path / "r.html"
    writer = ReportWriter(path, every_s=3600.0, records=records)
    writer(EpochEnded(trial=1, epoch=0, metrics={}))  # not the end of a trial: nothing
    assert not path.exists() and not reads
    writer(TrialEnded(trial=1, state="complete", role="search", delta_m=1.0, seconds=2.0))
    assert path.read_text().startswith("<!DOCTYPE html>") and len(reads) == 1
    writer(TrialEnded(trial=2, state="failed", role="search", error="nan"))
    assert len(reads) == 1  # within the hour: the study is not even read again
    failing = ReportWriter(tmp_path / "f.html", every_s=0.0, records=lambda: ps.records(
        tmp_path / "no-study"))
    failing(TrialEnded(trial=1, state="complete", role="search"))  # kept, never raised
    assert failing.error and "no study here" in failing.error


def test_report_command_from_out_and_from_storage(single: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--out", str(single), "--to",
                                 str(tmp_path / "a.html"), "--no-preview"])
    assert result.exit_code == 0, result.output
    assert "<section id=\"preview\">" not in (tmp_path / "a.html").read_text()
    result = runner.invoke(app, ["report", "--storage", str(single / "study.journal"),
                                 "--study", "single", "--to", str(tmp_path / "b.html")])
    assert result.exit_code == 0, result.output
    assert '<section id="preview">' in (tmp_path / "b.html").read_text()


def test_report_without_a_study_is_one_line_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "policysearch", "report", "--out",
                           str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--out" in done.stderr


# --- in a real browser ------------------------------------------------------------------------

PLOTS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
  id: el.id,
  traces: el.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length,
  points: el.querySelectorAll('.scatterlayer .point, .barlayer .point').length,
  width: el.getBoundingClientRect().width,
  height: el.getBoundingClientRect().height}))"""
IMAGES_JS = "() => [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
ROWS_JS = """() => [...document.querySelectorAll('table.results tbody tr')]
  .map(tr => tr.innerText.trim().length)"""


@pytest.mark.browser
@pytest.mark.parametrize("study", ["single", "pareto"])
def test_report_renders_in_headless_chromium(study: str, request: pytest.FixtureRequest) -> None:
    chromium = require_chromium()
    out: Path = request.getfixturevalue(study)
    path = out / REPORT_NAME
    trials = len(ps.records(out).records)
    expected = {"plot-history", "plot-importance", "plot-tasks"}
    if study == "pareto":
        expected.add("plot-pareto")
    with open_page(path, executable=chromium) as (page, log):
        plots = page.evaluate(PLOTS_JS)
        images = page.evaluate(IMAGES_JS)
        rows = page.evaluate(ROWS_JS)
        sections = page.evaluate("() => [...document.querySelectorAll('section')].map(s => s.id)")
    # Nothing but the file itself was loaded: no network, no other file.
    assert [u for u in log.requests if not u.startswith("data:")] == [path.resolve().as_uri()]
    assert not log.page_errors and not log.console_errors, (log.page_errors, log.console_errors)
    assert set(SECTIONS) <= set(sections)
    assert {p["id"] for p in plots} == expected
    for plot in plots:  # every plot drew data: traces with points, and has a size
        assert plot["traces"] >= 1 and plot["points"] >= 1, plot
        assert plot["width"] > 100 and plot["height"] > 100, plot
    assert len(images) == 2  # best policy and reference previews
    assert all(done and w > 0 and h > 0 for done, w, h in images), images
    assert len(rows) == trials and all(n > 0 for n in rows)


@pytest.mark.slow
def test_report_command_while_the_search_runs(tmp_path: Path) -> None:
    import os
    import signal
    import time

    space = tmp_path / "live.yaml"
    space.write_text(yaml.safe_dump({**copy.deepcopy(TINY_SPACE), "name": "live"}))
    out = tmp_path / "live"
    # Trials of about a second, far more than can finish while the report is built (its
    # command may take REPORT_TIMEOUT_S at most): the search is still running, whatever the
    # load of the machine, and is interrupted at the end.
    trials = 10_000
    proc = subprocess.Popen([sys.executable, "-m", "policysearch", "search", "--space",
                             str(space), "--out", str(out), "--trials", str(trials),
                             "--device", "cpu", "--threads", "1", "--quiet", "--no-report"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (out / "results.csv").exists():  # written after the first trial
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the search ended, or finished no trial in 300 s")
            time.sleep(0.2)  # polling interval, not a timing assertion
        done = subprocess.run([sys.executable, "-m", "policysearch", "report", "--out",
                               str(out), "--no-preview"], capture_output=True, text=True,
                              timeout=REPORT_TIMEOUT_S)
        still_running = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
            raise
    assert done.returncode == 0, done.stderr
    assert still_running, "the search finished before the report was built"
    # Only the report command wrote it (--no-report): the trials finished so far, ranked.
    text = (out / REPORT_NAME).read_text()
    assert "<td>complete</td>" in text and '<section id="history">' in text
    assert len(ps.records(out).records) < trials


def test_pareto_panels_leave_out_tasks_without_a_delta(pareto: Path) -> None:
    import itertools

    from policysearch.reporting.figures import pareto_figure

    records = ps.records(pareto)
    frame = results_frame(records, warn=False)
    tasks = list(records.metrics_info)
    defined = [t for t in tasks if frame[f"delta.{t}"].notna().any()]
    fig = pareto_figure(frame, tasks)
    panels = {(trace.xaxis, trace.yaxis) for trace in fig.data}
    assert len(panels) == len(list(itertools.combinations(defined, 2)))
    titles = {fig.layout[k].title.text for k in fig.layout if k.startswith("xaxis")}
    assert titles <= {f"{t} Δ%" for t in defined}
