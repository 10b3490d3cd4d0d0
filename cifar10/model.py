"""The network, its learning-rate schedule, and the self-contained model that takes raw uint8 images.

With the default params this is the Keras tutorial's CNN: three blocks of
[Conv2D 3x3 same + L2 -> ELU -> BatchNorm] x 2 -> MaxPool 2x2 -> Dropout (32/64/128 filters,
dropout 0.2/0.3/0.4), then Flatten -> Dense(classes, softmax): 309,290 parameters for CIFAR-10's 10 classes.
"""

from __future__ import annotations

import numpy as np

from cifar10.classifier import Standardize, with_class_names
from cifar10.dataset import CLASS_NAMES, IMAGE_SHAPE
from cifar10.framework import keras
from cifar10.normalized import Stats
from cifar10.params import TrainParams
from cifar10.seeds import stream_seed

# Keras dtype policy for each train.mixed_precision value: variables stay float32, compute goes low-precision.
DTYPE_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CORE_NAME = "cifar10_cnn"  # the network's name inside the training and inference models


def build_seed_cnn(
    params: TrainParams,
    seed: int,
    dtype: str | None = None,
    num_classes: int = len(CLASS_NAMES),
    sync_batch_norm: bool = False,
) -> keras.Model:
    """Return the uncompiled CNN; it takes z-scored float images (N, 32, 32, 3) and returns class probabilities.

    Each dropout layer draws from its own stream of `seed`; the weights' initial values come from
    Keras' global seed (`keras.utils.set_random_seed`, set by the caller from the "init" stream).
    `dtype` is a Keras dtype policy ("float32", "mixed_bfloat16", ...); None uses the global policy.
    The softmax always runs in float32 so the loss stays accurate under mixed precision.
    `sync_batch_norm`: batch statistics over all replicas of a tf.distribute strategy (TensorFlow only).
    """
    layers = keras.layers
    inputs = keras.Input(IMAGE_SHAPE, name="normalized_image")
    x = inputs
    for block, (width, rate) in enumerate(zip(params.widths, params.dropout), start=1):
        for conv in range(1, params.block_depth + 1):
            x = layers.Conv2D(
                width,
                3,
                padding="same",
                kernel_regularizer=keras.regularizers.L2(params.weight_decay) if params.weight_decay else None,
                dtype=dtype,
                name=f"block{block}_conv{conv}",
            )(x)
            x = layers.Activation(params.activation, dtype=dtype, name=f"block{block}_act{conv}")(x)
            x = layers.BatchNormalization(synchronized=sync_batch_norm, dtype=dtype, name=f"block{block}_bn{conv}")(x)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"block{block}_pool")(x)
        dropout_seed = stream_seed(seed, "dropout", block) % 2**31  # Keras takes a 32-bit seed
        x = layers.Dropout(rate, seed=dropout_seed, dtype=dtype, name=f"block{block}_dropout")(x)
    x = layers.Flatten(dtype=dtype, name="flatten")(x)
    x = layers.Dense(num_classes, dtype=dtype, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=CORE_NAME)


def build_inference_model(core: keras.Model, stats: Stats, class_names: tuple[str, ...] = CLASS_NAMES) -> keras.Model:
    """Return a model that takes raw uint8 images (N, 32, 32, 3), normalizes them with `stats`, then runs `core`.

    Saved as .keras, it needs nothing else: the statistics are the weights of its Standardize layer, the names
    of `core`'s classes (one per output) are in its last layer (cifar10.classifier.ClassNames).
    """
    if tuple(core.output_shape[1:]) != (len(class_names),):
        raise ValueError(f"the network has {core.output_shape[1:]} outputs for {len(class_names)} class names")
    inputs = keras.Input(IMAGE_SHAPE, dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)  # uint8 -> float32, values unchanged
    normalize = Standardize(len(stats.mean), dtype="float32", name="zscore")
    # Computed as normalize_images does (float64 sum, then float32), so the arrays and the model agree exactly.
    normalize.mean.assign(np.asarray(stats.mean, dtype=np.float32))
    normalize.scale.assign(np.asarray(1.0 / (np.asarray(stats.std) + stats.eps), dtype=np.float32))
    outputs = with_class_names(core(normalize(x)), class_names)
    return keras.Model(inputs, outputs, name="cifar10_classifier")


@keras.saving.register_keras_serializable(package="cifar10")
class StepTimeDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate by step, divided by (1 + decay * step).

    This is what Keras 2's `RMSprop(lr, decay=...)` with an epoch-wise LearningRateScheduler computed.
    """

    def __init__(self, boundaries: list[int], values: list[float], decay: float) -> None:
        self.boundaries = [int(b) for b in boundaries]  # steps
        self.values = [float(v) for v in values]
        self.decay = float(decay)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        lr = keras.ops.convert_to_tensor(self.values[0], "float32")
        for boundary, value in zip(self.boundaries, self.values[1:]):
            lr = keras.ops.where(step >= boundary, value, lr)
        return lr / (1.0 + self.decay * step)

    def get_config(self) -> dict:
        return {"boundaries": self.boundaries, "values": self.values, "decay": self.decay}


def make_schedule(params: TrainParams, steps_per_epoch: int) -> StepTimeDecay:
    """Return the learning-rate schedule: epoch boundaries from params turned into step boundaries."""
    return StepTimeDecay([b * steps_per_epoch for b in params.lr_boundaries], list(params.lr_values), params.lr_decay)


def make_optimizer(params: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Return the optimizer named in params with the learning-rate schedule."""
    schedule = make_schedule(params, steps_per_epoch)
    if params.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=schedule)  # rho 0.9, epsilon 1e-7: Keras 2's defaults
    if params.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
