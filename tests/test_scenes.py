"""The built-in ``scenes`` dataset: determinism, split seeds, caching, targets consistent with
each other and with the geometry, and a short trial on it."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import numpy as np
import pytest

from policysearch.data import DATASETS, Sample, get_dataset
from policysearch.data import scenes as scenes_mod
from policysearch.data.scenes import (
    CLASSES,
    MIN_BOX_PIXELS,
    Scene,
    ScenesDataset,
    render_scene,
    view_rays,
)
from policysearch.errors import UserError

KEYS = {"image", "label", "mask", "boxes", "box_labels", "depth"}


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render_scene(np.random.default_rng([7, i]), normals=True) for i in range(40)]


def _small(tmp_path, **kwargs) -> ScenesDataset:
    opts = {"n_train": 10, "n_val": 8, "n_test": 8, "cache_dir": tmp_path}
    opts.update(kwargs)
    return ScenesDataset(**opts)


def _equal(a: Sequence[Sample], b: Sequence[Sample]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for x, y in zip(a, b, strict=True)
        for k in x)


def test_registry_tasks_and_options(tmp_path) -> None:
    ds = get_dataset("scenes", size=32, n_train=10, n_val=8, n_test=8, seed=2,
                     cache_dir=tmp_path)
    assert "scenes" in DATASETS and isinstance(ds, ScenesDataset) and ds.name == "scenes"
    # The task names and kinds of shapes, so that the default search spaces apply as they are.
    assert {t.name: t.kind for t in ds.tasks} == {
        "shape": "classification", "seg": "segmentation", "objects": "detection",
        "depth": "depth"}
    assert ds.tasks[1].class_names == ("background",) + CLASSES
    with_normals = _small(tmp_path, normals=True)
    assert [t.kind for t in with_normals.tasks][-1] == "normals"
    assert "test_seed=0" in repr(ds.__class__(seed=0)) and "normals=True" in repr(with_normals)
    for options, field in (({"test_seed": -1}, "test_seed"), ({"seed": 1.5}, "seed"),
                           ({"size": 8}, "size"), ({"n_val": 0}, "n_val")):
        with pytest.raises(UserError) as err:
            ScenesDataset(**options)
        assert err.value.field == field
    with pytest.raises(UserError, match="'validation'"):
        ds.split("validation")


def test_keys_dtypes_shapes(tmp_path) -> None:
    ds = _small(tmp_path, size=48, normals=True)
    for split, n in (("train", 10), ("val", 8), ("test", 8)):
        seq = ds.split(split)
        assert len(seq) == n
        for s in seq:
            assert set(s) == KEYS | {"normals"}
            assert s["image"].shape == (48, 48, 3) and s["image"].dtype == np.uint8
            assert type(s["label"]) is int and 0 <= s["label"] < 4
            assert s["mask"].shape == (48, 48) and s["mask"].dtype == np.uint8
            assert s["mask"].max() <= 4
            assert s["boxes"].shape == (len(s["box_labels"]), 4)
            assert s["boxes"].dtype == np.float32 and s["box_labels"].dtype == np.int64
            assert s["depth"].shape == (48, 48) and s["depth"].dtype == np.float32
            assert s["normals"].shape == (48, 48, 3) and s["normals"].dtype == np.float32
    assert set(_small(tmp_path / "plain").split("val")[0]) == KEYS
    s = seq[0]
    s["image"][:] = 0
    s["normals"][:] = 0
    assert seq[0]["image"].any() and seq[0]["normals"].any()  # samples are fresh copies


def test_determinism_and_split_independence(tmp_path) -> None:
    a = _small(tmp_path / "a", seed=5).split("val")
    assert _equal(a, _small(tmp_path / "b", seed=5).split("val"))
    other_seed = _small(tmp_path / "c", seed=6).split("val")
    train = _small(tmp_path / "a", seed=5).split("train")
    assert not np.array_equal(a[0]["image"], other_seed[0]["image"])
    assert not np.array_equal(a[0]["image"], train[0]["image"])
    longer = _small(tmp_path / "d", seed=5, n_val=12).split("val")
    assert _equal(a, longer[:len(a)])  # a sample does not depend on the split's length


def test_test_seed_redraws_test_only(tmp_path) -> None:
    base = _small(tmp_path, seed=3)
    other = _small(tmp_path, seed=3, test_seed=11)
    assert base.test_seed == 3
    for split in ("train", "val"):
        assert _equal(base.split(split), other.split(split))
        assert base.cache_path(split) == other.cache_path(split)
    assert not np.array_equal(base.split("test")[0]["image"], other.split("test")[0]["image"])
    # The test split depends on test_seed alone.
    assert _equal(other.split("test"), _small(tmp_path / "x", seed=4, test_seed=11).split("test"))


def test_cache_is_used_and_repaired(tmp_path, monkeypatch) -> None:
    ds = _small(tmp_path, normals=True)
    first = ds.split("train")
    path = ds.cache_path("train")
    assert path.is_file() and path.name.startswith(f"scenes-v{scenes_mod.VERSION}-train-")
    assert path != _small(tmp_path).cache_path("train")  # normals are part of the name

    def boom(*args, **kwargs):
        raise AssertionError("generator called despite a cache hit")

    with monkeypatch.context() as m:
        m.setattr(scenes_mod, "generate_split", boom)
        assert _equal(first, _small(tmp_path, normals=True).split("train"))
    path.write_bytes(b"not a zip file")
    assert _equal(first, _small(tmp_path, normals=True).split("train"))
    with np.load(path) as data:  # rewritten as a valid file
        assert data["normals"].shape[0] == len(first)


def test_split_travels_to_workers_in_shared_memory(tmp_path) -> None:
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reducers)

    seq = _small(tmp_path, normals=True).split("val")
    again = pickle.loads(bytes(ForkingPickler.dumps(seq)))
    assert _equal(seq, again) and not again.normals.flags.writeable
    assert set(again._shared) == set(seq.ARRAYS)
    assert all(tensor.is_shared() for tensor in again._shared.values())


def test_label_mask_and_boxes_follow_the_visible_pixels(scenes: list[Scene]) -> None:
    for scene in scenes:
        s, inst = scene.sample, scene.instance.astype(int)
        n = len(scene.classes)
        assert 1 <= n <= 5
        visible = np.bincount(inst.ravel(), minlength=n + 1)[1:]
        assert s["label"] == scene.classes[int(np.argmax(visible))]
        assert np.array_equal(s["mask"], np.where(inst > 0, scene.classes[inst - 1] + 1, 0))
        shown = [k for k in range(n) if visible[k] >= MIN_BOX_PIXELS]
        assert s["box_labels"].tolist() == [int(scene.classes[k]) for k in shown]
        for k, box in zip(shown, s["boxes"], strict=True):
            ys, xs = np.nonzero(inst == k + 1)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    labels = {scene.sample["label"] for scene in scenes}
    assert labels == {0, 1, 2, 3}


def test_zbuffer_keeps_the_nearest_surface(scenes: list[Scene]) -> None:
    hidden = 0
    for scene in scenes:
        depth, inst = scene.sample["depth"], scene.instance.astype(int)
        assert np.isfinite(depth).all() and (depth > 0).all()
        for k, surface in enumerate(scene.surface):
            covers = np.isfinite(surface)
            shown = inst == k + 1
            assert np.array_equal(depth[shown], surface[shown].astype(np.float32))
            occluded = covers & ~shown  # hidden by a nearer object (or behind the wall)
            assert (depth[occluded] <= surface[occluded]).all()
            hidden += int((occluded & (inst > 0)).sum())
    assert hidden > 0


def test_depth_is_metric(scenes: list[Scene]) -> None:
    """Back-projected through the camera, floor pixels lie at the camera's height below it
    and the wall's at one distance."""
    for scene in scenes:
        cam, size = scene.camera, scene.instance.shape[0]
        points = cam.to_world(view_rays(size, cam.focal) * scene.sample["depth"][..., None])
        room = scene.instance == 0
        floor = room & np.isclose(points[..., 1], cam.height, rtol=1e-4)
        wall = room & ~floor
        assert floor.any() and wall.any()
        assert np.ptp(points[..., 2][wall]) < 1e-3 * points[..., 2][wall].mean()
        assert (points[..., 2][floor] < points[..., 2][wall].min() + 1e-3).all()


