"""The trained classifier's files (models/): written by train, read by evaluate and cifar10-predict.

models/model.keras takes raw uint8 images (N, 32, 32, 3) and returns class probabilities; the
normalization statistics are a layer inside it, and so are the class names: its last layer, ClassNames,
passes the probabilities through unchanged and keeps the names in its config, so a model fetched alone
(`cifar10-predict --rev`) still knows them. A model saved before ClassNames existed is a CIFAR-10 model.
Beside it: the tutorial's model.json + model.weights.h5, and meta.json (the resolved params, the
statistics, the class names and the training record: speed, device, final figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar10.atomic import atomic_dir, require_regular_file, write_json
from cifar10.dataset import CLASS_NAMES, IMAGE_SHAPE, class_names_problem
from cifar10.errors import DataError
from cifar10.framework import keras

MODEL_FILE = "model.keras"


@keras.saving.register_keras_serializable(package="cifar10")
class Standardize(keras.layers.Layer):
    """(x - mean) * scale over the last axis, scale = 1 / (std + eps): the float32 arithmetic that made the
    training arrays (normalized.normalize_images), so the saved model sees exactly what training saw.

    mean and scale are (non-trainable) weights, one per channel or a single one for global statistics.
    Weights, not constants: exporters freeze weights into the graph, while tf2onnx turned the captured
    constant tensors of Keras' Normalization(mean=..., variance=...) into extra ONNX graph inputs.
    """

    def __init__(self, channels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):  # the config comes from a model file: no size beyond the images' own
            raise ValueError(f"Standardize takes 1 (global) or 3 (per-channel) statistics, got {channels!r}")
        self.channels = channels
        self.mean = self.add_weight(shape=(channels,), initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=(channels,), initializer="ones", trainable=False, name="scale")

    def call(self, inputs):
        return (inputs - self.mean) * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="cifar10")
class ClassNames(keras.layers.Layer):
    """The identity, carrying the names of the classes whose probabilities pass through it, in its config.

    It computes nothing, so exports (SavedModel, LiteRT) see the same graph as without it. The names are
    checked where a model is loaded (load_classifier), not here: a bad file then gets one line.
    """

    def __init__(self, class_names, **kwargs) -> None:
        super().__init__(**kwargs)
        self.class_names = tuple(class_names) if isinstance(class_names, list | tuple) else class_names

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        names = self.class_names
        return {**super().get_config(), "class_names": list(names) if isinstance(names, tuple) else names}


def with_class_names(outputs, class_names: tuple[str, ...]):
    """Return `outputs` (a symbolic (N, classes) tensor) through a ClassNames layer holding `class_names`."""
    return ClassNames(list(class_names), dtype="float32", name="class_names")(outputs)


def class_names_of(model: keras.Model) -> tuple[str, ...]:
    """Return the class names a loaded model carries; CIFAR-10's for a 10-class model saved without them.

    DataError if they are unusable or do not match the model's output size.
    """
    layers = [layer for layer in model.layers if isinstance(layer, ClassNames)]
    outputs = tuple(model.output_shape[1:])
    if not layers:
        if outputs == (len(CLASS_NAMES),):
            return CLASS_NAMES  # saved before models carried their names: only CIFAR-10 was trained then
        raise DataError(f"the model predicts {outputs} outputs but carries no class names (no ClassNames layer)")
    names = layers[-1].class_names
    problem = class_names_problem(names)
    if problem:
        raise DataError(f"the model's ClassNames layer {problem}")
    if outputs != (len(names),):
        raise DataError(f"the model predicts {outputs} outputs but carries {len(names)} class names")
    return tuple(names)


def save_classifier(model: keras.Model, folder: Path, meta: dict) -> None:
    """Replace `folder` with model.keras, the tutorial's model.json + model.weights.h5 and meta.json, atomically."""
    with atomic_dir(folder) as tmp:
        model.save(tmp / MODEL_FILE)
        (tmp / "model.json").write_text(model.to_json(indent=2) + "\n")
        model.save_weights(tmp / "model.weights.h5")
        write_json(tmp / "meta.json", meta)


def load_classifier(path: Path, num_classes: int | None = None) -> keras.Model:
    """Return the saved .keras model at `path`, after checking it takes (N, 32, 32, 3) images, returns one
    score per class name it carries (class_names_of), and `num_classes` of them if given.

    Only a regular file is opened: a FIFO would block the loader forever and /dev/zero never ends.
    """
    require_regular_file(path, "model", "; run the train stage (or `dvc pull models`) first")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged or foreign file
        detail = " ".join(str(exc).split())  # some of Keras' messages span lines; the error stays one line
        raise DataError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {detail})") from None
    in_shape, out_shape = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if in_shape != IMAGE_SHAPE:
        raise DataError(f"{path} takes inputs of shape {in_shape}, but CIFAR images are {IMAGE_SHAPE}")
    if num_classes is not None and out_shape != (num_classes,):
        raise DataError(f"{path} predicts {out_shape} outputs, but the data has {num_classes} classes")
    try:
        class_names_of(model)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return model


def predict_probabilities(
    model: keras.Model, images: np.ndarray, batch_size: int, flip_tta: bool = False
) -> np.ndarray:
    """Return class probabilities (N, classes) for raw uint8 RGB images (N, 32, 32, 3).

    `flip_tta`: the mean of the probabilities of each image and of its mirror image (left and right swapped), the
    test-time augmentation that matches training's random horizontal flips.
    """
    probabilities = np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)
    if flip_tta:
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        probabilities += np.asarray(model.predict(mirrored, batch_size=batch_size, verbose=0), dtype=np.float64)
        probabilities /= 2
    if not np.all(np.isfinite(probabilities)):
        raise DataError("the model's output holds NaN or infinity; its weights are damaged or it diverged")
    return probabilities
