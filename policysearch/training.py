"""run_trial: train the multi-task network under a policy and budget, evaluate every epoch.

Engine-agnostic: it knows nothing of Optuna or Ray. An engine passes a ``Reporter`` that
forwards each epoch's validation metrics (and may stop the trial by raising ``TrialPruned``).
``Trainer`` is the same loop an epoch at a time, with a ``state_dict`` to checkpoint and resume
(population-based training continues one trial from another's checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from policysearch.augment import Policy
from policysearch.config import Budget
from policysearch.data.base import MultiTaskDataset, Sample, TaskSubset
from policysearch.errors import UserError
from policysearch.input_pipeline import (
    BatchRequest,
    InputPipeline,
    WorkerLost,
    default_loader_workers,
)
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
    """The trial cannot go on (non-finite loss or metric, out of memory, a policy that leaves a
    task no target); the message is recorded in the study and the search goes on."""


def non_finite(metrics: Metrics) -> list[str]:
    """``task.metric`` of every NaN or infinite value in ``metrics``."""
    return [f"{task}.{name}" for task, values in metrics.items()
            for name, value in values.items() if not math.isfinite(float(value))]


def release_memory() -> None:
    """Give back what a failed trial held: Python garbage, and the CUDA cache when present."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _out_of_memory_fails(epoch: int, stage: str) -> Iterator[None]:
    """An out-of-memory error fails the trial with advice instead of ending the search."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        first = (str(err).splitlines() or ["out of memory"])[0]
        raise TrialFailed(f"out of memory in {stage} at epoch {epoch}: {first} — lower the "
                          "budget's batch_size or image_size, or share the GPU among fewer "
                          "trials") from None


@contextlib.contextmanager
def _worker_loss_fails(epoch: int) -> Iterator[None]:
    """A loader worker that dies fails the trial with the reason. (Torch may also say so from
    its SIGCHLD handler, wherever the training process is at the time.)"""
    try:
        yield
    except (WorkerLost, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not str(err).startswith("DataLoader worker"):
            raise
        reason = str(err).splitlines()[0]
        raise TrialFailed(f"a loader worker died at epoch {epoch}: {reason}") from None


class _EpochClock:
    """How long an epoch's training step waited for its batches, against the epoch's wall
    time. The GPU is synchronised at the epoch's ends, so that the wall time covers its work;
    with 0 loader workers the whole preparation is waiting."""

    def __init__(self, device: torch.device):
        self.device = device
        self.waited = 0.0
        self._sync()
        self.started = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def waiting(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``batches``, timing each wait for the next one."""
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.waited += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def wait_fraction(self) -> float:
        self._sync()
        wall = time.perf_counter() - self.started
        return min(1.0, self.waited / wall) if wall > 0 else 0.0


class Reporter(Protocol):
    def report(self, epoch: int, metrics: Metrics) -> None:
        """Called after each epoch's evaluation; may raise TrialPruned."""
        ...


@dataclass(frozen=True)
class Seeds:
    """The three seeds of a training, which can be set apart (a noise study varies one at a
    time): ``model`` initialises the network (and seeds a random weighting method), ``order``
    shuffles each epoch's batches, ``augment`` keys every augmentation draw. ``Seeds.of(s)``,
    what ``seed=s`` means, gives all three ``s``; the streams stay apart because each is derived
    with its own role."""

    model: int
    order: int
    augment: int

    @classmethod
    def of(cls, seed: int | Seeds) -> Seeds:
        return seed if isinstance(seed, Seeds) else cls(seed, seed, seed)


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
    # Per epoch: the share of its wall time the training step waited for the next batch.
    data_wait: list[float] = field(default_factory=list)
    loader_workers: int = 0


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
    return normalise(torch.from_numpy(np.stack([s["image"] for s in samples])))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """B×H×W×3 uint8 (on any device) to the network's normalised float B×3×H×W."""
    return (images.permute(0, 3, 1, 2).float().div_(255.0) - _MEAN) / _STD


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
            feats = model.features(_layout(images_to_tensor(chunk).to(device)))
            for task in tasks:
                output = model.head_forward(task.name, feats)
                output = _to_float(output)
                targets = task.to_device(task.collate(chunk), device)
                evaluators[task.name].update(output, targets)
    return {name: {k: float(v) for k, v in ev.compute().items()} for name, ev in evaluators.items()}


