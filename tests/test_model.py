"""The network, the learning-rate schedule, the uint8 model, the input batches and the augmentation."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from cifar10.augmentation import RandomAffine, augment_images, warped_dataset, warps
from cifar10.framework import keras
from cifar10.input_pipeline import draw_augmentation, steps_per_epoch, train_batches, train_steps, validation_inputs
from cifar10.model import build_inference_model, build_seed_cnn, make_schedule
from cifar10.normalized import Stats, normalize_images
from cifar10.params import TrainParams
from cifar10.seeds import STREAMS, stream_seed
from tests.conftest import layers_of, train_params


def test_default_network_is_the_tutorials():
    model = build_seed_cnn(train_params(), seed=0)
    assert model.count_params() == 309_290
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert all(c.kernel_regularizer.l2 == pytest.approx(1e-4) for c in convs)
    dropouts = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert dropouts == pytest.approx([0.2, 0.3, 0.4])
    assert model.output_shape == (None, 10)


def test_network_follows_its_params():
    model = build_seed_cnn(train_params(widths=(8, 16), dropout=(0.1, 0.1), block_depth=1, weight_decay=0), seed=0)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [8, 16] and convs[0].kernel_regularizer is None


def learning_rate_at(params: TrainParams, steps_per_epoch: int, step: int) -> float:
    return float(make_schedule(params, steps_per_epoch)(step))


def test_schedule_steps_down_at_epoch_boundaries_with_time_decay():
    params = train_params()  # 1e-3, then 5e-4 after 75 epochs, then 3e-4 after 100; decay 1e-6 per step
    steps = 100
    assert learning_rate_at(params, steps, 0) == pytest.approx(1e-3)
    assert learning_rate_at(params, steps, 75 * steps - 1) == pytest.approx(1e-3 / (1 + 1e-6 * (75 * steps - 1)))
    assert learning_rate_at(params, steps, 75 * steps) == pytest.approx(5e-4 / (1 + 1e-6 * 75 * steps))
    assert learning_rate_at(params, steps, 100 * steps) == pytest.approx(3e-4 / (1 + 1e-6 * 100 * steps))
    # The tutorial's `elif` bug (3e-4 never reached) is expressible as a schedule with one boundary.
    buggy = train_params(lr_boundaries=(76,), lr_values=(1e-3, 5e-4), lr_decay=0)
    assert learning_rate_at(buggy, steps, 110 * steps) == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "stats", [Stats((120.0,), (64.0,), 1e-7), Stats((125.0, 122.0, 113.0), (62.0, 61.0, 66.0), 1e-7)]
)
def test_uint8_model_normalizes_inside(stats):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    core = build_seed_cnn(train_params(widths=(4, 4, 4)), seed=0)
    model = build_inference_model(core, stats)
    assert model.input.dtype == "uint8"
    expected = core.predict(normalize_images(images, stats), verbose=0)
    assert np.allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    # What the network sees is exactly the training arrays' arithmetic, bit for bit, on every pixel value.
    every_value = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 1, 1, 3))
    inside = keras.Model(model.input, model.get_layer("zscore").output)
    zscored = np.asarray(inside.predict(np.ascontiguousarray(np.tile(every_value, (1, 32, 32, 1))), verbose=0))
    assert np.array_equal(zscored, normalize_images(np.tile(every_value, (1, 32, 32, 1)), stats))


def _augment(images: np.ndarray, step: int, seed: int, params: TrainParams) -> np.ndarray:
    """The augmentation of training step `step`, as the train step applies it."""
    draws = draw_augmentation(seed, step, len(images), params, images.shape[1], images.shape[2])
    return augment_images(np.asarray(images, np.float32), draws, params)


def _images(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 32, 32, 3)).astype(np.float32)


def test_flip_only_mirrors_or_keeps_each_image():
    x = _images()
    params = train_params(rotation_deg=0, shift=0, flip=True)
    out = _augment(x, 5, 0, params)
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
    kept = [np.array_equal(o, i) for o, i in zip(out, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored)


def test_augmentation_is_keyed_by_seed_and_step():
    x = _images()
    params = train_params()
    a = _augment(x, 3, 0, params)
    b = _augment(x, 3, 0, params)
    c = _augment(x, 4, 0, params)
    d = _augment(x, 3, 1, params)
    assert a.shape == x.shape and np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)
    assert not np.allclose(a, x)


def _draws(stream: str, seed: int, step: int, batch: int, low: float, high: float) -> np.ndarray:
    """The uniform draws of one augmentation stream, as the pipeline documents them: keyed by (stream key, step)."""
    return np.random.default_rng([stream_seed(seed, stream), step]).uniform(low, high, batch)


def _ramps(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose channel 0 is the column index x and channel 1 the row index y of each pixel."""
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    return np.broadcast_to(np.stack([x, y], axis=-1), (batch, 32, 32, 2)).copy(), np.stack([x, y], axis=-1)


