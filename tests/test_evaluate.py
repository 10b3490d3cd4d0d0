"""The evaluate stage's core: scores from probabilities, and refusal of a model that does not fit the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cifar10.classifier import load_classifier, predict_probabilities
from cifar10.errors import DataError
from cifar10.evaluation import confusion_matrix, score_predictions
from cifar10.framework import keras

NAMES = ("a", "b", "c")


def test_scores_from_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), predicted] = 0.8
    counts = confusion_matrix(labels, probabilities.argmax(axis=1), 3)
    scores = score_predictions(probabilities, labels, counts, NAMES)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["recall"] == {"a": 0.5, "b": 1.0, "c": 0.5}  # per-class accuracy
    assert scores["precision"] == {"a": 0.5, "b": pytest.approx(0.6667, abs=1e-4), "c": 1.0}
    picked = probabilities[np.arange(6), labels]
    assert scores["loss"] == pytest.approx(-np.log(picked).mean())
    assert counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert np.trace(counts) / counts.sum() == pytest.approx(scores["accuracy"])


def _save(tmp_path: Path, shape: tuple, classes: int) -> Path:
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs)))
    path = tmp_path / f"m{classes}_{'x'.join(map(str, shape))}.keras"
    model.save(path)
    return path


def test_models_that_do_not_fit_the_data_are_refused(tmp_path: Path):
    assert load_classifier(_save(tmp_path, (32, 32, 3), 10)).output_shape == (None, 10)
    with pytest.raises(DataError, match=r"predicts \(5,\) outputs, but the data has 10 classes"):
        load_classifier(_save(tmp_path, (32, 32, 3), 5))
    with pytest.raises(DataError, match=r"takes inputs of shape \(28, 28, 1\), but CIFAR-10 images are \(32, 32, 3\)"):
        load_classifier(_save(tmp_path, (28, 28, 1), 10))
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is not a loadable Keras model"):
        load_classifier(broken)
    with pytest.raises(DataError, match=r"not found; run the train stage \(or `dvc pull models`\) first"):
        load_classifier(tmp_path / "missing.keras")


def test_non_finite_model_output_is_refused():
    inputs = keras.Input((32, 32, 3))
    nan = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2)) * float("nan"))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(nan))
    with pytest.raises(DataError, match="the model's output holds NaN or infinity"):
        predict_probabilities(model, np.zeros((2, 32, 32, 3), np.uint8), batch_size=2)


def test_a_model_path_that_is_not_a_regular_file_is_called_that_not_missing(tmp_path: Path):
    """Neither is opened (/dev/zero never ends) nor reported "not found"; a FIFO: tests/test_hostile_images.py."""
    with pytest.raises(DataError, match=r"^model /dev/zero is a character device, not a regular file$"):
        load_classifier(Path("/dev/zero"))
    with pytest.raises(DataError, match=r"is a folder, not a regular file$"):
        load_classifier(tmp_path)
