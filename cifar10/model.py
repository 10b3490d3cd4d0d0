"""The networks, their loss and learning-rate schedule, and the self-contained model that takes raw uint8 images.

`train.network: tutorial` (the default) is the Keras tutorial's CNN: three blocks of
[Conv2D 3x3 same + L2 -> ELU -> BatchNorm] x 2 -> MaxPool 2x2 -> Dropout (32/64/128 filters,
dropout 0.2/0.3/0.4), then Flatten -> Dense(classes, softmax): 309,290 parameters for CIFAR-10's 10 classes.

`train.network: resnet` is the fast recipe's network, after the ResNet-9 of the fastest public CIFAR-10 recipes
(David Page's DAWNBench entry, Keller Jordan's airbench): a full-resolution stem conv, then blocks of
Conv -> MaxPool -> BatchNorm -> activation with a residual branch, global max pooling and a scaled linear layer.
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


RESNET_LOGIT_SCALE = 0.125  # the resnet's logits are the linear layer's times this (ResNet-9's): small at the start
RESNET_BN_MOMENTUM = 0.9  # running statistics follow the last ~10 steps: the fast recipe takes few, large steps


def build_seed_cnn(
    params: TrainParams,
    seed: int,
    dtype: str | None = None,
    num_classes: int = len(CLASS_NAMES),
    sync_batch_norm: bool = False,
) -> keras.Model:
    """Return the uncompiled network `params.network` names; it takes z-scored float images (N, 32, 32, 3) and
    returns class probabilities.

    Each dropout layer draws from its own stream of `seed`; the weights' initial values come from
    Keras' global seed (`keras.utils.set_random_seed`, set by the caller from the "init" stream).
    `dtype` is a Keras dtype policy ("float32", "mixed_bfloat16", ...); None uses the global policy.
    The softmax always runs in float32 so the loss stays accurate under mixed precision.
    `sync_batch_norm`: batch statistics over all replicas of a tf.distribute strategy (TensorFlow only).
    """
    inputs = keras.Input(IMAGE_SHAPE, name="normalized_image")
    build = _resnet if params.network == "resnet" else _tutorial_cnn
    logits = build(inputs, params, seed, dtype, num_classes, sync_batch_norm)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=CORE_NAME)


def _dropout(x, seed: int, block: int, rate: float, dtype: str | None):
    dropout_seed = stream_seed(seed, "dropout", block) % 2**31  # Keras takes a 32-bit seed
    return keras.layers.Dropout(rate, seed=dropout_seed, dtype=dtype, name=f"block{block}_dropout")(x)


def _tutorial_cnn(inputs, params: TrainParams, seed: int, dtype: str | None, num_classes: int, sync_batch_norm: bool):
    """Return the tutorial CNN's logits for `inputs`."""
    layers = keras.layers
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
        x = _dropout(x, seed, block, rate, dtype)
    x = layers.Flatten(dtype=dtype, name="flatten")(x)
    return layers.Dense(num_classes, dtype=dtype, name="logits")(x)


