"""Policy schedules (PBT results): at_epoch, YAML, errors, replay in transforms, export and
training; the resumable Trainer (a checkpointed run gives an uninterrupted run's numbers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import yaml

from policysearch.augment import Phase, Policy, Slot, Weighting, load_policy
from policysearch.errors import UserError
from policysearch.exports.best_policy import export_policy
from tests.test_policy import check_bad_policy_file

TASKS = {"shape": "classification", "seg": "segmentation"}
ROTATE = (Slot("rotate", 0.6, 0.3),)
FLIP = (Slot("hflip", 0.5, 1.0),)
INVERT = (Slot("invert", 1.0, 0.0),)
SOLARIZE = (Slot("solarize", 0.2, 0.7),)
CONTRAST = (Slot("contrast", 0.4, 0.5),)


def _scheduled(**extra: object) -> Policy:
    return Policy(tasks=dict(TASKS), weighting=Weighting("static", {"shape": 2.0, "seg": 0.5}),
                  provenance={"study": "s", "trial": 3},
                  schedule=(Phase(0, ROTATE, {"shape": SOLARIZE}),
                            Phase(2, FLIP, {"shape": CONTRAST}),
                            Phase(5, INVERT, {"shape": SOLARIZE})), **extra)


# --- at_epoch --------------------------------------------------------------------------------


def test_at_epoch_picks_the_last_phase_started() -> None:
    policy = _scheduled()
    expected = {0: ROTATE, 1: ROTATE, 2: FLIP, 4: FLIP, 5: INVERT, 99: INVERT}
    for epoch, shared in expected.items():
        plain = policy.at_epoch(epoch)
        assert plain.shared == shared and plain.schedule == ()
        assert plain.weighting == policy.weighting and plain.tasks == policy.tasks
        assert plain.provenance == policy.provenance
    assert policy.at_epoch(3).per_task == {"shape": CONTRAST}
    assert [policy.phase_index(e) for e in (0, 1, 2, 5, 6)] == [0, 0, 1, 2, 2]
    with pytest.raises(UserError, match="epoch"):
        policy.at_epoch(-1)


def test_a_policy_without_schedule_is_its_own_phase() -> None:
    plain = Policy(tasks=dict(TASKS), shared=ROTATE)
    assert plain.at_epoch(0) is plain and plain.at_epoch(7) is plain
    assert "schedule" not in plain.to_dict()


def test_own_slots_are_the_last_phase() -> None:
    policy = _scheduled()
    assert policy.shared == INVERT and policy.per_task == {"shape": SOLARIZE}
    with pytest.raises(UserError, match="last phase") as err:
        _scheduled(shared=ROTATE)
    assert err.value.field == "shared"


def test_from_phases_merges_equal_neighbours() -> None:
    a = Policy(tasks=dict(TASKS), shared=ROTATE)
    b = Policy(tasks=dict(TASKS), shared=FLIP, weighting=Weighting("equal"))
    policy = Policy.from_phases([(0, a), (1, a), (2, b), (3, b), (4, a)])
    assert [p.from_epoch for p in policy.schedule] == [0, 2, 4]
    assert policy.weighting == a.weighting  # the last one's, unless given
    single = Policy.from_phases([(0, a), (3, a)], weighting=Weighting("equal"))
    assert single.schedule == () and single.shared == ROTATE
    assert single.weighting.method == "equal"


# --- YAML ------------------------------------------------------------------------------------


def test_yaml_round_trip(tmp_path: Path) -> None:
    policy = _scheduled()
    path = policy.to_yaml(tmp_path / "p.yaml")
    assert load_policy(path) == policy
    data = yaml.safe_load(path.read_text())
    assert data["schema"] == "policysearch.policy/v1"
    assert [p["from_epoch"] for p in data["schedule"]] == [0, 2, 5]
    assert data["schedule"][1]["shared"] == [{"op": "hflip", "p": 0.5, "magnitude": 1.0}]
    # one slot per line, as in the rest of the file
    assert "- {op: hflip, p: 0.5, magnitude: 1.0}" in path.read_text()


def test_yaml_round_trip_of_other_structures(tmp_path: Path) -> None:
    sub = Policy(tasks=dict(TASKS), structure="subpolicies",
                 schedule=[Phase(0, [ROTATE, FLIP]), Phase(3, [INVERT])])
    assert load_policy(sub.to_yaml(tmp_path / "sub.yaml")) == sub
    assert sub.at_epoch(4).shared.policies == (INVERT,)


def test_shared_may_be_left_out_of_a_scheduled_file(tmp_path: Path) -> None:
    data = _scheduled().to_dict()
    del data["shared"], data["per_task"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_policy(path) == _scheduled()


def test_files_without_schedule_load_as_before(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("schema: policysearch.policy/v1\ntasks: {shape: classification}\n"
                    "shared:\n- {op: rotate, p: 0.6, magnitude: 0.3}\n")
    policy = load_policy(path)
    assert policy.schedule == () and policy.shared == ROTATE


def _text(**changes: object) -> str:
    data = _scheduled().to_dict()
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


def _phase(start: object, op: str = "hflip", p: object = 0.5, **more: object) -> dict:
    return {"from_epoch": start, "shared": [{"op": op, "p": p, "magnitude": 1.0}],
            "per_task": {"shape": [{"op": "solarize", "p": 0.2, "magnitude": 0.7}]}, **more}


LAST = {"shared": [{"op": "hflip", "p": 0.5, "magnitude": 1.0}],
        "per_task": {"shape": [{"op": "solarize", "p": 0.2, "magnitude": 0.7}]}}
BAD = {
    "not_a_list": (_text(schedule={"from_epoch": 0}), "schedule", "a list of phases"),
    "empty": (_text(schedule=[]), "schedule", "at least one phase"),
    "not_from_zero": (_text(schedule=[_phase(1)], **LAST), "schedule[0].from_epoch",
                      "must start at epoch 0"),
    "not_increasing": (_text(schedule=[_phase(0), _phase(3), _phase(3)], **LAST),
                       "schedule[2].from_epoch", "greater than the previous phase's (3)"),
    "decreasing": (_text(schedule=[_phase(0), _phase(4), _phase(2)], **LAST),
                   "schedule[2].from_epoch", "increasing"),
    "negative": (_text(schedule=[_phase(0), _phase(-2)], **LAST), "schedule[1].from_epoch",
                 ">= 0"),
    "not_whole": (_text(schedule=[_phase(0), _phase(1.5)], **LAST), "schedule[1].from_epoch",
                  "whole number"),
    "bool_epoch": (_text(schedule=[_phase(True)], **LAST), "schedule[0].from_epoch",
                   "whole number"),
    "missing_epoch": (_text(schedule=[{"shared": []}]), "schedule[0].from_epoch", "missing"),
    "unknown_key": (_text(schedule=[_phase(0), _phase(2, weighting={"method": "equal"})],
                          **LAST), "schedule[1].weighting", "unknown key"),
    "bad_p": (_text(schedule=[_phase(0), _phase(2, p=1.5)], **LAST), "schedule[1].shared[0].p",
              "[0, 1]"),
    "bad_op": (_text(schedule=[_phase(0, op="teleport")], **LAST), "schedule[0].shared[0].op",
               "unknown op"),
    "other_views": (_text(schedule=[_phase(0), {"from_epoch": 2, "shared": []}],
                          shared=[], per_task={}), "schedule[1].per_task",
                    "same tasks as the first (shape)"),
    "unknown_task": (_text(schedule=[{"from_epoch": 0, "per_task": {"nope": []}}], shared=[],
                           per_task={}), "schedule[0].per_task.nope", "not one of"),
    "mismatch": (_text(schedule=[_phase(0)], shared=[]), "shared", "last phase"),
    "phase_not_mapping": (_text(schedule=[[1, 2]]), "schedule[0]", "must be a mapping"),
    "randaugment_phase": (_text(structure="randaugment",
                                shared={"n": 2, "magnitude": 0.3, "ops": ["rotate"]},
                                per_task={},
                                schedule=[{"from_epoch": 0,
                                           "shared": {"n": 2, "magnitude": 3,
                                                      "ops": ["rotate"]}}]),
                          "schedule[0].shared.magnitude", "[0, 1]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_schedules_are_one_line_errors(tmp_path: Path, case: str) -> None:
    check_bad_policy_file(tmp_path, case, *BAD[case])


def test_summary_shows_the_phases() -> None:
    assert _scheduled().summary() == (
        "e0: rotate(.6,.3) | shape: solarize(.2,.7) → e2: hflip(.5,1.0) | shape: contrast(.4,.5)"
        " → e5: invert(1.0,.0) | shape: solarize(.2,.7)")
    many = Policy(tasks={"a": "classification"},
                  schedule=[Phase(e, (Slot("rotate", 0.1 * (e + 1), 0.5),)) for e in range(7)],
                  weighting=Weighting("equal"))
    assert many.summary() == ("e0: rotate(.1,.5) → e1: rotate(.2,.5) → … 3 more … → "
                              "e5: rotate(.6,.5) → e6: rotate(.7,.5) | weighting: equal")


# --- replaying -------------------------------------------------------------------------------


def _image_sample() -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8), "label": 1,
            "mask": np.zeros((16, 16), dtype=np.uint8)}


def test_transform_follows_the_schedule() -> None:
    # Phases differ observably: invert (p 1) from epoch 2 on, nothing before.
    policy = Policy(tasks=dict(TASKS), schedule=[Phase(0, ()), Phase(2, INVERT)])
    sample = _image_sample()
    aug = policy.transform(seed=0)
    assert aug.views == ("shared",)
    seen = []
    for epoch in range(4):
        aug.set_epoch(epoch)
        seen.append(bool((aug(sample)["shared"]["image"] == 255 - sample["image"]).all()))
    assert seen == [False, False, True, True]
    assert (policy.transform(epoch=3)(sample)["shared"]["image"] == 255 - sample["image"]).all()
    assert (policy.at_epoch(1).transform(task="seg")(sample)["image"] == sample["image"]).all()
    # A plain policy takes set_epoch too (a no-op), so one training loop serves both.
    plain = policy.at_epoch(2).transform()
    plain.set_epoch(0)
    assert (plain(sample)["shared"]["image"] == 255 - sample["image"]).all()


def test_to_albumentations_needs_an_epoch_with_a_schedule() -> None:
    policy = _scheduled()
    with pytest.raises(UserError, match=r"schedule \(phases from epochs 0, 2, 5\).*epoch="):
        policy.to_albumentations("seg")
    compose = policy.to_albumentations("seg", epoch=3)
    assert [type(t).__name__ for t in compose.transforms] == ["HorizontalFlip"]


def test_export_writes_the_schedule_and_one_file_per_phase(tmp_path: Path) -> None:
    policy = _scheduled()
    result = export_policy(policy, tmp_path / "best.yaml")
    assert load_policy(result.yaml_path) == policy
    assert set(result.phases) == {"shape", "seg"}
    assert sorted(result.phases["seg"]) == [0, 2, 5]
    path = tmp_path / "best.seg.from2.albumentations.json"
    assert result.phases["seg"][2] == path == result.albumentations["seg.from2"]
    assert not (tmp_path / "best.seg.albumentations.json").exists()
    assert len(result.albumentations) == 6
    assert all(p.exists() for p in result.albumentations.values())
    assert result.notes and "from epochs 0, 2, 5" in result.notes[0]
    loaded = A.load(str(path), data_format="json")
    assert [type(t).__name__ for t in loaded.transforms] == ["HorizontalFlip"]
    shape5 = A.load(str(result.phases["shape"][5]), data_format="json")
    assert [type(t).__name__ for t in shape5.transforms] == ["InvertImg", "Solarize"]


def test_export_of_a_plain_policy_is_unchanged(tmp_path: Path) -> None:
    result = export_policy(Policy(tasks=dict(TASKS), shared=ROTATE), tmp_path / "p.yaml")
    assert set(result.albumentations) == {"shape", "seg"} and not result.phases
    assert not result.notes


def test_load_policy_still_imports_no_torch(tmp_path: Path) -> None:
    path = _scheduled().to_yaml(tmp_path / "p.yaml")
    code = ("import sys, policysearch as ps\n"
            f"p = ps.load_policy({str(path)!r})\n"
            "p.at_epoch(3).transform()\n"
            "print(sorted(m for m in ('torch', 'optuna', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# --- training --------------------------------------------------------------------------------

import torch  # noqa: E402 - a dependency of policysearch: imported, never skipped

from policysearch.config import Budget  # noqa: E402
from policysearch.data import get_dataset  # noqa: E402
from policysearch.training import Trainer, run_trial  # noqa: E402

BUDGET = Budget(epochs=3, batch_size=16, image_size=32)


@pytest.fixture(scope="module")
def dataset():  # noqa: ANN201
    return get_dataset("shapes", size=32, n_train=32, n_val=16, n_test=16)


def _tasks(dataset) -> dict[str, str]:  # noqa: ANN001
    return {t.name: t.kind for t in dataset.tasks}


def _plain(dataset, shared: tuple = ROTATE, method: str = "static") -> Policy:  # noqa: ANN001
    tasks = _tasks(dataset)
    weights = {t: 1.0 for t in tasks} if method == "static" else {}
    return Policy(tasks=tasks, shared=shared, per_task={"shape": CONTRAST},
                  weighting=Weighting(method, weights))


@pytest.mark.parametrize("workers", [0, 1])
def test_training_applies_the_phase_of_each_epoch(dataset, monkeypatch, workers) -> None:  # noqa: ANN001
    # With a loader worker too: a worker that persists across epochs gets each epoch's phase.
    import policysearch.training as training

    originals = {dataset.split("train")[i]["image"].tobytes() for i in range(32)}
    inverted = {(255 - dataset.split("train")[i]["image"]).tobytes() for i in range(32)}
    seen: list[str] = []
    real = training.normalise

    def spy(images):  # noqa: ANN001, ANN202
        for image in images.numpy():
            key = image.tobytes()
            if key in inverted:
                seen.append("inverted")
            elif key in originals:
                seen.append("original")
        return real(images)

    class Epochs:
        def report(self, epoch: int, metrics: dict) -> None:
            seen.append(f"end {epoch}")

    monkeypatch.setattr(training, "normalise", spy)
    tasks = _tasks(dataset)
    policy = Policy(tasks=tasks, weighting=Weighting("equal"),
                    schedule=[Phase(0, INVERT), Phase(1, ()), Phase(2, INVERT)])
    budget = BUDGET.model_copy(update={"loader_workers": workers})
    run_trial(policy, dataset, budget, seed=0, device="cpu", threads=1, reporter=Epochs())
    epochs, current = [], []
    for item in seen:
        if item.startswith("end"):
            epochs.append(set(current))
            current = []
        else:
            current.append(item)
    # Each epoch trains on 32 images of one kind (validation images are other images).
    assert epochs == [{"inverted"}, {"original"}, {"inverted"}]


def test_a_schedule_of_equal_phases_trains_like_the_plain_policy(dataset) -> None:  # noqa: ANN001
    plain = _plain(dataset)
    same = Policy(tasks=plain.tasks, weighting=plain.weighting,
                  schedule=[Phase(0, ROTATE, {"shape": CONTRAST}),
                            Phase(2, ROTATE, {"shape": CONTRAST})])
    a = run_trial(plain, dataset, BUDGET, seed=1, device="cpu", threads=1)
    b = run_trial(same, dataset, BUDGET, seed=1, device="cpu", threads=1)
    assert a.history == b.history and a.weights == b.weights


@pytest.mark.parametrize("method", ["static", "uncertainty", "dwa", "gradnorm", "pcgrad"])
def test_a_resumed_trainer_gives_the_uninterrupted_numbers(dataset, tmp_path: Path,  # noqa: ANN001
                                                           method: str) -> None:
    policy = _plain(dataset, method=method)
    whole = run_trial(policy, dataset, BUDGET, seed=2, device="cpu", threads=1)

    first = Trainer(policy, dataset, BUDGET, seed=2, device="cpu", threads=1)
    first.train_epoch()
    first.evaluate()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(12345)  # whatever happened in between
    second = Trainer(policy, dataset, BUDGET, seed=2, device="cpu", threads=1)
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert second.epoch == 1
    while not second.done:
        second.train_epoch()
        second.evaluate()
    resumed = second.result()
    assert resumed.history == whole.history
    assert resumed.weights == whole.weights and resumed.weight_history == whole.weight_history
    assert resumed.train_images == whole.train_images and resumed.epochs == 3


def test_continuing_under_a_new_policy_is_its_schedule(dataset) -> None:  # noqa: ANN001
    """What PBT does (another trial continues from a checkpoint with a new policy) gives the
    numbers of training the recorded schedule from scratch."""
    a, b = _plain(dataset, ROTATE), _plain(dataset, FLIP)
    donor = Trainer(a, dataset, BUDGET, seed=0, device="cpu", threads=1)
    donor.train_epoch()
    donor.evaluate()
    state = donor.state_dict()
    heir = Trainer(b, dataset, BUDGET, seed=0, device="cpu", threads=1)
    heir.load_state_dict(state)
    while not heir.done:
        heir.train_epoch()
        heir.evaluate()
    schedule = heir.trained_policy()
    assert [p.from_epoch for p in schedule.schedule] == [0, 1]
    assert schedule.at_epoch(0).shared == ROTATE and schedule.at_epoch(2).shared == FLIP
    replay = run_trial(schedule, dataset, BUDGET, seed=0, device="cpu", threads=1)
    assert replay.history == heir.result().history
    # train_epoch(policy) with a policy given per epoch records the same
    explicit = Trainer(a, dataset, BUDGET, seed=0, device="cpu", threads=1)
    for policy in (a, b, b):
        explicit.train_epoch(policy)
    assert explicit.trained_policy() == schedule
    with pytest.raises(ValueError, match="trained already"):
        explicit.train_epoch()
