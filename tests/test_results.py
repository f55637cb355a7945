from __future__ import annotations

import math
import warnings

import pytest

from policysearch.errors import UserError
from policysearch.records import ReferenceWarning, StudyRecords, TrialRecord, delta_m, search_cost
from policysearch.reporting.tables import compact_columns, results_frame, to_markdown

INFO = {
    "cls": {"accuracy": {"higher": True, "primary": True},
            "macro_f1": {"higher": True, "primary": False}},
    "depth": {"abs_err": {"higher": False, "primary": True},
              "rel_err": {"higher": False, "primary": True}},
}
REF = {"cls": {"accuracy": 0.5, "macro_f1": 0.4}, "depth": {"abs_err": 2.0, "rel_err": 0.5}}


def test_delta_m_signs_and_within_task_mean_first() -> None:
    metrics = {"cls": {"accuracy": 0.6, "macro_f1": 0.1},  # +20 % (f1 not primary)
               "depth": {"abs_err": 1.0, "rel_err": 0.6}}  # -(-50 %) = +50, -(+20 %) = -20
    value, notes = delta_m(metrics, REF, INFO)
    # LibMTL: depth's two metrics are averaged first (+15), then tasks: (20 + 15) / 2.
    assert value == pytest.approx(17.5)
    # A flat mean over all three primary metrics would differ: (20 + 50 - 20) / 3.
    assert value != pytest.approx(50 / 3)
    assert notes == []


def test_delta_m_of_reference_is_zero_and_worse_is_negative() -> None:
    assert delta_m(REF, REF, INFO)[0] == pytest.approx(0.0)
    worse = {"cls": {"accuracy": 0.4, "macro_f1": 0.4}, "depth": {"abs_err": 2.2, "rel_err": 0.5}}
    assert delta_m(worse, REF, INFO)[0] < 0


def test_reference_near_zero_is_left_out_with_warning() -> None:
    ref = {"cls": {"accuracy": 0.0, "macro_f1": 0.0}, "depth": {"abs_err": 2.0, "rel_err": 0.5}}
    metrics = {"cls": {"accuracy": 0.9, "macro_f1": 0.9},
               "depth": {"abs_err": 1.0, "rel_err": 0.25}}
    value, notes = delta_m(metrics, ref, INFO)
    assert value == pytest.approx(50.0)  # only depth counts
    assert notes and "cls.accuracy" in notes[0]


def test_task_missing_from_reference_is_an_error() -> None:
    with pytest.raises(UserError, match="reference: task 'depth' is missing from the "
                       r"reference's metrics \(it has cls\)"):
        delta_m(REF, {"cls": REF["cls"]}, INFO)


def _study() -> StudyRecords:
    def rec(n: int, acc: float, abs_err: float, state: str = "complete",
            role: str = "search") -> TrialRecord:
        return TrialRecord(number=n, state=state, role=role,
                           metrics={"cls": {"accuracy": acc, "macro_f1": acc},
                                    "depth": {"abs_err": abs_err, "rel_err": 0.5}},
                           policy=None, duration_s=1.0, epochs=2)

    return StudyRecords(name="s", metrics_info=INFO, records=[
        rec(0, 0.5, 2.0, role="reference"),
        rec(1, 0.55, 2.0),              # +5
        rec(2, 0.45, 1.0),              # (-10 + 25) / 2 = +7.5  -> rank 1
        rec(3, 0.9, 0.1, state="pruned"),
        TrialRecord(number=4, state="failed", error="boom"),
        rec(5, 0.4, 2.0),               # -10
    ])


def test_ranking_orders_complete_by_delta_m_then_pruned_then_failed() -> None:
    frame = results_frame(_study())
    assert list(frame["trial"]) == [2, 1, 0, 5, 3, 4]
    assert list(frame["rank"][:4]) == [1, 2, 3, 4]
    assert frame["rank"][4:].isna().all()
    assert frame.loc[0, "delta_m"] == pytest.approx(7.5)
    assert frame.loc[frame["trial"] == 4, "note"].item() == "boom"
    assert math.isnan(frame.loc[frame["trial"] == 4, "delta_m"].item())
    assert "cls.accuracy" in frame.columns and "depth.rel_err" in frame.columns


def test_markdown_mentions_reference_and_warnings() -> None:
    study = _study()
    study.records[0].metrics["cls"]["accuracy"] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = results_frame(study)
    assert any(issubclass(w.category, ReferenceWarning) for w in caught)
    text = to_markdown(frame)
    assert "reference trial (flipcrop)" in text and "warning: cls.accuracy" in text


def test_weighted_delta_m_by_hand() -> None:
    metrics = {"cls": {"accuracy": 0.6, "macro_f1": 0.1}, "depth": {"abs_err": 1.0, "rel_err": 0.6}}
    # Per task +20 (cls) and +15 (depth); weights 3 and 1: (3·20 + 15) / 4.
    assert delta_m(metrics, REF, INFO, {"cls": 3.0})[0] == pytest.approx(18.75)
    assert delta_m(metrics, REF, INFO, {"cls": 1.0, "depth": 1.0})[0] == pytest.approx(17.5)


