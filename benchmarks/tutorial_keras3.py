"""The tutorial's own training script, ported to Keras 3 as literally as Keras 3 allows: the speed baseline.

"Achieving 90% accuracy in Object Recognition Task on CIFAR-10 Dataset with Keras" trains this
Sequential CNN with `ImageDataGenerator(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1,
horizontal_flip=True)` and `fit_generator`, RMSprop(lr=0.001, decay=1e-6) and an epoch schedule. Keras 3
has neither ImageDataGenerator, fit_generator nor `decay`, so the port does what the Keras 3 migration
guide says: the same augmentation as preprocessing layers mapped over a shuffled `tf.data` pipeline, `fit`,
and the schedule as a LearningRateScheduler (the 1e-6 time decay, 8% after 125 epochs, is left out; it
costs nothing). Everything else is the tutorial's: global z-scoring with numpy, one-hot labels,
categorical cross-entropy, batch 64, steps_per_epoch = N // 64.

    python benchmarks/tutorial_keras3.py DATA_DIR --epochs 2 --result out.json

DATA_DIR holds x_train.npy / y_train.npy as raw uint8 images and labels (what `compare_tutorial.py`
writes); the script prints and saves the training images per second of each epoch after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, regularizers  # noqa: E402


def lr_schedule(epoch: int) -> float:
    lrate = 0.001
    if epoch > 75:
        lrate = 0.0005
    elif epoch > 100:  # the tutorial's `elif`: never reached, kept as written
        lrate = 0.0003
    return lrate


def tutorial_model(weight_decay: float = 1e-4, num_classes: int = 10) -> keras.Model:
    model = keras.Sequential([keras.Input((32, 32, 3))])
    for width, rate in ((32, 0.2), (64, 0.3), (128, 0.4)):
        for _ in range(2):
            model.add(layers.Conv2D(width, (3, 3), padding="same", kernel_regularizer=regularizers.l2(weight_decay)))
            model.add(layers.Activation("elu"))
            model.add(layers.BatchNormalization())
        model.add(layers.MaxPooling2D(pool_size=(2, 2)))
        model.add(layers.Dropout(rate))
    model.add(layers.Flatten())
    model.add(layers.Dense(num_classes, activation="softmax"))
    return model


class EpochTimer(keras.callbacks.Callback):
    """Training seconds of each epoch (validation excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--epochs", type=int, default=125)
    parser.add_argument("--result", type=Path, help="write {'images_per_second': ...} here")
    args = parser.parse_args()
    x_train = np.load(args.data / "x_train.npy").astype("float32")
    y_train = np.load(args.data / "y_train.npy")

    # z-score
    mean = np.mean(x_train, axis=(0, 1, 2, 3))
    std = np.std(x_train, axis=(0, 1, 2, 3))
    x_train = (x_train - mean) / (std + 1e-7)
    num_classes = 10
    y_train = keras.utils.to_categorical(y_train, num_classes)

    model = tutorial_model()
    # data augmentation: ImageDataGenerator(rotation_range=15, width/height_shift_range=0.1, horizontal_flip)
    datagen = keras.Sequential(
        [
            layers.RandomRotation(15 / 360, fill_mode="nearest"),  # a fraction of a full turn: +-15 degrees
            layers.RandomTranslation(0.1, 0.1, fill_mode="nearest"),
            layers.RandomFlip("horizontal"),
        ]
    )
    batch_size = 64
    flow = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train))
        .repeat()
        .batch(batch_size)
        .map(lambda x, y: (datagen(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    opt_rms = keras.optimizers.RMSprop(learning_rate=0.001)
    model.compile(loss="categorical_crossentropy", optimizer=opt_rms, metrics=["accuracy"])
    timer = EpochTimer()
    steps = x_train.shape[0] // batch_size
    model.fit(
        flow,
        steps_per_epoch=steps,
        epochs=args.epochs,
        verbose=2,
        callbacks=[keras.callbacks.LearningRateScheduler(lr_schedule), timer],
    )
    timed = timer.seconds[1:] or timer.seconds  # the first epoch also traces the graph
    rate = steps * batch_size * len(timed) / sum(timed)
    print(f"tutorial: {rate:.1f} images/s")
    if args.result:
        args.result.write_text(json.dumps({"images_per_second": rate}) + "\n")


if __name__ == "__main__":
    main()
