"""The evaluate stage's core: scores from probabilities, and refusal of a model that does not fit the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cifar10.classifier import class_names_of, load_classifier, predict_probabilities, with_class_names
from cifar10.dataset import CLASS_NAMES
from cifar10.errors import DataError
from cifar10.evaluation import (
    LOSS_FLOOR,
    confusion_matrix,
    per_class_scores,
    score_predictions,
    write_per_class,
    write_predictions,
)
from cifar10.framework import keras

NAMES = ("a", "b", "c")


def test_scores_from_known_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), predicted] = 0.8
    counts = confusion_matrix(labels, probabilities.argmax(axis=1), 3)
    scores = score_predictions(probabilities, labels, counts)
    assert set(scores) == {"test_accuracy", "test_loss"}  # the few columns of `dvc exp show`
    assert scores["test_accuracy"] == pytest.approx(4 / 6)
    rows = per_class_scores(counts, NAMES)
    assert [r["recall"] for r in rows] == [0.5, 1.0, 0.5]  # per-class accuracy
    assert [r["precision"] for r in rows] == [0.5, pytest.approx(0.6667, abs=1e-4), 1.0]
    assert [(r["class"], r["images"]) for r in rows] == [("a", 2), ("b", 2), ("c", 2)]
    picked = probabilities[np.arange(6), labels]
    assert scores["test_loss"] == pytest.approx(-np.log(picked).mean())
    assert counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert np.trace(counts) / counts.sum() == pytest.approx(scores["test_accuracy"])


def _save(tmp_path: Path, shape: tuple, classes: int) -> Path:
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs)))
    path = tmp_path / f"m{classes}_{'x'.join(map(str, shape))}.keras"
    model.save(path)
    return path


def test_models_that_do_not_fit_the_data_are_refused(tmp_path: Path):
    assert load_classifier(_save(tmp_path, (32, 32, 3), 10)).output_shape == (None, 10)
    with pytest.raises(DataError, match=r"predicts \(5,\) outputs, but the data has 10 classes"):
        load_classifier(_save(tmp_path, (32, 32, 3), 5), num_classes=10)
    # A model without a ClassNames layer is a CIFAR-10 model from before CIFAR-100 support: 10 outputs only.
    with pytest.raises(DataError, match=r"m5_32x32x3.keras: the model predicts \(5,\) outputs but carries no class"):
        load_classifier(_save(tmp_path, (32, 32, 3), 5))
    with pytest.raises(DataError, match=r"takes inputs of shape \(28, 28, 1\), but CIFAR images are \(32, 32, 3\)"):
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


def test_scores_with_an_empty_class_a_certain_mistake_and_rounding():
    # Class c is never true and never predicted; one image puts probability 0 on its true class.
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array(
        [
            [1.0, 0.0, 0.0],  # a, right
            [0.9, 0.1, 0.0],  # a, right
            [0.0, 1.0, 0.0],  # a -> b with certainty: its log is clipped at LOSS_FLOOR, not infinite
            [0.2, 0.8, 0.0],  # b, right
            [0.3, 0.7, 0.0],  # b, right
            [0.4, 0.6, 0.0],  # b, right
        ]
    )
    predicted = probabilities.argmax(axis=1)
    counts = confusion_matrix(labels, predicted, 3)
    assert counts.shape == (3, 3) and counts[2].sum() == 0 and counts[:, 2].sum() == 0
    scores = score_predictions(probabilities, labels, counts)
    assert scores["test_accuracy"] == pytest.approx(5 / 6)
    rows = per_class_scores(counts, NAMES)
    assert [r["recall"] for r in rows] == [0.6667, 1.0, 0.0]  # rounded to 4 digits, 0 for an empty class
    assert [r["precision"] for r in rows] == [1.0, 0.75, 0.0]
    assert [r["images"] for r in rows] == [3, 3, 0]
    picked = np.array([1.0, 0.9, LOSS_FLOOR, 0.8, 0.7, 0.6])
    assert scores["test_loss"] == pytest.approx(-np.log(picked).mean(), rel=1e-12)
    assert np.isfinite(scores["test_loss"])


def test_the_confusion_matrix_is_square_even_when_the_last_classes_never_appear():
    counts = confusion_matrix(np.array([0, 1, 0]), np.array([1, 1, 0]), 10)
    assert counts.shape == (10, 10) and counts.sum() == 3
    assert counts[0, 1] == 1 and counts[1, 1] == 1 and counts[0, 0] == 1


def test_predictions_file_has_one_row_per_image_with_class_names(tmp_path: Path):
    path = tmp_path / "predictions.csv"
    write_predictions(path, np.array([0, 2, 1]), np.array([0, 1, 1]), NAMES)
    assert path.read_text().splitlines() == ["actual,predicted", "a,a", "c,b", "b,b"]
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # no temporary sibling left


def test_the_per_class_file_is_the_table_the_bar_charts_read(tmp_path: Path):
    counts = np.array([[3, 1], [0, 2]])
    write_per_class(tmp_path / "per_class.csv", per_class_scores(counts, ("cat", "dog")))
    assert (tmp_path / "per_class.csv").read_text().splitlines() == [
        "class,images,precision,recall",
        "cat,4,1.0,0.75",
        "dog,2,0.6667,1.0",
    ]


def test_per_class_scores_warn_about_nothing_and_count_a_single_image():
    import warnings

    counts = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 2]])  # class a: one image, right; class b: none, predicted once
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 for the empty class must not warn (nor become NaN)
        rows = per_class_scores(counts, NAMES)
    assert [r["recall"] for r in rows] == [1.0, 0.0, 0.6667]
    assert [r["precision"] for r in rows] == [1.0, 0.0, 1.0]


def test_a_probability_a_hair_above_one_never_makes_the_loss_negative():
    probabilities = np.array([[1.0 + 1e-9, 0.0], [0.5, 0.5]])  # float error in a softmax, exaggerated
    labels = np.array([0, 1])
    scores = score_predictions(probabilities, labels, confusion_matrix(labels, probabilities.argmax(axis=1), 2))
    assert scores["test_loss"] == -np.log(0.5) / 2  # exactly: the first image's probability counts as 1


def _named(tmp_path: Path, classes: int, names) -> Path:
    inputs = keras.Input((32, 32, 3))
    probabilities = keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs))
    path = tmp_path / "named.keras"
    keras.Model(inputs, with_class_names(probabilities, names)).save(path)
    return path


def test_class_names_travel_inside_the_model_file_and_are_checked_on_load(tmp_path: Path):
    names = tuple(f"class {i}" for i in range(20))
    model = load_classifier(_named(tmp_path, 20, names))
    assert class_names_of(model) == names and model.output_shape == (None, 20)
    assert class_names_of(load_classifier(_save(tmp_path, (32, 32, 3), 10))) == CLASS_NAMES  # an old model
    for classes, bad, message in (
        (3, ["a", "b"], "the model predicts (3,) outputs but carries 2 class names"),
        (2, ["a", "a"], "the model's ClassNames layer class names must be distinct, got 'a' twice"),
        (2, ["a", "$x$"], "the model's ClassNames layer class names must be letters or digits"),
    ):
        with pytest.raises(DataError) as info:
            load_classifier(_named(tmp_path, classes, bad))
        assert str(info.value).startswith(f"{tmp_path / 'named.keras'}: {message}")