def test_task_weights_change_the_ranking_and_are_reported() -> None:
    study = _study()
    plain = results_frame(study)
    assert list(plain["trial"][:2]) == [2, 1]  # +7.5 beats +5
    # Weighing cls 4×: trial 1 = (4·10 + 0) / 5 = +8, trial 2 = (4·(-10) + 25) / 5 = -3.
    weighted = results_frame(study, task_weights={"cls": 4.0})
    assert list(weighted["trial"][:2]) == [1, 0]
    assert weighted.loc[0, "delta_m"] == pytest.approx(8.0)
    assert "Δm% weighs the tasks: cls 4 (others 1)." in to_markdown(weighted)
    study.task_weights = {"cls": 4.0}  # the study's own weights are the default
    assert list(results_frame(study)["trial"][:2]) == [1, 0]


def test_single_task_reference_combines_one_run_per_task() -> None:
    def ref(n: int, task: str, metrics: dict) -> TrialRecord:
        return TrialRecord(number=n, state="complete", role="reference", reference_task=task,
                           metrics={task: metrics})

    search = TrialRecord(number=2, state="complete", metrics={
        "cls": {"accuracy": 0.6, "macro_f1": 0.1}, "depth": {"abs_err": 1.0, "rel_err": 0.6}})
    study = StudyRecords(name="s", metrics_info=INFO, single_task_reference=True,
                         records=[ref(0, "cls", REF["cls"]), search])
    assert study.reference_metrics() is None  # depth has no single-task run yet
    assert math.isnan(results_frame(study).loc[0, "delta_m"])
    study.records.insert(1, ref(1, "depth", REF["depth"]))
    assert study.reference_metrics() == REF
    frame = results_frame(study)
    assert frame.loc[frame["trial"] == 2, "delta_m"].item() == pytest.approx(17.5)
    # The single-task runs are not ranked (each has one task's metrics only).
    assert frame.loc[frame["trial"] < 2, "rank"].isna().all()
    assert set(frame.loc[frame["trial"] < 2, "note"]) == {
        "reference (flipcrop, single task cls)", "reference (flipcrop, single task depth)"}
    assert "single-task runs of flipcrop, one network per task" in to_markdown(frame)


def test_search_cost_counts_every_trained_epoch() -> None:
    study = _study()
    study.records[4].epochs = 1  # the failed trial trained one epoch before it failed
    study.budget_epochs = 4
    cost = search_cost(study)
    # five trials of 2 epochs (the reference and the pruned one included) + 1 failed epoch
    assert (cost.trials, cost.trial_epochs) == (6, 11)
    assert cost.full_trainings == pytest.approx(11 / 4)
    assert cost.trial_seconds == pytest.approx(5.0)  # the failed trial recorded no duration
    line = "search cost: 11 trial-epochs over 6 trials = 2.8 full trainings of 4 epochs"
    assert line in to_markdown(results_frame(study))
    study.budget_epochs = None  # a study that did not record its budget: no unit
    assert search_cost(study).full_trainings is None
    assert "full trainings" not in to_markdown(results_frame(study))


def test_search_cost_wall_time_is_the_union_of_trial_intervals() -> None:
    study = _study()
    for r in study.records:
        r.started_at, r.duration_s, r.device = None, None, None
    timed = [(100.0, 10.0, "cpu"), (105.0, 10.0, "cpu"), (200.0, 5.0, "cuda:1")]
    for r, (start, seconds, device) in zip(study.records, timed, strict=False):
        r.started_at, r.duration_s, r.device = start, seconds, device
    cost = search_cost(study)
    # 100-115 (two overlapping trials) and 200-205; the idle gap between them is not counted
    assert cost.wall_seconds == pytest.approx(20.0)
    assert cost.device_seconds == pytest.approx({"cpu": 20.0, "cuda": 5.0})
    assert "0.3 min wall time" in cost.line(None)
    for r in study.records:
        r.started_at = None
    assert search_cost(study).wall_seconds is None


def test_data_wait_is_each_trials_mean_percentage() -> None:
    study = _study()
    waits = {1: ([0.1, 0.3], 0), 2: ([0.25, 0.5, 0.125], 2), 3: ([0.9], 0)}  # 3 is pruned
    for rec in study.records:
        if rec.number in waits:
            rec.data_wait, rec.loader_workers = waits[rec.number]
    frame = results_frame(study).set_index("trial")
    for number, (values, workers) in waits.items():
        mean = 100.0 * sum(values) / len(values)
        assert frame.loc[number, "data_wait"] == pytest.approx(round(mean, 1))
        assert frame.loc[number, "loader_workers"] == workers
    unknown = [r.number for r in study.records if r.number not in waits]
    assert frame.loc[unknown, "data_wait"].isna().all()  # older studies, failed trials
    assert frame.loc[unknown, "loader_workers"].isna().all()
    # After the duration, before the note; a terminal shows it beside the duration.
    columns = list(frame.reset_index().columns)
    assert columns[-5:] == ["epochs", "duration_s", "data_wait", "loader_workers", "note"]
    assert compact_columns(frame.reset_index(), INFO)[-2:] == ["duration_s", "data_wait"]
    # The footer's one line: the mean over the complete trials (not the pruned one).
    complete = [100.0 * sum(waits[n][0]) / len(waits[n][0]) for n in (1, 2)]
    line = (f"data wait: mean {sum(complete) / 2:.1f}% of each epoch's wall time "
            "(0 or 2 loader workers), over 2 complete trials")
    assert line in to_markdown(results_frame(study))
    csv_header = results_frame(study).to_csv(index=False).splitlines()[0].split(",")
    assert "data_wait" in csv_header and "loader_workers" in csv_header


def test_a_study_without_data_wait_has_an_empty_column_and_no_line() -> None:
    frame = results_frame(_study())
    assert frame["data_wait"].isna().all() and frame["loader_workers"].isna().all()
    assert "data wait" not in to_markdown(frame)
