"""Training augmentation (random rotation, shift, horizontal flip) for any Keras 3 backend: the warp.

The random draws are made on the host (cifar10.input_pipeline.draw_augmentation), so they are the same numbers
under TensorFlow and JAX and after a resume. The pixel work is this Keras layer: inside the compiled train step
it runs on the accelerator where there is one. Under TensorFlow on a CPU the same layer code runs instead in a
parallel tf.data map built from tensors (`warped_dataset`): the train stage's batches otherwise reach TensorFlow
through Python, which halved training speed on a 2-core CPU (see `warped_dataset`). Both ways give the same
pixels, so the same run.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cifar10.framework import keras, tf
from cifar10.input_pipeline import ANGLE, FLIP, NUM_DRAWS, SHIFT_X, SHIFT_Y
from cifar10.params import TrainParams

AUGMENT_NAME = "augment"  # the trainer's RandomAffine layer


@keras.saving.register_keras_serializable(package="cifar10")
class RandomAffine(keras.layers.Layer):
    """Flip, rotate about the centre and shift each image by its row of draws; the identity outside training.

    Bilinear sampling; pixels brought in from outside the image follow `fill_mode` (nearest, reflect,
    wrap, constant 0). Runs in float32 whatever the global precision policy.
    """

    def __init__(self, fill_mode: str = "nearest", warp: bool = True, **kwargs) -> None:
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        self.fill_mode = fill_mode
        self.warp = warp  # False: flips only (no rotation or shift), so the resampling is skipped
        # True while the input pipeline applies the warp (warped_dataset); a run-time choice, not saved.
        self.in_input_pipeline = False

    def call(self, images, draws, training=None):
        if not training or self.in_input_pipeline:
            return images
        return self.augment(images, draws)

    def augment(self, images, draws):
        """Return `images` (float32) flipped, rotated and shifted by `draws`, in backend ops."""
        ops = keras.ops
        flip = draws[:, FLIP] > 0.5
        images = ops.where(flip[:, None, None, None], ops.flip(images, axis=2), images)
        if not self.warp:
            return images
        angle, dx, dy = draws[:, ANGLE], draws[:, SHIFT_X], draws[:, SHIFT_Y]
        height, width = ops.shape(images)[1], ops.shape(images)[2]
        cx, cy = (width - 1) / 2, (height - 1) / 2
        cos, sin = ops.cos(angle), ops.sin(angle)
        zeros = ops.zeros_like(angle)
        # Each row maps an output pixel (x, y) to the input pixel it samples:
        # rotate about the centre by `angle`, then move the content by (dx, dy).
        transforms = ops.stack(
            [cos, -sin, cx - cos * cx + sin * cy - dx, sin, cos, cy - sin * cx - cos * cy - dy, zeros, zeros], axis=1
        )
        return ops.image.affine_transform(
            images, transforms, interpolation="bilinear", fill_mode=self.fill_mode, fill_value=0.0
        )

    def compute_output_shape(self, images_shape, draws_shape=None):
        return images_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "fill_mode": self.fill_mode, "warp": self.warp}


def warps(params: TrainParams) -> bool:
    """Return whether params ask for rotation or shift (else the augmentation is at most a flip)."""
    return params.rotation_deg > 0 or params.shift > 0


def augment_images(images: np.ndarray, draws: np.ndarray, params: TrainParams) -> np.ndarray:
    """Return `images` (N, H, W, C float32) augmented by `draws` exactly as the train step does it."""
    layer = RandomAffine(params.fill_mode, warps(params))
    return keras.ops.convert_to_numpy(layer(images, draws, training=True))


def warped_dataset(
    images: np.ndarray, labels: np.ndarray, steps: Iterable[tuple[np.ndarray, np.ndarray]], layer: RandomAffine
) -> tf.data.Dataset:
    """Return the training batches ((augmented images, draws), int32 labels) as a TensorFlow dataset whose
    parallel map gathers and warps each batch with `layer`'s code, and set `layer` to pass its input through.

    `steps` gives each step's (indices, draws) (cifar10.input_pipeline.train_steps), so the batches hold the same
    images and draws as train_batches, in the same order. TensorFlow only.

    The steps are drawn here, all of them (20 bytes an image an epoch: 100 MB for 125 epochs of 40,000 images),
    and the dataset is built from tensors: a dataset that calls Python (`from_generator`, which Keras also uses
    for a generator) kept this 2-core machine's training at about half its speed for the rest of the process:
    123 against 212 images/s for the same network and warp, one fresh process each (an ad-hoc run; the kept
    A/B is benchmarks/augment_in_step_vs_tfdata.py).
    """
    index_parts, draw_parts, bounds = [], [], [0]
    for idx, draws in steps:
        index_parts.append(idx.astype(np.int32))
        draw_parts.append(draws)
        bounds.append(bounds[-1] + len(idx))
    x = tf.convert_to_tensor(images)
    y = tf.convert_to_tensor(labels.astype(np.int32))
    order = tf.convert_to_tensor(np.concatenate(index_parts) if index_parts else np.zeros(0, np.int32))
    all_draws = tf.convert_to_tensor(np.concatenate(draw_parts) if draw_parts else np.zeros((0, NUM_DRAWS), np.float32))

    def gather_and_warp(start, end):
        idx, draws = order[start:end], all_draws[start:end]
        return (layer.augment(tf.gather(x, idx), draws), draws), tf.gather(y, idx)

    layer.in_input_pipeline = True
    step_bounds = tf.data.Dataset.from_tensor_slices((bounds[:-1], bounds[1:]))
    return step_bounds.map(gather_and_warp, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def build_trainer(core: keras.Model, params: TrainParams) -> keras.Model:
    """Return the model that `fit` trains: (images, draws) -> RandomAffine -> `core`; it shares core's weights."""
    images = keras.Input(core.input_shape[1:], name="normalized_image")
    draws = keras.Input((NUM_DRAWS,), name="augmentation")
    augmented = RandomAffine(params.fill_mode, warps(params), name=AUGMENT_NAME)(images, draws)
    return keras.Model([images, draws], core(augmented), name="trainer")
