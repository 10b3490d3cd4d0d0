"""Stage 2: split the archive into train / validation / test and z-score the pixels.

Statistics come from the training part only (never validation or test) and are written
to stats.json; train embeds them in the model, so the saved model takes raw uint8 images.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.atomic import atomic_dir
from stages.cifar import CLASS_NAMES, IMAGE_SHAPE, load_train_test
from stages.errors import DataError, run_stage
from stages.params import NormalizeParams, load_section, load_seed, read_params_file

ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass(frozen=True)
class Stats:
    mean: tuple[float, ...]  # pixel mean in 0..255 units: 1 value (global) or 3 (per RGB channel)
    std: tuple[float, ...]  # pixel standard deviation, same shape as mean
    eps: float  # added to std before dividing

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "eps": self.eps}

    @classmethod
    def from_json(cls, data: dict, what: str = "stats.json") -> Stats:
        """Read stats written by `to_json`, refusing a missing key or a non-positive std."""
        try:
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
            eps = float(data["eps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{what} must hold mean, std and eps lists of numbers ({exc!r})") from None
        if len(mean) not in (1, 3) or len(std) != len(mean):
            raise DataError(f"{what}: mean and std must both have 1 or 3 values, got {len(mean)} and {len(std)}")
        if not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s) for s in std):
            raise DataError(f"{what}: std must be positive and finite, got {list(std)}")
        return cls(mean, std, eps)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train indices, validation indices), with classes in proportion in the validation part.

    Each class gets floor(val_size * share) images, and the leftover go to the classes with the
    largest remainders, so exactly `val_size` are held out. Indices are sorted.
    """
    if val_size > len(labels) - 1:
        raise DataError(f"normalize.val_size must leave at least one training image, got {val_size} of {len(labels)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = val_size * counts / len(labels)
    take = np.floor(exact).astype(int)
    leftover = val_size - take.sum()
    take[np.argsort(-(exact - take), kind="stable")[:leftover]] += 1
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=int)
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


def normalize_images(images: np.ndarray, stats: Stats) -> np.ndarray:
    """Return (images - mean) / (std + eps) as float32, NHWC."""
    mean = np.asarray(stats.mean, dtype=np.float32)
    scale = np.asarray(1.0 / (np.asarray(stats.std) + stats.eps), dtype=np.float32)
    return (images.astype(np.float32) - mean) * scale


def split_and_normalize(archive: Path, params: NormalizeParams, seed: int) -> tuple[dict[str, np.ndarray], Stats]:
    """Return the six arrays named in ARRAYS and the training statistics."""
    train, test = load_train_test(archive)
    train_idx, val_idx = stratified_split(train.labels, params.val_size, seed)
    stats = compute_stats(train.images[train_idx], params.method, params.eps)
    arrays = {
        "x_train": normalize_images(train.images[train_idx], stats),
        "y_train": train.labels[train_idx],
        "x_val": normalize_images(train.images[val_idx], stats),
        "y_val": train.labels[val_idx],
        "x_test": normalize_images(test.images, stats),
        "y_test": test.labels,
    }
    return arrays, stats


def load_normalized(folder: Path, names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
    """Load arrays written by this stage, checking shapes, dtypes and that labels match images."""
    arrays = {}
    for name in names:
        path = folder / f"{name}.npy"
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path} not found; run the normalize stage first") from None
        except ValueError as exc:
            raise DataError(f"{path} is not a readable .npy array ({exc})") from None
    for part in {n[2:] for n in names}:
        x, y = arrays.get(f"x_{part}"), arrays.get(f"y_{part}")
        if x is not None and (x.dtype != np.float32 or x.shape[1:] != IMAGE_SHAPE):
            raise DataError(f"{folder}/x_{part}.npy must be float32 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
        if y is not None and (y.ndim != 1 or y.dtype.kind not in "iu"):
            raise DataError(f"{folder}/y_{part}.npy must be a 1-D integer array, got {y.dtype} {y.shape}")
        if x is not None and y is not None and len(x) != len(y):
            raise DataError(f"{folder}: x_{part}.npy has {len(x)} images but y_{part}.npy has {len(y)} labels")
        if y is not None and y.size and (y.min() < 0 or y.max() >= len(CLASS_NAMES)):
            raise DataError(f"{folder}/y_{part}.npy has labels outside 0..{len(CLASS_NAMES) - 1}")
    return arrays


def load_stats(path: Path) -> Stats:
    """Read and check stats.json."""
    try:
        return Stats.from_json(json.loads(path.read_text()), str(path))
    except FileNotFoundError:
        raise DataError(f"{path} not found; run the normalize stage first") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("output", type=Path, help="folder for the .npy arrays and stats.json")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    raw = read_params_file(args.params)
    params: NormalizeParams = load_section(raw, "normalize")
    arrays, stats = split_and_normalize(args.archive, params, load_seed(raw))
    with atomic_dir(args.output) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        counts = {part: int(len(arrays[f"y_{part}"])) for part in ("train", "val", "test")}
        summary = {"method": params.method, **stats.to_json(), "counts": counts}
        (tmp / "stats.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"normalize: {counts} images, mean {[round(m, 3) for m in stats.mean]}, std {[round(s, 3) for s in stats.std]}"
    )


if __name__ == "__main__":
    run_stage(main)
