"""Preview grids: what a policy does to a few samples and their targets, as one PNG.

Layout (top to bottom): a header with the policy's summary; column captions ("original",
"draw 1", ...); then, per sample, one *block* per view (``shared``, then each task with its own
slots), each block one row per drawable target: the image, the image with a segmentation mask
overlaid (class colours, ignore pixels hatched grey), the image with boxes (class-coloured
rectangles), depth as a viridis colour map (dark = near, invalid pixels black), surface normals
as RGB. The ``shared`` block shows every task's target; a task view's block shows the image and
that task's own target. The left column labels each row (sample, view, task) with a colour
legend; the first cell column is the untouched sample, the others are independent draws.

Uses only NumPy, Pillow and matplotlib's colour maps (no backend, no pyplot); imports no torch.
Deterministic: draw ``d`` of sample ``i`` reseeds the augmentation from ``(seed, i, d)``, so the
same arguments give identical PNG bytes, and a sample's draws do not depend on ``n``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from policysearch.augment import BASELINES, Policy, get_baseline, is_baseline, load_policy
from policysearch.data.base import TaskSpec
from policysearch.errors import UserError

__all__ = [
    "CELL",
    "GAP",
    "LABEL_WIDTH",
    "MARGIN",
    "SAMPLE_GAP",
    "VIEW_GAP",
    "PreviewLayout",
    "PreviewRow",
    "preview_grid_for",
    "preview_layout",
    "render_preview",
    "save_preview",
    "write_png",
]

CELL = 128  # default side of one cell (px); images are scaled to fit, small ones nearest
GAP = 4  # between cells of a row and between rows of a block
VIEW_GAP = 12  # between the view blocks of one sample
SAMPLE_GAP = 24  # between samples (a separator line in the middle)
LABEL_WIDTH = 184  # the left column of row labels and legends
MARGIN = 10
FONT_SIZE = 13
MASK_ALPHA = 0.55

# Row kinds by task kind; the image row comes first in every block.
_ROW_OF_KIND = {"segmentation": "mask", "detection": "boxes", "depth": "depth",
                "normals": "normals"}
_WHITE = (255, 255, 255)
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)
_MISSING = (225, 225, 225)
_HATCH = ((90, 90, 90), (185, 185, 185))  # ignore pixels: two greys in diagonal stripes
# Class colours (mask value v >= 1 -> _PALETTE[v - 1]; box label l -> _PALETTE[l]), so a class
# keeps its colour in both rows when its detection index is its mask value - 1 (as in shapes).
_BASE_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128),
)


@dataclass(frozen=True)
class PreviewRow:
    """One row of cells: which sample and view, what it shows (``image``, ``mask``,
    ``boxes``, ``depth`` or ``normals``), for which task (None for the image row), and the y of
    its cells' top edge."""

    sample: int
    view: str
    kind: str
    task: TaskSpec | None
    top: int
    first_in_block: bool


@dataclass(frozen=True)
class PreviewLayout:
    """Where everything goes; ``render_preview`` draws into exactly this."""

    width: int
    height: int
    cell: int
    columns: int  # 1 (original) + draws
    header: tuple[str, ...]  # header text lines
    captions_top: int
    rows: tuple[PreviewRow, ...]
    separators: tuple[int, ...]  # y of the lines between samples
    view_separators: tuple[int, ...]  # y of the fainter lines between a sample's view blocks

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of a cell (right/bottom exclusive), PIL's crop box."""
        x = MARGIN + LABEL_WIDTH + column * (self.cell + GAP)
        y = self.rows[row].top
        return (x, y, x + self.cell, y + self.cell)


