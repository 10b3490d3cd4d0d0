"""Model files for other runtimes (exports/), made from models/model.keras by the export stage.

    manifest.json the files below, and the input and output of each
    saved_model/  TensorFlow SavedModel, signature `serve`: uint8 images (N, 32, 32, 3) -> probabilities
    model.tflite  LiteRT (TensorFlow Lite) flatbuffer, same input and output

Each is the .keras model itself, normalization layer included, so it takes raw RGB images as they are.
ONNX is not offered: Keras exports it through tf2onnx, which the package index this project installs
from does not carry (and which pins an older protobuf than TensorFlow 2.21).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from cifar10.atomic import atomic_dir, write_json
from cifar10.dataset import CLASS_NAMES
from cifar10.errors import DataError
from cifar10.framework import keras, tf

MANIFEST = "manifest.json"
SAVED_MODEL = "saved_model"
LITERT_FILE = "model.tflite"


def export_model(model: keras.Model | None, folder: Path, formats: tuple[str, ...]) -> list[Path]:
    """Replace `folder` with the requested exports of `model` (None only when `formats` is empty), atomically;
    return the paths written."""
    names = {"saved_model": SAVED_MODEL, "litert": LITERT_FILE}
    with atomic_dir(folder) as tmp:
        # What the folder holds and how to call it; also keeps the folder from being empty, which DVC warns about.
        write_json(
            tmp / MANIFEST,
            {
                "files": {fmt: names[fmt] for fmt in formats},
                "input": "uint8 RGB images, shape (N, 32, 32, 3), pixel values 0..255",
                "output": f"float32 class probabilities, shape (N, {len(CLASS_NAMES)})",
                "class_names": list(CLASS_NAMES),
            },
        )
        for fmt in formats:
            # Keras prints the signature and converter logs on stdout; the stage prints its own one line.
            with contextlib.redirect_stdout(io.StringIO()):
                model.export(str(tmp / names[fmt]), format="tf_saved_model" if fmt == "saved_model" else fmt)
    return [folder / names[fmt] for fmt in formats]


def saved_model_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the SavedModel at `path` on uint8 images with TensorFlow alone (no Keras), as a server would."""
    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(images, dtype=tf.uint8)), dtype=np.float64)


def litert_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the LiteRT file at `path` on uint8 images with the LiteRT interpreter, one image at a time."""
    if not path.is_file() or os.path.getsize(path) == 0:
        raise DataError(f"{path} is not a LiteRT file")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], [1, *images.shape[1:]])
    interpreter.allocate_tensors()
    rows = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(target["index"])[0])
    return np.asarray(rows, dtype=np.float64)
