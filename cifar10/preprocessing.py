"""The normalize stage's core: a stratified validation split and the training part's pixel statistics."""

from __future__ import annotations

import numpy as np

from cifar10.errors import DataError
from cifar10.normalized import Stats, normalize_images
from cifar10.params import NormalizeParams
from cifar10.seeds import stream_seed


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train indices, validation indices), with classes in proportion in the validation part.

    Each class gets floor(val_size * share) images, and the leftover go to the classes with the
    largest remainders, so exactly `val_size` are held out. `seed` keys the choice within each class.
    Indices are sorted.
    """
    if val_size > len(labels) - 1:
        raise DataError(
            f"normalize.val_size must leave at least one training image, got {val_size} of {len(labels)}; "
            "lower it for a small archive (-S normalize.val_size=N)"
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = val_size * counts / len(labels)
    take = np.floor(exact).astype(int)
    leftover = val_size - take.sum()
    take[np.argsort(-(exact - take), kind="stable")[:leftover]] += 1
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    val_idx = np.sort(np.concatenate(val))  # `val` has one entry per class, and there is at least one image
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def compute_stats(images: np.ndarray, method: str, eps: float) -> Stats:
    """Return the pixel mean and std of uint8 NHWC `images`: one pair, or one per channel."""
    axes = None if method == "global" else (0, 1, 2)
    mean = np.atleast_1d(images.mean(axis=axes, dtype=np.float64))
    std = np.atleast_1d(images.std(axis=axes, dtype=np.float64))
    if not np.all(std > 0):
        raise DataError(f"training images have zero pixel variance (std {std.tolist()}); cannot normalize")
    return Stats(tuple(mean.tolist()), tuple(std.tolist()), eps)


def split_and_normalize(
    images: np.ndarray, labels: np.ndarray, params: NormalizeParams, seed: int
) -> tuple[dict[str, np.ndarray], Stats]:
    """Return ({x,y}_{train,val}) and the training statistics for uint8 NHWC `images` and their `labels`.

    The split draws from the seed's "split" stream; the statistics come from the training part only.
    """
    train_idx, val_idx = stratified_split(labels, params.val_size, stream_seed(seed, "split"))
    train_images = images[train_idx]  # one gather: 138 MB of uint8 for 45,000 images
    stats = compute_stats(train_images, params.method, params.eps)
    arrays = {
        "x_train": normalize_images(train_images, stats),
        "y_train": labels[train_idx],
        "x_val": normalize_images(images[val_idx], stats),
        "y_val": labels[val_idx],
    }
    return arrays, stats
