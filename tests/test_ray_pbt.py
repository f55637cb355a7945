"""Population-based augmentation (--engine ray --scheduler pbt): the ray-free pieces, and a tiny
PBT search on a local Ray instance whose exploited members carry a schedule that the export
writes and that replays, from scratch, to the very numbers the member reached; a re-run makes
the same choices."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from policysearch.config import load_space
from policysearch.errors import UserError
from policysearch.events import SearchEvent, TrialExploited
from policysearch.search import ray_pbt
from tests.conftest import TINY_SPACE


@pytest.fixture
def space(tmp_path: Path):  # noqa: ANN201
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "budget": {**TINY_SPACE["budget"],
                                                              "epochs": 4}}))
    return load_space(path)


TASKS = {"shape": "classification", "seg": "segmentation", "objects": "detection",
         "depth": "depth"}


def test_perturbation_interval_and_population() -> None:
    assert [ray_pbt.perturbation_interval(e) for e in (1, 4, 8, 24, 200)] == [1, 1, 1, 3, 25]
    assert ray_pbt.population_size(8, 1) == 7
    assert ray_pbt.population_size(8, 7) == 2  # a resumed search may overshoot by one
    ray_pbt.check_trials(3, 1)
    with pytest.raises(UserError, match=r"at least 2: --trials 3 or more") as err:
        ray_pbt.check_trials(2, 1)
    assert err.value.field == "--trials"
    with pytest.raises(UserError, match=r"--trials 6 or more \(4 reference runs"):
        ray_pbt.check_trials(5, 4)


def test_only_augmentation_parameters_are_mutated(space) -> None:  # noqa: ANN001
    names = [p.name for p in ray_pbt.mutated_parameters(space, list(TASKS))]
    assert names == ["shared.0.op", "shared.0.p", "shared.0.magnitude",
                     "task.shape.0.op", "task.shape.0.p", "task.shape.0.magnitude"]


def test_initial_values_are_seeded_and_in_range(space) -> None:  # noqa: ANN001
    a = ray_pbt.initial_values(space, list(TASKS), 5, seed=3)
    assert a == ray_pbt.initial_values(space, list(TASKS), 5, seed=3)
    assert a != ray_pbt.initial_values(space, list(TASKS), 5, seed=4)
    for values in a:
        assert values["shared.0.op"] in TINY_SPACE["shared"]["ops"]
        assert 0.0 <= values["shared.0.p"] <= 1.0
        assert all(0.5 <= values[f"weight.{t}"] <= 2.0 for t in TASKS)


def test_perturbed_values_are_clipped_to_their_ranges(space) -> None:  # noqa: ANN001
    params = ray_pbt.mutated_parameters(space, list(TASKS))
    clipped = ray_pbt.clip_values({"shared.0.p": 1.2, "shared.0.magnitude": -0.1,
                                   "shared.0.op": "rotate", "weight.seg": 7.0}, params)
    assert clipped == {"shared.0.p": 1.0, "shared.0.magnitude": 0.0, "shared.0.op": "rotate",
                       "weight.seg": 7.0}


def test_too_few_trials_are_refused_before_anything_runs(space, tmp_path: Path) -> None:  # noqa: ANN001
    from policysearch.search.options import SearchOptions, SearchRun

    out = tmp_path / "out"
    options = SearchOptions(engine="ray", scheduler="pbt", trials=2, out=out)
    run = SearchRun(options=options, space=space, dataset=None, tasks=dict(TASKS),  # type: ignore[arg-type]
                    metrics_info={}, dataset_notes=[], study_name="tiny", out_dir=out,
                    threads=1)
    with pytest.raises(UserError, match="population of at least 2"):
        ray_pbt.optimize_pbt(run)
    assert not out.exists()


def test_members_records_carry_the_data_wait_so_far(space, tmp_path: Path) -> None:  # noqa: ANN001
    """On the driver (no Ray run): every epoch's report updates the member's data wait, as
    its loss weights; a member stopped early keeps the list so far, a complete one its
    outcome's."""
    from types import SimpleNamespace

    from policysearch.search import ray_results as rr
    from policysearch.search.lifecycle import TrialOutcome, search_trial_policy
    from policysearch.search.ray_runtime import OUTCOME, TIME_ATTR, Ledger

    ledger = Ledger(experiment=tmp_path, info={}, space=space, tasks=dict(TASKS), target=3)
    members = ray_pbt.MembersCallback(ledger, run_name="r", emit=lambda e: None, epochs=4)
    values = ray_pbt.initial_values(space, list(TASKS), 2, seed=0)
    policy = json.dumps(search_trial_policy(space, TASKS, values[0]).to_dict())
    metrics = {t: {"m": 0.5} for t in TASKS}
    trials = [SimpleNamespace(trial_id=f"t{n}", last_result=None,
                              config={"member": {"number": n, "values": values[n - 1]}})
              for n in (1, 2)]
    waits = [0.5, 0.25, 0.125]
    for trial in trials:
        members.on_trial_start(0, [], trial)
        for epoch in (1, 2):
            trial.last_result = {TIME_ATTR: epoch, "state": "running", "metrics": metrics,
                                 "policy": policy, "final_weights": {"shape": 1.0},
                                 "data_wait": waits[:epoch], "loader_workers": 0}
            members.on_trial_result(0, [], trial, trial.last_result)
            assert ledger.records[trial.config["member"]["number"]].data_wait == waits[:epoch]
    # Member 1 stopped after epoch 2 (--timeout); member 2 ran to its end.
    members.on_trial_complete(0, [], trials[0])
    done = TrialOutcome("complete", metrics=metrics, epochs=3, value=1.0, data_wait=waits,
                        loader_workers=0)
    trials[1].last_result = {**trials[1].last_result, TIME_ATTR: 3, "state": "complete",
                             OUTCOME: done.to_dict()}
    members.on_trial_complete(0, [], trials[1])
    stored = {r.number: r for r in rr.read_trial_records(tmp_path)}
    assert stored[1].state == "pruned" and stored[1].data_wait == waits[:2]
    assert stored[2].state == "complete" and stored[2].data_wait == waits
    assert all(stored[n].loader_workers == 0 for n in (1, 2))


