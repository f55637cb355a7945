from __future__ import annotations

import pytest

from policysearch.augment import Policy, Slot, Weighting, get_baseline
from policysearch.config import Budget
from policysearch.data import get_dataset
from policysearch.training import TrialPruned, run_trial

BUDGET = Budget(epochs=2, batch_size=16, image_size=32)


@pytest.fixture(scope="module")
def dataset():  # noqa: ANN201
    return get_dataset("shapes", size=32, n_train=40, n_val=20, n_test=20)


def _policy(dataset) -> Policy:  # noqa: ANN001
    tasks = {t.name: t.kind for t in dataset.tasks}
    return Policy(tasks=tasks, shared=(Slot("rotate", 0.8, 0.5), Slot("brightness", 0.5, 0.4)),
                  per_task={"shape": (Slot("contrast", 1.0, 0.5),)},
                  weighting=Weighting("static", {t: 1.0 for t in tasks}))


def test_same_seed_same_metrics_on_cpu(dataset) -> None:  # noqa: ANN001
    a = run_trial(_policy(dataset), dataset, BUDGET, seed=3, device="cpu")
    b = run_trial(_policy(dataset), dataset, BUDGET, seed=3, device="cpu")
    assert a.metrics == b.metrics and a.history == b.history
    assert set(a.metrics) == {"shape", "seg", "objects", "depth"}
    assert len(a.history) == 2 and a.train_images == 80
    c = run_trial(_policy(dataset), dataset, BUDGET, seed=4, device="cpu")
    assert c.metrics != a.metrics


def test_reporter_sees_every_epoch_and_can_prune(dataset) -> None:  # noqa: ANN001
    seen: list[int] = []

    class Stop:
        def report(self, epoch: int, metrics: dict) -> None:
            seen.append(epoch)
            assert metrics["depth"]["abs_err"] > 0
            raise TrialPruned("enough")

    with pytest.raises(TrialPruned):
        run_trial(get_baseline("none", {t.name: t.kind for t in dataset.tasks}), dataset,
                  BUDGET, seed=0, device="cpu", reporter=Stop())
    assert seen == [0]


def test_policy_with_unknown_task_is_refused(dataset) -> None:  # noqa: ANN001
    from policysearch.errors import UserError

    policy = Policy(tasks={"nope": "classification"})
    with pytest.raises(UserError, match="nope"):
        run_trial(policy, dataset, BUDGET, device="cpu")