def _resnet(inputs, params: TrainParams, seed: int, dtype: str | None, num_classes: int, sync_batch_norm: bool):
    """Return the small ResNet's logits for `inputs`.

    Block 1 is the stem: one Conv -> BN -> activation at full resolution, widths[0] filters. Every later block:
    Conv (widths[i]) -> MaxPool 2x2 -> BN -> activation (pooling before normalizing: a quarter of the BN work),
    then, with block_depth > 1, a residual branch of block_depth - 1 [Conv -> BN -> activation] added to it;
    dropout after each block where its rate is above 0. Then global max pooling and a linear layer without bias,
    scaled by RESNET_LOGIT_SCALE. Convs have no bias (BN follows each); L2 weight decay on every kernel.
    """
    layers = keras.layers
    regularizer = keras.regularizers.L2(params.weight_decay) if params.weight_decay else None

    def conv_bn_act(x, width: int, name: str, pool: bool = False):
        x = layers.Conv2D(
            width, 3, padding="same", use_bias=False, kernel_regularizer=regularizer, dtype=dtype, name=f"{name}_conv"
        )(x)
        if pool:
            x = layers.MaxPooling2D(2, dtype=dtype, name=f"{name}_pool")(x)
        x = layers.BatchNormalization(
            momentum=RESNET_BN_MOMENTUM, synchronized=sync_batch_norm, dtype=dtype, name=f"{name}_bn"
        )(x)
        return layers.Activation(params.activation, dtype=dtype, name=f"{name}_act")(x)

    x = inputs
    for block, (width, rate) in enumerate(zip(params.widths, params.dropout), start=1):
        x = conv_bn_act(x, width, f"block{block}", pool=block > 1)
        if block > 1 and params.block_depth > 1:
            branch = x
            for conv in range(2, params.block_depth + 1):
                branch = conv_bn_act(branch, width, f"block{block}_res{conv}")
            x = layers.Add(dtype=dtype, name=f"block{block}_add")([x, branch])
        if rate > 0:
            x = _dropout(x, seed, block, rate, dtype)
    x = layers.GlobalMaxPooling2D(dtype=dtype, name="global_pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_regularizer=regularizer, dtype=dtype, name="linear")(x)
    return layers.Rescaling(RESNET_LOGIT_SCALE, dtype=dtype, name="logits")(x)


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


@keras.saving.register_keras_serializable(package="cifar10")
class LinearSteps(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear learning rate by step through (0, 0), (knots[i], values[i]), flat after the last knot,
    then divided by (1 + decay * step): with one inner knot, the one-cycle (triangular) schedule."""

    def __init__(self, knots: list[int], values: list[float], decay: float) -> None:
        self.knots = [int(k) for k in knots]  # steps, rising
        self.values = [float(v) for v in values]  # the rate at each knot
        self.decay = float(decay)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        lr = keras.ops.convert_to_tensor(0.0, "float32")
        for (k0, v0), (k1, v1) in zip([(0, 0.0), *zip(self.knots, self.values)], zip(self.knots, self.values)):
            between = (step - k0) / (k1 - k0) * (v1 - v0) + v0  # k1 > k0: params keep the knots rising from 0
            lr = keras.ops.where(step >= k0, between, lr)
        if self.knots:  # past the last knot the rate stays at its value
            lr = keras.ops.where(step >= self.knots[-1], self.values[-1], lr)
        return lr / (1.0 + self.decay * step)

    def get_config(self) -> dict:
        return {"knots": self.knots, "values": self.values, "decay": self.decay}


def make_schedule(params: TrainParams, steps_per_epoch: int) -> StepTimeDecay | LinearSteps:
    """Return the learning-rate schedule: epoch boundaries from params turned into steps.

    step: lr_values[i] from boundary i on. linear: straight lines from 0 at the first step through lr_values[i]
    at boundary i to lr_values[-1] at the end of the last epoch.
    """
    steps = [b * steps_per_epoch for b in params.lr_boundaries]
    if params.lr_schedule == "linear":
        return LinearSteps([*steps, params.epochs * steps_per_epoch], list(params.lr_values), params.lr_decay)
    return StepTimeDecay(steps, list(params.lr_values), params.lr_decay)


@keras.saving.register_keras_serializable(package="cifar10")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of probabilities against integer labels smoothed by `smoothing`: each label becomes
    1 - smoothing + smoothing / classes for its class and smoothing / classes for every other one.

    Keras' sparse cross-entropy has no smoothing, and the batches carry integer labels on every path.
    """

    def __init__(self, smoothing: float, name: str = "smoothed_sparse_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)), classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "smoothing": self.smoothing}


def make_loss(params: TrainParams) -> keras.losses.Loss:
    """Return the training loss: Keras' sparse categorical cross-entropy, or its smoothed form."""
    if params.label_smoothing:
        return SmoothedSparseCrossentropy(params.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()  # categorical cross-entropy on integer labels


def make_optimizer(params: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Return the optimizer named in params with the learning-rate schedule."""
    schedule = make_schedule(params, steps_per_epoch)
    if params.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=schedule)  # rho 0.9, epsilon 1e-7: Keras 2's defaults
    if params.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
