"""The input pipeline of a trial: each epoch's batches, augmented and collated ahead of the
training step, in DataLoader worker processes (``budget.loader_workers``) or, with 0 workers,
in the training process.

Whatever the number of workers, the batches are the same: a batch is asked for by a
``BatchRequest`` that carries everything it depends on — the epoch, the sample indices, the
augmentation seed and the policy in force (the phase of a schedule, a PBT member's policy after
an exploit) — and every augmentation draw is keyed by (seed, epoch, sample index, view, slot)
(``policysearch.augment.draws``), never by a stream a worker has consumed. Workers persist
across epochs; each compiles a policy the first time a request names it. They start on an
epoch's requests ahead of it (``InputPipeline.prefetch``: a trainer asks for the first epoch's
while it builds the network and for each next epoch's during the evaluation). A prepared batch
crosses to the training process in one shared-memory block that its worker reuses once the
training process holds no tensor of it (``_Blocks``): writing into a fresh block would cost
the worker about as much as preparing the batch, at 224×224.

How workers start (``start_method``): ``fork`` in a process that runs no other thread, so that
the workers share the dataset copy-on-write; ``forkserver`` where other threads run — Optuna's
heartbeat, a Ray actor, a progress bar's refresher, and the thread pools of OpenCV and torch once
they have worked — because a forked copy of a process with threads can inherit a lock that
another thread held and hang (a child forked after OpenCV's pool started hangs in its first
parallel call). After importing torch and OpenCV a process rarely has one thread, so workers
mostly start from a forkserver and unpickle the dataset without copying its samples: the file
formats carry paths (each worker decodes and caches its share of the cache budget,
``data.splits.LazySplit.divide_cache``) and the generated datasets' arrays travel in shared
memory (``data.generated.ArraySplit``), one copy for all workers. A script that starts a search
or training from its top level needs the usual ``if __name__ == "__main__":`` guard: a
forkserver's workers import the main module.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import pickle
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from policysearch.augment import MultiTaskAugment, Policy
from policysearch.data.base import Sample
from policysearch.errors import UserError
from policysearch.tasks import Task

# Compiled policies a worker keeps (a PBT member may change policy every few epochs).
_CACHED_POLICIES = 8
# Batches each worker prepares ahead of the one the training step asks for.
PREFETCH = 2
# Shared-memory blocks a worker reuses: those in flight, the one the step holds, and a spare.
# Writing a batch into a fresh block costs about 8 times the copy itself (its pages fault in).
_POOLED_BLOCKS = PREFETCH + 2
# The head of a block: its in-use flag (int32), then room up to an aligned start.
_HEAD = 64


def default_loader_workers(device: torch.device, threads: int) -> int:
    """Loader workers when the budget says ``auto``: none for a CPU trial, whose cores the
    model's step uses already (a worker competes with it; see benchmarks/results/input_pipeline.md);
    on a GPU, all of the trial's CPU share but one, which feeds the GPU."""
    if device.type != "cuda":
        return 0
    return max(1, min(16, threads - 1))


def start_method() -> str:
    """How loader workers start in this process (see the module's docstring)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _threads() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _threads() -> int:
    """The threads of this process, native ones included: OpenCV's and torch's thread pools
    are invisible to ``threading``, and a child forked while OpenCV's pool exists hangs in its
    first parallel call. Where the OS does not say (no /proc), as if there were several."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return max(2, threading.active_count())


@dataclass(frozen=True)
class BatchRequest:
    """One batch to prepare: everything its numbers depend on."""

    epoch: int
    indices: tuple[int, ...]
    seed: int  # the augmentation seed
    phase: Policy  # plain: the policy in force this epoch
    key: tuple  # phase.augmentation_key(), computed once in the training process


@dataclass
class WorkerError:
    """An exception raised while a worker prepared a batch, handed back as data: the DataLoader
    would re-raise it as its own multi-line message, losing the one line a user error is."""

    error: BaseException