@pytest.mark.ray
@pytest.mark.slow
def test_a_tiny_pbt_search_exports_a_replayable_schedule(tmp_path: Path, space,  # noqa: ANN001
                                                         monkeypatch) -> None:
    from policysearch.augment import load_policy
    from policysearch.data.loading import load_dataset
    from policysearch.exports.best_policy import export_policy, pick_trial
    from policysearch.search import ray_results as rr
    from policysearch.search.driver import SearchOptions, search
    from policysearch.training import train_policy

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local instance, never a shared one
    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(yaml.safe_dump({**TINY_SPACE, "budget": {**TINY_SPACE["budget"],
                                                                   "epochs": 4}}))
    options = SearchOptions(space=space_file, engine="ray", scheduler="pbt", trials=3,
                            workers=2, seed=0, device="cpu", threads=1, cpus_per_trial=1.0,
                            out=tmp_path / "out")
    events: list[SearchEvent] = []
    outcome = search(options, progress=events.append)
    records = outcome.study

    assert [r.role for r in records.records] == ["reference", "search", "search"]
    assert all(r.state == "complete" and r.epochs == 4 for r in records.records)
    # Every trial's data wait, one fraction per epoch (a member's lineage's, after exploits).
    assert all(r.data_wait and len(r.data_wait) == 4 for r in records.records)
    kinds = [e.kind for e in events]
    assert kinds.count("trial_start") == 3 and kinds.count("trial_end") == 3
    exploits = [e for e in events if isinstance(e, TrialExploited)]
    # Two members, perturbed after epochs 1, 2 and 3: the worse one copies the better each time.
    assert len(exploits) == 3
    # The records on disk read back (without ray) as the same study; the table ranks them.
    assert rr.load_ray_records(options.out) == records
    assert outcome.table["rank"].notna().sum() == 3
    assert (options.out / "best_policy.yaml").exists() and outcome.export is not None

    # Each member's policy records what it trained under; an exploited one has a schedule
    # with a phase from where it last took another's checkpoint (earlier phases may come
    # from the donor's own lineage).
    scheduled = []
    for rec in records.records[1:]:
        data = json.loads(rr.trial_path(options.out.resolve(), rec.number).read_text())
        starts = [p["from_epoch"] for p in rec.policy.get("schedule", [])]
        if data["exploits"]:
            assert starts[0] == 0 and data["exploits"][-1]["epoch"] in starts
            scheduled.append(rec)
    assert scheduled

    # Export the best member with a schedule; load_policy + at_epoch replay it, and training
    # under it from scratch reaches exactly the member's metrics (same seed, CPU).
    table = outcome.table
    rank = int(table.loc[table["trial"] == scheduled[0].number, "rank"].iloc[0])
    policy, _ = pick_trial(records, rank)
    result = export_policy(policy, tmp_path / "best.yaml")
    assert result.phases and result.notes
    loaded = load_policy(result.yaml_path)
    assert loaded.schedule and loaded == policy
    assert "schedule" in yaml.safe_load(result.yaml_path.read_text())
    for phase in loaded.schedule:
        assert loaded.at_epoch(phase.from_epoch).shared == phase.shared
    dataset = load_dataset(space)
    replay = train_policy(loaded, dataset, space.budget, seed=0, device="cpu", threads=1)
    assert replay.metrics == scheduled[0].metrics

    # Running the same command again trains nothing more.
    assert search(options).study == records

    # The same search elsewhere makes the same choices and reaches the same numbers (CPU).
    rerun = search(dataclasses.replace(options, out=tmp_path / "other")).study
    assert [(r.metrics, r.policy) for r in rerun.records] == \
        [(r.metrics, r.policy) for r in records.records]