INNER = slice(8, 24)  # pixels whose source stays inside the image for rotations of up to 15 degrees


def test_rotation_is_the_drawn_angle_in_degrees_about_the_image_centre():
    batch, seed, step = 6, 11, 3
    params = train_params(rotation_deg=15.0, shift=0, flip=False)
    images, grid = _ramps(batch)
    out = _augment(images, step, seed, params)
    degrees = _draws("rotation", seed, step, batch, -15.0, 15.0)
    centre = 15.5  # (32 - 1) / 2: the middle between the two central pixels
    xs, ys = grid[INNER, INNER, 0].ravel(), grid[INNER, INNER, 1].ravel()
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1)
    for k in range(batch):
        # Each output pixel samples the input at its position rotated about the centre: a linear map of (x, y),
        # exact on ramps (bilinear sampling of a linear image is linear), so the fit is tight.
        (a, b, c), *_ = np.linalg.lstsq(design, out[k, INNER, INNER, 0].ravel(), rcond=None)
        (d, e, f), *_ = np.linalg.lstsq(design, out[k, INNER, INNER, 1].ravel(), rcond=None)
        angle = np.degrees(np.arctan2(-b, a))
        assert angle == pytest.approx(degrees[k], abs=0.05)  # degrees, not radians: |angle| <= 15
        assert abs(angle) <= 15.0
        assert (d, e) == (pytest.approx(-b, abs=1e-3), pytest.approx(a, abs=1e-3))  # the same rotation for y
        # The centre stays in place, in both coordinates (a centre off by one pixel moves it by 1 - cos, or sin).
        assert c == pytest.approx(centre - a * centre - b * centre, abs=2e-3)
        assert f == pytest.approx(centre - d * centre - e * centre, abs=2e-3)
        assert np.hypot(a, b) == pytest.approx(1.0, abs=1e-3)  # no scaling
    assert len({round(float(d), 3) for d in degrees}) == batch  # one draw per image


def test_shift_moves_content_by_the_drawn_fraction_of_the_size():
    batch, seed, step = 6, 11, 3
    params = train_params(rotation_deg=0.0, shift=0.1, flip=False)
    images, grid = _ramps(batch)
    out = _augment(images, step, seed, params)
    dx = _draws("shift_x", seed, step, batch, -0.1, 0.1) * 32  # pixels
    dy = _draws("shift_y", seed, step, batch, -0.1, 0.1) * 32
    for k in range(batch):
        # Content moves right by dx and down by dy: the pixel at x shows what was at x - dx.
        assert np.allclose(out[k, INNER, INNER, 0], grid[INNER, INNER, 0] - dx[k], atol=1e-3)
        assert np.allclose(out[k, INNER, INNER, 1], grid[INNER, INNER, 1] - dy[k], atol=1e-3)
        assert abs(dx[k]) <= 3.2 and abs(dy[k]) <= 3.2
    assert not np.allclose(dx, dy)  # the two axes draw from different streams