class PreparedBatches(torch.utils.data.Dataset):
    """A split seen as batches: ``self[request]`` augments and collates the samples a
    ``BatchRequest`` names into ``{"images": {view: B×H×W×3 uint8}, "targets": {task: ...},
    "views": {task: view}, "size": B}``."""

    def __init__(self, samples: Sequence[Sample], tasks: Sequence[Task]):
        self.samples = samples
        self.tasks = list(tasks)
        self._augments: dict[tuple, MultiTaskAugment] = {}
        self._blocks = _Blocks()

    def __getstate__(self) -> dict[str, Any]:
        # Workers compile the policies they are asked for; what this process compiled stays.
        return {**self.__dict__, "_augments": {}, "_blocks": _Blocks()}

    def augment_for(self, request: BatchRequest) -> MultiTaskAugment:
        """The compiled augmentation of the request's phase, set to its seed and epoch."""
        augment = self._augments.get(request.key)
        if augment is None:
            if len(self._augments) >= _CACHED_POLICIES:
                del self._augments[next(iter(self._augments))]
            augment = self._augments[request.key] = MultiTaskAugment(request.phase)
        if augment.seed != request.seed:
            augment.set_seed(request.seed)
        augment.set_epoch(request.epoch)
        return augment

    def __getitem__(  # type: ignore[override]
            self, request: BatchRequest) -> dict[str, Any] | _Shipped | WorkerError:
        in_worker = torch.utils.data.get_worker_info() is not None
        try:
            batch = self.prepare(request)
        except Exception as err:
            if not in_worker:
                raise
            err.__traceback__ = None
            try:
                pickle.dumps(err)  # it must reach the trainer, or the trainer would wait
            except Exception:
                err = RuntimeError(f"{type(err).__name__}: {err}".splitlines()[0])
            return WorkerError(err)
        if not in_worker:
            return batch
        try:
            return _Shipped.of(batch, self._blocks)
        except _NotShippable:  # sent as it is, through the DataLoader's own pickling
            return batch

    def prepare(self, request: BatchRequest) -> dict[str, Any]:
        augment = self.augment_for(request)
        drawn = [augment(self.samples[i], index=i) for i in request.indices]
        views = {t.name: request.phase.view_of(t.name) for t in self.tasks}
        images = {view: torch.from_numpy(np.stack([d[view]["image"] for d in drawn]))
                  for view in sorted(set(views.values()))}
        targets = {t.name: t.collate([d[views[t.name]] for d in drawn]) for t in self.tasks}
        return {"images": images, "targets": targets, "views": views, "size": len(drawn)}

    def __len__(self) -> int:  # a sampler of requests drives it; len is the samples'
        return len(self.samples)


class _NotShippable(Exception):
    """A batch holding something ``_Shipped`` does not encode (a custom task's targets)."""


def _encode(obj: Any, arrays: list[np.ndarray]) -> list:
    """``obj`` as JSON-able data, its tensors appended to ``arrays`` and named by index."""
    if isinstance(obj, torch.Tensor):
        arrays.append(np.ascontiguousarray(obj.numpy()))
        return ["t", len(arrays) - 1]
    if (isinstance(obj, list) and len(obj) > 1 and all(isinstance(v, torch.Tensor) for v in obj)
            and len({(v.dtype, v.shape[1:]) for v in obj}) == 1 and obj[0].dim() > 0):
        # One array for a list of like tensors (a batch's boxes): fewer parts to send and read.
        arrays.append(torch.cat(obj).numpy())
        return ["s", [len(arrays) - 1, [len(v) for v in obj]]]
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return ["d", [[k, _encode(v, arrays)] for k, v in obj.items()]]
    if isinstance(obj, (list, tuple)):
        return ["l" if isinstance(obj, list) else "u", [_encode(v, arrays) for v in obj]]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return ["v", obj]
    raise _NotShippable(type(obj).__name__)


def _decode(data: list, arrays: list[np.ndarray]) -> Any:
    kind, value = data
    if kind == "t":
        return torch.from_numpy(arrays[value])
    if kind == "s":
        index, lengths = value
        return list(torch.from_numpy(arrays[index]).split(lengths))
    if kind == "d":
        return {k: _decode(v, arrays) for k, v in value}
    if kind in ("l", "u"):
        items = [_decode(v, arrays) for v in value]
        return items if kind == "l" else tuple(items)
    return value


