"""The trial lifecycle every engine shares: references, scoring, outcomes, failure rules."""

from __future__ import annotations

import math

import pytest

from policysearch.config import SearchSpace
from policysearch.errors import UserError
from policysearch.events import TrialEnded, to_dict
from policysearch.search import lifecycle as lc
from policysearch.training import TrialFailed, TrialPruned, TrialResult
from tests.conftest import TINY_SPACE

TASKS = {"shape": "classification", "seg": "segmentation"}
INFO = {"shape": {"accuracy": {"higher": True, "primary": True}},
        "seg": {"miou": {"higher": True, "primary": True}}}
REFERENCE = {"shape": {"accuracy": 0.5}, "seg": {"miou": 0.25}}


def _space(**changes: object) -> SearchSpace:
    return SearchSpace(**{**TINY_SPACE, **changes})


def _scoring(pareto: bool = False) -> lc.Scoring:
    return lc.Scoring(metrics_info=INFO, tasks=TASKS, task_weights={}, pareto=pareto)


def test_missing_references_one_per_task_or_one_in_all() -> None:
    space = _space()
    assert lc.missing_references(space, TASKS, set()) == [None]
    assert lc.missing_references(space, TASKS, {None}) == []
    single = _space(single_task_reference=True)
    assert lc.missing_references(single, TASKS, set()) == ["shape", "seg"]
    assert lc.missing_references(single, TASKS, {"shape"}) == ["seg"]
    policy = lc.reference_run_policy(single, TASKS, "seg")
    assert dict(policy.tasks) == {"seg": "segmentation"}
    assert policy.weighting.method == "static" and policy.weighting.weights == {"seg": 1.0}


def test_scoring_a_finished_training() -> None:
    metrics = {"shape": {"accuracy": 0.6}, "seg": {"miou": 0.2}}
    result = TrialResult(metrics=metrics, epochs=2, seconds=1.23456, weights={"shape": 2})
    outcome = _scoring().finish(result, REFERENCE)
    assert outcome.state == "complete" and outcome.epochs == 2
    assert outcome.value == pytest.approx((20.0 - 20.0) / 2)
    assert outcome.final_weights == {"shape": 2.0} and outcome.seconds == 1.235
    assert outcome.task_deltas is None  # only a pareto search keeps each task's Δ%
    pareto = _scoring(pareto=True).finish(result, REFERENCE)
    assert _scoring(pareto=True).objectives(pareto) == pytest.approx([20.0, -20.0])
    # A reference trial scores 0; a non-finite metric fails the trial, never recorded.
    assert _scoring().finish(result, None).value == 0.0
    bad = TrialResult(metrics={**metrics, "seg": {"miou": math.nan}}, epochs=2)
    failed = _scoring().finish(bad, REFERENCE)
    assert failed.state == "failed" and failed.kind == lc.FAULT and failed.metrics is None
    assert failed.error == "non-finite metric: seg.miou"
    zero = {"shape": {"accuracy": 0.0}, "seg": {"miou": 0.0}}
    undefined = _scoring().finish(result, zero)
    assert undefined.state == "failed" and undefined.error == lc.UNDEFINED_DELTA


def test_a_complete_outcome_and_its_record_carry_the_data_wait() -> None:
    metrics = {"shape": {"accuracy": 0.6}, "seg": {"miou": 0.2}}
    waits = [0.123456, 0.5, 1 / 3]
    result = TrialResult(metrics=metrics, epochs=3, data_wait=waits, loader_workers=2)
    outcome = _scoring().finish(result, REFERENCE)
    assert outcome.data_wait == [round(w, 4) for w in waits]  # one per epoch, 4 decimals
    assert outcome.loader_workers == 2
    record = outcome.record(3, role="search", policy=None)
    assert (record.data_wait, record.loader_workers) == (outcome.data_wait, 2)
    assert record.mean_data_wait() == pytest.approx(sum(outcome.data_wait) / 3)
    # As a Ray worker sends it to the driver (plain data), and back.
    sent = lc.TrialOutcome.from_dict(outcome.to_dict())
    assert sent.data_wait == outcome.data_wait and sent.loader_workers == 2
    # A training that measured nothing (no epoch) stores None, not an empty list.
    empty = _scoring().finish(TrialResult(metrics=metrics, epochs=0), REFERENCE)
    assert empty.data_wait is None and empty.record(0, role="search", policy=None).data_wait is None


