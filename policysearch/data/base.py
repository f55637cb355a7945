"""What every dataset provides: a sequence of sample dicts per split and the task specs."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

from policysearch.errors import UserError

# Target keys of a sample dict by task kind (see the README, "Datasets").
TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("label",),
    "multilabel": ("attributes",),  # K-vector: 1 present, 0 absent, -1 unknown
    "segmentation": ("mask",),
    "detection": ("boxes", "box_labels"),
    "depth": ("depth",),
    "normals": ("normals",),
}


@dataclass(frozen=True)
class TaskSpec:
    """A task of a dataset: its name (column/file identifier), kind and target description.

    ``key`` is the sample-dict key holding the target (default by kind, see TARGET_KEYS);
    ``num_classes`` counts classes *without* background for detection, *with* background for
    segmentation; ``ignore_index`` marks unlabeled mask pixels.
    """

    name: str
    kind: str
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    key: str = ""
    ignore_index: int = 255
    extra: dict[str, Any] = field(default_factory=dict)

    def target_key(self) -> str:
        if self.key:
            return self.key
        if self.kind not in TARGET_KEYS:  # a registered task kind names its own key
            raise UserError(f"task {self.name!r} of kind {self.kind!r} needs key=: the "
                            "sample-dict key that holds its target", field="tasks")
        return TARGET_KEYS[self.kind][0]


Sample = dict[str, Any]


class SampleSequence(Sequence[Sample]):
    """A split as a sequence of sample dicts: indexing by int (negative too) or slice.

    Subclasses define ``__len__`` and ``_get(i)`` for ``0 <= i < len(self)``.
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _get(self, i: int) -> Sample:
        """Sample ``i`` (already range-checked)."""

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._get(i) for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self._get(i)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._get(i)


class MultiTaskDataset(Protocol):
    """Any dataset: its tasks and one sequence of sample dicts per split.

    Optionally ``unsafe_ops``, a tuple of op names that change what its labels mean (read
    with ``unsafe_ops(dataset)``; none when absent): a space with ``adapt: true`` leaves them
    out (``policysearch.space_adapt``), any other warns about them.
    """

    name: str
    tasks: tuple[TaskSpec, ...]

    def split(self, name: str) -> Sequence[Sample]:
        """``train``, ``val`` or ``test``; the search reads only train and val."""
        ...


def unsafe_ops(dataset: object) -> tuple[str, ...]:
    """The ops ``dataset`` declares unsafe for it (its ``unsafe_ops``, e.g. multidigits'
    hflip, which swaps what left_digit and right_digit name); () when it declares none."""
    return tuple(getattr(dataset, "unsafe_ops", None) or ())


class TaskSubset:
    """A dataset seen with only some of its tasks (single-task reference runs): the same
    samples, fewer heads. Other targets stay in the samples and are ignored."""

    def __init__(self, dataset: MultiTaskDataset, names: Sequence[str]):
        known = {t.name for t in dataset.tasks}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"tasks not in the dataset: {', '.join(missing)}")
        self.dataset = dataset
        self.name = dataset.name
        self.tasks = tuple(t for t in dataset.tasks if t.name in set(names))

    def split(self, name: str) -> Sequence[Sample]:
        return self.dataset.split(name)
