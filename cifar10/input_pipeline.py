"""The training batches, for any Keras 3 backend: a seeded shuffle per epoch and the augmentation draws per step.

Every random draw is keyed by (stream key, epoch) or (stream key, global step), each stream (shuffle, flip,
rotation, shift) with its own key derived from the seed, so the batches of epoch k are the same whether
training ran straight through or resumed at epoch k, and the same under TensorFlow and JAX. The batches
carry the draws, not augmented pixels: the warp itself runs inside the train step, or under TensorFlow on a CPU
in a parallel tf.data map over the same draws (cifar10.augmentation). No Keras here: plain numpy, whatever
the backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from cifar10.params import TrainParams
from cifar10.seeds import stream_seed

# Columns of the per-image draws: flip (0 or 1), rotation (radians), shift right and shift down (pixels; whole
# pixels with train.whole_pixel_shift).
FLIP, ANGLE, SHIFT_X, SHIFT_Y = range(4)
NUM_DRAWS = 4


def draw_augmentation(seed: int, step: int, batch: int, params: TrainParams, height: int, width: int) -> np.ndarray:
    """Return the (batch, 4) float32 draws of training step `step`; each column is its own stream of `seed`."""

    def uniform(stream: str, bound: float) -> np.ndarray:
        return np.random.default_rng([stream_seed(seed, stream), step]).uniform(-bound, bound, batch)

    draws = np.zeros((batch, NUM_DRAWS), np.float32)
    if params.flip:
        draws[:, FLIP] = uniform("flip", 1.0) < 0.0  # a fair coin
    draws[:, ANGLE] = uniform("rotation", params.rotation_deg) * (math.pi / 180.0)
    for column, stream, size in ((SHIFT_X, "shift_x", width), (SHIFT_Y, "shift_y", height)):
        if params.whole_pixel_shift:
            # Each whole shift in -m..m pixels equally likely, m = floor(shift * size): pad-and-crop by m.
            most = math.floor(params.shift * size)
            draws[:, column] = np.floor(uniform(stream, 1.0) * (most + 0.5) + 0.5)
        else:
            draws[:, column] = uniform(stream, params.shift) * size
    return draws


Batch = tuple[tuple[np.ndarray, np.ndarray], np.ndarray]  # ((images, draws), labels)


def usable_images(num_images: int, replicas: int = 1) -> int:
    """Return how many images each epoch visits: a multiple of `replicas`, since every device of a data-parallel
    run takes an equal slice of each batch. The few left out (fewer than `replicas`) differ from epoch to epoch."""
    return num_images - num_images % replicas


def steps_per_epoch(num_images: int, batch_size: int, replicas: int = 1) -> int:
    """Return the number of batches per epoch; the last one may be smaller."""
    return math.ceil(usable_images(num_images, replicas) / batch_size)


def epoch_order(seed: int, epoch: int, num_images: int) -> np.ndarray:
    """Return the permutation of the training images that epoch `epoch` visits."""
    return np.random.default_rng([stream_seed(seed, "shuffle"), epoch]).permutation(num_images)


def train_steps(
    num_images: int,
    image_size: tuple[int, int],
    params: TrainParams,
    seed: int,
    start_epoch: int = 0,
    replicas: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, draws) of each training step of epochs start_epoch..params.epochs-1: which images the
    batch takes, in order, and their augmentation draws (`image_size`: the images' (height, width))."""
    usable = usable_images(num_images, replicas)
    steps = steps_per_epoch(num_images, params.batch_size, replicas)
    height, width = image_size
    for epoch in range(start_epoch, params.epochs):
        order = epoch_order(seed, epoch, num_images)[:usable]
        for i in range(steps):
            idx = order[i * params.batch_size : (i + 1) * params.batch_size]
            yield idx, draw_augmentation(seed, epoch * steps + i, len(idx), params, height, width)


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    params: TrainParams,
    seed: int,
    start_epoch: int = 0,
    replicas: int = 1,
) -> Iterator[Batch]:
    """Yield the batches of epochs start_epoch..params.epochs-1, one after another.

    Pass it to `fit` with `steps_per_epoch` and `initial_epoch=start_epoch`. Labels are int32. With `replicas`
    (a divisor of the batch size), every batch, the last one of an epoch too, splits evenly over that many devices.
    """
    labels = labels.astype(np.int32)
    for idx, draws in train_steps(len(images), images.shape[1:3], params, seed, start_epoch, replicas):
        yield (images[idx], draws), labels[idx]


def validation_inputs(images: np.ndarray, labels: np.ndarray) -> Batch:
    """Return validation data in the trainer's input format: the draws are zeros (augmentation is off anyway)."""
    return (images, np.zeros((len(images), NUM_DRAWS), np.float32)), labels.astype(np.int32)
