"""The evaluate stage's core: scores from predicted probabilities, and the per-image predictions file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cifar10.atomic import atomic_file

LOSS_FLOOR = 1e-7  # probabilities are clipped here before the log, as Keras' cross-entropy does


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts[i, j]: images of class i predicted as class j."""
    actual, predicted = actual.astype(np.int64), predicted.astype(np.int64)
    return np.bincount(actual * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, counts: np.ndarray, class_names) -> dict:
    """Return accuracy, mean cross-entropy, and per-class recall and precision.

    `counts` is the confusion matrix of `labels` against the argmax of `probabilities`.
    """
    labels = labels.astype(np.int64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], LOSS_FLOOR, 1.0)
    support, claimed, hits = counts.sum(axis=1), counts.sum(axis=0), np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, 0.0)
        precision = np.where(claimed > 0, hits / claimed, 0.0)
    return {
        "accuracy": float(hits.sum() / len(labels)),
        "loss": float(-np.log(picked).mean()),
        "count": int(len(labels)),
        "precision": {name: round(float(v), 4) for name, v in zip(class_names, precision)},
        "recall": {name: round(float(v), 4) for name, v in zip(class_names, recall)},
    }


def write_predictions(path: Path, labels: np.ndarray, predicted: np.ndarray, class_names) -> None:
    """Write one row per image: actual and predicted class names (DVC's confusion template reads these)."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for actual, guess in zip(labels, predicted):
            writer.writerow([class_names[actual], class_names[guess]])