def preview_layout(
    policy: Policy,
    tasks: Sequence[TaskSpec],
    n_samples: int,
    *,
    draws: int = 4,
    seed: int = 0,
    cell: int = CELL,
) -> PreviewLayout:
    """The layout of ``render_preview`` for ``n_samples`` samples (no sample is read)."""
    _check_int(n_samples, "n_samples", 0)
    _check_int(draws, "draws", 0)
    _check_int(seed, "seed", 0)
    _check_int(cell, "cell", 16)
    columns = 1 + draws
    width = 2 * MARGIN + LABEL_WIDTH + columns * cell + (columns - 1) * GAP
    font = _font()
    line_h = _line_height()
    header = _header_lines(policy, draws, seed, width - 2 * MARGIN, font)
    y = MARGIN + len(header) * line_h + 6
    captions_top = y
    y += line_h + 4
    blocks = _blocks(policy, tasks)
    rows: list[PreviewRow] = []
    separators: list[int] = []
    view_separators: list[int] = []
    for i in range(n_samples):
        if i:
            y += SAMPLE_GAP - GAP
            separators.append(y - SAMPLE_GAP // 2)
        for b, (view, kinds) in enumerate(blocks):
            if b:
                y += VIEW_GAP - GAP
                view_separators.append(y - VIEW_GAP // 2)
            for r, (kind, task) in enumerate(kinds):
                rows.append(PreviewRow(i, view, kind, task, y, r == 0))
                y += cell + GAP
    height = y - GAP + MARGIN
    return PreviewLayout(width, height, cell, columns, tuple(header), captions_top, tuple(rows),
                         tuple(separators), tuple(view_separators))


def render_preview(
    policy: Policy,
    samples: Sequence[Mapping[str, Any]],
    tasks: Sequence[TaskSpec],
    *,
    draws: int = 4,
    seed: int = 0,
    cell: int = CELL,
) -> Image.Image:
    """A grid of ``samples`` (rows) by the original and ``draws`` augmented draws (columns),
    one block of rows per view of ``policy``; see the module docstring for the layout."""
    samples = list(samples)
    if not samples:
        raise UserError("no samples to preview", field="samples")
    tasks = tuple(tasks)
    layout = preview_layout(policy, tasks, len(samples), draws=draws, seed=seed, cell=cell)
    aug = policy.transform(seed=seed)
    canvas = Image.new("RGB", layout.size, _WHITE)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    line_h = _line_height()

    y = MARGIN
    for line in layout.header:
        draw.text((MARGIN, y), line, fill=_TEXT, font=font)
        y += line_h
    for c in range(layout.columns):
        x0 = MARGIN + LABEL_WIDTH + c * (cell + GAP)
        caption = "original" if c == 0 else f"draw {c}"
        tw = font.getlength(caption)
        draw.text((x0 + (cell - tw) / 2, layout.captions_top), caption, fill=_TEXT, font=font)
    for sep in layout.separators:
        draw.line([(MARGIN, sep), (layout.width - MARGIN, sep)], fill=(150, 150, 150), width=1)
    for sep in layout.view_separators:
        draw.line([(MARGIN, sep), (MARGIN + LABEL_WIDTH - 16, sep)], fill=(200, 200, 200))

    by_sample: dict[int, list[int]] = {}
    for r, row in enumerate(layout.rows):
        by_sample.setdefault(row.sample, []).append(r)
    for i, sample in enumerate(samples):
        drawn: list[Mapping[str, Mapping[str, Any]]] = []
        for d in range(draws):
            aug.set_seed(_draw_seed(seed, i, d))
            drawn.append(aug(sample))
        for r in by_sample[i]:
            row = layout.rows[r]
            versions = [sample] + [views[row.view] for views in drawn]
            depth_range = _depth_range(versions, row.task) if row.kind == "depth" else None
            for c, version in enumerate(versions):
                pixels = _cell(version, row, cell, depth_range)
                box = layout.cell_box(r, c)
                x = box[0] + (cell - pixels.shape[1]) // 2
                yy = box[1] + (cell - pixels.shape[0]) // 2
                canvas.paste(Image.fromarray(pixels, "RGB"), (x, yy))
            notes = _row_notes(row, sample, tasks, depth_range)
            _row_label(draw, row, layout.cell_box(r, 0)[1], cell, notes, font, line_h)
    return canvas


def save_preview(
    policy: Policy,
    samples: Sequence[Mapping[str, Any]],
    tasks: Sequence[TaskSpec],
    path: str | Path,
    *,
    draws: int = 4,
    seed: int = 0,
    cell: int = CELL,
) -> Path:
    """``render_preview`` written as a PNG to ``path``; returns the path."""
    image = render_preview(policy, samples, tasks, draws=draws, seed=seed, cell=cell)
    return write_png(image, path)


def write_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG (no metadata: same pixels, same bytes); parent folders are made.

    A path that cannot be written is a ``UserError`` naming it.
    """
    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"cannot write the preview: {reason}", source=str(path)) from None
    return path


def preview_grid_for(
    policy_or_name: str | Path | Policy,
    dataset: Any,
    n: int = 8,
    draws: int = 4,
    seed: int = 0,
) -> Image.Image:
    """The preview of a policy file (YAML) or a baseline name on the first ``n`` samples of
    ``dataset``'s ``val`` split. Unknown names are a ``UserError`` on ``--policy``."""
    _check_int(n, "--n", 1)
    tasks = tuple(dataset.tasks)
    policy = _resolve_policy(policy_or_name, {t.name: t.kind for t in tasks})
    missing = set(policy.tasks) - {t.name for t in tasks}
    if missing:
        source = None if isinstance(policy_or_name, Policy) else str(policy_or_name)
        raise UserError(f"the policy names tasks the dataset lacks: {', '.join(sorted(missing))}"
                        f" (the dataset has {', '.join(t.name for t in tasks)})",
                        source=source, field="tasks")
    val = dataset.split("val")
    samples = [val[i] for i in range(min(n, len(val)))]
    if not samples:
        raise UserError("the dataset's val split is empty", field="--dataset")
    return render_preview(policy, samples, tasks, draws=draws, seed=seed)


# --- policy and layout helpers ---------------------------------------------------------------


def _resolve_policy(policy_or_name: str | Path | Policy, tasks: dict[str, str]) -> Policy:
    if isinstance(policy_or_name, Policy):
        return policy_or_name
    name = str(policy_or_name)
    if Path(name).is_file():
        return load_policy(name)
    if Path(name).exists():
        raise UserError(f"{name!r} is not a policy file", field="--policy")
    if is_baseline(name):
        return get_baseline(name, tasks)
    looks_like_file = isinstance(policy_or_name, Path) or name.endswith((".yaml", ".yml"))
    if looks_like_file or "/" in name:
        raise UserError(f"policy file {name!r} not found", field="--policy")
    known = ", ".join(BASELINES)
    raise UserError(f"{name!r} is neither a policy file nor a baseline (baselines: {known})",
                    field="--policy")


def _blocks(policy: Policy, tasks: Sequence[TaskSpec]) -> list[tuple[str, list[Any]]]:
    """Per view: its rows as ``(kind, task)``; image first, then each drawable target."""
    drawable = [t for t in tasks if t.kind in _ROW_OF_KIND]
    blocks: list[tuple[str, list[Any]]] = []
    for view in policy.views():
        own = drawable if view == "shared" else [t for t in drawable if t.name == view]
        blocks.append((view, [("image", None)] + [(_ROW_OF_KIND[t.kind], t) for t in own]))
    return blocks


def _draw_seed(seed: int, sample: int, draw: int) -> int:
    return int(np.random.SeedSequence([seed, sample, draw]).generate_state(1)[0])


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"must be an integer >= {minimum}, not {value!r}", field=name)


# --- text ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=1)
def _line_height() -> int:
    box = _font().getbbox("Agy|")
    return int(box[3]) + 4


def _header_lines(policy: Policy, draws: int, seed: int, width: float, font: Any) -> list[str]:
    name = policy.provenance.get("baseline")
    title = f"baseline {name}: " if isinstance(name, str) else "policy: "
    views = ", ".join(policy.views())
    lines = _wrap(title + policy.summary(), width, font)
    lines += _wrap(f"views: {views}   |   original + {draws} draws per sample   |   seed {seed}",
                   width, font)
    return lines


def _wrap(text: str, width: float, font: Any) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a word longer than a line gets a line of its own)."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = "  " + word
        else:
            current = candidate
    lines.append(current)
    return lines


