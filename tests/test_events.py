"""The progress events (policysearch.events): one class per event name of a stream, the
--json-logs form (``to_dict``), and pickling (``--workers`` sends them through a queue)."""

from __future__ import annotations

import dataclasses
import pickle
import typing

import pytest

from policysearch import events as ev


def test_one_class_per_event_name_in_each_stream() -> None:
    assert [c.kind for c in ev.SEARCH_EVENTS] == [
        "dataset", "space_adapted", "start", "stale", "pruning_off", "waiting_reference",
        "trial_start", "epoch", "trial_end", "trial_retry", "exploit", "timeout", "worker_died",
        "interrupted", "tracking_failed", "report_failed", "finalists", "finalists_progress",
        "density", "fold_trained", "candidate_scored"]
    assert [c.kind for c in ev.BENCHMARK_EVENTS] == ["run_start", "epoch", "run_end"]
    assert set(typing.get_args(ev.SearchEvent)) == set(ev.SEARCH_EVENTS)
    assert set(typing.get_args(ev.BenchmarkEvent)) == set(ev.BENCHMARK_EVENTS)


@pytest.mark.parametrize("event", [
    ev.TrialEnded(trial=2, state="complete", role="search", delta_m=1.5, seconds=3.0,
                  task_deltas={"seg": 2.0}),
    ev.WorkerDied(worker="host:12", why="killed by signal 9", trials=[3, 4]),
    ev.Interrupted(states={"complete": 2}, best=(1.5, 2), out="runs/x"),
    ev.WaitingForReference(),
    ev.RunEpochEnded(run=1, epoch=0, metrics={"shape": {"accuracy": 0.5}}),
])
def test_events_pickle_and_are_frozen(event: ev.Event) -> None:
    assert pickle.loads(pickle.dumps(event)) == event
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = "other"  # type: ignore[misc]


def test_to_dict_leaves_out_optional_fields_while_none() -> None:
    assert ev.to_dict(ev.SearchStarted(study="s", target=4, epochs=2, finished=1)) == {
        "event": "start", "study": "s", "target": 4, "epochs": 2, "finished": 1}
    assert ev.to_dict(ev.SearchStarted(study="s", target=4, epochs=2, finished=1,
                                       workers=2))["workers"] == 2
    # A field without a default is always there, None included.
    assert ev.to_dict(ev.Interrupted(states={}, best=None, out="o")) == {
        "event": "interrupted", "states": {}, "best": None, "out": "o"}
    assert ev.to_dict(ev.WaitingForReference()) == {"event": "waiting_reference"}
