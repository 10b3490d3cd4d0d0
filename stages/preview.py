"""Show what the augmentation params do: a grid of training images, each beside augmented copies.

Runs the training pipeline's own augmentation (stages.input_pipeline.augment_batch) on the
normalized training arrays, so the picture is exactly what the network sees, un-normalized for display.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from stages.cifar import CLASS_NAMES  # noqa: E402
from stages.errors import run_stage  # noqa: E402
from stages.figures import labelled_grid, to_display  # noqa: E402
from stages.input_pipeline import augment_batch  # noqa: E402
from stages.normalize import load_normalized, load_stats  # noqa: E402
from stages.params import TrainParams, load_section, load_seed, read_params_file  # noqa: E402

ROWS = 6  # training images shown
COPIES = 7  # augmented copies of each, beside the original


def augmented_copies(images: np.ndarray, params: TrainParams, seed: int, copies: int) -> np.ndarray:
    """Return (len(images), copies, H, W, C): each image augmented `copies` times, one training step's draw each."""
    batch = tf.convert_to_tensor(images)
    return np.stack([augment_batch(batch, tf.constant(step), seed, params).numpy() for step in range(copies)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder written by the normalize stage")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    raw = read_params_file(args.params)
    params: TrainParams = load_section(raw, "train")
    seed = load_seed(raw)
    arrays = load_normalized(args.data, ("x_train", "y_train"))
    stats = load_stats(args.data / "stats.json")
    picked = np.random.default_rng(seed).choice(
        len(arrays["x_train"]), size=min(ROWS, len(arrays["x_train"])), replace=False
    )
    originals = arrays["x_train"][picked]
    copies = augmented_copies(originals, params, seed, COPIES)
    tiles = np.concatenate([originals[:, None], copies], axis=1).reshape(-1, *originals.shape[1:])
    titles = [CLASS_NAMES[arrays["y_train"][i]] if k == 0 else f"aug {k}" for i in picked for k in range(COPIES + 1)]
    colours = ["black"] * len(titles)
    labelled_grid(
        to_display(tiles, stats.mean, stats.std, stats.eps),
        titles,
        colours,
        COPIES + 1,
        args.output,
        f"Augmentation: rotation ±{params.rotation_deg:g}°, shift ±{params.shift:.0%}, "
        f"flip {'on' if params.flip else 'off'}, fill {params.fill_mode} (first column: original)",
    )
    print(f"preview: {args.output}")


if __name__ == "__main__":
    run_stage(main)
