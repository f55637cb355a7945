"""A search space resolved against the dataset it runs on: ``load_adapted`` is the one place
where a space meets its dataset (every search, engine and worker through
``search.options.load_run``, and ``benchmark``).

Always: a ``per_task.tasks`` rule (``auto``, ``{kinds: [...]}``) becomes the list of the
dataset's tasks it selects; listed task names are checked against the dataset's (an unknown one
is an error); an op the space uses that cannot move one of the dataset's targets
(``augment.targets_not_moved``: a user's op without box support or without a normals rule) is
an error before any trial.

With ``adapt: true`` (the shipped default space) the space is fitted to the dataset instead:

* ``dataset_options`` the dataset does not take (``data.loading.option_keys``) go back to
  their defaults, before the dataset is loaded;
* the ops the dataset declares unsafe (``data.base.unsafe_ops``: multidigits' ``hflip``) or
  that cannot move its targets are left out of ``shared.ops``, ``per_task.ops`` and ``base``;
* a ``reference`` that uses one becomes ``crop`` (the standard recipe without the flip), or
  ``none`` when crop cannot be used either.

Without it, a space that uses an unsafe op is kept as written, with a warning. ``Adapted``
says what was changed, for the search's start-up line (``events.SpaceAdapted``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from policysearch.augment import get_baseline, targets_not_moved
from policysearch.config import DatasetOptions, SearchSpace, TaskKinds, validate_tasks
from policysearch.data.base import TARGET_KEYS, MultiTaskDataset, unsafe_ops
from policysearch.data.loading import load_dataset, option_keys
from policysearch.errors import UserError

# What replaces a reference that uses an unusable op: the first of these that uses none.
SAFE_REFERENCES = ("crop", "none")


@dataclass(frozen=True)
class Adapted:
    """A space resolved against its dataset: ``changes``, what resolving changed (one phrase
    each: ``hflip left out (unsafe for this dataset)``, ``reference crop``, ``per-task views:
    …``); ``warnings``, what a space without ``adapt`` uses although the dataset declares it
    unsafe."""

    space: SearchSpace
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def load_adapted(space: SearchSpace) -> tuple[Adapted, MultiTaskDataset]:
    """Load the dataset ``space`` names (``data.loading.load_dataset``) and resolve the space
    against it (``adapt_space``); with ``adapt: true`` its dataset_options are fitted first."""
    option_changes: list[str] = []
    if space.adapt:
        space, option_changes = _fit_options(space)
    dataset = load_dataset(space)
    adapted = adapt_space(space, dataset)
    return replace(adapted, changes=(*adapted.changes, *option_changes)), dataset


def adapt_space(space: SearchSpace, dataset: MultiTaskDataset) -> Adapted:
    """``space`` resolved against ``dataset`` (see the module docstring); a problem is a
    ``UserError`` naming the space and field."""
    source = f"search space {space.name}"
    tasks = {t.name: t.kind for t in dataset.tasks}
    views: list[str] | None = None
    if not isinstance(space.per_task.tasks, list):
        _check_kinds(space.per_task.tasks, source)
        space = space.for_tasks(tasks)
        views = space.per_task.names
    validate_tasks(space, list(tasks), source)
    problems = _Problems(dataset)
    if space.adapt:
        space, changes = _leave_out(space, tasks, problems, source)
    else:
        _refuse_unmoved(space, tasks, problems, source)
        changes = []
    if views is not None:
        changes.append(f"per-task views: {', '.join(views) if views else 'none'}")
    warnings = [] if space.adapt else _unsafe_warnings(space, tasks, problems)
    return Adapted(space, tuple(changes), tuple(warnings))


class _Problems:
    """Why an op cannot be used on the dataset (None: it can), each op asked once."""

    def __init__(self, dataset: MultiTaskDataset):
        self.unsafe = frozenset(unsafe_ops(dataset))
        self.keys = {TARGET_KEYS[t.kind][0] for t in dataset.tasks if t.kind in TARGET_KEYS}
        self._unmoved: dict[str, list[str]] = {}

    def unmoved(self, op: str) -> list[str]:
        """The dataset's targets ``op`` cannot move."""
        if op not in self._unmoved:
            self._unmoved[op] = targets_not_moved(op, self.keys)
        return self._unmoved[op]

    def __call__(self, op: str) -> str | None:
        if op in self.unsafe:
            return "unsafe for this dataset"
        missing = self.unmoved(op)
        return f"cannot move {' or '.join(missing)}" if missing else None


def _used_lists(space: SearchSpace) -> dict[str, list[str]]:
    """The op lists a trial can draw from, by field: shared.ops unless no slot uses it,
    per_task.ops when some task has a view (slots or its own RandAugment)."""
    lists = {}
    if space.structure == "randaugment" or space.shared.slots > 0:
        lists["shared.ops"] = list(space.shared.ops)
    if space.per_task.names and space.per_task.searches_views:
        lists["per_task.ops"] = list(space.per_task.ops)
    return lists


