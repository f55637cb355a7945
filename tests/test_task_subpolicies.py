"""A task's own sub-policies in a ``subpolicies`` policy (what a density-matching search exports):
read, checked, written, exported to plain albumentations and applied, each sample drawing one."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import yaml

from policysearch.augment import MultiTaskAugment, Policy, Slot, SubPolicies, load_policy
from policysearch.data import get_dataset
from policysearch.errors import UserError

TASKS = {"shape": "classification", "seg": "segmentation"}
SCHEMA = "policysearch.policy/v1"


def _doc(structure: str = "subpolicies") -> dict:
    shared = ([[{"op": "identity", "p": 1.0, "magnitude": 0.0}]] if structure == "subpolicies"
              else [{"op": "identity", "p": 1.0, "magnitude": 0.0}])
    return {"schema": SCHEMA, "tasks": TASKS, "structure": structure, "shared": shared,
            "per_task": {"shape": [[{"op": "invert", "p": 1.0, "magnitude": 1.0}],
                                   [{"op": "identity", "p": 1.0, "magnitude": 0.0}]]}}


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_tasks_own_subpolicies_read_write_and_export(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, _doc()))
    view = policy.per_task["shape"]
    assert isinstance(view, SubPolicies) and len(view.policies) == 2
    assert view.policies[0] == (Slot("invert", 1.0, 1.0),)
    again = load_policy(policy.to_yaml(tmp_path / "again.yaml"))
    assert again == policy
    compose = policy.to_albumentations("shape")
    saved = tmp_path / "shape.json"
    A.save(compose, str(saved), data_format="json")
    loaded = A.load(str(saved), data_format="json")
    branches = [t for t in loaded.transforms if isinstance(t, A.OneOf)]
    assert len(branches) == 2  # the shared sub-policies, then the task's own


def test_each_sample_draws_one_of_the_tasks_subpolicies_and_the_shared_view_is_untouched(
        ) -> None:
    policy = Policy(tasks=TASKS, shared=SubPolicies(((Slot("identity", 1.0, 0.0),),)),
                    per_task={"shape": SubPolicies(((Slot("invert", 1.0, 1.0),),
                                                    (Slot("identity", 1.0, 0.0),)))})
    samples = get_dataset("shapes", n_train=40, n_val=8, n_test=8, seed=0, size=32).split(
        "train")
    augment = MultiTaskAugment(policy, seed=3)
    inverted = 0
    for i in range(len(samples)):
        views = augment(samples[i], index=i)
        image = samples[i]["image"]
        own = views[policy.view_of("shape")]["image"]
        assert np.array_equal(views[policy.view_of("seg")]["image"], image)
        if np.array_equal(own, 255 - image):
            inverted += 1
        else:
            assert np.array_equal(own, image)
    assert 0 < inverted < len(samples)  # both sub-policies were picked


def test_a_tasks_own_subpolicies_need_the_subpolicies_structure(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="per_task.shape") as err:
        load_policy(_write(tmp_path, _doc("sequence")))
    assert "structure: subpolicies" in err.value.message
    with pytest.raises(UserError, match="per_task.shape"):
        Policy(tasks=TASKS, shared=(Slot("identity", 1.0, 0.0),),
               per_task={"shape": SubPolicies(((Slot("invert", 1.0, 1.0),),))})
