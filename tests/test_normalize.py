"""The normalize stage's core: stratified seeded split, training-only statistics, z-scoring, checked reloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cifar10.archive import load_train
from cifar10.errors import DataError
from cifar10.normalized import (
    Stats,
    denormalize_images,
    normalize_images,
    read_normalized,
    read_stats,
    write_normalized,
)
from cifar10.preprocessing import compute_stats, split_and_normalize, stratified_split
from cifar10.seeds import stream_seed
from tests.conftest import CLASS_NAMES, PER_BATCH, normalize_params


def test_split_is_stratified_exact_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 50]).astype(np.uint8)
    train, val = stratified_split(labels, 150, seed=1)
    assert len(val) == 150 and len(train) == len(labels) - 150
    assert not set(train) & set(val)
    counts = np.bincount(labels[val], minlength=10)
    assert counts.tolist() == [20] * 5 + [10] * 5  # each class in proportion
    again, _ = stratified_split(labels, 150, seed=1)
    other_train, other_val = stratified_split(labels, 150, seed=2)
    assert np.array_equal(train, again)
    assert not np.array_equal(val, other_val)


def test_split_rounding_and_zero():
    labels = np.arange(10).repeat(7)
    _, val = stratified_split(labels, 13, seed=0)
    assert len(val) == 13
    train, val = stratified_split(labels, 0, seed=0)
    assert len(val) == 0 and len(train) == 70


def test_split_larger_than_training_set_is_refused():
    with pytest.raises(DataError) as info:
        stratified_split(np.arange(10).repeat(10), 100, seed=0)
    assert str(info.value) == (
        "normalize.val_size must leave at least one training image, got 100 of 100; "
        "lower it for a small archive (-S normalize.val_size=N)"
    )


def test_global_and_per_channel_stats():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    images[..., 2] //= 2  # make the blue channel differ
    glob = compute_stats(images, "global", 1e-7)
    chan = compute_stats(images, "per_channel", 1e-7)
    assert len(glob.mean) == 1 and glob.mean[0] == pytest.approx(images.mean())
    assert glob.std[0] == pytest.approx(images.std())
    assert len(chan.mean) == 3 and chan.mean[2] == pytest.approx(images[..., 2].mean())
    for stats, axes in ((glob, None), (chan, (0, 1, 2))):
        z = normalize_images(images, stats)
        assert z.dtype == np.float32
        assert np.allclose(z.mean(axis=axes), 0, atol=1e-4) and np.allclose(z.std(axis=axes), 1, atol=1e-4)


def test_formula_matches_the_tutorial():
    images = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    stats = Stats((100.0,), (50.0,), 1e-7)
    assert np.allclose(normalize_images(images, stats), (images.astype(np.float32) - 100.0) / (50.0 + 1e-7))


def test_statistics_come_from_the_training_part_only(archive):
    train = load_train(archive[0])
    arrays, stats = split_and_normalize(train.images, train.labels, normalize_params(val_size=20), seed=3)
    assert set(arrays) == {"x_train", "y_train", "x_val", "y_val"}  # no test arrays: evaluate reads the archive
    assert len(arrays["x_train"]) == 5 * PER_BATCH - 20 and len(arrays["x_val"]) == 20
    # Training pixels are exactly standardized; validation pixels are not.
    assert abs(float(arrays["x_train"].mean())) < 1e-4 and abs(float(arrays["x_train"].std()) - 1) < 1e-4
    assert abs(float(arrays["x_val"].mean())) > 1e-4
    assert {a.dtype for k, a in arrays.items() if k.startswith("x_")} == {np.dtype(np.float32)}
    # Labels travel with their images: un-normalizing gives back exactly the archive's pixels.
    train_idx, val_idx = stratified_split(train.labels, 20, stream_seed(3, "split"))
    assert np.array_equal(denormalize_images(arrays["x_val"], stats), train.images[val_idx])
    assert np.array_equal(arrays["y_train"], train.labels[train_idx])
    # The method param reaches the statistics: one pair for global, one per channel otherwise.
    assert len(stats.mean) == 1 and stats.eps == normalize_params().eps
    _, per_channel = split_and_normalize(
        train.images, train.labels, normalize_params(val_size=20, method="per_channel"), seed=3
    )
    assert len(per_channel.mean) == 3 and len(per_channel.std) == 3


def test_written_arrays_read_back_unchanged(tmp_path: Path, archive):
    train = load_train(archive[0])
    for val_size in (0, 20):
        arrays, stats = split_and_normalize(train.images, train.labels, normalize_params(val_size=val_size), seed=1)
        write_normalized(tmp_path / f"v{val_size}", arrays, stats, "global", train.class_names)
        back, back_stats = read_normalized(tmp_path / f"v{val_size}")
        assert back_stats == stats
        assert set(back) == set(arrays) and all(np.array_equal(back[k], arrays[k]) for k in arrays)
        assert len(back["x_val"]) == val_size


def _write(folder: Path, arrays: dict) -> None:
    folder.mkdir(exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    stats = {"mean": [120.0], "std": [60.0], "eps": 1e-7, "class_names": list(CLASS_NAMES)}
    (folder / "stats.json").write_text(json.dumps(stats))


def test_hand_edited_arrays_are_refused(tmp_path: Path):
    x = np.zeros((4, 32, 32, 3), np.float32)
    y = np.zeros(4, np.uint8)
    _write(tmp_path / "ok", {"x_train": x, "y_train": y})
    assert len(read_normalized(tmp_path / "ok", ("train",))[0]["x_train"]) == 4
    cases = {
        "count": ({"x_train": x, "y_train": y[:3]}, "x_train.npy has 4 images but y_train.npy has 3 labels"),
        "dtype": ({"x_train": x.astype(np.float64), "y_train": y}, "must be float32 of shape (N, 32, 32, 3)"),
        "shape": ({"x_train": np.zeros((4, 28, 28, 3), np.float32), "y_train": y}, "got float32 (4, 28, 28, 3)"),
        "labels": ({"x_train": x, "y_train": y + 10}, "has labels outside 0..9"),
        # Labels of the right dtype but 2-D, or 1-D but float: each check on its own.
        "2-D labels": (
            {"x_train": x, "y_train": y.reshape(4, 1)},
            "y_train.npy must be a 1-D integer array, got uint8 (4, 1)",
        ),
        "float labels": (
            {"x_train": x, "y_train": y.astype(np.float32)},
            "y_train.npy must be a 1-D integer array, got float32 (4,)",
        ),
    }
    for name, (arrays, message) in cases.items():
        _write(tmp_path / name, arrays)
        with pytest.raises(DataError) as info:
            read_normalized(tmp_path / name, ("train",))
        assert message in str(info.value), name
    with pytest.raises(DataError) as info:
        read_normalized(tmp_path / "missing", ("train",))
    assert str(info.value) == f"{tmp_path / 'missing' / 'x_train.npy'} not found; run the normalize stage first"


def test_an_array_file_holding_pickled_objects_is_refused_unloaded(tmp_path: Path):
    """A .npy of dtype object is a pickle: numpy would run it with allow_pickle=True. It is never loaded."""
    np.save(tmp_path / "x_train.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y_train.npy", np.zeros(2, np.uint8))
    with pytest.raises(DataError) as info:
        read_normalized(tmp_path, ("train",))
    assert str(info.value).startswith(f"{tmp_path / 'x_train.npy'} is not a readable .npy array (Object arrays cannot")


def test_stats_json_is_written_with_the_method_and_the_counts(tmp_path: Path):
    arrays = {
        "x_train": np.zeros((3, 32, 32, 3), np.float32),
        "y_train": np.array([0, 1, 2], np.uint8),
        "x_val": np.zeros((1, 32, 32, 3), np.float32),
        "y_val": np.array([4], np.uint8),
    }
    names = ("a", "b", "c", "d", "e")
    write_normalized(tmp_path / "n", arrays, Stats((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.5), "per_channel", names)
    assert json.loads((tmp_path / "n/stats.json").read_text()) == {
        "method": "per_channel",
        "mean": [1.0, 2.0, 3.0],
        "std": [4.0, 5.0, 6.0],
        "eps": 0.5,
        "counts": {"train": 3, "val": 1},
        "class_names": list(names),
    }
    assert read_stats(tmp_path / "n/stats.json") == Stats((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.5)


def test_stats_files_that_are_missing_or_not_json_say_so(tmp_path: Path):
    with pytest.raises(DataError) as info:
        read_stats(tmp_path / "stats.json")
    assert str(info.value) == f"{tmp_path / 'stats.json'} not found; run the normalize stage first"
    (tmp_path / "stats.json").write_text("{mean: 1")
    with pytest.raises(DataError) as info:
        read_stats(tmp_path / "stats.json")
    assert str(info.value).startswith(f"{tmp_path / 'stats.json'} is not valid JSON (Expecting property name")
    # Deep nesting and a number of 5,000 digits: json raises RecursionError and ValueError, not JSONDecodeError.
    for text in ("[" * 100_000, '{"mean": [' + "9" * 5000 + "]}"):
        (tmp_path / "stats.json").write_text(text)
        with pytest.raises(DataError, match="is not valid JSON"):
            read_stats(tmp_path / "stats.json")


def test_a_stats_file_over_1_mib_is_refused_unparsed_and_one_of_1_mib_is_read(tmp_path: Path):
    path = tmp_path / "stats.json"
    path.write_bytes(b"[" + b" " * (2**20 - 2) + b"]")  # exactly 1 MiB: read, and refused for what it holds
    with pytest.raises(DataError) as info:
        read_stats(path)
    assert str(info.value) == f"{path} must hold a JSON object, got list"
    path.write_bytes(b"[" + b" " * (2**20 - 1) + b"]")  # one byte more
    with pytest.raises(DataError) as info:
        read_stats(path)
    assert str(info.value) == f"{path} is larger than 1 MiB; run the normalize stage again"
    path.write_text('"' + "x" * 300)  # not JSON: the parser's own message follows
    with pytest.raises(DataError) as info:
        read_stats(path)
    assert str(info.value) == f"{path} is not valid JSON (Unterminated string starting at: line 1 column 1 (char 0))"


def test_display_undoes_eps_and_clips_to_the_pixel_range():
    stats = Stats((100.0,), (2.0,), 1.0)  # a large eps: the inverse must use std + eps, not std - eps
    pixels = np.array([0, 1, 99, 100, 254, 255], np.uint8).reshape(1, 1, 6, 1)
    back = denormalize_images(normalize_images(pixels, stats), stats)
    assert back.dtype == np.uint8 and back.tolist() == pixels.tolist()
    beyond = denormalize_images(np.array([-1e3, 1e3], np.float32).reshape(1, 1, 2, 1), stats)
    assert beyond.ravel().tolist() == [0, 255]  # clipped, not wrapped around


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"mean": [120.0], "std": [0.0], "eps": 1e-7}, "std must be positive and finite, got [0.0]"),
        ({"mean": [120.0], "std": [-3.0], "eps": 1e-7}, "std must be positive and finite, got [-3.0]"),
        ({"mean": [120.0], "eps": 1e-7}, "must hold mean, std and eps"),
        ({"mean": [1, 2], "std": [1, 2], "eps": 0}, "must both have 1 or 3 values"),
        (
            {"mean": [1, 2, 3, 4], "std": [1, 2, 3, 4], "eps": 0},
            "mean and std must both have 1 or 3 values, got 4 and 4",
        ),
        ({"mean": [120.0], "std": [60.0], "eps": float("nan")}, "eps must be a finite non-negative number, got nan"),
        ({"mean": [120.0], "std": [60.0], "eps": -1e-7}, "eps must be a finite non-negative number, got -1e-07"),
    ],
)
def test_hand_edited_stats_are_refused(tmp_path: Path, content, message):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as info:
        read_stats(path)
    assert message in str(info.value) and str(info.value).startswith(str(path))


def test_the_smallest_valid_stats_are_accepted(tmp_path: Path):
    """The edges of what stats.json may hold: a std below 1, eps 0, three channels."""
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"mean": [0.0, 1.0, 2.0], "std": [0.5, 0.25, 1e-3], "eps": 0}))
    assert read_stats(path) == Stats((0.0, 1.0, 2.0), (0.5, 0.25, 1e-3), 0.0)


def test_split_gives_the_leftover_to_the_largest_remainders():
    # 6, 3 and 1 images; 4 held out: exact shares 2.4, 1.2, 0.4 -> floors 2, 1, 0 and one left over,
    # which goes to the class with the largest remainder (0.4, the third), not to the largest class.
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    _, val = stratified_split(labels, 4, seed=0)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 1]
    # 5, 3, 2 of 10, 3 held out: 1.5, 0.9, 0.6 -> floors 1, 0, 0, two left over: to remainders 0.9 and 0.6.
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    _, val = stratified_split(labels, 3, seed=0)
    assert np.bincount(labels[val], minlength=3).tolist() == [1, 1, 1]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_split_is_exact_disjoint_and_stratified_for_any_labels(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    val_size = min(int(fraction * len(labels)), len(labels) - 1)
    train, val = stratified_split(labels, val_size, seed)
    assert len(val) == val_size and len(train) + len(val) == len(labels)
    assert not set(train.tolist()) & set(val.tolist())
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    exact = val_size * np.asarray(counts) / len(labels)
    taken = np.bincount(labels[val], minlength=len(counts))
    assert np.all(np.abs(taken - exact) < 1)  # each class within one image of its share
    # Whoever got the extra image had a remainder at least as large as whoever did not.
    remainders = exact - np.floor(exact)
    got_extra = taken > np.floor(exact)
    if got_extra.any() and (~got_extra).any():
        assert remainders[got_extra].min() >= remainders[~got_extra].max() - 1e-9


@settings(max_examples=60, deadline=None)
@given(
    # Small images: the arithmetic is per pixel, so 2x2 tells as much as 32x32 and shrinks well.
    images=hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.just(2), st.just(2), st.just(3))),
    per_channel=st.booleans(),
)
def test_normalization_round_trips_for_any_images(images, per_channel):
    axes = (0, 1, 2) if per_channel else None
    if np.any(images.std(axis=axes) == 0):
        return  # no spread to divide by; compute_stats refuses such images (tested above)
    stats = compute_stats(images, "per_channel" if per_channel else "global", 1e-7)
    assert np.array_equal(denormalize_images(normalize_images(images, stats), stats), images)


def test_tied_remainders_go_to_the_lower_class_index():
    """With more than 16 classes numpy's default sort is not stable; the split must not depend on it."""
    counts = [1, 1, 4, 4, 4, 3, 4, 2, 2, 4, 1, 2, 1, 2, 4, 1, 2]  # 42 images, 17 classes
    labels = np.repeat(np.arange(17), counts)
    _, val_idx = stratified_split(labels, 17, seed=0)
    per_class = np.bincount(labels[val_idx], minlength=17).tolist()
    # Classes 2, 3, 4, 6, 9 and 14 tie (4 images: 17 * 4 / 42 = 1.62); the leftover goes to 2, 3, 4, 6, 9.
    assert per_class == [0, 0, 2, 2, 2, 1, 2, 1, 1, 2, 0, 1, 0, 1, 1, 0, 1]


def test_statistics_refuse_images_without_variance_and_accept_a_small_one():
    flat = np.full((4, 32, 32, 3), 7, np.uint8)
    with pytest.raises(DataError) as info:
        compute_stats(flat, "global", 1e-7)
    assert str(info.value) == "training images have zero pixel variance (std [0.0]); cannot normalize"
    with pytest.raises(DataError, match=r"zero pixel variance \(std \[0.5, 0.0, 0.5\]\)"):
        compute_stats(np.concatenate([flat, flat + 1]) * np.array([1, 0, 1], np.uint8), "per_channel", 1e-7)
    almost_flat = np.concatenate([flat, flat + 1])  # pixel std 0.5: small, but an image set that can be normalized
    assert compute_stats(almost_flat, "global", 1e-7).std == (0.5,)