def _fit(text: str, width: float, font: Any) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _row_label(
    draw: ImageDraw.ImageDraw,
    row: PreviewRow,
    top: int,
    cell: int,
    notes: Sequence[str],
    font: Any,
    line_h: int,
) -> None:
    """The left-column text of a row: sample and view on a block's first row, the row's
    content, then a colour legend (mask, boxes), the depth range or the class labels."""
    x = MARGIN
    width = LABEL_WIDTH - 10
    bottom = top + cell
    y = top
    if row.first_in_block:
        draw.text((x, y), _fit(f"sample {row.sample}  |  {row.view}", width, font), fill=_TEXT,
                  font=font)
        y += line_h
    what = "image" if row.task is None else f"{row.task.name}: {row.kind}"
    draw.text((x, y), _fit(what, width, font), fill=_MUTED, font=font)
    y += line_h
    entries: list[tuple[tuple[int, int, int] | None, str]] = []
    if row.kind in ("mask", "boxes") and row.task is not None:
        entries = [(_palette(k), name) for k, name in _legend(row.task)]
        if row.kind == "mask":
            entries.append((None, "ignore"))
    else:
        entries = [((-1, -1, -1), note) for note in notes]
    for i, (colour, text) in enumerate(entries):
        if y + line_h > bottom:
            break
        if i < len(entries) - 1 and y + 2 * line_h > bottom:
            draw.text((x, y), f"... {len(entries) - i} more", fill=_MUTED, font=font)
            break
        tx = x
        if colour is None:  # the ignore swatch: hatched like the cells
            draw.rectangle([x, y + 3, x + 11, y + 13], fill=_HATCH[1], outline=_HATCH[0])
            draw.line([(x, y + 13), (x + 10, y + 3)], fill=_HATCH[0], width=2)
            tx = x + 17
        elif colour != (-1, -1, -1):
            draw.rectangle([x, y + 3, x + 11, y + 13], fill=colour, outline=_TEXT)
            tx = x + 17
        draw.text((tx, y), _fit(text, width - (tx - x), font), fill=_TEXT, font=font)
        y += line_h