def _layout(value: Any) -> Any:
    """On CUDA, channels_last for the network and its input images: the memory layout its
    convolutions run fastest in under mixed precision (a no-op on the CPU, which keeps its
    numbers)."""
    if isinstance(value, torch.nn.Module):
        on_cuda = any(p.is_cuda for p in value.parameters())
        return value.to(memory_format=torch.channels_last) if on_cuda else value
    return value.contiguous(memory_format=torch.channels_last) if value.is_cuda else value


def _to_float(output):  # noqa: ANN001, ANN202 - heads return tensors or dicts of tensors
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, dict):
        return {k: _to_float(v) for k, v in output.items()}
    return output


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def head_outputs(model: torch.nn.Module, tasks: Sequence[Task], batch: dict[str, Any],
                 device: torch.device, amp: bool = False) -> dict[str, tuple[Any, Any]]:
    """Each task's head output (as float) and its targets, on ``device``, for one prepared
    batch (``input_pipeline.PreparedBatches``): one encoder pass per view, each task's head
    on the features of the view that feeds it. The training step's and the density scorer's
    forward pass."""
    features = {}
    for view, images in batch["images"].items():
        with _autocast(device, amp):
            features[view] = model.features(
                _layout(normalise(images.to(device, non_blocking=True))))
    outputs = {}
    for task in tasks:
        view = batch["views"][task.name]
        targets = task.to_device(batch["targets"][task.name], device)
        with _autocast(device, amp):
            output = model.head_forward(task.name, features[view])
        outputs[task.name] = (_to_float(output), targets)
    return outputs


