"""The built-in ``shapes`` dataset: determinism, caching, targets and their consistency."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest

from policysearch.data import DATASETS, Sample, TaskSpec, get_dataset
from policysearch.data import shapes as shapes_mod
from policysearch.data.scene_arrays import MIN_LABEL_PIXELS
from policysearch.data.shapes import (
    CLASSES,
    MIN_BOX_PIXELS,
    ShapesDataset,
    render_scene,
)
from policysearch.errors import UserError

N = 40


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Sequence[Sample]:
    cache = tmp_path_factory.mktemp("shapes-cache")
    return ShapesDataset(seed=3, n_train=N, n_val=8, n_test=8, cache_dir=cache).split("train")


def _arrays_equal(a: Sample, b: Sample) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _small(tmp_path, **kwargs) -> ShapesDataset:
    opts = {"n_train": 10, "n_val": 8, "n_test": 8, "cache_dir": tmp_path}
    opts.update(kwargs)
    return ShapesDataset(**opts)


def test_registry_and_tasks(tmp_path) -> None:
    assert "shapes" in DATASETS
    ds = get_dataset("shapes", n_train=10, n_val=8, n_test=8, cache_dir=tmp_path)
    assert ds.name == "shapes"
    assert [t.name for t in ds.tasks] == ["shape", "seg", "objects", "depth"]
    assert all(isinstance(t, TaskSpec) for t in ds.tasks)
    kinds = {t.name: t.kind for t in ds.tasks}
    assert kinds == {"shape": "classification", "seg": "segmentation",
                     "objects": "detection", "depth": "depth"}
    seg = ds.tasks[1]
    assert seg.num_classes == 5 and seg.class_names == ("background",) + CLASSES
    with pytest.raises(UserError, match="unknown dataset 'nope'") as err:
        get_dataset("nope")
    assert err.value.field == "dataset"


def test_unknown_split(tmp_path) -> None:
    ds = _small(tmp_path)
    with pytest.raises(UserError, match="'validation'"):
        ds.split("validation")


def test_keys_dtypes_shapes(tmp_path) -> None:
    ds = _small(tmp_path, size=48)
    for split, n in (("train", 10), ("val", 8), ("test", 8)):
        seq = ds.split(split)
        assert isinstance(seq, Sequence) and len(seq) == n
        for s in seq:
            assert set(s) == {"image", "label", "mask", "boxes", "box_labels", "depth"}
            assert s["image"].shape == (48, 48, 3) and s["image"].dtype == np.uint8
            assert type(s["label"]) is int and 0 <= s["label"] < 4
            assert s["mask"].shape == (48, 48) and s["mask"].dtype == np.uint8
            assert s["mask"].max() <= 4
            assert s["boxes"].ndim == 2 and s["boxes"].shape[1] == 4
            assert s["boxes"].dtype == np.float32
            assert s["box_labels"].shape == (len(s["boxes"]),)
            assert s["box_labels"].dtype == np.int64
            assert s["depth"].shape == (48, 48) and s["depth"].dtype == np.float32
    assert _arrays_equal(seq[-1], seq[len(seq) - 1])
    assert len(seq[2:5]) == 3
    with pytest.raises(IndexError):
        seq[len(seq)]


def test_samples_are_fresh_copies(train) -> None:
    s = train[0]
    s["image"][:] = 0
    s["mask"][:] = 0
    s["depth"][:] = -1
    if len(s["boxes"]):
        s["boxes"][:] = -1
    again = train[0]
    assert again["image"].any() and again["mask"].any() and (again["depth"] > 0).all()
    assert (again["boxes"] >= 0).all()


def test_determinism(tmp_path) -> None:
    a = _small(tmp_path / "a", seed=5).split("val")
    b = _small(tmp_path / "b", seed=5).split("val")
    c = _small(tmp_path / "c", seed=6).split("val")
    assert all(_arrays_equal(a[i], b[i]) for i in range(len(a)))
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # Splits differ from each other; a sample does not depend on the split's length.
    train = _small(tmp_path / "a", seed=5).split("train")
    assert not np.array_equal(a[0]["image"], train[0]["image"])
    longer = _small(tmp_path / "d", seed=5, n_val=12).split("val")
    assert all(_arrays_equal(a[i], longer[i]) for i in range(len(a)))


def test_cache_hit_does_not_regenerate(tmp_path, monkeypatch) -> None:
    first = _small(tmp_path).split("train")
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "train" in files[0].name  # only the split asked for
    mtime = files[0].stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("generator called despite a cache hit")

    monkeypatch.setattr(shapes_mod, "generate_split", boom)
    second = _small(tmp_path).split("train")
    assert files[0].stat().st_mtime_ns == mtime
    assert all(_arrays_equal(first[i], second[i]) for i in range(len(first)))
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_name_depends_on_parameters(tmp_path, monkeypatch) -> None:
    ds = _small(tmp_path)
    assert ds.cache_path("train") != _small(tmp_path, seed=1).cache_path("train")
    assert ds.cache_path("train") != _small(tmp_path, size=32).cache_path("train")
    assert ds.cache_path("train") != ds.cache_path("val")
    assert f"v{shapes_mod.VERSION}" in ds.cache_path("train").name
    monkeypatch.setenv("POLICYSEARCH_CACHE", str(tmp_path / "env"))
    assert ShapesDataset().cache_path("val").parent == tmp_path / "env"


def test_corrupt_cache_is_regenerated(tmp_path) -> None:
    good = _small(tmp_path).split("test")
    path = _small(tmp_path).cache_path("test")
    path.write_bytes(b"not a zip file")
    again = _small(tmp_path).split("test")
    assert all(_arrays_equal(good[i], again[i]) for i in range(len(good)))
    with np.load(path) as data:  # rewritten as a valid file
        assert data["images"].shape[0] == len(good)
    # A truncated file, too.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _arrays_equal(_small(tmp_path).split("test")[0], good[0])


def test_label_is_largest_visible_object() -> None:
    for i in range(60):
        scene = render_scene(np.random.default_rng(i))
        s = scene.sample
        counts = np.bincount(scene.instance.ravel(), minlength=len(scene.classes) + 1)[1:]
        assert s["label"] == scene.classes[int(np.argmax(counts))]
        # The instance map agrees with the semantic mask.
        expected = np.where(scene.instance > 0,
                            scene.classes[np.maximum(scene.instance.astype(int) - 1, 0)] + 1, 0)
        assert np.array_equal(s["mask"], expected)


def test_label_from_mask(train) -> None:
    """Without instance maps: the label's class is present, and when each class forms a
    single object, the label is the class with the most mask pixels."""
    for s in train:
        counts = np.bincount(s["mask"].ravel(), minlength=5)[1:]
        assert counts[s["label"]] >= MIN_LABEL_PIXELS
        if len(s["box_labels"]) == len(set(s["box_labels"].tolist())) == (counts > 0).sum():
            assert s["label"] == int(np.argmax(counts))


def test_boxes_are_tight_and_match_mask(train) -> None:
    h, w = train[0]["mask"].shape
    for s in train:
        mask = s["mask"]
        assert 1 <= len(s["boxes"]) <= 4
        covered = {c: np.zeros_like(mask, dtype=bool) for c in range(4)}
        for box, cls in zip(s["boxes"], s["box_labels"], strict=True):
            x1, y1, x2, y2 = (int(v) for v in box)
            assert np.array_equal(box, np.array([x1, y1, x2, y2], dtype=np.float32))
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            inside = mask[y1:y2, x1:x2] == cls + 1
            assert inside.sum() >= MIN_BOX_PIXELS
            # Tight: every edge row/column of the box touches the object's class region.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            covered[int(cls)][y1:y2, x1:x2] = True
        # Almost every pixel of a class lies in a box of that class (dropped tiny objects only).
        for c in range(4):
            outside = ((mask == c + 1) & ~covered[c]).sum()
            assert outside < MIN_BOX_PIXELS * 4


def test_depth_positive_and_objects_nearer(train) -> None:
    for s in train:
        depth, mask = s["depth"], s["mask"]
        assert np.isfinite(depth).all() and (depth > 0).all()
        background = depth[mask == 0]
        objects = depth[mask > 0]
        assert objects.max() < background.min()
        assert objects.min() >= 1.0 and objects.max() <= 5.6
        assert background.min() >= 5.0 and background.max() <= 10.0
        # The background plane recedes towards the top of the image.
        rows = [depth[r][mask[r] == 0].mean() for r in (0, -1) if (mask[r] == 0).any()]
        if len(rows) == 2:
            assert rows[0] > rows[1]


def test_occluders_are_nearer() -> None:
    occluded = 0
    for i in range(60):
        scene = render_scene(np.random.default_rng(1000 + i))
        n = len(scene.classes)
        assert 1 <= n <= 4
        for j in range(n):
            for k in range(n):
                overlap = scene.coverage[j] & scene.coverage[k]
                if j == k or not overlap.any():
                    continue
                occluded += 1
                near = j if scene.z[j] < scene.z[k] else k
                assert (scene.instance[overlap] != (j + k - near) + 1).all()
        # Visible depth is continuous within an object and jumps at object-object edges.
        depth, inst = scene.sample["depth"], scene.instance.astype(int)
        same = (inst[:, 1:] == inst[:, :-1]) & (inst[:, 1:] > 0)
        assert (np.abs(np.diff(depth, axis=1))[same] < 0.1).all()
        edge = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
        assert (np.abs(np.diff(depth, axis=1))[edge] > 0.2).all()
    assert occluded > 0


def test_occlusion_is_common_and_all_classes_appear(train) -> None:
    with_occlusion = 0
    for s in train:
        depth, mask = s["depth"], s["mask"]
        # Object pixels next to pixels of another, clearly nearer or farther object.
        obj = mask > 0
        jumps_x = obj[:, 1:] & obj[:, :-1] & (np.abs(np.diff(depth, axis=1)) > 0.2)
        jumps_y = obj[1:] & obj[:-1] & (np.abs(np.diff(depth, axis=0)) > 0.2)
        with_occlusion += bool(jumps_x.any() or jumps_y.any())
    assert with_occlusion >= 0.25 * len(train)
    labels = [s["label"] for s in train]
    assert set(labels) == {0, 1, 2, 3}
    assert set(np.concatenate([s["box_labels"] for s in train]).tolist()) == {0, 1, 2, 3}
    counts = [len(s["boxes"]) for s in train]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) >= 3


def test_invalid_parameters(tmp_path) -> None:
    with pytest.raises(UserError):
        ShapesDataset(seed=-1, cache_dir=tmp_path)
    with pytest.raises(UserError):
        ShapesDataset(size=4, cache_dir=tmp_path)
    with pytest.raises(UserError):
        ShapesDataset(n_train=0, cache_dir=tmp_path)


def test_unwritable_cache_still_works(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ds = _small(blocker / "sub")  # the cache dir cannot be created
    with pytest.warns(UserWarning, match="could not write"):
        seq = ds.split("val")
    assert len(seq) == 8 and not os.path.exists(blocker / "sub")