def _reference_ops(space: SearchSpace, tasks: Mapping[str, str]) -> frozenset[str]:
    return get_baseline(space.reference, dict(tasks)).op_names()


def _leave_out(space: SearchSpace, tasks: Mapping[str, str], problems: _Problems,
               source: str) -> tuple[SearchSpace, list[str]]:
    """``space`` without the ops ``problems`` finds (adapt: true), and what changed."""
    why: dict[str, str] = {}
    update: dict[str, object] = {}
    for field, ops in _used_lists(space).items():
        kept = [op for op in ops if problems(op) is None]
        left = {op: str(problems(op)) for op in ops if op not in kept}
        if not kept:
            reasons = ", ".join(f"{op} {reason}" for op, reason in left.items())
            raise UserError(f"no op of the list can be used on {space.dataset} ({reasons})",
                            source=source, field=field)
        why.update(left)
        part = "shared" if field == "shared.ops" else "per_task"
        if len(kept) < len(ops):
            update[part] = getattr(space, part).model_copy(update={"ops": kept})
    base = [slot for slot in space.base if problems(slot.op) is None]
    why.update((s.op, str(problems(s.op))) for s in space.base if problems(s.op) is not None)
    if len(base) < len(space.base):
        update["base"] = base
    changes = [f"{op} left out ({reason})" for op, reason in why.items()]
    if any(problems(op) for op in _reference_ops(space, tasks)):
        for name in SAFE_REFERENCES:
            if not any(problems(op) for op in get_baseline(name, dict(tasks)).op_names()):
                update["reference"] = name
                changes.append(f"reference {name} (not {space.reference})")
                break
    return (space.model_copy(update=update) if update else space), changes


def _ops_by_field(space: SearchSpace, tasks: Mapping[str, str]) -> list[tuple[str, str]]:
    """(field, op) for every op a trial or the reference of ``space`` can apply."""
    found = [(f"{field}[{i}]", op) for field, ops in _used_lists(space).items()
             for i, op in enumerate(ops)]
    found += [(f"base[{i}].op", slot.op) for i, slot in enumerate(space.base)]
    found += [("reference", op) for op in sorted(_reference_ops(space, tasks))]
    return found


def _refuse_unmoved(space: SearchSpace, tasks: Mapping[str, str], problems: _Problems,
                    source: str) -> None:
    """A space taken as written may not use an op that cannot move the dataset's targets: a
    trial drawing it would fail."""
    for field, op in _ops_by_field(space, tasks):
        missing = problems.unmoved(op)
        if missing:
            what = f"{space.reference!r} uses op {op!r}, which" if field == "reference" \
                else f"op {op!r}"
            raise UserError(f"{what} cannot move the {' or '.join(missing)} of {space.dataset}; "
                            "leave it out (or set adapt: true)", source=source, field=field)


def _unsafe_warnings(space: SearchSpace, tasks: Mapping[str, str],
                     problems: _Problems) -> list[str]:
    """One line per unsafe op a space taken as written uses."""
    where: dict[str, list[str]] = {}
    for field, op in _ops_by_field(space, tasks):
        if op in problems.unsafe:
            label = f"reference {space.reference}" if field == "reference" \
                else field.partition("[")[0].removesuffix(".op")
            if label not in where.setdefault(op, []):
                where[op].append(label)
    return [f"space {space.name} uses {op} ({', '.join(fields)}), which {space.dataset} "
            "declares unsafe (it changes what the labels mean): kept as written"
            for op, fields in where.items()]


def _check_kinds(rule: object, source: str) -> None:
    """The kinds a ``{kinds: [...]}`` rule names must be task kinds."""
    if not isinstance(rule, TaskKinds):
        return
    from policysearch.tasks import TASK_KINDS

    for i, kind in enumerate(rule.kinds):
        if kind not in TASK_KINDS:
            raise UserError(f"unknown task kind {kind!r}; known: {', '.join(sorted(TASK_KINDS))}",
                            source=source, field=f"per_task.tasks.kinds[{i}]")


def _fit_options(space: SearchSpace) -> tuple[SearchSpace, list[str]]:
    """``space`` with the dataset_options its dataset does not take back to their defaults."""
    keys = option_keys(space.dataset)
    given, default = space.dataset_options, DatasetOptions()
    dropped = [key for key in DatasetOptions.model_fields
               if key not in keys and getattr(given, key) != getattr(default, key)]
    if not dropped:
        return space, []
    options = given.model_copy(update={key: getattr(default, key) for key in dropped})
    return (space.model_copy(update={"dataset_options": options}),
            [f"dataset_options {', '.join(dropped)} left out (not taken by {space.dataset})"])
