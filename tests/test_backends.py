"""The pipeline on either Keras 3 backend: train, evaluate and load models under TensorFlow and under JAX,
with TensorFlow absent for JAX, as on the GPU machines (tests/without_tensorflow blocks its import)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, TINY_TRAIN, stage_env

pytest.importorskip("jax")  # the optional extra `jax`; requirements.lock installs it, so the suite runs these

pytestmark = pytest.mark.integration
WITHOUT_TENSORFLOW = ROOT / "tests" / "without_tensorflow"


def _run(args: list[str], cwd: Path, backend: str) -> subprocess.CompletedProcess:
    """Run `python ARGS` from this checkout under `backend`; under JAX, TensorFlow cannot be imported."""
    env = stage_env(import_root=True)
    env["KERAS_BACKEND"] = backend
    if backend == "jax":
        env["PYTHONPATH"] = f"{WITHOUT_TENSORFLOW}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args} under {backend}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def _evaluate(folder: Path, backend: str) -> tuple[dict, str]:
    out = folder / f"eval_{backend}"
    out.mkdir()
    _run(
        [
            "-m",
            "stages.evaluate",
            "models/model.keras",
            "data/raw/cifar-10-python.tar.gz",
            f"{out}/evaluate.json",
            f"{out}/predictions.csv",
            f"{out}/per_class.csv",
            f"{out}/plots",
        ],
        folder,
        backend,
    )
    return json.loads((out / "evaluate.json").read_text()), (out / "predictions.csv").read_text()


@pytest.mark.slow
def test_train_under_jax_without_tensorflow_and_evaluate_under_both_backends(tmp_path: Path, archive):
    path, md5 = archive
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update(url=path.as_uri(), md5=md5)
    params["normalize"]["val_size"] = 20
    params["train"].update({**TINY_TRAIN, "epochs": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["-m", "stages.download", "data/raw/cifar-10-python.tar.gz"], tmp_path, "tensorflow")
    _run(["-m", "stages.normalize", "data/raw/cifar-10-python.tar.gz", "data/normalized"], tmp_path, "jax")
    train = [
        "-m",
        "stages.train",
        "data/normalized",
        "models",
        "dvclive",
        "metrics/train.json",
        "checkpoints",
    ]
    result = _run(train, tmp_path, "jax")
    meta = json.loads((tmp_path / "models" / "meta.json").read_text())
    assert meta["training"]["device"] == "CPU" and meta["training"]["epochs"] == 2
    assert "on CPU" in result.stdout and "Epoch 2/2" in result.stdout  # it trained, under JAX
    history = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert history["step"] == 1 and 0 < history["train"]["loss"] < 10

    # The JAX-trained model, evaluated under JAX (no TensorFlow) and under TensorFlow: the same predictions.
    on_jax, predictions_jax = _evaluate(tmp_path, "jax")
    on_tf, predictions_tf = _evaluate(tmp_path, "tensorflow")
    assert predictions_jax == predictions_tf and predictions_tf.count("\n") > 10
    assert on_jax["test_accuracy"] == on_tf["test_accuracy"]
    assert on_jax["test_loss"] == pytest.approx(on_tf["test_loss"], abs=1e-5)


PREDICT = """
import json, sys
import numpy as np
from cifar10.classifier import load_classifier, predict_probabilities
from cifar10.input_pipeline import train_batches
from cifar10.params import TrainParams, parse_section
from cifar10.framework import keras
from pathlib import Path
model = load_classifier(Path(sys.argv[1]))
images = np.load(sys.argv[2])
params = parse_section(TrainParams, "train", json.loads(sys.argv[3]))
(x, draws), y = next(train_batches(images.astype(np.float32), np.arange(len(images)) % 10, params, 9))
probabilities = predict_probabilities(model, images, 32)
print(json.dumps({"backend": keras.backend.backend(), "probabilities": probabilities.tolist(),
                  "batch": y.tolist(), "draws": draws.tolist()}))
