"""A starter search-space file for a dataset (``policysearch init``).

``starter(dataset, base)`` reads the dataset once (files as stored, a generated one at its own
size), resolves a bundled space against it with the rules of ``adapt: true``
(``space_adapt.adapt_space``: a ``per_task.tasks`` rule becomes the task names it selects, the
ops the dataset declares unsafe or that cannot move its targets are left out, a reference using
one is replaced), sizes the budget to the data for a CPU trial of a few minutes (``cpu_budget``,
from the measured trial of README "One trial") and writes it all out as a commented YAML file
with explicit lists and ``adapt: false``: the user's file, read as written.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policysearch.config import (
    Budget,
    DatasetOptions,
    SearchSpace,
    WeightSpace,
    load_space,
    shipped_spaces,
)
from policysearch.data import get_dataset
from policysearch.data.base import MultiTaskDataset, unsafe_ops
from policysearch.data.loading import option_keys
from policysearch.errors import UserError
from policysearch.space_adapt import Adapted, adapt_space

# The measured trial (benchmarks/results/trial_speed.md, README "One trial"): the default
# space's budget (batch 16, encoder small) on shapes, 400 training and 200 validation images of
# 64x64, 2 CPU threads: 1.44 s per epoch, training and validation. A starter budget scales it
# by pixels and training images.
MEASURED_SECONDS_PER_EPOCH = 1.44
MEASURED_TRAIN_IMAGES = 400
MEASURED_PIXELS = 64 * 64
# What a CPU starter aims at: a trial of about three minutes, 24 epochs at most (the default
# space's budget), and a file dataset limited to the images that give it at least 8 epochs.
TARGET_TRIAL_SECONDS = 180.0
MAX_EPOCHS = 24
MIN_EPOCHS = 8
LIMIT_STEP = 100
# Image sides: at most 128 for a CPU start, a multiple of 16 (the small encoder's coarsest
# stride, so every feature map halves exactly; other sizes work too, the dense heads resample
# their output to the image when it is not a multiple of 4, their stride).
CPU_SIDE_CAP = 128
SIDE_MULTIPLE = 16
WIDTH = 96  # of a written line
NBSP = "\u00a0"  # a space the comment lines are not broken at


@dataclass(frozen=True)
class CpuBudget:
    """A trial's budget on a 2-core CPU, estimated from the measured trial: ``image_size``
    (H, W), ``epochs``, the training images a trial sees (``train_images``, after ``limit``,
    the ``dataset_options.limit`` a file dataset too large for ``MIN_EPOCHS`` gets) and the
    estimated ``seconds_per_epoch``."""

    image_size: tuple[int, int]
    epochs: int
    train_images: int
    limit: int | None
    seconds_per_epoch: float

    @property
    def trial_seconds(self) -> float:
        """The estimated seconds of one trial."""
        return self.epochs * self.seconds_per_epoch


def model_size(native: tuple[int, int], cap: int = CPU_SIDE_CAP) -> tuple[int, int]:
    """``native`` (H, W) scaled down so that its longer side is at most ``cap``, each side
    rounded to a multiple of ``SIDE_MULTIPLE`` (at least one multiple)."""
    scale = min(1.0, cap / max(native))
    h, w = (max(SIDE_MULTIPLE, round(side * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)
            for side in native)
    return h, w


def seconds_per_epoch(train_images: int, size: tuple[int, int]) -> float:
    """The measured seconds per epoch scaled to ``train_images`` images of ``size`` (H, W)."""
    return (MEASURED_SECONDS_PER_EPOCH * train_images / MEASURED_TRAIN_IMAGES
            * size[0] * size[1] / MEASURED_PIXELS)


def cpu_budget(train_images: int, native: tuple[int, int], *, can_limit: bool) -> CpuBudget:
    """Epochs and image size for a CPU trial of about ``TARGET_TRIAL_SECONDS`` on a training
    split of ``train_images`` images of ``native`` size; ``can_limit``: the dataset takes
    ``dataset_options.limit`` (a file dataset), used when fewer than ``MIN_EPOCHS`` would fit."""
    size = model_size(native)
    per_image = seconds_per_epoch(1, size)
    limit = None
    if can_limit and train_images * per_image * MIN_EPOCHS > TARGET_TRIAL_SECONDS:
        fits = int(TARGET_TRIAL_SECONDS / (MIN_EPOCHS * per_image))
        limit = max(LIMIT_STEP, fits // LIMIT_STEP * LIMIT_STEP)
        train_images = min(train_images, limit)
    per_epoch = per_image * train_images
    epochs = max(1, min(MAX_EPOCHS, int(TARGET_TRIAL_SECONDS / per_epoch)))
    return CpuBudget(size, epochs, train_images, limit, per_epoch)


@dataclass(frozen=True)
class Starter:
    """A starter space and what it was made from: the space ``base`` (a bundled name or a
    file's name; ``bundled``, as read) resolved against the dataset (``adapted``), the
    dataset's ``tasks`` (name -> kind) and ``unsafe`` ops, its training split
    (``train_images``; the first image is ``native`` (H, W)), the ``cpu`` budget, and the
    ``space`` the file holds (``render`` writes it)."""

    base: str
    bundled: SearchSpace
    adapted: Adapted
    tasks: dict[str, str]
    unsafe: tuple[str, ...]
    train_images: int
    native: tuple[int, int]
    cpu: CpuBudget
    space: SearchSpace


def starter(dataset: str, base: str = "default") -> Starter:
    """The starter space of ``dataset`` (anything ``--dataset`` takes) from the space ``base``
    (a bundled name or a file); a dataset that cannot be read is a ``UserError`` naming it."""
    bundled = load_space(base)
    base = base if base in shipped_spaces() else Path(base).name
    data, native = _read(dataset, bundled.dataset_options)
    adapted = adapt_space(bundled.model_copy(update={"dataset": dataset, "adapt": True}), data)
    train_images = len(data.split("train"))
    cpu = cpu_budget(train_images, native, can_limit="limit" in option_keys(dataset))
    space = _starter_space(adapted.space, _name(dataset, data), base, cpu)
    return Starter(base, bundled, adapted, {t.name: t.kind for t in data.tasks},
                   unsafe_ops(data), train_images, native, cpu, space)


def init_text(dataset: str, base: str = "default") -> str:
    """The commented YAML of ``dataset``'s starter space (``policysearch init``)."""
    return render(starter(dataset, base))


def _read(spec: str, options: DatasetOptions) -> tuple[MultiTaskDataset, tuple[int, int]]:
    """The dataset ``spec`` as a search with ``options`` reads it, but not resized, and the
    (H, W) of its first training image."""
    given = {key: getattr(options, key) for key in option_keys(spec)
             if getattr(options, key) is not None}
    try:
        data = get_dataset(spec, **given)
        for split in ("train", "val"):
            if len(data.split(split)) == 0:
                raise UserError(f"the {split} split is empty", field="dataset")
        image = data.split("train")[0]["image"]
    except UserError as err:
        raise UserError(str(err), source=f"--dataset {spec}") from None
    return data, (int(image.shape[0]), int(image.shape[1]))


def _name(spec: str, data: MultiTaskDataset) -> str:
    """A space (and study) name for the dataset: the built-in name, or ``scheme_folder``."""
    scheme, sep, _ = spec.partition(":")
    if not sep:
        return spec
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(data, "name", "") or "data")).strip("_")
    return f"{scheme}_{stem or 'data'}"


