"""The fast recipe's parts, each against a hand computation: the small ResNet, the linear (one-cycle) schedule,
label smoothing, whole-pixel shifts (pad-and-crop), flip test-time augmentation; and the recipes of recipes/,
applied with DVC's own `-S` parser, validate and train on tiny data."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar10.checkpoint import fingerprint
from cifar10.classifier import predict_probabilities
from cifar10.framework import keras
from cifar10.input_pipeline import SHIFT_X, SHIFT_Y, draw_augmentation
from cifar10.model import (
    RESNET_LOGIT_SCALE,
    LinearSteps,
    SmoothedSparseCrossentropy,
    build_seed_cnn,
    make_loss,
    make_schedule,
)
from cifar10.normalized import Stats
from cifar10.params import EvaluateParams, TrainParams, load_section, read_params_file
from cifar10.seeds import stream_seed
from tests.conftest import ROOT, layers_of, train_params

RESNET = dict(network="resnet", widths=(8, 16, 16), dropout=(0.0, 0.0, 0.25), block_depth=3, activation="relu")
RECIPES = sorted((ROOT / "recipes").glob("*.overrides"))


def test_the_resnet_is_a_stem_then_conv_pool_bn_blocks_with_residual_branches():
    model = build_seed_cnn(train_params(**RESNET, weight_decay=5e-4), seed=0)
    convs = layers_of(model, "Conv2D")
    # Stem: 1 conv of 8; blocks 2 and 3: 1 conv + a residual branch of block_depth - 1 = 2 convs each.
    assert [c.filters for c in convs] == [8, 16, 16, 16, 16, 16, 16]
    assert all(not c.use_bias and c.kernel_regularizer.l2 == pytest.approx(5e-4) for c in convs)
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    activations = layers_of(model, "Activation")[:-1]  # the last is the softmax
    assert len(activations) == 7 and all(a.activation.__name__ == "relu" for a in activations)
    assert [p.name for p in layers_of(model, "MaxPooling2D")] == ["block2_pool", "block3_pool"]  # not the stem
    assert [a.name for a in layers_of(model, "Add")] == ["block2_add", "block3_add"]
    assert all(bn.momentum == pytest.approx(0.9) for bn in layers_of(model, "BatchNormalization"))
    assert len(layers_of(model, "BatchNormalization")) == 7  # one after every conv
    dropouts = layers_of(model, "Dropout")
    assert [(d.name, d.rate) for d in dropouts] == [("block3_dropout", 0.25)]  # only where the rate is above 0
    assert dropouts[0].seed == stream_seed(0, "dropout", 3) % 2**31  # the block's own stream of the run's seed
    assert model.get_layer("block2_pool").output.shape[1:] == (16, 16, 16)  # the stem keeps 32x32
    assert model.get_layer("global_pool").__class__.__name__ == "GlobalMaxPooling2D"
    linear = model.get_layer("linear")
    assert not linear.use_bias and model.output_shape == (None, 10)
    assert linear.kernel_regularizer.l2 == pytest.approx(5e-4)
    # The logits are the linear layer's times the scale: check it on one input.
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    pooled = keras.Model(model.input, model.get_layer("global_pool").output).predict(x, verbose=0)
    logits = pooled @ np.asarray(linear.kernel) * RESNET_LOGIT_SCALE
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(model.predict(x, verbose=0), expected, atol=1e-5)


def test_the_residual_branch_is_added_to_the_pooled_conv():
    model = build_seed_cnn(train_params(**RESNET), seed=0)
    add = model.get_layer("block2_add")
    assert {t.name for t in add.input} == {model.get_layer("block2_act").output.name,
                                          model.get_layer("block2_res3_act").output.name}  # fmt: skip
    # block_depth 2: a branch of one conv; 1: no branch, so no Add, and fewer weights each time.
    two = build_seed_cnn(train_params(**{**RESNET, "block_depth": 2}), seed=0)
    assert [a.name for a in layers_of(two, "Add")] == ["block2_add", "block3_add"]
    assert [c.name for c in layers_of(two, "Conv2D")] == [
        "block1_conv", "block2_conv", "block2_res2_conv", "block3_conv", "block3_res2_conv"
    ]  # fmt: skip
    plain = build_seed_cnn(train_params(**{**RESNET, "block_depth": 1}), seed=0)
    assert not layers_of(plain, "Add") and plain.count_params() < two.count_params() < model.count_params()


def test_the_linear_schedule_rises_from_zero_through_each_value_to_the_last_at_the_end():
    params = train_params(epochs=10, lr_schedule="linear", lr_boundaries=(2, 6), lr_values=(0.4, 0.1, 0.0), lr_decay=0)
    schedule = make_schedule(params, steps_per_epoch=5)  # knots at steps 10, 30 and 50 (the end)
    at = {step: float(schedule(step)) for step in (0, 5, 10, 20, 30, 40, 50, 60)}
    expected = {0: 0.0, 5: 0.2, 10: 0.4, 20: 0.25, 30: 0.1, 40: 0.05, 50: 0.0, 60: 0.0}
    assert at == pytest.approx(expected, abs=1e-7)
    decayed = make_schedule(dataclasses.replace(params, lr_decay=1e-2), steps_per_epoch=5)
    assert float(decayed(20)) == pytest.approx(0.25 / (1 + 1e-2 * 20))
    again = LinearSteps.from_config(schedule.get_config())  # as a checkpoint's optimizer is rebuilt
    assert [float(again(s)) for s in at] == pytest.approx(list(expected.values()), abs=1e-7)


def test_the_step_schedule_is_still_the_default_and_refuses_a_zero_rate():
    assert train_params().lr_schedule == "step"
    with pytest.raises(Exception, match=r"train.lr_values must be positive, got \[0.2, 0.0\]"):
        train_params(lr_boundaries=(2,), lr_values=(0.2, 0.0))
    with pytest.raises(Exception, match=r"train.lr_boundaries must be below train.epochs \(6\) for the linear"):
        train_params(epochs=6, lr_schedule="linear", lr_boundaries=(6,), lr_values=(0.2, 0.0))
    with pytest.raises(Exception, match=r"train.lr_values must not be negative, got \[0.2, -0.1\]"):
        train_params(epochs=6, lr_schedule="linear", lr_boundaries=(2,), lr_values=(0.2, -0.1))
    with pytest.raises(Exception, match=r"train.widths must have at least 2 blocks for train.network resnet"):
        train_params(network="resnet", widths=(8,), dropout=(0.0,))
    with pytest.raises(Exception, match=r"train.label_smoothing must be in \[0, 1\), got 1.0"):
        train_params(label_smoothing=1.0)
    with pytest.raises(Exception, match=r"train.network must be one of \('tutorial', 'resnet'\), got 'resnet9'"):
        train_params(network="resnet9")


def test_label_smoothing_is_the_cross_entropy_against_smoothed_labels():
    labels = np.array([0, 2], np.int32)
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    smoothing, classes = 0.2, 3

    def by_hand(label: int, p: np.ndarray) -> float:
        target = np.full(classes, smoothing / classes)
        target[label] += 1 - smoothing
        return -float(np.sum(target * np.log(p)))

    expected = np.mean([by_hand(y, p) for y, p in zip(labels, probabilities)])
    loss = make_loss(train_params(label_smoothing=smoothing))
    assert isinstance(loss, SmoothedSparseCrossentropy)
    assert float(loss(labels, probabilities)) == pytest.approx(expected, rel=1e-6)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))  # a checkpoint's compiled loss
    assert float(restored(labels, probabilities)) == pytest.approx(expected, rel=1e-6)
    # Without smoothing: Keras' own sparse cross-entropy, -log of the label's probability.
    plain = make_loss(train_params())
    assert float(plain(labels, probabilities)) == pytest.approx(-(math.log(0.7) + math.log(0.8)) / 2, rel=1e-6)


def test_whole_pixel_shifts_are_every_integer_up_to_the_bound_equally_often():
    params = train_params(shift=0.125, whole_pixel_shift=True)  # 0.125 * 32 = 4 pixels
    draws = np.concatenate([draw_augmentation(3, step, 256, params, 32, 32) for step in range(40)])
    for column in (SHIFT_X, SHIFT_Y):
        values, counts = np.unique(draws[:, column], return_counts=True)
        assert values.tolist() == [-4, -3, -2, -1, 0, 1, 2, 3, 4]
        assert counts.min() > 0.8 * len(draws) / 9  # 9 values, each about 1/9 of 10,240 draws
    fractional = draw_augmentation(3, 0, 256, dataclasses.replace(params, whole_pixel_shift=False), 32, 32)
    assert not np.array_equal(fractional[:, SHIFT_X], np.round(fractional[:, SHIFT_X]))


def test_a_whole_pixel_shift_with_reflect_is_pad_and_crop():
    from cifar10.augmentation import augment_images

    params = train_params(rotation_deg=0.0, shift=0.125, whole_pixel_shift=True, flip=False, fill_mode="reflect")
    images = np.random.default_rng(2).normal(size=(16, 32, 32, 3)).astype(np.float32)
    draws = draw_augmentation(5, 7, len(images), params, 32, 32)
    out = augment_images(images, draws, params)
    for image, row, shifted in zip(images, draws, out):
        dx, dy = int(row[SHIFT_X]), int(row[SHIFT_Y])
        # Pad 4 pixels by mirroring (edge pixel repeated: Keras' "reflect" is numpy's "symmetric"), then crop
        # the 32x32 window that moves the content right by dx and down by dy.
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="symmetric")
        crop = padded[4 - dy : 36 - dy, 4 - dx : 36 - dx]
        assert np.allclose(shifted, crop, atol=1e-5), (dx, dy)


def test_flip_test_time_augmentation_averages_each_image_and_its_mirror():
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    # Looks at the left half only, so an image and its mirror get different probabilities.
    left = keras.layers.Cropping2D(((0, 0), (0, 16)))(x)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(left))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(4).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    plain = predict_probabilities(model, images, batch_size=4)
    mirrored = predict_probabilities(model, np.ascontiguousarray(images[:, :, ::-1]), batch_size=4)
    assert not np.allclose(plain, mirrored)
    assert np.allclose(predict_probabilities(model, images, 4, flip_tta=True), (plain + mirrored) / 2, atol=1e-7)
    assert np.array_equal(predict_probabilities(model, images, 4, flip_tta=False), plain)


def test_the_linear_schedule_makes_the_number_of_epochs_part_of_the_checkpoint_fingerprint():
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(4, 32, 32, 3)).astype(np.float32), "y_train": np.arange(4, dtype=np.uint8)}
    stats = Stats((120.0,), (60.0,), 1e-7)
    linear = train_params(epochs=10, lr_schedule="linear", lr_boundaries=(2,), lr_values=(0.2, 0.0))
    # The rate falls to 0 at the last epoch: 10 epochs resumed to 20 are not a straight 20-epoch run.
    longer = dataclasses.replace(linear, epochs=20)
    assert fingerprint(longer, 1, arrays, stats) != fingerprint(linear, 1, arrays, stats)
    step = train_params(epochs=10)
    assert fingerprint(dataclasses.replace(step, epochs=20), 1, arrays, stats) == fingerprint(step, 1, arrays, stats)


def _recipe_params(recipe: Path, tmp_path: Path) -> tuple[TrainParams, EvaluateParams]:
    """params.yaml with the recipe's overrides applied by DVC's `-S` code, read back as the stages read it."""
    from dvc.utils.hydra import apply_overrides

    overrides = [line for line in recipe.read_text().splitlines() if line and not line.startswith("#")]
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(params, overrides)
    raw = read_params_file(params)
    return load_section(raw, "train"), load_section(raw, "evaluate")


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_each_recipe_applies_with_dvc_and_trains_on_tiny_data(recipe, tmp_path):
    from cifar10.training import configure_runtime, train_model

    train, evaluate = _recipe_params(recipe, tmp_path)
    assert (train.network, train.optimizer, train.lr_schedule, train.whole_pixel_shift) == (
        "resnet",
        "sgd",
        "linear",
        True,
    )
    assert train.label_smoothing > 0 and evaluate.flip_tta
    # Each line's value is what the stages read (a misspelt key would have been refused on reading).
    for line in [line for line in recipe.read_text().splitlines() if line and not line.startswith("#")]:
        key, value = line.split("=", 1)
        section, name = key.split(".")
        got = getattr({"train": train, "evaluate": evaluate}[section], name)
        expected = yaml.safe_load(value)
        expected = float(expected) if isinstance(got, float) else expected  # YAML 1.1 reads 5e-4 as a string
        assert (list(got) if isinstance(got, tuple) else got) == expected, line
    # Its network on tiny data, 2 epochs of one step (the schedule's peak moved to epoch 1), through the train
    # stage's code.
    params = dataclasses.replace(train, epochs=2, lr_boundaries=(1,))
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(20, 32, 32, 3)).astype(np.float32),
        "y_train": np.arange(20, dtype=np.uint8) % 10,
        "x_val": rng.normal(size=(10, 32, 32, 3)).astype(np.float32),
        "y_val": np.arange(10, dtype=np.uint8),
    }
    configure_runtime(params, seed=1)
    result = train_model(arrays, Stats((120.0,), (60.0,), 1e-7), params, seed=1)
    assert len(result.history["loss"]) == 2 and all(np.isfinite(result.history["loss"]))
    assert result.history["learning_rate"][-1] == pytest.approx(0.0)  # one cycle: it ends at 0
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    assert np.allclose(predict_probabilities(result.model, images, 4, evaluate.flip_tta).sum(axis=1), 1.0)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_make_runs_each_recipe_as_one_dvc_experiment(recipe):
    overrides = [line for line in recipe.read_text().splitlines() if line and not line.startswith("#")]
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL reach this make, which then prints "Entering directory"
    # lines: a clean environment and --no-print-directory keep the output to the recipe's one command.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    printed = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", recipe.stem],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert printed == "dvc exp run " + " ".join(f"-S '{o}'" for o in overrides)
