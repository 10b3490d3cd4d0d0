"""Stage 4: score the saved model on the test batch, read straight from the archive as raw uint8 images.

Testing the raw-image model end to end checks the normalization it carries, not just the network.
Writes metrics/evaluate.json (accuracy, loss, per-class accuracy, precision and recall),
one row per test image (actual, predicted) for DVC's confusion-matrix plot, and PNGs: the
labelled confusion matrix, the first 16 test images with their predictions (the tutorial's grid),
and the most confident mistakes of each class.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import stages.model  # noqa: E402,F401  (registers the custom objects a saved model may name)
from stages.atomic import atomic_dir, atomic_file, write_json  # noqa: E402
from stages.cifar import CLASS_NAMES, IMAGE_SHAPE, load_test  # noqa: E402
from stages.errors import DataError, run_stage  # noqa: E402
from stages.figures import confusion_png, first_predictions_grid, mistakes_grid  # noqa: E402
from stages.params import EvaluateParams, load_section, read_params_file  # noqa: E402

LOSS_FLOOR = 1e-7  # probabilities are clipped here before the log, as Keras' cross-entropy does


def load_model(path: Path, num_classes: int = len(CLASS_NAMES)) -> keras.Model:
    """Load a saved .keras model and check it takes (N, 32, 32, 3) images and returns `num_classes` scores."""
    if not path.is_file():
        raise DataError(f"model {path} not found; run the train stage first")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged or foreign file
        raise DataError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {exc})") from None
    in_shape, out_shape = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if in_shape != IMAGE_SHAPE:
        raise DataError(f"{path} takes inputs of shape {in_shape}, but CIFAR-10 images are {IMAGE_SHAPE}")
    if out_shape != (num_classes,):
        raise DataError(f"{path} predicts {out_shape} outputs, but the data has {num_classes} classes")
    return model


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Return class probabilities (N, classes) for raw uint8 images (N, 32, 32, 3)."""
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts[i, j]: images of class i predicted as class j."""
    return np.bincount(actual * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Return accuracy, mean cross-entropy, and per-class accuracy (= recall) and precision."""
    labels = labels.astype(np.int64)
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], LOSS_FLOOR, 1.0)
    counts = confusion_matrix(labels, predicted, len(class_names))
    support, claimed, hits = counts.sum(axis=1), counts.sum(axis=0), np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, 0.0)
        precision = np.where(claimed > 0, hits / claimed, 0.0)
    return {
        "accuracy": float(hits.sum() / len(labels)),
        "loss": float(-np.log(picked).mean()),
        "count": int(len(labels)),
        "per_class": {name: round(float(v), 4) for name, v in zip(class_names, recall)},
        "precision": {name: round(float(v), 4) for name, v in zip(class_names, precision)},
        "recall": {name: round(float(v), 4) for name, v in zip(class_names, recall)},
    }


def write_predictions(path: Path, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Write one row per image: actual and predicted class names (DVC's confusion template reads these)."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for actual, predicted in zip(labels, probabilities.argmax(axis=1)):
            writer.writerow([CLASS_NAMES[actual], CLASS_NAMES[predicted]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="models/model.keras")
    parser.add_argument("archive", type=Path, help="the CIFAR-10 archive (its test batch is scored)")
    parser.add_argument("metrics", type=Path, help="metrics/evaluate.json")
    parser.add_argument("predictions", type=Path, help="CSV of actual and predicted classes")
    parser.add_argument("figures", type=Path, help="folder for the PNG figures")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params: EvaluateParams = load_section(read_params_file(args.params), "evaluate")
    model = load_model(args.model)
    test = load_test(args.archive)
    start = time.perf_counter()
    probabilities = predict_probabilities(model, test.images, params.batch_size)
    seconds = time.perf_counter() - start
    scores = score_predictions(probabilities, test.labels, CLASS_NAMES)
    predicted = probabilities.argmax(axis=1)
    with atomic_dir(args.figures) as tmp:
        counts = confusion_matrix(test.labels.astype(np.int64), predicted, len(CLASS_NAMES))
        confusion_png(counts, CLASS_NAMES, tmp / "confusion.png", scores["accuracy"])
        first_predictions_grid(test.images, test.labels, predicted, CLASS_NAMES, tmp / "first_predictions.png")
        mistakes_grid(test.images, probabilities, test.labels, CLASS_NAMES, tmp / "mistakes.png")
    write_predictions(args.predictions, test.labels, probabilities)
    write_json(args.metrics, scores)
    print(
        f"evaluate: test accuracy {scores['accuracy']:.4f}, loss {scores['loss']:.4f} on {scores['count']} images "
        f"({len(test.labels) / seconds:.0f} images/s)"
    )
    print(json.dumps(scores["per_class"]))


if __name__ == "__main__":
    run_stage(main)