def test_random_streams_are_independent_of_each_other_and_of_the_seed():
    keys = {(seed, name, None): stream_seed(seed, name) for seed in (42, 43) for name in STREAMS}
    keys |= {(seed, "dropout", k): stream_seed(seed, "dropout", k) for seed in (42, 43) for k in range(1, 6)}
    assert len(set(keys.values())) == len(keys)
    # Consecutive seeds do not shift one stream onto another (as seed + offset did).
    assert stream_seed(43, "flip") != stream_seed(42, "rotation") and stream_seed(42, "dropout", 2) != stream_seed(
        43, "dropout", 1
    )
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(42, "flips")


def test_each_epoch_visits_every_image_once_and_resume_matches():
    n, params = 37, train_params(epochs=3, batch_size=8, rotation_deg=0, shift=0, flip=False)
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 32, 32, 3), np.float32)
    y = (np.arange(n) % 10).astype(np.uint8)
    batches = [(bx[:, 0, 0, 0], by) for (bx, _), by in train_batches(x, y, params, seed=7)]
    assert len(batches) == 3 * steps_per_epoch(n, 8)
    per_epoch = steps_per_epoch(n, 8)
    orders = [np.concatenate([b[0] for b in batches[e * per_epoch : (e + 1) * per_epoch]]) for e in range(3)]
    for order in orders:
        assert sorted(order.astype(int).tolist()) == list(range(n))
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    assert all(np.array_equal(by, (bx.astype(int) % 10)) for bx, by in batches)  # labels travel with images
    resumed = [bx[:, 0, 0, 0] for (bx, _), _ in train_batches(x, y, params, seed=7, start_epoch=2)]
    assert np.array_equal(np.concatenate(resumed), orders[2])


@pytest.mark.parametrize("name", ["rmsprop", "adam", "sgd"])
def test_each_optimizer_is_the_named_one_on_the_schedule(name):
    from cifar10.framework import keras
    from cifar10.model import StepTimeDecay, make_optimizer

    params = train_params(optimizer=name, lr_boundaries=(2, 5), lr_values=(1e-2, 1e-3, 1e-4), lr_decay=0.0)
    optimizer = make_optimizer(params, steps_per_epoch=10)
    expected = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    assert type(optimizer) is expected[name]
    schedule = optimizer._learning_rate
    assert isinstance(schedule, StepTimeDecay) and schedule.boundaries == [20, 50]  # epochs x steps per epoch
    if name == "sgd":
        assert optimizer.momentum == 0.9 and optimizer.nesterov is True
    if name == "rmsprop":  # Keras 2's defaults, which the tutorial ran with
        assert optimizer.rho == 0.9 and optimizer.epsilon == 1e-7


def test_the_schedule_survives_a_save_and_load_through_its_config():
    from cifar10.model import StepTimeDecay

    schedule = StepTimeDecay([20, 50], [1e-2, 1e-3, 1e-4], 1e-6)
    assert schedule.get_config() == {"boundaries": [20, 50], "values": [1e-2, 1e-3, 1e-4], "decay": 1e-6}
    again = StepTimeDecay.from_config(schedule.get_config())
    for step in (0, 19, 20, 49, 50, 1000):
        assert float(again(step)) == float(schedule(step))


def test_validation_inputs_are_the_images_in_order_with_draws_that_change_nothing():
    images = np.arange(7 * 32 * 32 * 3, dtype=np.float32).reshape(7, 32, 32, 3)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    (x, draws), y = validation_inputs(images, labels)
    assert x is images and y.tolist() == labels.tolist() and y.dtype == np.int32
    assert draws.shape == (7, 4) and not draws.any()
    # Outside training the augmentation layer passes images through, whatever the draws.
    from cifar10.augmentation import RandomAffine

    layer = RandomAffine("nearest")
    random = draw_augmentation(0, 0, 7, train_params(), 32, 32)
    assert np.array_equal(np.asarray(layer(images, random, training=False)), images)
    assert not np.array_equal(np.asarray(layer(images, random, training=True)), images)


