"""Model files for other runtimes (exports/), made from models/model.keras by the export stage.

    manifest.json the files below, and the input and output of each
    saved_model/  TensorFlow SavedModel, signature `serve`: uint8 images (N, 32, 32, 3) -> probabilities
    model.tflite  LiteRT (TensorFlow Lite) flatbuffer, same input and output

Each is the .keras model itself, normalization layer included, so it takes raw RGB images as they are.
ONNX is not offered yet: Keras exports it through tf2onnx, and tf2onnx 1.17 turns this model's
normalization layer's mean and variance into two extra graph inputs, so onnxruntime refuses to run the
file on images alone (tried: `model.export(path, format="onnx")`, then an InferenceSession).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from cifar10.atomic import atomic_dir, write_json
from cifar10.dataset import CLASS_NAMES
from cifar10.framework import keras

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
