from __future__ import annotations

import numpy as np
import pytest

from policysearch.augment import Policy, Slot
from policysearch.data import get_dataset
from policysearch.data.multidigits import (
    STROKE_THRESHOLD,
    Layout,
    MultiDigitsDataset,
    compose,
    digit_side,
    draw_layout,
    load_source,
    source_pools,
    upsample,
)
from policysearch.errors import UserError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray]:
    return load_source()


@pytest.fixture(scope="module")
def dataset() -> MultiDigitsDataset:
    return MultiDigitsDataset(seed=0, size=32, n_train=200, n_val=60, n_test=60)


def _arrays(ds: MultiDigitsDataset, split: str) -> list[np.ndarray]:
    s = ds.split(split)
    return [s.images, s.masks, s.left, s.right, s.sources]


def test_same_seed_same_bytes_and_other_seed_differs(dataset: MultiDigitsDataset) -> None:
    again = MultiDigitsDataset(seed=0, size=32, n_train=200, n_val=60, n_test=60)
    for split in SPLITS:
        for a, b in zip(_arrays(dataset, split), _arrays(again, split), strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    other = MultiDigitsDataset(seed=1, size=32, n_train=200, n_val=60, n_test=60)
    assert not np.array_equal(other.split("train").images, dataset.split("train").images)
    assert not np.array_equal(other.split("train").sources, dataset.split("train").sources)


def test_sample_does_not_depend_on_split_length(dataset: MultiDigitsDataset) -> None:
    short = MultiDigitsDataset(seed=0, size=32, n_train=7, n_val=3, n_test=3)
    for split in SPLITS:
        n = len(short.split(split))
        for a, b in zip(_arrays(short, split), _arrays(dataset, split), strict=True):
            assert np.array_equal(a, b[:n])


def test_shapes_dtypes_and_read_only(dataset: MultiDigitsDataset) -> None:
    train = dataset.split("train")
    assert len(train) == 200 and len(dataset.split("val")) == 60
    sample = train[3]
    assert set(sample) == {"image", "left_digit", "right_digit", "mask", "source"}
    assert sample["image"].shape == (32, 32, 3) and sample["image"].dtype == np.uint8
    assert sample["mask"].shape == (32, 32) and sample["mask"].dtype == np.int64
    assert isinstance(sample["left_digit"], int) and 0 <= sample["left_digit"] <= 9
    assert isinstance(sample["right_digit"], int) and 0 <= sample["right_digit"] <= 9
    assert isinstance(sample["source"], tuple) and len(sample["source"]) == 2
    for arr in _arrays(dataset, "train"):
        assert not arr.flags.writeable
    with pytest.raises(ValueError):
        train.images[0, 0, 0, 0] = 1
    # Samples are fresh copies: changing one leaves the split intact.
    sample["image"][:] = 7
    sample["mask"][:] = 3
    assert np.array_equal(train[3]["image"], train.images[3])
    assert np.array_equal(train[3]["mask"], train.masks[3])
    assert train[-1]["source"] == tuple(train.sources[-1])
    assert [s["source"] for s in train[1:3]] == [train[1]["source"], train[2]["source"]]
    with pytest.raises(IndexError):
        train[200]


def test_other_sizes(source: tuple[np.ndarray, np.ndarray]) -> None:
    for size in (16, 48):
        sample = MultiDigitsDataset(size=size, n_train=2, n_val=1, n_test=1).split("val")[0]
        assert sample["image"].shape == (size, size, 3) and sample["mask"].shape == (size, size)
        assert {1 + sample["left_digit"], 1 + sample["right_digit"]} <= set(
            np.unique(sample["mask"]).tolist())


def test_labels_agree_with_pixels(dataset: MultiDigitsDataset,
                                  source: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = source
    side = digit_side(32)
    for sample in dataset.split("train")[:100]:
        left, right = sample["left_digit"], sample["right_digit"]
        mask, image = sample["mask"], sample["image"]
        assert (labels[sample["source"][0]], labels[sample["source"][1]]) == (left, right)
        assert set(np.unique(mask).tolist()) <= {0, 1 + left, 1 + right, 255}
        # Each digit's stroke pixels (its upsampled source above the threshold) are all on the
        # canvas: its own class, or 255 where the other digit's strokes cross them.
        strokes = (upsample(images[list(sample["source"])], side) > STROKE_THRESHOLD).sum((1, 2))
        overlap = int((mask == 255).sum())
        if left != right:
            assert (mask == 1 + left).sum() + overlap == strokes[0]
            assert (mask == 1 + right).sum() + overlap == strokes[1]
            cols = np.arange(32)[None, :].repeat(32, 0)
            assert cols[mask == 1 + left].mean() < cols[mask == 1 + right].mean()
        else:
            assert (mask == 1 + left).sum() + 2 * overlap == strokes.sum()
        # The image is brighter on strokes than on the background, channel by channel.
        for c in range(3):
            assert image[..., c][mask > 0].min() >= image[..., c][mask == 0].max()
        assert image[mask > 0].mean() > image[mask == 0].mean() + 100


def test_strokes_overlap_in_some_canvases(dataset: MultiDigitsDataset) -> None:
    masks = dataset.split("train").masks
    crossed = (masks == 255).any(axis=(1, 2))
    assert 0.1 < crossed.mean() < 0.6  # digits overlap partly, not always


def test_compose_marks_overlap_ignore() -> None:
    block = np.ones((10, 10), dtype=np.float32)
    layout = Layout(side=10, left=(2, 5), right=(8, 7))
    intensity, mask = compose(block, 0.4 * block, (3, 5), layout, 24)
    expected = np.zeros((24, 24), dtype=np.uint8)
    expected[5:15, 2:12] = 4
    assert np.array_equal(mask, expected)  # 0.4 is under the stroke threshold: no strokes
    assert np.allclose(intensity[7:17, 12:18], 0.4) and intensity[5:15, 2:12].min() == 1.0

    intensity, mask = compose(block, block, (3, 5), layout, 24)
    expected[7:17, 8:18] = 6
    expected[7:15, 8:12] = 255
    assert np.array_equal(mask, expected)
    assert np.array_equal(intensity > 0, expected > 0)


def test_layout_fits_and_overlaps_partly() -> None:
    rng = np.random.default_rng(0)
    for size in (16, 17, 20, 32, 33, 64, 100):
        side = digit_side(size)
        for _ in range(200):
            layout = draw_layout(rng, size)
            assert layout.side == side
            (xl, yl), (xr, yr) = layout.left, layout.right
            assert 0 <= xl < xr and xr + side <= size
            assert 0 <= yl <= size - side and 0 <= yr <= size - side
            assert 0.25 * side <= xl + side - xr <= 0.6 * side


def test_pools_are_disjoint_and_stratified(source: tuple[np.ndarray, np.ndarray],
                                           dataset: MultiDigitsDataset) -> None:
    _, labels = source
    pools = source_pools(labels)
    assert sum(len(p) for p in pools.values()) == len(labels) == 1797
    assert len(np.unique(np.concatenate(list(pools.values())))) == 1797
    for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.bincount(labels[pools[split]], minlength=10)
        assert np.all(np.abs(counts - share * np.bincount(labels)) <= 1)
    used = {split: set(dataset.split(split).sources.ravel().tolist()) for split in SPLITS}
    for split in SPLITS:
        assert used[split] <= set(pools[split].tolist())
    assert not used["train"] & used["val"] and not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    sources = dataset.split("train").sources
    assert np.all(sources[:, 0] != sources[:, 1])
    # The pools do not move with the dataset seed.
    other = MultiDigitsDataset(seed=5, n_train=50, n_val=1, n_test=1).split("train").sources
    assert set(other.ravel().tolist()) <= set(pools["train"].tolist())


def test_hflip_mirrors_pixels_but_not_labels(dataset: MultiDigitsDataset) -> None:
    tasks = {t.name: t.kind for t in dataset.tasks}
    augment = Policy(tasks=tasks, shared=(Slot("hflip", 1.0, 1.0),)).transform(seed=0)
    sample = dataset.split("val")[0]
    flipped = augment(sample)["shared"]
    assert np.array_equal(flipped["image"], sample["image"][:, ::-1])
    assert np.array_equal(flipped["mask"], sample["mask"][:, ::-1])
    for key in ("left_digit", "right_digit", "source"):
        assert flipped[key] == sample[key]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": "3"}, "seed"),
        ({"size": 8}, "size"),
        ({"size": True}, "size"),
        ({"size": 32.0}, "size"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": 1.5}, "n_val"),
        ({"n_test": None}, "n_test"),
    ],
)
def test_bad_options_raise_user_error(options: dict, field: str) -> None:
    with pytest.raises(UserError, match=f"^{field}: {field} must be") as info:
        MultiDigitsDataset(**options)
    assert info.value.field == field


def test_unknown_split_is_a_user_error(dataset: MultiDigitsDataset) -> None:
    with pytest.raises(UserError, match="unknown split 'dev'; known: train, val, test"):
        dataset.split("dev")


def test_get_dataset_builds_it() -> None:
    ds = get_dataset("multidigits", size=32, n_train=20, n_val=10, n_test=10)
    assert isinstance(ds, MultiDigitsDataset) and ds.name == "multidigits"
    assert [len(ds.split(s)) for s in SPLITS] == [20, 10, 10]
    specs = {t.name: t for t in ds.tasks}
    assert {n: (t.kind, t.num_classes, t.target_key()) for n, t in specs.items()} == {
        "left_digit": ("classification", 10, "left_digit"),
        "right_digit": ("classification", 10, "right_digit"),
        "seg": ("segmentation", 11, "mask"),
    }
    assert specs["left_digit"].class_names == tuple("0123456789")
    assert specs["seg"].class_names == ("background", *"0123456789")
    assert specs["seg"].ignore_index == 255


@pytest.mark.slow
def test_short_training_beats_chance_on_both_digits() -> None:
    from policysearch.augment import get_baseline
    from policysearch.config import Budget
    from policysearch.training import run_trial

    ds = get_dataset("multidigits", size=32, n_train=400, n_val=150, n_test=10)
    policy = get_baseline("none", {t.name: t.kind for t in ds.tasks})
    # About 5 s of one core; reaches about 0.6 accuracy on each digit (seeds 0 and 1).
    result = run_trial(policy, ds, Budget(epochs=10, batch_size=32, image_size=32), seed=0,
                       device="cpu", threads=1)
    # Chance is 0.1 on each digit.
    assert result.metrics["left_digit"]["accuracy"] > 0.4
    assert result.metrics["right_digit"]["accuracy"] > 0.4