@pytest.mark.parametrize(("fill_mode", "corner"), [("nearest", 1.0), ("constant", 0.0)])
def test_pixels_brought_in_by_a_rotation_follow_fill_mode(fill_mode, corner):
    params = train_params(rotation_deg=180.0, shift=0.0, flip=False, fill_mode=fill_mode)
    images = np.ones((8, 32, 32, 1), np.float32)
    out = _augment(images, 2, 4, params)
    degrees = _draws("rotation", 4, 2, 8, -180.0, 180.0)
    k = int(np.argmin(np.abs(np.abs(degrees) - 45)))  # the draw nearest 45 degrees: its corners come from outside
    assert 20 < abs(degrees[k]) < 70
    assert out[k, 0, 0, 0] == pytest.approx(corner, abs=1e-6)


def test_the_training_stream_depends_on_the_seed_and_numbers_steps_across_epochs():
    n, params = 16, train_params(epochs=2, batch_size=8, rotation_deg=0.0, shift=0.0, flip=True)
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None], (32, 32, 3))
    x = np.stack([i * 100.0 + ramp for i in range(n)]).astype(np.float32)  # mean i * 100 + 15.5, flip or not
    y = (np.arange(n) % 10).astype(np.uint8)
    first = [(bx, draws, by) for (bx, draws), by in train_batches(x, y, params, seed=7)]
    other_seed = [by for _, by in train_batches(x, y, params, seed=8)]
    assert all(by.dtype == np.int32 for *_, by in first)
    assert not all(np.array_equal(a[2], b) for a, b in zip(first, other_seed))  # the shuffle follows the seed
    # Batch i of epoch e carries the draws of step e * steps + i, with the run's seed: epoch 2's second batch is step 3.
    images, draws, _ = first[3]
    idx = np.rint((images.mean(axis=(1, 2, 3)) - 15.5) / 100.0).astype(int)
    assert np.array_equal(images, x[idx])  # the pixels travel unaugmented; the train step warps them
    assert np.array_equal(draws, draw_augmentation(7, 3, 8, params, 32, 32))
    assert not np.array_equal(draws, draw_augmentation(7, 1, 8, params, 32, 32))
    assert not np.array_equal(draws, draw_augmentation(8, 3, 8, params, 32, 32))


def test_flip_mirrors_about_half_of_the_images():
    params = train_params(rotation_deg=0, shift=0, flip=True)
    x = np.broadcast_to(np.arange(32, dtype=np.float32)[None, None, :, None], (2000, 32, 32, 1))
    out = _augment(x, 9, 3, params)
    mirrored = int(np.sum(out[:, 0, 0, 0] == 31.0))
    assert 900 <= mirrored <= 1100  # a fair coin: 1000 +- 4.5 standard deviations


def test_batches_for_two_devices_split_evenly_and_leave_out_fewer_than_two_images():
    n, params = 37, train_params(epochs=2, batch_size=8, rotation_deg=0, shift=0, flip=False)
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 32, 32, 3), np.float32)
    y = (np.arange(n) % 10).astype(np.uint8)
    batches = [bx[:, 0, 0, 0] for (bx, _), _ in train_batches(x, y, params, seed=7, replicas=2)]
    steps = steps_per_epoch(n, 8, replicas=2)
    assert steps == 5 and len(batches) == 2 * steps  # 36 images an epoch: 8, 8, 8, 8, 4
    assert all(len(b) % 2 == 0 for b in batches) and [len(b) for b in batches[:steps]] == [8, 8, 8, 8, 4]
    epochs = [np.concatenate(batches[e * steps : (e + 1) * steps]).astype(int) for e in range(2)]
    assert all(len(set(e.tolist())) == 36 for e in epochs)  # each image at most once an epoch
    assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # the one left out changes with the epoch
    assert steps_per_epoch(33, 8, replicas=4) == 4 and steps_per_epoch(33, 8) == 5  # 32 usable: no 1-image batch