def test_normals_unit_facing_and_agree_with_depth(scenes: list[Scene]) -> None:
    errors = []
    for scene in scenes:
        n, size = scene.sample["normals"], scene.instance.shape[0]
        assert np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
        rays = view_rays(size, scene.camera.focal)
        n_cam = n * np.array([1, 1, -1])  # policysearch's z points towards the viewer
        assert ((n_cam * rays).sum(-1) < 0).all()  # every visible surface faces the camera
        # The normal of the surface through three neighbouring back-projected pixels.
        points = rays * scene.sample["depth"][..., None]
        cross = -np.cross(points[:-1, 1:] - points[:-1, :-1], points[1:, :-1] - points[:-1, :-1])
        cross /= np.linalg.norm(cross, axis=-1, keepdims=True)
        angle = np.degrees(np.arccos(np.clip((cross * n_cam[:-1, :-1]).sum(-1), -1, 1)))
        same = np.ones_like(angle, dtype=bool)
        for dy, dx in ((0, 1), (1, 0)):
            same &= np.abs(n[dy:size - 1 + dy, dx:size - 1 + dx] - n[:-1, :-1]).sum(-1) < 0.5
            same &= scene.instance[dy:size - 1 + dy, dx:size - 1 + dx] == scene.instance[:-1, :-1]
        room = same & (scene.instance[:-1, :-1] == 0)
        assert (angle[room] < 0.5).all()  # floor and wall are planes
        errors.append(angle[same & ~room])
    assert np.median(np.concatenate(errors)) < 6  # curved surfaces, sampled one ray a pixel