@pytest.mark.parametrize(("raised", "state", "kind"), [
    (TrialPruned("pruned after epoch 1"), "pruned", None),
    (TrialFailed("out of memory"), "failed", lc.FAULT),
    (UserError("corrupt image", source="a.png"), "failed", lc.DATA_ERROR),
    (ZeroDivisionError("boom"), "failed", lc.UNEXPECTED),
])
def test_how_a_training_ends_becomes_its_outcome(raised: Exception, state: str,
                                                 kind: str | None) -> None:
    reporter = lc.TrialReporter(_scoring(), REFERENCE)

    def train(rep: lc.TrialReporter) -> TrialResult:
        rep.report(0, {"shape": {"accuracy": 0.7}, "seg": {"miou": 0.3}})
        raise raised

    outcome, user_error = lc.run_training(train, reporter)
    assert (outcome.state, outcome.kind, outcome.epochs) == (state, kind, 1)
    assert (user_error is raised) == (kind == lc.DATA_ERROR)
    assert outcome.metrics == (reporter.last if state == "pruned" else None)
    if kind == lc.UNEXPECTED:
        assert outcome.error == "ZeroDivisionError: boom"
    # Every engine stores the same record and reports the same end event.
    record = outcome.record(4, role="search", policy={"x": 1}, started_at=10.0)
    assert (record.number, record.state, record.error) == (4, state, outcome.error)
    assert record.data_wait is None  # pruned and failed trials keep none
    event = outcome.end_event(4, "search")
    assert isinstance(event, TrialEnded) and (event.trial, event.state) == (4, state)
    assert ("error" in to_dict(event)) == (state == "failed")
    assert lc.TrialOutcome.from_dict(outcome.to_dict()) == outcome


def test_the_end_event_carries_what_each_state_reports() -> None:
    done = lc.TrialOutcome("complete", value=2.5, seconds=1.5, task_deltas={"shape": 1.0})
    assert done.end_event(3, "search") == TrialEnded(
        trial=3, state="complete", role="search", delta_m=2.5, seconds=1.5,
        task_deltas={"shape": 1.0})
    assert done.end_event(0, "reference").delta_m == 0.0
    pruned = lc.TrialOutcome("pruned", error="pruned after epoch 1")
    assert to_dict(pruned.end_event(5, "search")) == {
        "event": "trial_end", "trial": 5, "state": "pruned", "role": "search"}
    failed = lc.TrialOutcome("failed", error="nan", kind=lc.FAULT)
    assert to_dict(failed.end_event(6, "search")) == {
        "event": "trial_end", "trial": 6, "state": "failed", "role": "search", "error": "nan"}


def test_failure_rules_stop_after_repeated_failures() -> None:
    fault = lc.TrialOutcome("failed", error="nan", kind=lc.FAULT)
    error = lc.TrialOutcome("failed", error="KeyError: x", kind=lc.UNEXPECTED)
    done = lc.TrialOutcome("complete", value=1.0)
    rules = lc.FailureRules()
    said = [rules.count(fault) for _ in range(lc.MAX_CONSECUTIVE_FAILURES)]
    assert said[:-1] == [None] * (lc.MAX_CONSECUTIVE_FAILURES - 1)
    assert said[-1] == f"{lc.MAX_CONSECUTIVE_FAILURES} trials in a row failed; the last said: nan"
    rules = lc.FailureRules()
    assert rules.count(error) is None and rules.count(done) is None  # a success resets
    said = [rules.count(error) for _ in range(lc.MAX_CONSECUTIVE_ERRORS)]
    assert said[-1] == (f"{lc.MAX_CONSECUTIVE_ERRORS} trials in a row failed with an "
                        "unexpected error; last: KeyError: x")
    rules = lc.FailureRules()
    mixed = [error, error, fault, error, error]  # a trial fault breaks a run of errors
    assert [rules.count(o) for o in mixed] == [None] * len(mixed)


def test_resume_check_names_the_first_difference() -> None:
    space = _space()
    stored = lc.definition(space, 0)
    lc.check_resume(None, space, 0, where="x", study_name="tiny")
    lc.check_resume(stored, space, 0, where="x", study_name="tiny")
    with pytest.raises(UserError, match=r"refusing to resume.*seed: 0 → 1"):
        lc.check_resume(stored, space, 1, where="x", study_name="tiny")
    other = _space(budget={**TINY_SPACE["budget"], "epochs": 3})
    with pytest.raises(UserError, match=r"budget\.epochs: 2 → 3"):
        lc.check_resume(stored, other, 0, where="x", study_name="tiny")
    # Resuming with another number of loader workers is fine: it changes no number.
    workers = _space(budget={**TINY_SPACE["budget"], "loader_workers": 2})
    lc.check_resume(stored, workers, 0, where="x", study_name="tiny")


def test_a_study_seeded_under_another_seeding_version_is_not_resumed() -> None:
    space = _space()
    old = {k: v for k, v in lc.definition(space, 0).items() if k != "seeding"}  # version 1
    with pytest.raises(UserError) as caught:
        lc.check_resume(old, space, 0, where="runs/x/study.journal", study_name="tiny")
    line = str(caught.value)
    assert line.startswith("runs/x/study.journal: study tiny: refusing to resume: the study was "
                           "seeded under seeding version 1")
    assert f"under version {lc.SEEDING_VERSION}" in line and "\n" not in line
