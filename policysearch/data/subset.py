"""Search on a subset, train on everything: a reproducible subset of a dataset's training split.

A space's ``subset: {n, seed}`` (``--subset N``) makes a search train every trial on ``n``
samples of the training split; validation, which scores the trials, and test stay whole.
``data.loading.load_dataset`` applies it (``subset_train``), so every engine, every worker
process and every re-evaluation of the study sees the same samples: they are chosen by index
from a generator seeded with ``seed`` alone, never from the order in which anything ran.

How the ``n`` samples are chosen (``choose_indices``):

* **stratified** when the dataset has a classification task: by the label of its *first*
  classification task (``stratify_task``), with proportional allocation — each class gets
  ``n × size / total`` samples rounded down, and the ``n − Σ`` samples left over go to the
  classes with the largest remainders (Hamilton's method; ties broken at random from
  ``seed``), so the total is exactly ``n`` and every class is within one sample of its
  share. *A class smaller than its share* cannot occur: ``n`` is at most the split's size,
  so a class's share is at most its size, and a class is rounded up only when its share has a
  remainder, to at most the share's ceiling, still at most its size — no class runs out and
  none has to make up for another. A class whose share is below one sample may get none (it
  needs one of the largest remainders).
  **Samples missing that label** (partial labels: no target, or a negative label such as
  ``tasks.classification.MISSING``) form one stratum of their own, allocated like a class, so
  the subset keeps the split's share of unlabelled samples (they still carry the other tasks'
  targets);
* otherwise a plain random sample of ``n`` indices.

Within a stratum the samples are a seeded random choice; the subset lists them in index order.
The seed is the subset's own (``TrainSubset.seed``, default 0), not the study's training seed:
a search re-run with ``--seed 1`` is a second look at the same data, not at other data, and the
re-evaluations with fresh training seeds (finalists, ``results --reeval``) train on the very
samples the trials did.
The same (``n``, ``seed``, labels) give the same indices in any process; numpy's ``Generator``
algorithms are the source, so a numpy release that changed them would change a subset (the
study's resume check would not notice: re-run a search with a new numpy from the start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from policysearch.config import TrainSubset
from policysearch.data.base import MultiTaskDataset, Sample, SampleSequence, TaskSpec
from policysearch.errors import UserError

_SALT = 0x5B5E7  # keeps this generator apart from the other users of a seed


class SubsetError(UserError):
    """``subset.n`` (``--subset``) asks for more samples than the training split has."""


@dataclass(frozen=True)
class SubsetChoice:
    """The samples a subset chose: their ``indices`` into the whole training split (sorted),
    ``n`` and ``seed`` as asked, ``of`` (the whole split's size) and ``stratified_by`` (the
    classification task whose labels set the strata, or None)."""

    indices: np.ndarray
    n: int
    seed: int
    of: int
    stratified_by: str | None

    def to_dict(self) -> dict[str, Any]:
        """``{n, seed, of, stratified_by}``: what a study and an exported policy record."""
        return {"n": self.n, "seed": self.seed, "of": self.of,
                "stratified_by": self.stratified_by}

    def note(self) -> str:
        """The dataset note a search prints and its results table and report keep."""
        return describe(self.to_dict())


def describe(subset: dict[str, Any]) -> str:
    """One line for a recorded subset (``SubsetChoice.to_dict``)."""
    how = (f"stratified by {subset['stratified_by']}" if subset.get("stratified_by")
           else "random")
    return (f"train: a subset of {subset['n']} of the {subset['of']} training samples ({how}, "
            f"subset seed {subset['seed']}); val and test whole")


def stratify_task(tasks: Sequence[TaskSpec]) -> TaskSpec | None:
    """The task whose labels stratify a subset: the first classification task, if any."""
    return next((t for t in tasks if t.kind == "classification"), None)


def _label(value: Any) -> int | None:
    """A sample's class label, None when it has none (missing, or negative: unlabelled)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        label = int(value)
    except (TypeError, ValueError):
        return None
    return label if label >= 0 else None


def split_labels(split: Sequence[Sample], key: str) -> list[int | None]:
    """The label under ``key`` of every sample of ``split`` (None: unlabelled). A split with
    ``peek(i)`` (``data.splits.LazySplit``) is asked for each sample's targets, which decodes
    no image when its loader can tell them without (the folder format's CSV labels) and
    fills no cache; any other split is read sample by sample."""
    peek = getattr(split, "peek", None)
    labels = []
    for i in range(len(split)):
        sample = peek(i) if callable(peek) else split[i]
        labels.append(_label(sample.get(key)))
    return labels


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SALT, seed]))