"""


def test_a_model_saved_under_tensorflow_predicts_the_same_under_jax_and_the_batches_match(tmp_path: Path):
    from cifar10.classifier import predict_probabilities
    from cifar10.input_pipeline import train_batches
    from cifar10.model import build_inference_model, build_seed_cnn
    from cifar10.normalized import Stats
    from cifar10.params import as_dict
    from tests.conftest import train_params

    params = train_params(widths=(4, 8, 8), batch_size=5)
    model = build_inference_model(build_seed_cnn(params, seed=3), Stats((120.0,), (64.0,), 1e-7))
    model.save(tmp_path / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "predict.py"
    script.write_text(PREDICT)
    settings = json.dumps(as_dict(params))
    out = _run([str(script), "model.keras", "images.npy", settings], tmp_path, "jax")
    on_jax = json.loads(out.stdout.strip().splitlines()[-1])
    assert on_jax["backend"] == "jax"
    expected = predict_probabilities(model, images, 32)
    assert np.allclose(on_jax["probabilities"], expected, atol=1e-5)
    assert not np.allclose(expected, expected[:1])  # the images get different answers: a real comparison
    # The first batch and its augmentation draws are the same numbers under both backends.
    (x, draws), y = next(train_batches(images.astype(np.float32), np.arange(12) % 10, params, 9))
    assert on_jax["batch"] == y.tolist() and np.array_equal(np.asarray(on_jax["draws"], np.float32), draws)
    shutil.rmtree(tmp_path)


MIRRORED = """
import json, sys
import numpy as np
import keras
from cifar10.normalized import Stats
from cifar10.params import TrainParams, parse_section
from cifar10.training import configure_distribution, configure_runtime, train_model
params = parse_section(TrainParams, "train", json.loads(sys.argv[1]))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(100, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 100).astype(np.uint8)
arrays = {"x_train": x[:70], "y_train": y[:70], "x_val": x[70:], "y_val": y[70:]}  # last batch: 6 of 16 images
runs = {}
for strategy in ("one", "mirrored"):
    configure_runtime(params, 5)  # the same initial weights for both runs
    replicas = configure_distribution(strategy)
    result = train_model(arrays, Stats((0.0,), (1.0,), 1e-7), params, 5, replicas=replicas)
    probabilities = result.model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    runs[strategy] = {"replicas": replicas, "history": result.history, "probabilities": probabilities.tolist()}
    keras.distribution.set_distribution(None)
print(json.dumps(runs))
"""


@pytest.mark.slow
def test_mirrored_under_jax_splits_each_batch_over_two_devices_and_matches_one_device(tmp_path: Path):
    from cifar10.params import as_dict
    from tests.conftest import train_params

    params = train_params(**{**TINY_TRAIN, "epochs": 2, "batch_size": 16})
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = stage_env(import_root=True)
    env.update(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = f"{WITHOUT_TENSORFLOW}{os.pathsep}{env['PYTHONPATH']}"
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(as_dict(params))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    one, mirrored = runs["one"], runs["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    # The same global batches, one program over both devices: the same training within float rounding.
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert np.allclose(mirrored["history"][name], one["history"][name], atol=1e-4), name
    assert np.allclose(mirrored["probabilities"], one["probabilities"], atol=1e-4)
    assert one["history"]["loss"][0] != one["history"]["loss"][1]  # two real epochs, not a constant


def test_mirrored_needs_jax_and_a_batch_the_devices_divide():
    from cifar10.errors import StageError
    from cifar10.training import configure_distribution, train_model
    from tests.conftest import train_params

    assert configure_distribution("one") == 1
    with pytest.raises(StageError, match="resources.strategy mirrored needs KERAS_BACKEND=jax"):
        configure_distribution("mirrored")  # this test process runs TensorFlow
    empty = {k: np.zeros((0, 32, 32, 3) if k[0] == "x" else 0) for k in ("x_train", "y_train", "x_val", "y_val")}
    with pytest.raises(StageError, match="train.batch_size 16 must be a multiple of the 3 devices"):
        train_model(empty, None, train_params(batch_size=16), 0, replicas=3)
