"""The normalized data that normalize hands to train and preview: `{x,y}_{train,val}.npy` and stats.json.

Writer and reader live side by side here, so the format has one owner. Images are float32 NHWC,
z-scored with the statistics in stats.json (0..255 pixel units); labels are 1-D integer class indices
into stats.json's `class_names` (the archive's, from its meta member: 10, 100 or 20 of them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar10.atomic import atomic_dir, write_json
from cifar10.dataset import IMAGE_SHAPE, checked_class_names
from cifar10.errors import DataError

PARTS = ("train", "val")  # the test images are read from the archive by evaluate, never from here
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class Stats:
    mean: tuple[float, ...]  # pixel mean in 0..255 units: 1 value (global) or 3 (per RGB channel)
    std: tuple[float, ...]  # pixel standard deviation, same shape as mean
    eps: float  # added to std before dividing

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "eps": self.eps}

    @classmethod
    def from_json(cls, data: dict, what: str = STATS_FILE) -> Stats:
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
        if not (np.isfinite(eps) and eps >= 0):
            raise DataError(f"{what}: eps must be a finite non-negative number, got {eps}")
        return cls(mean, std, eps)


def normalize_images(images: np.ndarray, stats: Stats) -> np.ndarray:
    """Return (images - mean) / (std + eps) as float32, NHWC."""
    mean = np.asarray(stats.mean, dtype=np.float32)
    scale = np.asarray(1.0 / (np.asarray(stats.std) + stats.eps), dtype=np.float32)
    return (images.astype(np.float32) - mean) * scale


def denormalize_images(normalized: np.ndarray, stats: Stats) -> np.ndarray:
    """Undo `normalize_images` for display: float (N, 32, 32, 3) -> uint8, rounded and clipped to 0..255."""
    raw = normalized * (np.asarray(stats.std) + stats.eps) + np.asarray(stats.mean)
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8)


def write_normalized(
    folder: Path, arrays: dict[str, np.ndarray], stats: Stats, method: str, class_names: tuple[str, ...]
) -> None:
    """Replace `folder` with the arrays x_<part>, y_<part> for each part in PARTS and stats.json (statistics,
    counts and the class names the labels index), atomically."""
    with atomic_dir(folder) as tmp:
        for part in PARTS:
            np.save(tmp / f"x_{part}.npy", arrays[f"x_{part}"].astype(np.float32, copy=False))
            np.save(tmp / f"y_{part}.npy", arrays[f"y_{part}"])
        counts = {part: int(len(arrays[f"y_{part}"])) for part in PARTS}
        write_json(
            tmp / STATS_FILE,
            {"method": method, **stats.to_json(), "counts": counts, "class_names": list(class_names)},
        )


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} not found; run the normalize stage first") from None
    except ValueError as exc:
        raise DataError(f"{path} is not a readable .npy array ({exc})") from None


def read_normalized(folder: Path, parts: tuple[str, ...] = PARTS) -> tuple[dict[str, np.ndarray], Stats]:
    """Return ({x_<part>, y_<part>}, stats) from `folder`, checking shapes, dtypes and that every label indexes
    one of stats.json's class names (read_class_names)."""
    arrays: dict[str, np.ndarray] = {}
    for part in parts:
        x, y = _load_array(folder / f"x_{part}.npy"), _load_array(folder / f"y_{part}.npy")
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{folder}/x_{part}.npy must be float32 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{folder}/y_{part}.npy must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{folder}: x_{part}.npy has {len(x)} images but y_{part}.npy has {len(y)} labels")
        arrays[f"x_{part}"], arrays[f"y_{part}"] = x, y
    num_classes = len(read_class_names(folder))
    for part in parts:
        y = arrays[f"y_{part}"]
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{folder}/y_{part}.npy has labels outside 0..{num_classes - 1}")
    return arrays, read_stats(folder / STATS_FILE)


MAX_STATS_BYTES = 2**20  # stats.json is under 2 KiB for CIFAR-100; refuse anything larger unread


def _read_stats_json(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATS_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"{path} not found; run the normalize stage first") from None
    if len(data) > MAX_STATS_BYTES:
        raise DataError(f"{path} is larger than {MAX_STATS_BYTES // 2**20} MiB; run the normalize stage again")
    try:
        raw = json.loads(data)
    # ValueError covers bad JSON, bad UTF-8 and a number of thousands of digits; RecursionError deep nesting.
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path} is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return raw


def read_stats(path: Path) -> Stats:
    """Read and check stats.json's statistics."""
    return Stats.from_json(_read_stats_json(path), str(path))


def read_class_names(folder: Path) -> tuple[str, ...]:
    """Return the class names in `folder`/stats.json, which the labels index, after checking them."""
    path = folder / STATS_FILE
    raw = _read_stats_json(path)
    if "class_names" not in raw:
        raise DataError(f"{path} has no class_names (written before CIFAR-100 support); run the normalize stage again")
    return checked_class_names(raw["class_names"], f"{path}: class_names")
