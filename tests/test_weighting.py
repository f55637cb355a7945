"""Loss-weighting methods against hand-computed values, on tiny tensors (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from policysearch.augment import Policy, Weighting, get_baseline, load_policy
from policysearch.config import Budget
from policysearch.data import get_dataset
from policysearch.errors import UserError
from policysearch.training import run_trial
from policysearch.weighting import (
    WEIGHTINGS,
    CAGradWeighting,
    DWAWeighting,
    GradNormWeighting,
    PCGradWeighting,
    UncertaintyWeighting,
    cagrad_coefficients,
    dwa_weights,
    hyper_params_of,
    make_weighting,
    pcgrad_project,
    register_weighting,
    task_gradients,
)
from policysearch.weighting.base import Weighting as WeightingBase
from policysearch.weighting_schema import METHODS, defaults

TWO = ["a", "b"]


def _linear_losses(theta: torch.Tensor, rows: list[list[float]]) -> dict[str, torch.Tensor]:
    """Loss t = 1 + rows[t]·θ: its gradient on θ is rows[t], whatever θ is."""
    names = [chr(ord("a") + i) for i in range(len(rows))]
    return {n: 1.0 + (torch.tensor(r) * theta).sum() for n, r in zip(names, rows, strict=True)}


# --- uncertainty -------------------------------------------------------------------------------


def test_uncertainty_gradient_moves_log_variances_towards_log_loss() -> None:
    w = UncertaintyWeighting(TWO)
    big, small = torch.tensor(4.0, requires_grad=True), torch.tensor(0.25, requires_grad=True)
    w.backward({"a": big, "b": small})
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L at s = 0: 1 - 4 and 1 - 0.25
    assert w.log_vars.grad.tolist() == pytest.approx([-3.0, 0.75])
    # the task losses get exp(-s) = 1 as their weight
    assert big.grad.item() == pytest.approx(1.0) and small.grad.item() == pytest.approx(1.0)
    optimizer = torch.optim.SGD(w.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        w.backward({"a": torch.tensor(4.0), "b": torch.tensor(0.25)})
        optimizer.step()
    s_a, s_b = w.log_vars.tolist()
    assert s_a > 0 > s_b  # the task with the larger loss gets the larger s
    assert (s_a, s_b) == pytest.approx((math.log(4.0), math.log(0.25)), abs=1e-3)
    assert w.weights() == pytest.approx({"a": 0.25, "b": 4.0}, rel=1e-3)


# --- DWA ---------------------------------------------------------------------------------------


def test_dwa_weights_follow_the_formula() -> None:
    w = DWAWeighting(["a", "b", "c"], temperature=2.0)
    assert w.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}
    w.end_epoch(0, {"a": 1.0, "b": 2.0, "c": 4.0})
    assert w.weights() == {"a": 1.0, "b": 1.0, "c": 1.0}  # equal for the first two epochs
    w.end_epoch(1, {"a": 0.5, "b": 2.0, "c": 5.0})
    # r = (0.5, 1.0, 1.25); w_k = 3 exp(r_k / 2) / Σ exp(r_i / 2)
    e = [math.exp(0.25), math.exp(0.5), math.exp(0.625)]
    expected = [3 * x / sum(e) for x in e]
    got = w.weights()
    assert [got["a"], got["b"], got["c"]] == pytest.approx(expected)
    assert sum(got.values()) == pytest.approx(3.0)
    assert expected == pytest.approx([0.80235, 1.03024, 1.16741], abs=1e-5)
    # the next epoch compares epoch 2 with epoch 1
    w.end_epoch(2, {"a": 0.5, "b": 1.0, "c": 5.0})
    e = [math.exp(0.5), math.exp(0.25), math.exp(0.5)]
    assert list(w.weights().values()) == pytest.approx([3 * x / sum(e) for x in e])
    # and backward weighs the losses with them
    losses = {t: torch.tensor(1.0, requires_grad=True) for t in "abc"}
    w.backward(losses)
    assert [losses[t].grad.item() for t in "abc"] == pytest.approx(list(w.weights().values()))


def test_dwa_temperature_and_unlabelled_epochs() -> None:
    hot = dwa_weights({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, temperature=100.0)
    cold = dwa_weights({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, temperature=0.1)
    assert hot["a"] == pytest.approx(1.0, abs=0.01) and cold["a"] == pytest.approx(2.0, abs=1e-3)
    # a task whose older epoch had no labelled sample (mean loss 0) counts as ratio 1
    w = dwa_weights({"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 1.0}, temperature=2.0)
    assert w == pytest.approx({"a": 1.0, "b": 1.0})


# --- GradNorm ----------------------------------------------------------------------------------


def test_gradnorm_equalises_gradient_norms() -> None:
    theta = nn.Parameter(torch.zeros(1, 2))
    rows = [[1.0, 0.0], [0.0, 10.0]]  # task b's gradient is 10× task a's
    w = GradNormWeighting(TWO, shared=[theta], alpha=1.5, lr=0.01)
    w.backward(_linear_losses(theta, rows))
    # the network trains on Σ w_t L_t with the weights before the update (1, 1)
    assert theta.grad.tolist() == [[1.0, 10.0]]
    history = []
    for _ in range(400):
        theta.grad = None
        # θ never moves, so both tasks train at the same rate: the targets are mean(G)
        w.backward(_linear_losses(theta, rows))
        history.append(w.weights())
    last = history[-50:]
    wa = sum(h["a"] for h in last) / len(last)
    wb = sum(h["b"] for h in last) / len(last)
    assert wa + wb == pytest.approx(2.0)
    # equal weighted norms: w_a · 1 = w_b · 10, so w = (20/11, 2/11)
    assert (wa, wb) == pytest.approx((20 / 11, 2 / 11), rel=0.05)
    assert wa * 1.0 == pytest.approx(wb * 10.0, rel=0.1)


def test_gradnorm_restoring_force_favours_the_slower_task() -> None:
    theta = nn.Parameter(torch.zeros(1, 2))
    w = GradNormWeighting(TWO, shared=[theta], alpha=1.5, lr=0.01)
    w.backward({"a": torch.tensor(1.0) + theta.sum(), "b": torch.tensor(1.0) + theta.sum()})
    for _ in range(100):  # task a's loss has halved, task b's has not: b trains slower
        w.backward({"a": 0.5 + theta.sum(), "b": 1.0 + theta.sum()})
    assert w.weights()["b"] > w.weights()["a"]


# --- PCGrad ------------------------------------------------------------------------------------


def test_pcgrad_removes_the_conflicting_component() -> None:
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1·g2 = -1 < 0
    projected = pcgrad_project(torch.stack([g1, g2]), torch.Generator().manual_seed(0))
    assert torch.dot(projected[0], g2).item() == pytest.approx(0.0, abs=1e-7)
    assert torch.dot(projected[1], g1).item() == pytest.approx(0.0, abs=1e-7)
    # g1 - (g1·g2)/|g2|² g2 = (0.5, 0.5); g2 - (g2·g1)/|g1|² g1 = (0, 1)
    assert projected.tolist() == [[0.5, 0.5], [0.0, 1.0]]

    theta, head = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(()))
    w = PCGradWeighting(TWO, shared=[theta], seed=0)
    losses = _linear_losses(theta, [g1.tolist(), g2.tolist()])
    w.backward({"a": losses["a"] + head, "b": losses["b"] + 2 * head})
    assert theta.grad.tolist() == pytest.approx([0.5, 1.5])  # the sum of the projections
    assert head.grad.item() == pytest.approx(3.0)  # heads: the gradient of the plain sum


def test_pcgrad_leaves_agreeing_gradients_alone() -> None:
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # g1·g2 = 1 > 0
    assert pcgrad_project(grads, torch.Generator()).tolist() == grads.tolist()


def test_pcgrad_order_comes_from_the_seed() -> None:
    grads = torch.tensor([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.3], [-0.5, -0.9, 1.0]])

    def run(seed: int) -> list[float]:
        theta = nn.Parameter(torch.zeros(3))
        w = PCGradWeighting(["a", "b", "c"], shared=[theta], seed=seed)
        for _ in range(3):
            theta.grad = None
            w.backward(_linear_losses(theta, grads.tolist()))
        return theta.grad.tolist()

    assert run(1) == run(1)
    assert len({tuple(run(s)) for s in range(8)}) > 1  # the order matters for these three


# --- CAGrad ------------------------------------------------------------------------------------


def test_cagrad_with_c_zero_is_the_mean_gradient() -> None:
    grads = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    coefficients = cagrad_coefficients(grads, c=0.0)
    assert (coefficients.float() @ grads).tolist() == pytest.approx(grads.mean(0).tolist())
    theta = nn.Parameter(torch.zeros(7))
    w = CAGradWeighting(["a", "b", "c"], shared=[theta], c=0.0)
    w.backward(_linear_losses(theta, grads.tolist()))
    assert theta.grad.tolist() == pytest.approx(grads.mean(0).tolist(), abs=1e-6)
    assert w.weights() == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


def test_cagrad_on_orthogonal_gradients() -> None:
    # g1 ⟂ g2, equal norms: w = (½, ½), g_w = g0, d = g0 (1 + c) / (1 + c²) = 1.2 g0 at c = ½
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = cagrad_coefficients(grads, c=0.5).float() @ grads
    assert d.tolist() == pytest.approx([0.6, 0.6], abs=1e-4)


def test_cagrad_favours_the_weaker_gradient() -> None:
    grads = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    coefficients = cagrad_coefficients(grads, c=0.5)
    assert coefficients[1] > coefficients[0]
    d = coefficients.float() @ grads
    # the worst task's improvement rate (g_t · d) beats that of the mean gradient
    mean = grads.mean(0)
    assert min((grads @ d).tolist()) > min((grads @ mean).tolist())


# --- the interface -----------------------------------------------------------------------------


def test_task_gradients_leave_shared_grads_as_they_were() -> None:
    theta, head = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(()))
    theta.grad = torch.tensor([5.0, 5.0])
    losses = _linear_losses(theta, [[1.0, 2.0], [3.0, 4.0]])
    grads = task_gradients([losses["a"] + head, losses["b"] + head], [theta])
    assert grads.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert theta.grad.tolist() == [5.0, 5.0] and head.grad.item() == 2.0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 1), "b": nn.Linear(8, 1)})


def _train_tiny(method: str, seed: int, steps: int = 6) -> tuple[list[float], dict[str, float]]:
    torch.manual_seed(seed)
    model = _Tiny()
    x = torch.randn(16, 4)
    targets = {"a": x.sum(1, keepdim=True), "b": 10 * x[:, :1] ** 2}
    w = make_weighting(method, TWO, shared=model.encoder.parameters(), seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    if w.parameters():
        optimizer.add_param_group({"params": w.parameters()})
    for step in range(steps):
        feats = model.encoder(x)
        losses = {t: ((model.heads[t](feats) - targets[t]) ** 2).mean() for t in TWO}
        optimizer.zero_grad()
        total = w.backward(losses)
        assert torch.isfinite(total)
        optimizer.step()
        if step % 2 == 1:
            w.end_epoch(step // 2, {t: v.item() for t, v in losses.items()})
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()
    return flat, w.weights()


@pytest.mark.parametrize("method", sorted(WEIGHTINGS))
def test_every_method_trains_a_tiny_network(method: str) -> None:
    params, weights = _train_tiny(method, seed=0)
    assert all(math.isfinite(v) for v in params)
    assert set(weights) == set(TWO) and all(math.isfinite(v) and v > 0 for v in weights.values())
    again, weights_again = _train_tiny(method, seed=0)
    assert again == params and weights_again == weights  # same seed, same numbers


def test_constructor_defaults_match_the_torch_free_table() -> None:
    for name, cls in WEIGHTINGS.items():
        found = {p: info.default for p, info in hyper_params_of(cls).items()}
        assert found == defaults(name), name


def test_make_weighting_errors_name_the_field() -> None:
    with pytest.raises(UserError, match=r"weighting\.method: unknown weighting method 'nope'"):
        make_weighting("nope", TWO)
    with pytest.raises(UserError, match=r"weighting\.params\.tau: unknown hyper-parameter"):
        make_weighting("dwa", TWO, params={"tau": 2.0})
    with pytest.raises(UserError, match=r"weighting\.params\.temperature: .*\(0, inf\]"):
        make_weighting("dwa", TWO, params={"temperature": 0.0})
    with pytest.raises(UserError, match="pcgrad needs trainable shared"):
        make_weighting("pcgrad", TWO)
    with pytest.raises(UserError, match="weights for unknown tasks: z"):
        make_weighting("static", TWO, weights={"z": 2.0})
    assert make_weighting("static", TWO, weights={"a": 2.0}).weights() == {"a": 2.0, "b": 1.0}
    assert make_weighting("dwa", TWO, params={"temperature": 3}).temperature == 3.0


def test_a_registered_method_is_usable_in_policies() -> None:
    class Halves(WeightingBase):
        name = "halves"

        def __init__(self, tasks: list[str], *, factor: float = 0.5,
                     shared: object = (), seed: int = 0, device: object = None) -> None:
            super().__init__(tasks, seed=seed)
            self.factor = factor

        def weights(self) -> dict[str, float]:
            return {t: self.factor for t in self.tasks}

    try:
        register_weighting(Halves)
        assert METHODS["halves"]["factor"].default == 0.5
        policy = Policy(tasks={"a": "classification"},
                        weighting=Weighting("halves", params={"factor": 0.25}))
        built = make_weighting("halves", ["a"], params=policy.weighting.params)
        assert built.weights() == {"a": 0.25}
    finally:
        WEIGHTINGS.pop("halves", None)
        METHODS.pop("halves", None)


# --- training and the policy file --------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset():  # noqa: ANN201
    return get_dataset("shapes", size=32, n_train=24, n_val=12, n_test=12)


def test_run_trial_learns_uncertainty_weights(dataset) -> None:  # noqa: ANN001
    tasks = {t.name: t.kind for t in dataset.tasks}
    policy = Policy(tasks=tasks, weighting=Weighting("uncertainty"))
    budget = Budget(epochs=2, batch_size=8, image_size=32, lr=0.05)
    result = run_trial(policy, dataset, budget, seed=0, device="cpu")
    assert set(result.weights) == set(tasks) and len(result.weight_history) == 2
    # the optimizer moved the log-variances: every weight left 1.0
    assert all(abs(w - 1.0) > 1e-3 for w in result.weights.values())


def test_run_trial_dwa_and_pcgrad_are_deterministic(dataset) -> None:  # noqa: ANN001
    tasks = {t.name: t.kind for t in dataset.tasks}
    budget = Budget(epochs=3, batch_size=12, image_size=32)
    dwa = get_baseline("flipcrop", tasks)
    dwa.weighting = Weighting("dwa", params={"temperature": 2.0})
    first = run_trial(dwa, dataset, budget, seed=1, device="cpu")
    assert first.weight_history[0] == {t: 1.0 for t in tasks}  # equal in epochs 0 and 1
    assert sum(first.weights.values()) == pytest.approx(4.0)
    assert first.weights != {t: 1.0 for t in tasks}  # epoch 2's weights came from the losses
    pcgrad = Policy(tasks=tasks, weighting=Weighting("pcgrad"))
    a = run_trial(pcgrad, dataset, budget, seed=2, device="cpu")
    b = run_trial(pcgrad, dataset, budget, seed=2, device="cpu")
    assert a.history == b.history and a.weights == {t: 1.0 for t in tasks}


def test_policy_yaml_round_trip_with_params(tmp_path: Path) -> None:
    tasks = {"shape": "classification", "seg": "segmentation"}
    policy = Policy(tasks=tasks, weighting=Weighting("gradnorm", {"shape": 1.0, "seg": 1.0},
                                                     {"alpha": 0.5, "lr": 0.01}))
    path = policy.to_yaml(tmp_path / "p.yaml")
    assert "params:" in path.read_text()
    assert load_policy(path) == policy
    assert policy.to_dict()["weighting"]["params"] == {"alpha": 0.5, "lr": 0.01}
    assert policy.summary() == "none | weighting: gradnorm(alpha=0.5, lr=0.01)"
    static = Policy(tasks=tasks, weighting=Weighting("static", {"seg": 2.0}))
    assert "params" not in static.to_dict()["weighting"]  # files without params stay as they were
    assert static.summary() == "none"


def _policy_file(tmp_path: Path, weighting: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("schema: policysearch.policy/v1\ntasks: {shape: classification}\n"
                    f"shared: []\nweighting: {weighting}\n")
    return path


def test_old_policy_files_without_params_load(tmp_path: Path) -> None:
    policy = load_policy(_policy_file(tmp_path, "{method: static, weights: {shape: 0.5}}"))
    assert policy.weighting == Weighting("static", {"shape": 0.5}, {})


@pytest.mark.parametrize(("weighting", "field", "message"), [
    ("{method: magic}", "weighting.method", "unknown weighting method 'magic'"),
    ("{method: dwa, params: {tau: 1}}", "weighting.params.tau", "unknown hyper-parameter"),
    ("{method: cagrad, params: {c: -1}}", "weighting.params.c", "[0, inf]"),
    ("{method: dwa, params: {temperature: hot}}", "weighting.params.temperature",
     "must be a number"),
    ("{method: pcgrad, params: {c: 0.5}}", "weighting.params.c", "pcgrad (it has no"),
    ("{method: dwa, params: [2]}", "weighting.params", "must be a mapping"),
    ("{method: dwa, extra: 1}", "weighting.extra", "method, weights and params"),
])
def test_bad_weighting_in_a_policy_file(tmp_path: Path, weighting: str, field: str,
                                        message: str) -> None:
    path = _policy_file(tmp_path, weighting)
    with pytest.raises(UserError) as err:
        load_policy(path)
    line = str(err.value)
    assert line.startswith(f"{path}: {field}: ") and message in line and "\n" not in line
