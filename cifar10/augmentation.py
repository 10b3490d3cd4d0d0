"""Training augmentation (random rotation, shift, horizontal flip) for any Keras 3 backend: the warp.

The random draws are made on the host (cifar10.input_pipeline.draw_augmentation), so they are the same numbers
under TensorFlow and JAX and after a resume. The pixel work is this Keras layer inside the compiled train step:
it runs on the accelerator where there is one, and on CPU it runs in the same graph as the network.
"""

from __future__ import annotations

import numpy as np

from cifar10.framework import keras
from cifar10.input_pipeline import ANGLE, FLIP, NUM_DRAWS, SHIFT_X, SHIFT_Y
from cifar10.params import TrainParams


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

    def call(self, images, draws, training=None):
        if not training:
            return images
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


def build_trainer(core: keras.Model, params: TrainParams) -> keras.Model:
    """Return the model that `fit` trains: (images, draws) -> RandomAffine -> `core`; it shares core's weights."""
    images = keras.Input(core.input_shape[1:], name="normalized_image")
    draws = keras.Input((NUM_DRAWS,), name="augmentation")
    augmented = RandomAffine(params.fill_mode, warps(params), name="augment")(images, draws)
    return keras.Model([images, draws], core(augmented), name="trainer")
