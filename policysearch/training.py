"""run_trial: train the multi-task network under a policy and budget, evaluate every epoch.

Engine-agnostic: it knows nothing of Optuna or Ray. An engine passes a ``Reporter`` that
forwards each epoch's validation metrics (and may stop the trial by raising ``TrialPruned``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from policysearch.augment import Policy
from policysearch.config import Budget
from policysearch.data.base import MultiTaskDataset, Sample
from policysearch.errors import UserError
from policysearch.models import build_network
from policysearch.tasks import Task, make_task
from policysearch.weighting import make_weighting

Metrics = dict[str, dict[str, float]]

# Fixed image normalisation: the built-in datasets are generated, so ImageNet statistics would
# be arbitrary; a pretrained encoder is fine-tuned from the same scale.
_MEAN = 0.5
_STD = 0.25


class TrialPruned(Exception):
    """Raised by a reporter to stop a trial early (the engine records it as pruned)."""


class TrialFailed(Exception):
    """The trial cannot go on (non-finite loss, …); the message is recorded in the study."""


class Reporter(Protocol):
    def report(self, epoch: int, metrics: Metrics) -> None:
        """Called after each epoch's evaluation; may raise TrialPruned."""
        ...


@dataclass
class TrialResult:
    """What one trial produced: the last epoch's metrics, the per-epoch history, the weights."""

    metrics: Metrics
    history: list[Metrics] = field(default_factory=list)
    epochs: int = 0
    seconds: float = 0.0
    train_images: int = 0
    device: str = "cpu"
    # The loss weights at the end of training (what a dynamic method learned), and after
    # every epoch.
    weights: dict[str, float] = field(default_factory=dict)
    weight_history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("CUDA was asked for but no GPU is visible", field="--device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)", field="--device")
    return torch.device(device)


def images_to_tensor(samples: Sequence[Sample]) -> torch.Tensor:
    """Stack H×W×3 uint8 images into a normalised float B×3×H×W tensor."""
    batch = torch.from_numpy(np.stack([s["image"] for s in samples]))
    return (batch.permute(0, 3, 1, 2).float().div_(255.0) - _MEAN) / _STD


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # BatchNorm cannot train on a batch of one sample.
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    return chunks


def evaluate(model: torch.nn.Module, tasks: Sequence[Task], samples: Sequence[Sample],
             device: torch.device, batch_size: int = 128, amp: bool = False) -> Metrics:
    """Metrics of every task on un-augmented samples."""
    model.eval()
    evaluators = {t.name: t.evaluator() for t in tasks}
    with torch.no_grad(), _autocast(device, amp):
        for start in range(0, len(samples), batch_size):
            chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
            feats = model.features(images_to_tensor(chunk).to(device))
            for task in tasks:
                output = model.head_forward(task.name, feats)
                output = _to_float(output)
                targets = task.to_device(task.collate(chunk), device)
                evaluators[task.name].update(output, targets)
    return {name: {k: float(v) for k, v in ev.compute().items()} for name, ev in evaluators.items()}


def _to_float(output):  # noqa: ANN001, ANN202 - heads return tensors or dicts of tensors
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, dict):
        return {k: _to_float(v) for k, v in output.items()}
    return output


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def run_trial(
    policy: Policy,
    dataset: MultiTaskDataset,
    budget: Budget,
    *,
    seed: int = 0,
    device: str = "auto",
    reporter: Reporter | None = None,
    threads: int | None = None,
    eval_split: str = "val",
) -> TrialResult:
    """Train under ``policy`` for ``budget`` and evaluate on ``eval_split`` after each epoch.

    The same (policy, budget, seed) on the CPU gives the same metrics. ``threads`` bounds the
    CPU threads of this process so that parallel trials do not fight over cores. The policy's
    weighting (policysearch.weighting) owns each step's backward pass, sees the encoder's
    parameters as the shared ones and each epoch's mean loss per task; the weights it ends with
    are ``TrialResult.weights``.
    """
    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    dev = resolve_device(device)
    train = dataset.split("train")
    evaluation = dataset.split(eval_split)
    tasks = [make_task(spec) for spec in dataset.tasks]
    task_names = [t.name for t in tasks]
    missing = set(policy.tasks) - set(task_names)
    if missing:
        raise UserError(f"the policy names tasks the dataset lacks: {', '.join(sorted(missing))}",
                        field="tasks")

    torch.manual_seed(seed)
    model = build_network(tasks, budget.encoder, weights=budget.encoder_weights).to(dev)
    if budget.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr,
                                      weight_decay=budget.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=budget.lr, momentum=0.9,
                                    weight_decay=budget.weight_decay, nesterov=True)
    weighting = make_weighting(policy.weighting.method, task_names, policy.weighting.weights,
                               policy.weighting.params, shared=model.encoder.parameters(),
                               seed=seed, device=dev)
    if weighting.parameters():
        # Before the scheduler is made, so that it schedules these too; no weight decay, which
        # would pull e.g. uncertainty's log-variances towards 0.
        optimizer.add_param_group({"params": weighting.parameters(), "weight_decay": 0.0})
    steps_per_epoch = len(_batches(np.arange(len(train)), budget.batch_size))
    total_steps = max(1, steps_per_epoch * budget.epochs)
    warmup = min(steps_per_epoch, total_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    augment = policy.transform(seed=seed)
    views = {t.name: policy.view_of(t.name) for t in tasks}

    history: list[Metrics] = []
    weight_history: list[dict[str, float]] = []
    images_seen = 0
    for epoch in range(budget.epochs):
        model.train()
        loss_sums = torch.zeros(len(tasks), device=dev)
        steps = 0
        augment.set_seed(_epoch_seed(seed, epoch, 0))
        order = np.random.default_rng(_epoch_seed(seed, epoch, 1)).permutation(len(train))
        for batch in _batches(order, budget.batch_size):
            drawn = [augment(train[int(i)]) for i in batch]
            features = {}
            for view in sorted(set(views.values())):
                images = images_to_tensor([d[view] for d in drawn]).to(dev, non_blocking=True)
                with _autocast(dev, budget.amp):
                    features[view] = model.features(images)
            losses = {}
            for task in tasks:
                view = views[task.name]
                targets = task.to_device(task.collate([d[view] for d in drawn]), dev)
                with _autocast(dev, budget.amp):
                    output = model.head_forward(task.name, features[view])
                losses[task.name] = task.loss(_to_float(output), targets)
            optimizer.zero_grad(set_to_none=True)
            total = weighting.backward(losses)
            if not torch.isfinite(total):
                bad = [n for n, v in losses.items() if not torch.isfinite(v)]
                raise TrialFailed(f"non-finite loss at epoch {epoch} (tasks: {', '.join(bad)})")
            optimizer.step()
            scheduler.step()
            images_seen += len(batch)
            loss_sums += torch.stack([losses[n].detach() for n in task_names])
            steps += 1
        mean_losses = (loss_sums / max(1, steps)).tolist()
        weighting.end_epoch(epoch, dict(zip(task_names, mean_losses, strict=True)))
        weight_history.append(weighting.weights())
        metrics = evaluate(model, tasks, evaluation, dev, amp=budget.amp)
        history.append(metrics)
        if reporter is not None:
            reporter.report(epoch, metrics)
    return TrialResult(
        metrics=history[-1],
        history=history,
        epochs=budget.epochs,
        seconds=time.perf_counter() - started,
        train_images=images_seen,
        device=str(dev),
        weights=weighting.weights(),
        weight_history=weight_history,
    )