class _Blocks:
    """A worker's shared-memory blocks, reused. The int32 at the head of a block is 1 while
    the training process may read the batch in it: the worker sets it before sending, the
    training process clears it once no tensor of the batch is left there (a finaliser), or
    when it drops the batch unread (an epoch's end drains what was prefetched). So a block is
    never written while it can be read; when every pooled block is in use, a fresh one is."""

    def __init__(self) -> None:
        self.pool: list[torch.Tensor] = []

    def take(self, nbytes: int) -> torch.Tensor:
        """A block of at least ``nbytes``, marked in use."""
        for i, block in enumerate(self.pool):
            if _flag(block)[0] == 0:
                if block.numel() < nbytes:  # a larger batch: replace it, with some room
                    block = self.pool[i] = _shared_block(nbytes + nbytes // 8)
                break
        else:
            block = _shared_block(nbytes)
            if len(self.pool) < _POOLED_BLOCKS:
                self.pool.append(block)
        _flag(block)[0] = 1
        return block


def _flag(block: torch.Tensor) -> np.ndarray:
    return block[:4].numpy().view(np.int32)


def _release(flag: np.ndarray) -> None:
    flag[0] = 0


class _Shipped:
    """A prepared batch on its way from a worker: its structure (JSON) and its arrays' bytes in
    one shared-memory block, so that the message through the DataLoader's pipe is a handle of a
    few hundred bytes. A pipe write that small is atomic: a worker killed while sending cannot
    leave half a message, on which the training process would block for ever (it has no other
    way to learn of the death of a worker that a forkserver started). One copy of the data in
    all; the received tensors are views of the block, which the worker reuses once none of
    them is left (``_Blocks``)."""

    def __init__(self, block: torch.Tensor, meta: int):
        self.block = block  # uint8, in shared memory
        self.meta = meta  # bytes of JSON after the head
        self._unread: weakref.finalize | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"block": self.block, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["block"], state["meta"])  # type: ignore[misc]
        # Received: dropped unread, it frees its block.
        self._unread = weakref.finalize(self, _release, _flag(self.block))

    @classmethod
    def of(cls, batch: dict[str, Any], blocks: _Blocks | None = None) -> _Shipped:
        """Raises ``_NotShippable`` for a batch it cannot encode."""
        arrays: list[np.ndarray] = []
        structure = _encode(batch, arrays)
        parts: list[list[Any]] = []
        offsets: list[int] = []
        at = 0
        for arr in arrays:
            at += -at % 64  # aligned for any dtype
            parts.append([arr.dtype.str, list(arr.shape), at])
            offsets.append(at)
            at += arr.nbytes
        meta = json.dumps([structure, parts]).encode()
        start = _HEAD + len(meta) + (-len(meta) % 64)
        nbytes = start + at
        block = _shared_block(nbytes) if blocks is None else blocks.take(nbytes)
        memory = block.numpy()
        memory[_HEAD:_HEAD + len(meta)] = np.frombuffer(meta, dtype=np.uint8)
        for arr, offset in zip(arrays, offsets, strict=True):
            memory[start + offset:start + offset + arr.nbytes] = arr.reshape(-1).view(np.uint8)
        return cls(block, len(meta))

    def unpack(self) -> dict[str, Any]:
        if self._unread is not None:
            self._unread.detach()
        # Every array handed out is a view of ``owner``, a buffer object of its own (numpy
        # would see through an array to the tensor under it): the block is free once it is gone.
        after_head = self.block[_HEAD:].numpy()
        owner = (ctypes.c_uint8 * after_head.nbytes).from_buffer(after_head.data)
        weakref.finalize(owner, _release, _flag(self.block))
        memory = memoryview(owner).cast("B")
        structure, parts = json.loads(bytes(memory[:self.meta]))
        start = self.meta + (-self.meta % 64)
        arrays = []
        for dtype, shape, offset in parts:
            dt = np.dtype(dtype)
            count = math.prod(shape)
            arrays.append(np.frombuffer(memory, dtype=dt, count=count,
                                        offset=start + offset).reshape(shape))
        return _decode(structure, arrays)

    def pin_memory(self) -> dict[str, Any]:  # the DataLoader's pin-memory thread calls it
        return _pin(self.unpack())


