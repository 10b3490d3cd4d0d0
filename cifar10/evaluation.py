"""The evaluate stage's core: the scores, the per-class table and the per-image predictions file.

The scores are the few numbers worth a column in `dvc exp show`: test accuracy and loss. The per-class
precision and recall go to a CSV drawn as a bar chart (one bar per class and revision), not to metrics:
ten classes times two figures would push every other column off a terminal.
"""

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


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict:
    """Return metrics/evaluate.json: test accuracy and mean cross-entropy (natural log).

    `counts` is the confusion matrix of `labels` against the argmax of `probabilities`.
    """
    labels = labels.astype(np.int64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], LOSS_FLOOR, 1.0)
    return {
        "test_accuracy": float(np.trace(counts) / len(labels)),
        "test_loss": float(-np.log(picked).mean()),
    }


def per_class_scores(counts: np.ndarray, class_names) -> list[dict]:
    """Return one row per class: its name, test images, precision and recall (0 where undefined), 4 digits."""
    support, claimed, hits = counts.sum(axis=1), counts.sum(axis=0), np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, 0.0)
        precision = np.where(claimed > 0, hits / claimed, 0.0)
    return [
        {"class": name, "images": int(n), "precision": round(float(p), 4), "recall": round(float(r), 4)}
        for name, n, p, r in zip(class_names, support, precision, recall)
    ]


def write_per_class(path: Path, rows: list[dict]) -> None:
    """Write per_class_scores() as CSV (class, images, precision, recall), the per-class bar chart's data."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "images", "precision", "recall"])
        writer.writeheader()
        writer.writerows(rows)


def write_predictions(path: Path, labels: np.ndarray, predicted: np.ndarray, class_names) -> None:
    """Write one row per image: actual and predicted class names (DVC's confusion template reads these)."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for actual, guess in zip(labels, predicted):
            writer.writerow([class_names[actual], class_names[guess]])