def test_the_tf_data_warp_gives_the_batches_of_the_train_step():
    # Under TensorFlow on a CPU the warp runs in a tf.data map (cifar10.training.warp_in_input_pipeline): the same
    # images, draws and labels in the same order as train_batches, warped to the same pixels as in the step.
    params = train_params(batch_size=16, epochs=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    layer = RandomAffine(params.fill_mode, warps(params))
    dataset = warped_dataset(x, y, train_steps(len(x), (32, 32), params, 3, start_epoch=1), layer)
    got = list(dataset.as_numpy_iterator())
    expected = list(train_batches(x, y, params, 3, start_epoch=1))
    assert len(got) == len(expected) == 2 * 3  # epochs 1 and 2, three batches each (16, 16, 8)
    for ((images, draws), labels), ((raw, want_draws), want_labels) in zip(got, expected):
        assert np.array_equal(draws, want_draws) and np.array_equal(labels, want_labels) and labels.dtype == np.int32
        assert np.array_equal(images, augment_images(raw, want_draws, params))
        assert not np.array_equal(images, raw)  # warped
    # The trainer's own layer then passes the warped batch through, in training and out of it.
    assert layer.in_input_pipeline
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x[:4], np.ones((4, 4), np.float32), training=True)), x[:4])


SMALL = {  # each network, small enough to build in a moment
    "tutorial": {"widths": (4, 8, 8)},
    "resnet": {"network": "resnet", "widths": (8, 16, 16), "dropout": (0.0, 0.0, 0.25), "block_depth": 2},
}


@contextlib.contextmanager
def _global_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("given", ["as_argument", "as_global_policy"])  # training sets the global policy
@pytest.mark.parametrize("network", ["tutorial", "resnet"])
def test_mixed_precision_computes_the_layers_in_bfloat16_and_the_probabilities_in_float32(network, given):
    if given == "as_argument":
        model = build_seed_cnn(train_params(**SMALL[network]), seed=0, dtype="mixed_bfloat16")
    else:
        with _global_policy("mixed_bfloat16"):
            model = build_seed_cnn(train_params(**SMALL[network]), seed=0)
    convs = layers_of(model, "Conv2D")
    assert convs and all(c.compute_dtype == "bfloat16" and c.variable_dtype == "float32" for c in convs)
    inside = [layer for layer in model.layers[1:] if layer.name != "probabilities"]  # after the input layer
    assert [layer.name for layer in inside if layer.compute_dtype != "bfloat16"] == []
    # The softmax in float32 keeps the loss accurate; the probabilities reach the loss and the user as float32.
    assert model.get_layer("probabilities").compute_dtype == "float32" and model.output.dtype == "float32"
    # One device, no strategy: plain batch norm unless a data-parallel run asks for synchronized statistics.
    assert not any(bn.synchronized for bn in layers_of(model, "BatchNormalization"))


def test_the_tutorial_networks_dropout_layers_draw_from_the_runs_seed():
    for seed in (0, 7):
        dropouts = layers_of(build_seed_cnn(train_params(widths=(4, 4, 4)), seed=seed), "Dropout")
        assert [d.seed for d in dropouts] == [stream_seed(seed, "dropout", block) % 2**31 for block in (1, 2, 3)]


def test_the_inference_model_takes_uint8_images_named_image_and_normalizes_in_float32_under_any_policy():
    core = build_seed_cnn(train_params(widths=(4, 4, 4)), seed=0)
    stats = Stats((125.0, 122.0, 113.0), (62.0, 61.0, 66.0), 1e-7)
    with _global_policy("mixed_bfloat16"):  # as during a bfloat16 training run
        model = build_inference_model(core, stats)
    # "image": the input name ONNX and SavedModel users feed (README, cifar10/export.py).
    assert (model.name, model.input.name, model.input.dtype) == ("cifar10_classifier", "image", "uint8")
    assert [model.get_layer(n).compute_dtype for n in ("to_float", "zscore")] == ["float32", "float32"]
    zscore = model.get_layer("zscore")
    assert zscore.mean.dtype == zscore.scale.dtype == "float32"
    with pytest.raises(ValueError, match=r"^the network has \(10,\) outputs for 3 class names$"):
        build_inference_model(core, stats, ("cat", "dog", "frog"))


@pytest.mark.parametrize("network", ["tutorial", "resnet"])
def test_a_data_parallel_run_asks_every_batch_norm_for_synchronized_statistics(network):
    norms = layers_of(
        build_seed_cnn(train_params(**SMALL[network]), seed=0, sync_batch_norm=True), "BatchNormalization"
    )
    assert norms and all(bn.synchronized for bn in norms)
