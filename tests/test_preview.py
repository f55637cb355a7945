"""policysearch.reporting.preview: layout arithmetic, pixels per cell, determinism, user errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from policysearch.augment import Policy, Slot, get_baseline
from policysearch.data import TaskSpec, get_dataset
from policysearch.errors import UserError
from policysearch.reporting.preview import (
    CELL,
    GAP,
    LABEL_WIDTH,
    MARGIN,
    SAMPLE_GAP,
    VIEW_GAP,
    preview_grid_for,
    preview_layout,
    render_preview,
    save_preview,
    write_png,
)

N = 3
DRAWS = 3


@pytest.fixture(scope="module")
def dataset():
    return get_dataset("shapes", n_train=16, n_val=16, n_test=16)


@pytest.fixture(scope="module")
def samples(dataset):
    val = dataset.split("val")
    return [val[i] for i in range(N)]


def _kinds(dataset) -> dict[str, str]:
    return {t.name: t.kind for t in dataset.tasks}


def _cell(image: Image.Image, layout, row: int, col: int) -> np.ndarray:
    return np.asarray(image.crop(layout.cell_box(row, col)))


def _width(draws: int) -> int:
    return 2 * MARGIN + LABEL_WIDTH + (draws + 1) * CELL + draws * GAP


def test_import_needs_no_torch_nor_pyplot():
    code = (
        "import sys, policysearch.reporting.preview\n"
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_size_follows_the_layout(dataset, samples):
    policy = get_baseline("flipcrop", _kinds(dataset))
    image = render_preview(policy, samples, dataset.tasks, draws=DRAWS)
    layout = preview_layout(policy, dataset.tasks, N, draws=DRAWS)
    assert image.size == layout.size
    assert image.width == _width(DRAWS)
    # shapes: one shared block of image + seg mask + boxes + depth rows per sample.
    assert len(layout.rows) == N * 4
    assert [r.kind for r in layout.rows[:4]] == ["image", "mask", "boxes", "depth"]
    assert sum(r.first_in_block for r in layout.rows) == N
    # One more sample adds one block of 4 rows and the gap between samples.
    bigger = render_preview(policy, [*samples, samples[0]], dataset.tasks, draws=DRAWS)
    assert bigger.height - image.height == SAMPLE_GAP + 4 * CELL + 3 * GAP
    # Fewer draws: fewer columns, same rows.
    narrow = render_preview(policy, samples, dataset.tasks, draws=1)
    assert narrow.size == (_width(1), image.height)


def test_grid_is_not_blank(dataset, samples):
    policy = get_baseline("flipcrop", _kinds(dataset))
    image = render_preview(policy, samples, dataset.tasks, draws=DRAWS)
    layout = preview_layout(policy, dataset.tasks, N, draws=DRAWS)
    assert np.asarray(image).std() > 10
    for r in range(len(layout.rows)):
        cell = _cell(image, layout, r, 0)
        assert cell.reshape(-1, 3).std(axis=0).max() > 5, layout.rows[r]
    header = np.asarray(image)[MARGIN : layout.captions_top, MARGIN:-MARGIN]
    assert (header < 128).any()  # the summary text is drawn


def test_none_draws_equal_the_original(dataset, samples):
    policy = get_baseline("none", _kinds(dataset))
    image = render_preview(policy, samples, dataset.tasks, draws=DRAWS)
    layout = preview_layout(policy, dataset.tasks, N, draws=DRAWS)
    for r in range(len(layout.rows)):
        original = _cell(image, layout, r, 0)
        for c in range(1, DRAWS + 1):
            np.testing.assert_array_equal(_cell(image, layout, r, c), original)


def test_flipcrop_draws_differ_from_the_original(dataset, samples):
    policy = get_baseline("flipcrop", _kinds(dataset))
    image = render_preview(policy, samples, dataset.tasks, draws=DRAWS)
    layout = preview_layout(policy, dataset.tasks, N, draws=DRAWS)
    for r, row in enumerate(layout.rows):
        original = _cell(image, layout, r, 0)
        differ = [
            not np.array_equal(_cell(image, layout, r, c), original) for c in range(1, DRAWS + 1)
        ]
        assert all(differ), (row, differ)


def test_same_seed_same_bytes(dataset, samples, tmp_path):
    policy = get_baseline("flipcrop", _kinds(dataset))
    a = save_preview(policy, samples, dataset.tasks, tmp_path / "a.png", draws=DRAWS, seed=3)
    b = save_preview(policy, samples, dataset.tasks, tmp_path / "b.png", draws=DRAWS, seed=3)
    c = save_preview(policy, samples, dataset.tasks, tmp_path / "c.png", draws=DRAWS, seed=4)
    assert a == tmp_path / "a.png"
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert Image.open(a).size == preview_layout(policy, dataset.tasks, N, draws=DRAWS).size
    # A sample's draws do not depend on how many samples are shown.
    one = render_preview(policy, samples[:1], dataset.tasks, draws=DRAWS, seed=3)
    three = Image.open(a).convert("RGB")
    layout = preview_layout(policy, dataset.tasks, 1, draws=DRAWS)
    for r in range(len(layout.rows)):
        for col in range(DRAWS + 1):
            np.testing.assert_array_equal(_cell(one, layout, r, col), _cell(three, layout, r, col))


def test_per_task_view_gets_its_own_block(dataset, samples):
    kinds = _kinds(dataset)
    flip = Policy(tasks=kinds, shared=(Slot("hflip", 1.0, 1.0),))
    both = Policy(
        tasks=kinds,
        shared=(Slot("hflip", 1.0, 1.0),),
        per_task={"shape": (Slot("invert", 1.0, 1.0),)},
    )
    plain = render_preview(flip, samples, dataset.tasks, draws=DRAWS)
    image = render_preview(both, samples, dataset.tasks, draws=DRAWS)
    layout = preview_layout(both, dataset.tasks, N, draws=DRAWS)
    assert image.size == layout.size
    blocks = [(r.sample, r.view) for r in layout.rows if r.first_in_block]
    assert blocks == [(i, v) for i in range(N) for v in ("shared", "shape")]
    # The shape view (a classification task) adds one image row per sample.
    assert image.height - plain.height == N * (CELL + VIEW_GAP)
    for r, row in enumerate(layout.rows):
        if row.view != "shape":
            continue
        assert row.kind == "image"
        shared_row = next(
            i for i, x in enumerate(layout.rows) if (x.sample, x.view, x.kind) ==
            (row.sample, "shared", "image")
        )
        original = _cell(image, layout, shared_row, 0)
        np.testing.assert_array_equal(_cell(image, layout, r, 0), original)
        for c in range(1, DRAWS + 1):
            flipped = _cell(image, layout, shared_row, c)
            np.testing.assert_array_equal(flipped, original[:, ::-1])
            np.testing.assert_array_equal(_cell(image, layout, r, c), 255 - flipped)


def test_targets_are_drawn_in_their_cells():
    tasks = (
        TaskSpec("seg", "segmentation", num_classes=3, class_names=("background", "a", "b")),
        TaskSpec("det", "detection", num_classes=2, class_names=("a", "b")),
        TaskSpec("depth", "depth"),
    )
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 1
    mask[:2, 6:] = 255
    depth = np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8)
    depth[7, 7] = 0.0
    sample = {
        "image": np.full((8, 8, 3), 100, np.uint8),
        "mask": mask,
        "boxes": np.array([[2, 2, 6, 6]], np.float32),
        "box_labels": np.array([1]),
        "depth": depth,
    }
    policy = Policy(tasks={t.name: t.kind for t in tasks})
    image = render_preview(policy, [sample], tasks, draws=1)
    layout = preview_layout(policy, tasks, 1, draws=1)
    assert [r.kind for r in layout.rows] == ["image", "mask", "boxes", "depth"]
    px = CELL // 8  # an 8 px image is scaled by 16, nearest
    plain = _cell(image, layout, 0, 0)
    assert (plain == 100).all()
    seg = _cell(image, layout, 1, 0)
    assert (seg[:, : 4 * px] != 100).any(axis=-1).all()  # class 1 tinted
    assert (seg[2 * px :, 4 * px :] == 100).all()  # background untouched
    hatch = seg[: 2 * px, 6 * px :].reshape(-1, 3)
    assert {tuple(v) for v in hatch} == {(90, 90, 90), (185, 185, 185)}  # ignore: hatched
    boxes = _cell(image, layout, 2, 0)
    assert (boxes[3 * px, 2 * px] != 100).any()  # the box edge
    assert (boxes[4 * px, 4 * px] == 100).all()  # its inside
    assert (boxes[px, px] == 100).all()  # outside
    dep = _cell(image, layout, 3, 0)
    assert (dep[7 * px :, 7 * px :] == 0).all()  # invalid depth is black
    assert not (dep[: 7 * px] == 0).all(axis=-1).any()
    assert dep[0, 0].sum() < dep[6 * px, 0].sum()  # viridis: low dark, high bright


def test_missing_target_and_no_draws():
    tasks = (TaskSpec("depth", "depth"),)
    sample = {"image": np.zeros((20, 30, 3), np.uint8)}  # no depth: partial labels
    policy = Policy(tasks={"depth": "depth"}, shared=(Slot("hflip", 1.0, 1.0),))
    image = render_preview(policy, [sample], tasks, draws=0)
    layout = preview_layout(policy, tasks, 1, draws=0)
    assert image.size == layout.size
    assert image.width == _width(0)
    assert len(layout.rows) == 2
    assert _cell(image, layout, 1, 0).std() > 0  # a crossed-out cell, not blank


def test_preview_grid_for_names_and_files(dataset, tmp_path):
    image = preview_grid_for("none", dataset, n=2, draws=1)
    assert image.size == preview_layout(
        get_baseline("none", _kinds(dataset)), dataset.tasks, 2, draws=1
    ).size
    path = get_baseline("flipcrop", _kinds(dataset)).to_yaml(tmp_path / "p.yaml")
    from_file = preview_grid_for(str(path), dataset, n=2, draws=1, seed=1)
    by_name = preview_grid_for("flipcrop", dataset, n=2, draws=1, seed=1)
    assert from_file.size == by_name.size


@pytest.mark.parametrize("name", ["nosuchbaseline", "missing/policy.yaml"])
def test_unknown_policy_is_a_user_error(dataset, name):
    with pytest.raises(UserError) as err:
        preview_grid_for(name, dataset, n=1, draws=1)
    assert err.value.field == "--policy"
    assert name in str(err.value)


def test_unwritable_target_is_a_user_error(dataset, samples, tmp_path):
    policy = get_baseline("none", _kinds(dataset))
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for target in (blocker / "grid.png", tmp_path):
        with pytest.raises(UserError) as err:
            save_preview(policy, samples[:1], dataset.tasks, target, draws=1)
        assert str(target) in str(err.value)


def test_write_png_makes_folders(tmp_path):
    out = write_png(Image.new("RGB", (4, 4)), tmp_path / "a" / "b" / "grid.png")
    assert out.is_file() and Image.open(out).size == (4, 4)


def test_bad_arguments(dataset, samples):
    policy = get_baseline("none", _kinds(dataset))
    with pytest.raises(UserError):
        render_preview(policy, [], dataset.tasks)
    with pytest.raises(UserError):
        render_preview(policy, samples, dataset.tasks, draws=-1)
    with pytest.raises(UserError):
        preview_grid_for("none", dataset, n=0)


def test_eight_by_four(dataset, tmp_path):
    """The CLI's usual size: 8 samples x 4 draws, written and read back."""
    image = preview_grid_for("flipcrop", dataset, n=8, draws=4)
    layout = preview_layout(get_baseline("flipcrop", _kinds(dataset)), dataset.tasks, 8, draws=4)
    assert image.size == layout.size
    out = write_png(image, tmp_path / "grid.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(image))