def _legend(task: TaskSpec) -> list[tuple[int, str]]:
    """``(palette index, class name)`` of a segmentation (background left out) or detection
    task; unnamed classes are ``class K``."""
    names = list(task.class_names)
    if task.kind == "segmentation":
        named = names[1:]
        count = max(task.num_classes - 1, len(named))
        return [(k, named[k] if k < len(named) else f"class {k + 1}") for k in range(count)]
    count = max(task.num_classes, len(names))
    return [(k, names[k] if k < len(names) else f"class {k}") for k in range(count)]


def _row_notes(row: PreviewRow, sample: Mapping[str, Any], tasks: Sequence[TaskSpec],
               depth_range: tuple[float, float] | None) -> list[str]:
    """Extra label lines: the depth range of a depth row; the original's class labels on an
    image row (every classification task in ``shared``, the view's own task in its block)."""
    if row.kind == "depth":
        if depth_range is None:
            return ["no valid depth"]
        lo, hi = depth_range
        return [f"{lo:.3g} to {hi:.3g}", "(dark = low, black = invalid)"]
    if row.kind != "image":
        return []
    notes = []
    for task in tasks:
        if task.kind not in ("classification", "multilabel"):
            continue
        if row.view != "shared" and task.name != row.view:
            continue
        value = sample.get(task.target_key())
        if value is None:
            notes.append(f"{task.name}: (none)")
            continue
        arr = np.asarray(value).reshape(-1)
        names = list(task.class_names)
        if task.kind == "multilabel" or arr.size > 1:
            picked = [int(k) for k in np.flatnonzero(arr)]
        else:
            picked = [int(arr[0])]
        labels = [names[k] if 0 <= k < len(names) else str(k) for k in picked]
        notes.append(f"{task.name}: {', '.join(labels) or '(none)'}")
    return notes


# --- cells -----------------------------------------------------------------------------------


def _palette(index: int) -> tuple[int, int, int]:
    """A fixed colour per class index: 16 distinct ones, then golden-ratio hues."""
    if 0 <= index < len(_BASE_PALETTE):
        return _BASE_PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), 200, 230)).convert("RGB").getpixel((0, 0))
    return tuple(int(v) for v in rgb)  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _palette_table(n: int) -> np.ndarray:
    return np.array([_palette(k) for k in range(n)], dtype=np.float32).reshape(n, 3)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel under nearest resampling (pixel centres)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def _fit_size(h: int, w: int, cell: int) -> tuple[int, int]:
    scale = cell / max(h, w)
    return max(1, min(cell, round(h * scale))), max(1, min(cell, round(w * scale)))


def _resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = _nearest_index(arr.shape[0], size[0])
    cols = _nearest_index(arr.shape[1], size[1])
    return arr[rows][:, cols]


def _as_rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return arr


def _scaled_image(image: Any, cell: int) -> np.ndarray:
    arr = _as_rgb(image)
    size = _fit_size(arr.shape[0], arr.shape[1], cell)
    if size[0] >= arr.shape[0] and size[1] >= arr.shape[1]:
        return np.ascontiguousarray(_resize_nearest(arr, size))
    small = Image.fromarray(np.ascontiguousarray(arr), "RGB").resize(
        (size[1], size[0]), Image.Resampling.BOX
    )
    return np.asarray(small)