def allocate(sizes: Sequence[int], n: int, tie: Sequence[float]) -> list[int]:
    """Proportional allocation of ``n`` among strata of ``sizes`` (Hamilton's largest
    remainders; equal remainders go by ``tie``, lowest first): exactly ``n`` in all, each
    within one of its share ``n × size / Σ sizes`` and never above its size (0 ≤ ``n`` ≤
    Σ sizes: a stratum's share is then at most its size, and only a stratum with a
    remainder gets one more)."""
    total = sum(sizes)
    if not 0 <= n <= total:
        raise ValueError(f"cannot take {n} of {total}")
    exact = [n * size / total for size in sizes]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda k: (-(exact[k] - quotas[k]), float(tie[k])))
    for k in order[:n - sum(quotas)]:
        quotas[k] += 1
    return quotas


def choose_indices(total: int, n: int, seed: int,
                   labels: Sequence[int | None] | None = None) -> np.ndarray:
    """``n`` sorted indices of ``range(total)``, drawn from ``seed``: stratified by ``labels``
    (one per index, None: unlabelled, its own stratum) when given, else a plain random
    sample. See the module docstring."""
    if not 1 <= n <= total:
        raise ValueError(f"cannot take {n} of {total}")
    rng = _rng(seed)
    if labels is None:
        return np.sort(rng.permutation(total)[:n]).astype(np.int64)
    if len(labels) != total:
        raise ValueError(f"{len(labels)} labels for {total} samples")
    # Strata in label order, the unlabelled (-1 here) first; each lists its indices in order.
    coded = np.array([-1 if label is None else label for label in labels], dtype=np.int64)
    keys, inverse, sizes = np.unique(coded, return_inverse=True, return_counts=True)
    strata = np.split(np.argsort(inverse, kind="stable"), np.cumsum(sizes)[:-1])
    quotas = allocate([int(s) for s in sizes], n, rng.random(len(keys)).tolist())
    chosen = [s[rng.permutation(len(s))[:q]] for s, q in zip(strata, quotas, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def choose_subset(dataset: MultiTaskDataset, n: int, seed: int) -> SubsetChoice:
    """The subset of ``n`` samples of ``dataset``'s training split chosen from ``seed``
    (``n`` must be between 1 and the split's size)."""
    train = dataset.split("train")
    task = stratify_task(dataset.tasks)
    labels = split_labels(train, task.target_key()) if task is not None else None
    indices = choose_indices(len(train), n, seed, labels)
    return SubsetChoice(indices=indices, n=n, seed=seed, of=len(train),
                        stratified_by=task.name if task is not None else None)


class IndexedSplit(SampleSequence):
    """A split seen through a list of its indices: sample ``i`` is ``base[indices[i]]``."""

    def __init__(self, base: Sequence[Sample], indices: np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.indices.flags.writeable = False

    def __len__(self) -> int:
        return len(self.indices)

    def _get(self, i: int) -> Sample:
        return self.base[int(self.indices[i])]

    def divide_cache(self, parts: int) -> None:
        """Pass a loader worker's share of the cache budget on to the split it reads."""
        divide = getattr(self.base, "divide_cache", None)
        if callable(divide):
            divide(parts)


class SubsetDataset:
    """``dataset`` with its training split replaced by a subset (``choice``); val and test,
    the tasks and everything else as they were. ``notes`` adds the subset's note."""

    def __init__(self, dataset: MultiTaskDataset, choice: SubsetChoice):
        self.dataset = dataset
        self.name = dataset.name
        self.tasks = dataset.tasks
        self.subset = choice
        self.notes = [*(str(n) for n in getattr(dataset, "notes", ())), choice.note()]
        self._train = IndexedSplit(dataset.split("train"), choice.indices)

    def split(self, name: str) -> Sequence[Sample]:
        return self._train if name == "train" else self.dataset.split(name)

    def __getattr__(self, name: str) -> Any:
        # Anything else (unsafe_ops, skipped, …) is the whole dataset's.
        if name.startswith("_") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"SubsetDataset({self.dataset!r}, {self.subset.note()})"


def subset_train(dataset: MultiTaskDataset, subset: TrainSubset, *, source: str | None = None,
                 field: str = "subset.n") -> SubsetDataset:
    """``dataset`` training on ``subset``; more samples than the training split holds is a
    ``SubsetError`` naming ``source`` and ``field``."""
    total = len(dataset.split("train"))
    if subset.n > total:
        raise SubsetError(f"asks for {subset.n} training samples; the training split has "
                          f"{total}", source=source, field=field)
    return SubsetDataset(dataset, choose_subset(dataset, subset.n, subset.seed))


def subset_of(dataset: object) -> SubsetChoice | None:
    """The subset ``dataset`` trains on (a ``SubsetDataset``'s), None for the whole split."""
    choice = getattr(dataset, "subset", None)
    return choice if isinstance(choice, SubsetChoice) else None
