"""The train stage's core on tiny synthetic data: it learns, it is reproducible, it refuses to diverge silently."""

from __future__ import annotations

import numpy as np
import pytest

from cifar10.archive import load_test, load_train
from cifar10.distribution import Distribution
from cifar10.errors import StageError
from cifar10.input_pipeline import train_steps
from cifar10.model import CORE_NAME
from cifar10.normalized import normalize_images
from cifar10.preprocessing import compute_stats
from cifar10.training import configure_runtime, summarize, train_model, warp_in_input_pipeline
from tests.conftest import train_params

TINY = dict(batch_size=16, widths=(4, 8, 8), lr_boundaries=(1,), lr_values=(3e-3, 1e-3))

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_data(archive):
    train, test = load_train(archive[0]), load_test(archive[0])
    stats = compute_stats(train.images[:80], "global", 1e-7)
    arrays = {
        "x_train": normalize_images(train.images[:80], stats),
        "y_train": train.labels[:80],
        "x_val": normalize_images(train.images[80:], stats),
        "y_val": train.labels[80:],
    }
    return arrays, stats, test


def _train(tiny_data, **overrides):
    arrays, stats, _ = tiny_data
    params = train_params(**{**TINY, "epochs": 2, **overrides})
    configure_runtime(params, seed=5)
    return train_model(arrays, stats, params, seed=5), params


def test_training_logs_every_epoch_and_returns_a_uint8_model(tiny_data):
    result, params = _train(tiny_data, epochs=3)
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(result.history["loss"]) == 3 and len(result.epoch_seconds) == 3
    assert all(loss > 0.1 for loss in result.history["loss"])  # every epoch trained on real data (no 0.0 loss)
    assert result.history["loss"][-1] < result.history["loss"][0]  # it learns the class colours
    _, _, test = tiny_data
    probabilities = result.model.predict(test.images, verbose=0)
    assert probabilities.shape == (len(test.images), 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    summary = summarize(result, params, "CPU", 12.5)
    assert summary["epochs"] == 3 and summary["accuracy"] == pytest.approx(result.history["accuracy"][-1])
    assert summary["images_per_second"] > 0 and summary["wall_seconds"] == 12.5


def test_deterministic_reruns_are_identical_with_the_warp_in_tf_data_or_in_the_step(tiny_data, monkeypatch):
    # On a CPU under TensorFlow the warp runs in a parallel tf.data map; elsewhere in the train step. Same pixels,
    # same draws, same order: with deterministic ops a rerun either way is the same run, to the bit.
    assert warp_in_input_pipeline(Distribution())  # this test runs the tf.data way first
    in_input, _ = _train(tiny_data, deterministic=True)
    monkeypatch.setattr("cifar10.training.warp_in_input_pipeline", lambda distribution: False)
    in_step, _ = _train(tiny_data, deterministic=True)
    assert in_input.history == in_step.history
    assert in_input.history["loss"][0] != in_input.history["loss"][1]
    for a, b in zip(in_input.model.get_weights(), in_step.model.get_weights()):
        assert np.array_equal(a, b)


def test_bfloat16_training_exports_a_float32_model(tiny_data):
    result, _ = _train(tiny_data, mixed_precision="bfloat16", epochs=1)
    assert {w.dtype for w in result.model.get_weights()} == {np.dtype(np.float32)}
    assert all(layer.dtype_policy.name == "float32" for layer in result.model.get_layer(CORE_NAME).layers)
    configure_runtime(train_params(), seed=0)  # back to float32 for the other tests


def test_divergence_stops_with_the_epoch_and_the_params_to_look_at(tiny_data):
    with pytest.raises(StageError, match=r"training diverged: loss is nan in epoch 1; lower train.lr_values"):
        _train(tiny_data, optimizer="sgd", lr_boundaries=(), lr_values=(1e6,), weight_decay=0, epochs=2)


def test_training_without_a_validation_part_checkpoints_and_reports_no_validation(tiny_data, tmp_path):
    # normalize.val_size: 0 ("train on all, as the tutorial did") leaves empty validation arrays.
    arrays, stats, _ = tiny_data
    empty = {**arrays, "x_val": arrays["x_val"][:0], "y_val": arrays["y_val"][:0]}
    params = train_params(**{**TINY, "epochs": 1})
    configure_runtime(params, seed=5)
    result = train_model(empty, stats, params, seed=5, checkpoints=tmp_path / "checkpoints")
    assert "val_loss" not in result.history and len(result.history["loss"]) == 1
    assert (tmp_path / "checkpoints" / "state.json").is_file()  # the fingerprint hashed the empty array
    summary = summarize(result, params, "CPU", 1.0)
    assert summary["val_accuracy"] is None and summary["val_loss"] is None


def test_validation_metrics_come_from_the_validation_arrays(tiny_data):
    arrays, stats, _ = tiny_data
    # Wrong labels on purpose: a model scored on them gets an accuracy it could not get on the training part.
    wrong = {**arrays, "y_val": (arrays["y_val"] + 1) % 10}
    params = train_params(**{**TINY, "epochs": 2})
    configure_runtime(params, seed=5)
    result = train_model(wrong, stats, params, seed=5)

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        raw = np.clip(np.rint(x * (stats.std[0] + stats.eps) + stats.mean[0]), 0, 255).astype(np.uint8)
        return float((result.model.predict(raw, verbose=0).argmax(axis=1) == y).mean())

    on_val, on_train = accuracy(wrong["x_val"], wrong["y_val"]), accuracy(arrays["x_train"], arrays["y_train"])
    assert on_val != pytest.approx(on_train)  # the check below can tell the two parts apart
    assert result.history["val_accuracy"][-1] == pytest.approx(on_val, abs=1e-6)


@pytest.mark.parametrize("warp", ["tf.data", "in_step"])
def test_an_epoch_without_its_batches_stops_training(tiny_data, monkeypatch, warp):
    # The planted bug: resuming the input one epoch ahead, so the last epoch finds the dataset empty; Keras only
    # warns and logs a loss of 0.0 (a generator), or starts a dataset of known length again (tf.data), so the
    # second epoch would train on the first one's batches.
    def one_epoch_ahead(num_images, image_size, params, seed, start_epoch=0, replicas=1):
        return train_steps(num_images, image_size, params, seed, start_epoch + 1, replicas)

    monkeypatch.setattr("cifar10.training.train_steps", one_epoch_ahead)  # the tf.data warp's steps
    monkeypatch.setattr("cifar10.input_pipeline.train_steps", one_epoch_ahead)  # the in-step warp's batches
    if warp == "in_step":
        monkeypatch.setattr("cifar10.training.warp_in_input_pipeline", lambda distribution: False)
        message = r"epoch 2 trained on 0 of 5 batches: the input pipeline ran out of data"
    else:
        message = r"^the input pipeline holds 5 batches for the 10 steps of epochs 1-2 \(a bug in the resume"
    with pytest.raises(StageError, match=message):
        _train(tiny_data, epochs=2)
