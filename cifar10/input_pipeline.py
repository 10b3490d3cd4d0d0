"""The training input pipeline, entirely in the TensorFlow graph: seeded shuffle, gather, augment, prefetch.

Every random draw is stateless and keyed by (stream key, epoch) or (stream key, global step), each
stream (shuffle, flip, rotation, shift) with its own key derived from the seed, so the batches
of epoch k are the same whether training ran straight through or resumed at epoch k.
Augmentation (rotation, shift, horizontal flip) is one projective transform per image, batched.
"""

from __future__ import annotations

import math

import numpy as np

from cifar10.framework import tf
from cifar10.params import TrainParams
from cifar10.seeds import stream_seed


def augment_batch(images: tf.Tensor, step: tf.Tensor, seed: int, params: TrainParams) -> tf.Tensor:
    """Return `images` (B, H, W, C float) randomly rotated, shifted and flipped; draws keyed by (seed, step)."""
    shape = tf.shape(images)
    batch, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    step = tf.cast(step, tf.int64)

    def draw(stream: str, low: float, high: float) -> tf.Tensor:
        key = tf.stack([tf.constant(stream_seed(seed, stream), tf.int64), step])
        return tf.random.stateless_uniform([batch], seed=key, minval=low, maxval=high)

    if params.flip:
        flip = draw("flip", 0.0, 1.0) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if params.rotation_deg == 0 and params.shift == 0:
        return images
    angle = draw("rotation", -params.rotation_deg, params.rotation_deg) * (math.pi / 180.0)  # radians
    dx = draw("shift_x", -params.shift, params.shift) * width  # pixels
    dy = draw("shift_y", -params.shift, params.shift) * height
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # The transform maps each output pixel (x, y) to the input pixel it samples:
    # rotate about the centre by `angle`, then move the content by (dx, dy).
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy - dx, sin, cos, cy - sin * cx - cos * cy - dy, zeros, zeros], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=params.fill_mode.upper(),
    )


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Return the number of batches per epoch; the last one may be smaller."""
    return math.ceil(num_images / batch_size)


def train_dataset(
    images: np.ndarray, labels: np.ndarray, params: TrainParams, seed: int, start_epoch: int = 0
) -> tf.data.Dataset:
    """Return one dataset covering epochs start_epoch..params.epochs-1, batch after batch.

    Each epoch is a fresh permutation keyed by (seed, epoch); each batch's augmentation by
    (seed, global step). Pass it to `fit` with `steps_per_epoch` and `initial_epoch=start_epoch`.
    """
    num = len(images)
    steps = steps_per_epoch(num, params.batch_size)
    x = tf.convert_to_tensor(images)
    y = tf.convert_to_tensor(labels.astype(np.int32))

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([tf.constant(stream_seed(seed, "shuffle"), tf.int64), epoch])
        order = tf.argsort(tf.random.stateless_uniform([num], seed=key))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(params.batch_size)
        return batches.enumerate().map(lambda i, idx: (epoch * steps + i, idx))

    def gather_and_augment(step: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return augment_batch(tf.gather(x, idx), step, seed, params), tf.gather(y, idx)

    epochs = tf.data.Dataset.range(start_epoch, params.epochs)
    return (
        epochs.flat_map(epoch_batches)
        .map(gather_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Return the images and labels in order, batched, for validation."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
