"""Model files for other runtimes (exports/), made from models/model.keras by the export stage.

    manifest.json the files below, and the input and output of each
    saved_model/  TensorFlow SavedModel, signature `serve`: uint8 images (N, 32, 32, 3) -> probabilities
    model.tflite  LiteRT (TensorFlow Lite) flatbuffer, same input and output
    model.onnx    ONNX (through tf2onnx, the optional `export` extra), input "image", same input and output

Each is the .keras model itself, normalization layer included, so it takes raw RGB images as they are.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cifar10.atomic import atomic_dir, write_json
from cifar10.dataset import IMAGE_SHAPE
from cifar10.errors import StageError

if TYPE_CHECKING:  # Keras loads only when there is a model to export: a run without exports never starts it
    from cifar10.framework import keras

MANIFEST = "manifest.json"
SAVED_MODEL = "saved_model"
LITERT_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
FILES = {"saved_model": SAVED_MODEL, "litert": LITERT_FILE, "onnx": ONNX_FILE}  # export.formats -> name
KERAS_FORMATS = {"saved_model": "tf_saved_model", "litert": "litert", "onnx": "onnx"}  # -> model.export(format=)


def export_model(model: keras.Model | None, folder: Path, formats: tuple[str, ...]) -> list[Path]:
    """Replace `folder` with the requested exports of `model` (None only when `formats` is empty), atomically;
    return the paths written."""
    if "onnx" in formats:
        _require_tf2onnx()
        # Keras' ONNX exporter refuses a model that has never been called, as a freshly loaded one is.
        model(np.zeros((1, *IMAGE_SHAPE), dtype=np.uint8))
    manifest: dict = {"files": {fmt: FILES[fmt] for fmt in formats}}
    if model is not None:
        from cifar10.classifier import class_names_of

        class_names = class_names_of(model)  # CIFAR-10's or CIFAR-100's, as the model carries them
        manifest.update(
            {
                "input": "uint8 RGB images, shape (N, 32, 32, 3), pixel values 0..255",
                "output": f"float32 class probabilities, shape (N, {len(class_names)})",
                "class_names": list(class_names),
            }
        )
    with atomic_dir(folder) as tmp:
        # What the folder holds and how to call it; also keeps the folder from being empty, which DVC warns about.
        write_json(tmp / MANIFEST, manifest)
        for fmt in formats:
            # Keras prints the signature and converter logs on stdout, and its tf2onnx patch warns about
            # numpy's np.object; the stage prints its own one line.
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model.export(str(tmp / FILES[fmt]), format=KERAS_FORMATS[fmt], verbose=False)
            if fmt == "onnx":
                _check_onnx_inputs(tmp / FILES[fmt])
    return [folder / FILES[fmt] for fmt in formats]


def _check_onnx_inputs(path: Path) -> None:
    """Refuse an ONNX file that needs more than the images: tf2onnx turns the statistics of a model saved before
    the Standardize layer (Keras' Normalization) into extra graph inputs, which no caller would know to feed."""
    import onnx  # installed with tf2onnx

    graph = onnx.load(str(path)).graph
    constants = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in constants]
    if inputs != ["image"]:
        raise StageError(
            f"the ONNX export needs the inputs {inputs}, not only 'image': this model keeps its statistics in a "
            "Keras Normalization layer (saved by an older version); retrain it (dvc repro -f train) to export ONNX"
        )


def _require_tf2onnx() -> None:
    """Fail before any work, in one line, where the ONNX converter is not installed."""
    try:
        import tf2onnx  # noqa: F401  (Keras imports it by name inside model.export)
    except ImportError:
        raise StageError(
            "export.formats lists onnx, which needs tf2onnx: pip install -e '.[export]' (or drop onnx)"
        ) from None
