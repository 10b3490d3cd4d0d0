"""Stage: show what the augmentation params do, as a grid of training images beside augmented copies.

Runs the training pipeline's own augmentation (cifar10.augmentation, the draws of the first training steps) on the
normalized training arrays, so the picture is exactly what the network sees, un-normalized for display.
"""

from __future__ import annotations

import numpy as np

from cifar10.devices import pin_stage_devices
from cifar10.errors import run_stage
from cifar10.figures import labelled_grid
from cifar10.input_pipeline import draw_augmentation
from cifar10.normalized import denormalize_images, read_class_names, read_normalized
from cifar10.params import TrainParams
from cifar10.seeds import stream_seed
from cifar10.stage import start_stage

ROWS = 6  # training images shown
COPIES = 7  # augmented copies of each, beside the original


def augmented_copies(images: np.ndarray, params: TrainParams, seed: int, copies: int) -> np.ndarray:
    """Return (len(images), copies, H, W, C): each image augmented `copies` times, one training step's draw each."""
    from cifar10.augmentation import augment_images  # Keras starts here

    height, width = images.shape[1:3]
    return np.stack(
        [
            augment_images(images, draw_augmentation(seed, step, len(images), params, height, width), params)
            for step in range(copies)
        ],
        axis=1,
    )


def main() -> None:
    args, params, seed = start_stage(
        __doc__,
        {"data": "folder written by the normalize stage", "output": "the PNG to write"},
        section="train",
        seeded=True,
    )
    pin_stage_devices(args.params)  # before Keras starts
    arrays, stats = read_normalized(args.data, ("train",))
    class_names = read_class_names(args.data)
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    picked = np.random.default_rng(stream_seed(seed, "preview")).choice(
        len(x_train), size=min(ROWS, len(x_train)), replace=False
    )
    originals = x_train[picked]
    copies = augmented_copies(originals, params, seed, COPIES)
    tiles = np.concatenate([originals[:, None], copies], axis=1).reshape(-1, *originals.shape[1:])
    titles = [class_names[y_train[i]] if k == 0 else f"aug {k}" for i in picked for k in range(COPIES + 1)]
    labelled_grid(
        denormalize_images(tiles, stats),
        titles,
        ["black"] * len(titles),
        COPIES + 1,
        args.output,
        f"Augmentation: rotation ±{params.rotation_deg:g}°, shift ±{params.shift:.0%}, "
        f"flip {'on' if params.flip else 'off'}, fill {params.fill_mode} (first column: original)",
    )
    print(f"preview: {args.output}")


if __name__ == "__main__":
    run_stage(main)
