"""The pipeline on either Keras 3 backend: train, evaluate and load models under TensorFlow and under JAX,
with TensorFlow absent for JAX, as on the GPU machines (tests/without_tensorflow blocks its import)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_TRAIN, dvc, git, run, set_params, stage_env

pytest.importorskip("jax")  # the optional extra `jax`; requirements.lock installs it, so the suite runs these

pytestmark = pytest.mark.integration
WITHOUT_TENSORFLOW = ROOT / "tests" / "without_tensorflow"
# XLA's CPU compiler without its optimization passes: a tiny network's train step compiles in 5 s instead of 20.
QUICK_XLA = "--xla_backend_optimization_level=0"
TWO_CPU_DEVICES = f"--xla_force_host_platform_device_count=2 {QUICK_XLA}"


def _run(args: list[str], cwd: Path, backend: str) -> subprocess.CompletedProcess:
    """Run `python ARGS` from this checkout under `backend`; under JAX, TensorFlow cannot be imported."""
    env = stage_env(import_root=True)
    env["KERAS_BACKEND"] = backend
    if backend == "jax":
        env["XLA_FLAGS"] = QUICK_XLA
        env["PYTHONPATH"] = f"{WITHOUT_TENSORFLOW}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args} under {backend}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result


@pytest.mark.slow
def test_trained_under_jax_on_two_devices_in_bfloat16_then_pulled_to_a_laptop_that_predicts_in_float32(
    project: Path, archive, tmp_path: Path
):
    """The GPU-to-laptop story: a `dvc repro` as on a GPU machine (JAX, no TensorFlow, 2 devices, bfloat16) pushes;
    a fresh clone pulls only the model and classifies the test images on CPU under TensorFlow in float32."""
    path, md5 = archive
    set_params(
        project,
        {
            "download": {"url": path.as_uri(), "md5": md5},
            "normalize": {"val_size": 0},  # train on all, as the tutorial did: no validation figures
            "train": {**TINY_TRAIN, "epochs": 2, "mixed_precision": "bfloat16"},
            "resources": {"devices": [], "strategy": "mirrored"},
        },
    )
    git("commit", "-qam", "the GPU machine's params", cwd=project)
    gpu_machine = {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": TWO_CPU_DEVICES,  # two devices, as on a 2-GPU machine
        # No TensorFlow, as on the GPU machines (ahead of what stage_env puts there under `make mutation`).
        "PYTHONPATH": os.pathsep.join(p for p in (str(WITHOUT_TENSORFLOW), stage_env().get("PYTHONPATH")) if p),
    }
    repro = dvc("repro", cwd=project, env=gpu_machine)
    assert "each batch split over 2 devices (resources.strategy mirrored)" in repro.stdout
    training = json.loads((project / "models" / "meta.json").read_text())["training"]
    assert (training["replicas"], training["mixed_precision"], training["epochs"]) == (2, "bfloat16", 2)
    assert json.loads((project / "metrics" / "train.json").read_text())["val_accuracy"] is None
    assert json.loads((project / "data/normalized/stats.json").read_text())["counts"] == {"train": 100, "val": 0}
    assert 0 <= json.loads((project / "metrics" / "evaluate.json").read_text())["test_accuracy"] <= 1
    dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "trained on the GPU machine", cwd=project)
    dvc("push", cwd=project)

    laptop = tmp_path / "laptop"
    git("clone", "-q", str(project), str(laptop), cwd=tmp_path)
    dvc("pull", "models", cwd=laptop)  # the model only: no data, no retraining
    assert not (laptop / "data").exists()
    predict = [sys.executable, "-m", "cifar10.predict", "--model", "models/model.keras", "--archive", str(path)]
    out = run([*predict, "--test-samples", "1000", "--top", "1", "--json"], laptop, env={"KERAS_BACKEND": "tensorflow"})
    on_laptop = [json.loads(line)["top"][0]["class"] for line in out.stdout.splitlines()]
    with open(project / "metrics" / "predictions.csv", newline="") as rows:
        on_gpu_machine = [row["predicted"] for row in csv.DictReader(rows)]
    assert len(on_laptop) == len(on_gpu_machine) > 10 and on_laptop == on_gpu_machine

    from cifar10.classifier import load_classifier  # this test process: TensorFlow, as on the laptop

    model = load_classifier(laptop / "models" / "model.keras")
    assert {w.dtype for w in model.get_weights()} == {np.dtype(np.float32)}
    assert {layer.dtype_policy.name for layer in model.get_layer("cifar10_cnn").layers} == {"float32"}


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
from cifar10.distribution import configure_distribution
from cifar10.training import configure_runtime, train_model
params = parse_section(TrainParams, "train", json.loads(sys.argv[1]))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(100, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, 100).astype(np.uint8)
arrays = {"x_train": x[:70], "y_train": y[:70], "x_val": x[:0], "y_val": y[:0]}  # last batch: 6 of 16 images
odd = {"x_train": x[:71], "y_train": y[:71], "x_val": x[71:92], "y_val": y[71:92]}  # 71 and 21: trimmed to 70, 20
runs = {}
for name, strategy, data in (("one", "one", arrays), ("mirrored", "mirrored", arrays), ("odd", "mirrored", odd)):
    distribution = configure_distribution(strategy)
    configure_runtime(params, 5)  # the same initial weights for every run
    replicas = distribution.replicas
    layout = keras.distribution.distribution().get_data_layout((16, 32, 32, 3)).axes if replicas > 1 else None
    result = train_model(data, Stats((0.0,), (1.0,), 1e-7), params, 5, distribution=distribution)
    probabilities = result.model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    runs[name] = {"replicas": replicas, "history": result.history, "probabilities": probabilities.tolist(),
                  "layout": layout}
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
    env.update(KERAS_BACKEND="jax", XLA_FLAGS=TWO_CPU_DEVICES)
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
    one, mirrored, odd = runs["one"], runs["mirrored"], runs["odd"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["layout"] == ["batch", None, None, None]  # each batch split along its first axis
    # The same global batches, one program over both devices: the same training within float rounding.
    for name in ("loss", "accuracy"):
        assert np.allclose(mirrored["history"][name], one["history"][name], atol=1e-4), name
    assert np.allclose(mirrored["probabilities"], one["probabilities"], atol=1e-4)
    assert one["history"]["loss"][0] != one["history"]["loss"][1]  # two real epochs, not a constant
    # Odd counts (71 training, 21 validation images): trimmed to what 2 devices split evenly, 20 for validation.
    assert odd["replicas"] == 2 and len(odd["history"]["val_accuracy"]) == 2
    assert all(abs(a * 20 - round(a * 20)) < 1e-4 for a in odd["history"]["val_accuracy"])


def test_a_batch_the_devices_cannot_divide_and_a_multi_worker_run_without_its_cluster_are_refused(monkeypatch):
    from cifar10.distribution import Distribution, configure_distribution
    from cifar10.errors import StageError
    from cifar10.training import train_model
    from tests.conftest import train_params

    assert configure_distribution("one") == Distribution(replicas=1, workers=1, worker=0, engine=None)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StageError, match="^resources.strategy multi_worker under TensorFlow needs TF_CONFIG"):
        configure_distribution("multi_worker")  # this test process runs TensorFlow
    empty = {k: np.zeros((0, 32, 32, 3) if k[0] == "x" else 0) for k in ("x_train", "y_train", "x_val", "y_val")}
    with pytest.raises(StageError, match="train.batch_size 16 must be a multiple of the 3 devices"):
        train_model(empty, None, train_params(batch_size=16), 0, distribution=Distribution(replicas=3))