def _starter_space(resolved: SearchSpace, name: str, base: str, cpu: CpuBudget) -> SearchSpace:
    """``resolved`` as the user's file: named, not adapting, the dataset_options the dataset
    takes (``limit`` from ``cpu``), the CPU budget and a median pruner's warm-up scaled to it."""
    keys = option_keys(resolved.dataset)
    given = resolved.dataset_options
    options = {key: getattr(given, key) for key in keys if getattr(given, key) is not None}
    if cpu.limit is not None and (given.limit is None or given.limit > cpu.limit):
        options["limit"] = cpu.limit
    h, w = cpu.image_size
    budget = Budget(**{**resolved.budget.model_dump(), "epochs": cpu.epochs,
                       "image_size": h if h == w else (h, w)})
    pruner = resolved.pruner
    if pruner.name == "median":
        pruner = pruner.model_copy(update={"n_warmup_steps": cpu.epochs // 3})
    return resolved.model_copy(update={
        "name": name, "adapt": False, "dataset_options": DatasetOptions(**options),
        "budget": budget, "pruner": pruner,
        "description": f"starter space for {resolved.dataset} (policysearch init, from {base})"})


# --- the YAML text ------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    """``value`` as one line of flow-style YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _flow_list(prefix: str, items: list[Any]) -> list[str]:
    """``prefix[a, b, …]`` wrapped at ``WIDTH``, continued under the first item."""
    line = prefix + "["
    indent = " " * len(line)
    lines = []
    for i, item in enumerate(items):
        piece = _scalar(item) + ("]" if i == len(items) - 1 else ",")
        if not line.endswith("[") and len(line) + 1 + len(piece) > WIDTH:
            lines.append(line)
            line = indent + piece
        else:
            line += ("" if line.endswith("[") else " ") + piece
    return [*lines, line + ("]" if not items else "")]


def _mapping(key: str, data: dict[str, Any]) -> list[str]:
    """``key: {…}`` on one line when it fits ``WIDTH``, else one line per item."""
    line = f"{key}: {_scalar(data)}"
    if len(line) <= WIDTH:
        return [line]
    return [f"{key}:", *(f"  {k}: {_scalar(v)}" for k, v in data.items())]


def _commented(line: str, comment: str) -> list[str]:
    """``line  # comment``, or the comment on the line above when that would be too long."""
    padded = line.ljust(max(30, len(line) + 2)) + f"# {comment}"
    if len(padded) <= WIDTH:
        return [padded]
    indent = line[: len(line) - len(line.lstrip())]
    return [f"{indent}# {comment}", line]


def _wrap(text: str, indent: str = "", first: str = "", hang: str = "") -> list[str]:
    """``text`` as comment lines of at most ``WIDTH`` characters: ``indent`` before each ``#``,
    ``first`` before the first line's text and ``hang`` before the others'."""
    return [f"{indent}# {line}".replace(NBSP, " ").rstrip() for line in textwrap.wrap(
        text, WIDTH - len(indent) - 2, initial_indent=first, subsequent_indent=hang,
        break_long_words=False, break_on_hyphens=False)]


def _rule_text(space: SearchSpace) -> str:
    """The ``per_task.tasks`` rule of ``space`` as written (``auto``), "" for a list."""
    rule = space.per_task.tasks
    if isinstance(rule, list):
        return ""
    return _scalar(rule if rule == "auto" else rule.model_dump())


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _header(st: Starter) -> list[str]:
    space, cpu = st.space, st.cpu
    tasks = ", ".join(f"{name}{NBSP}({kind})" for name, kind in st.tasks.items())
    rule = _rule_text(st.bundled)
    rules = "adapt: true" + (f", per_task.tasks: {rule}" if rule else "")
    lines = _wrap(f"A search space for {space.dataset}, written by `policysearch init` from "
                  f"the space {st.base!r}. It is your file now: that space's rules ({rules}) "
                  "are written out as the lists they chose for this dataset, and adapt: false "
                  "keeps them as written (change `dataset:` and nothing adapts). Check it with "
                  "`policysearch check --space FILE`, search with `policysearch search --space "
                  "FILE`.")
    lines += ["#", "# What to change first:"]
    firsts = [
        "budget: epochs and image_size, to your real budget. These fit a CPU trial of about "
        f"{_duration(cpu.trial_seconds)} on 2 cores; the budget's comment says what a GPU can "
        "take.",
        "shared.ops and per_task.ops: keep the ops that leave your labels true (flipping an "
        "image with left/right labels does not); `policysearch ops` lists them, `policysearch "
        "preview` draws them.",
        "per_task.tasks: the tasks that get their own view (each costs one more encoder pass).",
        "weights.range, reference (the baseline Δm% is measured against) and dataset_options.",
    ]
    for i, item in enumerate(firsts, 1):
        lines += _wrap(f"{i}. {item}", first="  ", hang="     ")
    lines += ["#", *_wrap(f"Tasks of this dataset: {tasks}."),
              *_wrap(f"Training split: {st.train_images} images; the first is "
                     f"{_size_text(st.native)}.")]
    return lines


def _options_lines(st: Starter) -> list[str]:
    options = st.space.dataset_options.model_dump(exclude_none=True)
    options = {k: v for k, v in options.items() if k in option_keys(st.space.dataset)}
    lines = _mapping("dataset_options", options)
    if st.cpu.limit is not None:
        return [*_wrap(f"limit: {st.cpu.limit} of the {st.train_images} training images (per "
                       "split) keeps a CPU trial near "
                       f"{TARGET_TRIAL_SECONDS / 60:.0f} min; raise or remove it for the real "
                       "search."), *lines]
    return lines


def _adapted_lines(st: Starter) -> list[str]:
    changes = [c for c in st.adapted.changes if not c.startswith("per-task views:")]
    if not changes:
        unsafe = f" ({', '.join(st.unsafe)} declared unsafe, unused here)" if st.unsafe else ""
        return _wrap(f"Fitted to {st.space.dataset} by the rules of adapt: true: no op left "
                     f"out{unsafe}: every op of the bundled space can move its targets.")
    lines = [f"# Fitted to {st.space.dataset} by the rules of adapt: true "
             "(policysearch.space_adapt):"]
    lines += [f"#   {change}" for change in changes]
    if any("unsafe" in c for c in changes):
        lines += _wrap("(unsafe: the dataset declares that the op changes what its labels mean, "
                       f"its unsafe_ops: {', '.join(st.unsafe)})")
    return lines


def _slot_lines(part: Any, fields: tuple[str, ...]) -> list[str]:
    lines = []
    for field in fields:
        value = getattr(part, field)
        if field == "ops":
            lines += _flow_list(f"  {field}: ", list(value))
        else:
            value = list(value) if isinstance(value, tuple) else value
            lines.append(f"  {field}: {_scalar(value)}")
    return lines


def _randaugment_lines(n: tuple[int, int], part: Any) -> list[str]:
    """The ``n``, ``magnitude`` and ``ops`` lines of a RandAugment (shared, or per task)."""
    lines = _commented(f"  n: {_scalar(list(n))}", "ops per image (RandAugment's N), searched")
    lines += _commented(f"  magnitude: {_scalar(list(part.magnitude))}",
                        "their magnitude (RandAugment's M), searched")
    return lines + _slot_lines(part, ("ops",))


def _shared_lines(space: SearchSpace) -> list[str]:
    shared = space.shared
    if space.structure == "randaugment":
        return ["shared:", *_randaugment_lines(shared.n, shared)]
    fields: tuple[str, ...] = ("slots", "ops", "p", "magnitude")
    if space.structure == "subpolicies":
        fields = ("subpolicies", *fields)
    return ["shared:", *_slot_lines(shared, fields)]


def _per_task_lines(st: Starter) -> list[str]:
    per_task = st.space.per_task
    views = per_task.names
    if not views and not per_task.searches_views:
        return _commented("per_task: {tasks: [], slots: 0}", "no per-task views")
    rule = _rule_text(st.bundled)
    kinds = sorted({st.tasks[v] for v in views})
    why = (f"a view per {' and '.join(kinds)} task" if views else "no view")
    why += f" (what {rule} chose)" if rule else ""
    why += "; list the tasks to give a view" if not views else "; [] for none"
    lines = ["per_task:", *_commented(f"  tasks: {_scalar(views)}", why)]
    if per_task.n is not None:  # a RandAugment of each task's own
        return lines + _randaugment_lines(per_task.n, per_task)
    return lines + _slot_lines(per_task, ("slots", "ops", "p", "magnitude"))


def _weights_lines(space: SearchSpace) -> list[str]:
    data = space.weights.model_dump(mode="json")
    data = {k: v for k, v in data.items() if v not in ({}, [])}
    if "static" not in space.weights.methods and space.weights.range == WeightSpace().range:
        data.pop("range")  # unused
    comment = ("one log-uniform loss weight per task, searched in this range"
               if space.weights.methods == ("static",) else "see README, 'Loss weighting'")
    lines = _mapping("weights", data)
    return _commented(lines[0], comment) + lines[1:]


def _reference_lines(st: Starter) -> list[str]:
    reference = st.space.reference
    why = "the baseline Δm% is measured against"
    if reference != st.bundled.reference:
        why += f" ({reference}: {st.bundled.reference} uses an op left out above)"
    return _commented(f"reference: {_scalar(reference)}", why)


def _budget_lines(st: Starter) -> list[str]:
    cpu, budget = st.cpu, st.space.budget
    native = st.native if st.native[0] != st.native[1] else st.native[0]
    lines = ["budget:"]
    lines += _wrap(
        f"For a CPU: the measured trial took {MEASURED_SECONDS_PER_EPOCH} s per epoch on 2 cores "
        f"({MEASURED_TRAIN_IMAGES} training images of 64x64, batch 16, encoder small; README "
        f"'One trial'). Scaled by pixels and training images (an estimate), that is about "
        f"{_duration(cpu.seconds_per_epoch)} per epoch here ({cpu.train_images} images of "
        f"{_size_text(cpu.image_size)}), so {cpu.epochs} epochs take about "
        f"{_duration(cpu.trial_seconds)} per trial. image_size: the first training image, "
        f"scaled to at most {CPU_SIDE_CAP} per side, each side rounded to a multiple of "
        f"{SIDE_MULTIPLE}.",
        indent="  ")
    lines += _wrap(
        f"On a GPU: image_size {_scalar(native if isinstance(native, int) else list(native))} "
        f"(the native size), batch_size 64, amp: true, epochs {MAX_EPOCHS} or more, a larger "
        "encoder (resnet18); not measured here (README, Benchmarks, 'GPU').", indent="  ")
    data = budget.model_dump(mode="json", exclude_none=True)
    for key, value in data.items():
        lines.append(f"  {key}: {_scalar(value)}")
    return lines


def render(st: Starter) -> str:
    """The commented YAML text of ``st.space``: loaded back, it is ``st.space``."""
    space = st.space
    lines = _header(st)
    lines += [f"name: {_scalar(space.name)}", f"description: {_scalar(space.description)}",
              *_commented("adapt: false", "the lists below are used as written"),
              f"dataset: {_scalar(space.dataset)}", *_options_lines(st),
              f"structure: {space.structure}"]
    lines += _adapted_lines(st)
    if space.base:
        lines += _commented("base:", "applied first in every trial, never searched")
        lines += [f"  - {_scalar(slot.model_dump())}" for slot in space.base]
    lines += [*_shared_lines(space), *_per_task_lines(st), *_weights_lines(space),
              *_reference_lines(st)]
    if space.single_task_reference:
        lines.append("single_task_reference: true")
    if space.task_weights:
        lines.append(f"task_weights: {_scalar(space.task_weights)}")
    sampler = space.sampler.model_dump(mode="json")
    if sampler["name"] != "nsga2":
        sampler.pop("population_size")
    lines += [*_commented(f"objective: {space.objective}", "or pareto: one objective per task"),
              *_budget_lines(st), *_mapping("sampler", sampler),
              *_mapping("pruner", space.pruner.model_dump(mode="json"))]
    return "\n".join(lines) + "\n"