def _missing(cell: int, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = size or (cell, cell)
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[...] = _MISSING
    yy, xx = np.mgrid[0:h, 0:w]
    reach = max(h, w)
    cross = (np.abs(xx * h - yy * w) < reach) | (np.abs((w - 1 - xx) * h - yy * w) < reach)
    out[cross] = (170, 170, 170)
    return out


def _cell(sample: Mapping[str, Any], row: PreviewRow, cell: int,
          depth_range: tuple[float, float] | None) -> np.ndarray:
    """The H×W×3 uint8 pixels of one cell (at most ``cell`` on each side)."""
    image = sample.get("image")
    if image is None:
        return _missing(cell)
    base = _scaled_image(image, cell)
    if row.kind == "image":
        return base
    assert row.task is not None
    target = sample.get(row.task.target_key())
    if target is None:  # a missing target (partial labels, or dropped by the view)
        return _missing(cell, base.shape[:2])
    draw_target: Callable[..., np.ndarray] = _TARGET_DRAWERS[row.kind]
    return draw_target(base, np.asarray(target), sample, row.task, depth_range)


def _draw_mask(base: np.ndarray, mask: np.ndarray, sample: Mapping[str, Any], task: TaskSpec,
               depth_range: Any) -> np.ndarray:
    mask = mask.reshape(mask.shape[:2])
    m = _resize_nearest(mask, base.shape[:2]).astype(np.int64)
    out = base.astype(np.float32)
    ignore = m == task.ignore_index
    classes = (m > 0) & ~ignore
    if classes.any():
        table = _palette_table(int(m[classes].max()))
        colour = table[m[classes] - 1]
        out[classes] = (1 - MASK_ALPHA) * out[classes] + MASK_ALPHA * colour
    out = np.rint(out).astype(np.uint8)
    if ignore.any():
        yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
        stripe = ((xx + yy) // 4) % 2 == 0
        out[ignore & stripe] = _HATCH[0]
        out[ignore & ~stripe] = _HATCH[1]
    return out


def _draw_boxes(base: np.ndarray, boxes: np.ndarray, sample: Mapping[str, Any], task: TaskSpec,
                depth_range: Any) -> np.ndarray:
    image = _as_rgb(sample["image"])
    sy = base.shape[0] / image.shape[0]
    sx = base.shape[1] / image.shape[1]
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    labels = sample.get("box_labels")
    labels_arr = np.asarray(labels).reshape(-1) if labels is not None else None
    canvas = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(base.shape[:2]) / 64))
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        if not np.all(np.isfinite([x1, y1, x2, y2])):
            continue
        label = int(labels_arr[k]) if labels_arr is not None and k < len(labels_arr) else -1
        colour = _palette(label) if label >= 0 else _WHITE
        left, top = round(x1 * sx), round(y1 * sy)
        right, bottom = round(x2 * sx) - 1, round(y2 * sy) - 1
        if right < left or bottom < top:
            continue
        draw.rectangle([left, top, right, bottom], outline=colour, width=line)
    return np.asarray(canvas)


def _depth_range(versions: Sequence[Mapping[str, Any]], task: TaskSpec | None
                 ) -> tuple[float, float] | None:
    """The common colour-map range of a depth row: min and max over its valid pixels."""
    if task is None:
        return None
    lo, hi = np.inf, -np.inf
    for version in versions:
        depth = version.get(task.target_key())
        if depth is None:
            continue
        arr = np.asarray(depth, dtype=np.float64)
        valid = arr[np.isfinite(arr) & (arr > 0)]
        if valid.size:
            lo, hi = min(lo, float(valid.min())), max(hi, float(valid.max()))
    return (lo, hi) if lo <= hi else None


def _draw_depth(base: np.ndarray, depth: np.ndarray, sample: Mapping[str, Any], task: TaskSpec,
                depth_range: tuple[float, float] | None) -> np.ndarray:
    import matplotlib  # only its colour maps: no backend, no pyplot

    d = _resize_nearest(depth.reshape(depth.shape[:2]).astype(np.float64), base.shape[:2])
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros((*d.shape, 3), dtype=np.uint8)
    if depth_range is None or not valid.any():
        return out
    lo, hi = depth_range
    norm = np.clip((d[valid] - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    out[valid] = matplotlib.colormaps["viridis"](norm, bytes=True)[:, :3]
    return out


def _draw_normals(base: np.ndarray, normals: np.ndarray, sample: Mapping[str, Any],
                  task: TaskSpec, depth_range: Any) -> np.ndarray:
    n = _resize_nearest(normals.astype(np.float64), base.shape[:2])
    if n.ndim != 3 or n.shape[2] < 3:
        return _missing(max(base.shape[:2]), base.shape[:2])
    n = n[..., :3]
    valid = np.isfinite(n).all(axis=-1) & (np.abs(n).sum(axis=-1) > 0)
    out = np.zeros((*n.shape[:2], 3), dtype=np.uint8)
    out[valid] = np.rint(np.clip((n[valid] + 1.0) * 127.5, 0, 255)).astype(np.uint8)
    return out


_TARGET_DRAWERS: dict[str, Callable[..., np.ndarray]] = {
    "mask": _draw_mask,
    "boxes": _draw_boxes,
    "depth": _draw_depth,
    "normals": _draw_normals,
}