def _shared_block(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` allocated in shared memory (not allocated, then moved)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(nbytes))


def _pin(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pin(v) for v in obj)
    return obj


class _Requests(torch.utils.data.Sampler):
    """The current epoch's requests (set before each epoch's iterator)."""

    def __init__(self) -> None:
        self.requests: list[BatchRequest] = []

    def __iter__(self) -> Iterator[BatchRequest]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


class WorkerLost(Exception):
    """A loader worker process died (killed, out of memory): the trial cannot go on."""


def _as_is(batch: Any) -> Any:
    return batch


def _init_worker(worker_id: int) -> None:  # noqa: ARG001 - the DataLoader's signature
    import cv2

    cv2.setNumThreads(1)  # one core per worker: the workers are the parallelism
    info = torch.utils.data.get_worker_info()
    assert info is not None  # called in a worker process
    # A split that caches decoded samples (data.splits.LazySplit) keeps a worker's share.
    divide = getattr(getattr(info.dataset, "samples", None), "divide_cache", None)
    if callable(divide):
        divide(info.num_workers)


class InputPipeline:
    """A trial's batches, epoch after epoch: ``epoch(requests)`` yields them prepared, in
    order; ``close()`` stops the workers (a ``Trainer`` closes its pipeline when it ends)."""

    def __init__(self, samples: Sequence[Sample], tasks: Sequence[Task], *, workers: int,
                 device: torch.device):
        self.workers = workers
        self.batches = PreparedBatches(samples, tasks)
        self._requests = _Requests()
        # (identity of the requests, their iterator) the workers started on ahead of the epoch
        self._ahead: tuple[tuple, Iterator[Any]] | None = None
        parallel: dict[str, Any] = {}
        if workers:
            method = start_method()
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                # Imported once in the server, not in every worker it forks.
                context.set_forkserver_preload(["policysearch.input_pipeline"])
            parallel = {"multiprocessing_context": context, "persistent_workers": True,
                        "prefetch_factor": PREFETCH, "worker_init_fn": _init_worker}
        self.loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=self._requests, num_workers=workers,
            collate_fn=_as_is, pin_memory=device.type == "cuda",
            # Seeds the workers' torch streams (which no draw uses); without a generator the
            # loader would draw that seed from the global torch stream, moving the model's.
            generator=torch.Generator().manual_seed(0), **parallel)

    def prefetch(self, requests: list[BatchRequest]) -> None:
        """Have the workers start on ``requests`` now (the first epoch's while the network is
        built, the next epoch's during the evaluation; the first call starts the workers);
        ``epoch`` with the same requests takes what they prepared. An epoch with other requests
        (a PBT member's new policy) costs only the work done ahead, which is dropped."""
        if not self.workers or not requests:
            return
        try:
            self.batches.augment_for(requests[0])
        except Exception:  # the epoch itself reports it
            return
        self._ahead = (_identity(requests), self._iterate(requests))

    def _iterate(self, requests: list[BatchRequest]) -> Iterator[Any]:
        self._requests.requests = requests
        try:
            return iter(self.loader)
        except (AttributeError, TypeError, pickle.PicklingError) as err:
            if "pickle" not in str(err):
                raise
            raise UserError(f"the dataset cannot be sent to {start_method()} loader workers "
                            f"({str(err).splitlines()[0]}); make it picklable or set 0",
                            field="loader_workers") from None

    def epoch(self, requests: list[BatchRequest]) -> Iterator[dict[str, Any]]:
        """The prepared batches of ``requests``, in order. Compiles a new policy here first,
        so that a policy that cannot work fails in the training process with its own error."""
        for request in requests[:1]:
            self.batches.augment_for(request)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == _identity(requests):
            batches = ahead[1]
        else:
            batches = self._iterate(requests)
        try:
            for batch in batches:
                if isinstance(batch, WorkerError):
                    raise batch.error
                yield batch.unpack() if isinstance(batch, _Shipped) else batch
        except RuntimeError as err:
            # How the DataLoader says that a worker process died (killed, out of memory).
            if str(err).startswith("DataLoader worker"):
                raise WorkerLost(str(err).splitlines()[0]) from None
            raise
        except (ConnectionError, EOFError) as err:  # fetching a batch's block from a dead worker
            raise WorkerLost(f"a loader worker vanished while handing over a batch "
                             f"({type(err).__name__})") from None

    def close(self) -> None:
        """Stop the worker processes (idempotent). The DataLoader keeps persistent workers
        until its iterator is collected; this does not wait for the collector."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None
        self._ahead = None


def _identity(requests: Sequence[BatchRequest]) -> tuple:
    return tuple((r.epoch, r.indices, r.seed, r.key) for r in requests)