class Trainer:
    """One trial's training, an epoch at a time, with its whole state in a ``state_dict``.

    ``run_trial`` is ``Trainer`` + ``train_epoch`` / ``evaluate`` per epoch; a population-based
    search checkpoints ``state_dict()`` after an epoch and continues — in another trial, under
    another policy — with ``load_state_dict``. The state holds the model, optimizer, learning
    rate schedule, weighting state, epoch counter, history, the torch random state and the
    policies trained under so far (``trained_policy()``); the batch order draws from a stream
    seeded by (order seed, epoch) and each augmentation draw is keyed by (augmentation seed,
    epoch, sample, view, slot), so a resumed run gives the numbers of an uninterrupted one on
    the CPU, whatever the number of loader workers.

    The network, optimizer and weighting are built once from ``policy`` (its weighting); a
    policy given to ``train_epoch`` changes only the augmentation. Batches are prepared by an
    ``InputPipeline`` (``budget.loader_workers`` worker processes, persisting across epochs):
    ``close()`` stops them, as leaving a ``with Trainer(...)`` block does.
    """

    STATE_VERSION = 1

    def __init__(self, policy: Policy, dataset: MultiTaskDataset, budget: Budget, *,
                 seed: int | Seeds = 0, device: str = "auto", threads: int | None = None,
                 eval_split: str = "val"):
        self._started = time.perf_counter()
        self._seconds_before = 0.0
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        self.policy = policy
        self.budget = budget
        self.seeds = Seeds.of(seed)
        self.train = dataset.split("train")
        self.evaluation = dataset.split(eval_split)
        self.tasks = [make_task(spec) for spec in dataset.tasks]
        self.task_names = [t.name for t in self.tasks]
        self._check_tasks(policy)
        workers = budget.loader_workers
        self.loader_workers = (default_loader_workers(self.device, torch.get_num_threads())
                               if workers == "auto" else int(workers))
        self.pipeline = InputPipeline(self.train, self.tasks, workers=self.loader_workers,
                                      device=self.device)
        self.epoch = 0  # epochs trained so far
        try:
            # A policy that cannot work fails here, in this process, before any epoch.
            self.pipeline.batches.augment_for(self._requests(policy.at_epoch(0), [[0]])[0])
            # The workers start on the first epoch while the network is built.
            self.pipeline.prefetch(self._requests(policy.at_epoch(0), self.batch_order(0)))
            self._build(policy, budget)
        except BaseException:
            self.pipeline.close()
            raise

    def _build(self, policy: Policy, budget: Budget) -> None:
        """The network, optimizer, weighting, schedule and the state of a trial not begun."""
        dev = self.device
        torch.manual_seed(self.seeds.model)
        self.model = _layout(build_network(self.tasks, budget.encoder,
                                           weights=budget.encoder_weights).to(dev))
        if budget.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=budget.lr,
                                             momentum=0.9, weight_decay=budget.weight_decay,
                                             nesterov=True)
        w = policy.weighting
        self.weighting = make_weighting(w.method, self.task_names, w.weights, w.params,
                                        shared=self.model.encoder.parameters(),
                                        seed=self.seeds.model,
                                        device=dev)
        if self.weighting.parameters():
            # Before the scheduler is made, so that it schedules these too; no weight decay,
            # which would pull e.g. uncertainty's log-variances towards 0.
            self.optimizer.add_param_group({"params": self.weighting.parameters(),
                                            "weight_decay": 0.0})
        steps_per_epoch = len(_batches(np.arange(len(self.train)), budget.batch_size))
        total_steps = max(1, steps_per_epoch * budget.epochs)
        warmup = min(steps_per_epoch, total_steps // 10)

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.history: list[Metrics] = []  # validation metrics after each epoch
        self.weight_history: list[dict[str, float]] = []
        self.data_wait: list[float] = []  # per epoch
        self.images_seen = 0
        # (first epoch, policy as a dict) of each run of epochs trained under one policy.
        self._phases: list[tuple[int, dict]] = []

    # --- training ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the budget's epochs are all trained."""
        return self.epoch >= self.budget.epochs

    def train_epoch(self, policy: Policy | None = None) -> dict[str, float]:
        """Train epoch number ``self.epoch`` under ``policy.at_epoch(self.epoch)`` (default:
        the trainer's policy, so a schedule is followed); returns the epoch's mean loss per
        task. Only the augmentation of ``policy`` is used: the weighting is the trainer's."""
        if self.done:
            raise ValueError(f"the budget's {self.budget.epochs} epochs are trained already")
        policy = self.policy if policy is None else policy
        self._check_tasks(policy)
        phase = policy.at_epoch(self.epoch)
        epoch, dev, tasks = self.epoch, self.device, self.tasks
        self.model.train()
        loss_sums = torch.zeros(len(tasks), device=dev)
        # Whether each task's loss was ever non-zero: a task loss is exactly 0 only when the
        # batch holds no valid target (the Task contract), e.g. every box cropped away.
        signal = torch.zeros(len(tasks), dtype=torch.bool, device=dev)
        steps = 0
        requests = self._requests(phase, self.batch_order(epoch))
        clock = _EpochClock(dev)
        with _out_of_memory_fails(epoch, "training"), _worker_loss_fails(epoch):
            for batch in clock.waiting(self.pipeline.epoch(requests)):
                losses = self._step_losses(batch)
                self.optimizer.zero_grad(set_to_none=True)
                total = self.weighting.backward(losses)
                if not torch.isfinite(total):
                    bad = [n for n, v in losses.items() if not torch.isfinite(v)]
                    raise TrialFailed(f"non-finite loss at epoch {epoch} "
                                      f"(tasks: {', '.join(bad) or 'the weighted total'})")
                self.optimizer.step()
                self.scheduler.step()
                self.images_seen += batch["size"]
                step_losses = torch.stack([losses[n].detach() for n in self.task_names])
                loss_sums += step_losses
                signal |= step_losses != 0
                steps += 1
        self.data_wait.append(clock.wait_fraction())
        empty = [n for n, s in zip(self.task_names, signal.tolist(), strict=True) if not s]
        if steps and empty:
            raise TrialFailed(f"the policy leaves no target for task {', '.join(empty)} in "
                              f"epoch {epoch}: its loss was 0 in every step (every target "
                              "erased or cropped away)")
        mean_losses = dict(zip(self.task_names, (loss_sums / max(1, steps)).tolist(),
                               strict=True))
        self.weighting.end_epoch(epoch, mean_losses)
        self.weight_history.append(self.weighting.weights())
        self._record_phase(phase)
        self.epoch += 1
        if not self.done:  # the workers start on the next epoch during the evaluation
            self.pipeline.prefetch(self._requests(policy.at_epoch(self.epoch),
                                                  self.batch_order(self.epoch)))
        return mean_losses

    def run(self, reporter: Reporter | None = None) -> TrialResult:
        """Train every epoch left, each evaluated and reported to ``reporter``; the result."""
        while not self.done:
            self.train_epoch()
            metrics = self.evaluate()
            if reporter is not None:
                reporter.report(self.epoch - 1, metrics)
        return self.result()

    def batch_order(self, epoch: int) -> list[np.ndarray]:
        """The sample indices of each batch of ``epoch``, in order (from the order seed)."""
        order = np.random.default_rng(_epoch_seed(self.seeds.order, epoch, 1)).permutation(
            len(self.train))
        return _batches(order, self.budget.batch_size)

    def _requests(self, phase: Policy, batches: Sequence[Sequence[int]]
                  ) -> list[BatchRequest]:
        key = phase.augmentation_key()
        return [BatchRequest(epoch=self.epoch, indices=tuple(int(i) for i in b),
                             seed=self.seeds.augment, phase=phase, key=key) for b in batches]

    def _step_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Each task's loss on one prepared batch (one encoder pass per view)."""
        outputs = head_outputs(self.model, self.tasks, batch, self.device, self.budget.amp)
        return {task.name: task.loss(*outputs[task.name]) for task in self.tasks}

    def evaluate(self) -> Metrics:
        """Metrics of every task on the evaluation split; after a trained epoch they are also
        that epoch's entry of ``history``. A NaN or infinite metric fails the trial: it is
        never recorded."""
        with _out_of_memory_fails(self.epoch, "evaluation"), _worker_loss_fails(self.epoch):
            metrics = evaluate(self.model, self.tasks, self.evaluation, self.device,
                               amp=self.budget.amp)
        bad = non_finite(metrics)
        if bad:
            raise TrialFailed(f"non-finite metric after epoch {self.epoch}: {', '.join(bad)} "
                              "(the network diverged)")
        if self.epoch > 0:
            del self.history[self.epoch - 1:]
            self.history.append(metrics)
        return metrics

    def trained_policy(self) -> Policy:
        """The policy as trained so far: the trainer's policy (weighting, tasks) with a
        ``schedule`` of the policies each run of epochs was trained under — plain when one
        policy trained them all (or none was trained yet)."""
        if not self._phases:
            return self.policy
        phases = [(start, Policy.from_dict(data, source="trainer state"))
                  for start, data in self._phases]
        return Policy.from_phases(phases, weighting=self.policy.weighting,
                                  provenance=self.policy.provenance)

    def result(self) -> TrialResult:
        """What the trial produced so far (``history`` must hold at least one epoch)."""
        return TrialResult(
            metrics=self.history[-1],
            history=list(self.history),
            epochs=self.epoch,
            seconds=self.seconds,
            train_images=self.images_seen,
            device=str(self.device),
            weights=self.weighting.weights(),
            weight_history=list(self.weight_history),
            data_wait=list(self.data_wait),
            loader_workers=self.loader_workers,
        )

    @property
    def seconds(self) -> float:
        """Wall time of this trial: this process's share plus that of the state loaded."""
        return self._seconds_before + time.perf_counter() - self._started

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on training elsewhere: plain data and tensors (on the CPU),
        for ``torch.save``; ``torch.load(..., weights_only=True)`` reads it back."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "version": self.STATE_VERSION,
            "epoch": self.epoch,
            "model": _to_cpu(self.model.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "weighting": _weighting_state(self.weighting, self.model),
            "rng": rng,
            "history": [dict(m) for m in self.history],
            "weight_history": [dict(w) for w in self.weight_history],
            "images_seen": self.images_seen,
            "seconds": self.seconds,
            "phases": [[start, data] for start, data in self._phases],
            "data_wait": list(self.data_wait),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of a trainer with the same dataset, budget, tasks and
        weighting method): the next ``train_epoch`` trains epoch ``state['epoch']``."""
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"unknown trainer state version {state.get('version')!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _load_weighting_state(self.weighting, state["weighting"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch = int(state["epoch"])
        self.history = [dict(m) for m in state["history"]]
        self.weight_history = [dict(w) for w in state["weight_history"]]
        self.images_seen = int(state["images_seen"])
        self._seconds_before = float(state["seconds"])
        self._started = time.perf_counter()
        self._phases = [(int(start), data) for start, data in state["phases"]]
        self.data_wait = [float(w) for w in state.get("data_wait", [])]

    def close(self) -> None:
        """Stop the loader workers (idempotent); the trainer can still evaluate and report."""
        self.pipeline.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------------------------

    def _check_tasks(self, policy: Policy) -> None:
        missing = set(policy.tasks) - set(self.task_names)
        if missing:
            raise UserError("the policy names tasks the dataset lacks: "
                            f"{', '.join(sorted(missing))}", field="tasks")

    def _record_phase(self, phase: Policy) -> None:
        if self._phases:
            last = Policy.from_dict(self._phases[-1][1], source="trainer state")
            if last.augmentation_key() == phase.augmentation_key():
                return
        self._phases.append((self.epoch, phase.to_dict()))


def _to_cpu(value: Any) -> Any:
    """A copy of nested dicts/lists of tensors with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


# Attributes of a weighting that are wiring (set up by the constructor from its arguments),
# not state.
_WEIGHTING_WIRING = frozenset({"tasks", "shared", "seed", "device"})


def _weighting_state(weighting: Any, model: torch.nn.Module) -> dict[str, Any]:
    """A weighting's state: its own ``state_dict()`` when it has one, else every attribute
    that is not wiring — tensors, optimizers and generators by value, plain data copied;
    attributes that are model parameters (e.g. GradNorm's layer) are wiring too."""
    own = getattr(weighting, "state_dict", None)
    if callable(own):
        return {"state_dict": own()}
    params = {id(p) for p in model.parameters()}
    found: dict[str, Any] = {}
    for name, value in vars(weighting).items():
        if name in _WEIGHTING_WIRING or id(value) in params:
            continue
        if isinstance(value, torch.Tensor):
            found[name] = ("tensor", value.detach().to("cpu", copy=True))
        elif isinstance(value, torch.optim.Optimizer):
            found[name] = ("optimizer", _to_cpu(value.state_dict()))
        elif isinstance(value, torch.Generator):
            found[name] = ("generator", value.get_state())
        elif isinstance(value, (type(None), bool, int, float, str, list, dict, tuple)):
            found[name] = ("value", copy.deepcopy(value))
    return {"attributes": found}


def _load_weighting_state(weighting: Any, state: dict[str, Any]) -> None:
    """Restore what ``_weighting_state`` saved; tensors are written in place, so that the
    optimizer's references to learnable weights stay valid."""
    if "state_dict" in state:
        weighting.load_state_dict(state["state_dict"])
        return
    for name, (kind, value) in state["attributes"].items():
        current = getattr(weighting, name, None)
        if kind == "tensor":
            if isinstance(current, torch.Tensor) and current.shape == value.shape:
                with torch.no_grad():
                    current.copy_(value)
            else:
                setattr(weighting, name, value.to(weighting.device))
        elif kind == "optimizer":
            current.load_state_dict(value)
        elif kind == "generator":
            current.set_state(value)
        else:
            setattr(weighting, name, copy.deepcopy(value))


def run_trial(
    policy: Policy,
    dataset: MultiTaskDataset,
    budget: Budget,
    *,
    seed: int | Seeds = 0,
    device: str = "auto",
    reporter: Reporter | None = None,
    threads: int | None = None,
    eval_split: str = "val",
) -> TrialResult:
    """Train under ``policy`` for ``budget`` and evaluate on ``eval_split`` after each epoch.

    The same (policy, budget, seed) on the CPU gives the same metrics, whatever the budget's
    ``loader_workers``; ``seed`` may set the model, order and augmentation seeds apart
    (``Seeds``). ``threads`` bounds the CPU threads of this process so that parallel trials do
    not fight over cores. The policy's
    weighting (policysearch.weighting) owns each step's backward pass, sees the encoder's
    parameters as the shared ones and each epoch's mean loss per task; the weights it ends with
    are ``TrialResult.weights``. A policy with a schedule trains each epoch under
    ``policy.at_epoch(epoch)``. (One ``Trainer`` does the work.)
    """
    with Trainer(policy, dataset, budget, seed=seed, device=device, threads=threads,
                 eval_split=eval_split) as trainer:
        return trainer.run(reporter)


def train_policy(policy: Policy, dataset: MultiTaskDataset, budget: Budget, *,
                 seed: int | Seeds,
                 device: str, threads: int | None, reporter: Reporter | None = None,
                 eval_split: str = "val") -> TrialResult:
    """Train and evaluate one policy; a policy for fewer tasks than the dataset has (a
    single-task reference run) trains a network for its tasks only."""
    names = {t.name for t in dataset.tasks}
    data = dataset if set(policy.tasks) == names else TaskSubset(dataset, list(policy.tasks))
    return run_trial(policy, data, budget, seed=seed, device=device, reporter=reporter,
                     threads=threads, eval_split=eval_split)
