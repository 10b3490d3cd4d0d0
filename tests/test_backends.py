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

    # Resuming under JAX from the JAX checkpoint: a third epoch, not a fresh start.
    params["train"]["epochs"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    resumed = _run(train, tmp_path, "jax")
    assert "train: resuming after epoch 2 of 3" in resumed.stdout
    assert json.loads((tmp_path / "models" / "meta.json").read_text())["training"]["resumed_from_epoch"] == 2


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