@pytest.mark.slow  # about 30 s of one core
def test_short_trial_with_the_default_reference_and_a_worker(tmp_path, monkeypatch) -> None:
    from policysearch import input_pipeline
    from policysearch.augment import get_baseline
    from policysearch.config import Budget, load_space
    from policysearch.data.loading import load_dataset
    from policysearch.training import run_trial

    monkeypatch.setenv("POLICYSEARCH_CACHE", str(tmp_path))
    space = load_space("default")
    space = space.model_copy(update={
        "dataset": "scenes", "dataset_options": space.dataset_options.model_copy(
            update={"n_train": 16, "n_val": 8, "n_test": 8})})
    assert isinstance(load_dataset(space), ScenesDataset)
    ds = _small(tmp_path, size=32, n_train=16, normals=True)
    policy = get_baseline(space.reference, {t.name: t.kind for t in ds.tasks})
    budget = Budget(epochs=1, batch_size=8, image_size=32)
    alone = run_trial(policy, ds, budget, seed=0, device="cpu", threads=1)
    assert set(alone.metrics) == {t.name for t in ds.tasks}
    assert all(np.isfinite(v) for m in alone.metrics.values() for v in m.values())
    # In a worker process (the split pickled, its arrays in shared memory): the same numbers.
    monkeypatch.setattr(input_pipeline, "start_method", lambda: "forkserver")
    worker = run_trial(policy, ds, budget.model_copy(update={"loader_workers": 1}), seed=0,
                       device="cpu", threads=1)
    assert worker.metrics == alone.metrics


def test_a_space_file_sets_test_seed_and_normals_for_scenes_only(tmp_path, monkeypatch) -> None:
    from policysearch.config import DatasetOptions, load_space
    from policysearch.data.loading import load_dataset

    monkeypatch.setenv("POLICYSEARCH_CACHE", str(tmp_path))
    default = load_space("default")
    assert "test_seed" not in default.canonical()["dataset_options"]  # old studies still match
    budget = default.budget.model_copy(update={"image_size": 32})
    options = DatasetOptions(n_train=8, n_val=8, n_test=8, test_seed=5, normals=True)
    space = default.model_copy(update={"dataset": "scenes", "dataset_options": options,
                                       "budget": budget})
    assert space.canonical()["dataset_options"]["test_seed"] == 5
    dataset = load_dataset(space)
    assert [t.kind for t in dataset.tasks][-1] == "normals"
    direct = get_dataset("scenes", size=32, n_train=8, n_val=8, n_test=8, test_seed=5,
                         normals=True, cache_dir=tmp_path)
    assert _equal(dataset.split("test"), direct.split("test"))
    assert not _equal(dataset.split("test"), get_dataset(
        "scenes", size=32, n_train=8, n_val=8, n_test=8, normals=True,
        cache_dir=tmp_path).split("test"))
    shapes = default.model_copy(update={"dataset_options": DatasetOptions(test_seed=5)})
    with pytest.raises(UserError) as err:
        load_dataset(shapes)
    assert err.value.field == "dataset_options.test_seed"
