"""The export stage: each requested format, loaded by its own runtime, predicts what the .keras model does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar10.errors import StageError
from cifar10.export import LITERT_FILE, MANIFEST, ONNX_FILE, SAVED_MODEL
from cifar10.framework import tf
from cifar10.model import build_inference_model, build_seed_cnn
from cifar10.normalized import Stats
from tests.conftest import ROOT, run, train_params

STAGE = [sys.executable, "-m", "stages.export", "models/model.keras", "exports"]

pytestmark = pytest.mark.integration


def run_stage(folder: Path) -> subprocess.CompletedProcess:
    return run(STAGE, folder, check=False, import_root=True)


def saved_model_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the SavedModel at `path` on uint8 images with TensorFlow alone (no Keras), as a server would."""
    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(images, dtype=tf.uint8)), dtype=np.float64)


def litert_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the LiteRT file at `path` on uint8 images with the LiteRT interpreter, one image at a time."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    (source,) = interpreter.get_input_details()
    (target,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], [1, *images.shape[1:]])
    interpreter.allocate_tensors()
    rows = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(target["index"])[0])
    return np.asarray(rows, dtype=np.float64)


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """Run the ONNX file at `path` on uint8 images with onnxruntime alone (no TensorFlow, no Keras)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (source,) = session.get_inputs()  # images only: no statistics or other constants left as graph inputs
    assert (source.name, source.type, source.shape[1:]) == ("image", "tensor(uint8)", [32, 32, 3])
    (probabilities,) = session.run(None, {"image": images})
    return np.asarray(probabilities, dtype=np.float64)


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    """A small uint8 classifier with distinct, non-trivial weights, saved as models/model.keras."""
    core = build_seed_cnn(train_params(widths=(4, 8, 8)), seed=3)
    model = build_inference_model(core, Stats((121.0, 117.0, 102.0), (63.0, 62.0, 66.0), 1e-7))
    folder = tmp_path_factory.mktemp("project")
    (folder / "models").mkdir()
    model.save(folder / "models/model.keras")
    return folder


def _export(folder: Path, formats: list[str]) -> str:
    (folder / "params.yaml").write_text(json.dumps({"export": {"formats": formats}}))
    result = run_stage(folder)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_saved_model_litert_and_onnx_predict_as_the_keras_model(keras_model: Path):
    from cifar10.classifier import load_classifier, predict_probabilities

    out = _export(keras_model, ["onnx", "saved_model", "litert"])  # onnx first, on a model loaded and never called
    written = ", ".join(str(Path("exports") / name) for name in (ONNX_FILE, SAVED_MODEL, LITERT_FILE))
    assert out.strip() == f"export: {written}"
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    expected = predict_probabilities(load_classifier(keras_model / "models/model.keras"), images, batch_size=6)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images get different answers: a real comparison
    served = saved_model_probabilities(keras_model / "exports" / SAVED_MODEL, images)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    lite = litert_probabilities(keras_model / "exports" / LITERT_FILE, images)
    np.testing.assert_allclose(lite, expected, atol=1e-4)
    opened = onnx_probabilities(keras_model / "exports" / ONNX_FILE, images)
    np.testing.assert_allclose(opened, expected, atol=1e-5)


def test_no_format_writes_only_the_manifest_and_a_dropped_format_disappears(keras_model: Path):
    _export(keras_model, ["litert"])
    assert sorted(p.name for p in (keras_model / "exports").iterdir()) == [MANIFEST, LITERT_FILE]
    assert json.loads((keras_model / "exports" / MANIFEST).read_text())["files"] == {"litert": LITERT_FILE}
    assert _export(keras_model, []).strip() == "export: no format requested (export.formats: [])"
    assert [p.name for p in (keras_model / "exports").iterdir()] == [MANIFEST]
    manifest = json.loads((keras_model / "exports" / MANIFEST).read_text())
    assert manifest == {"files": {}}  # no model loaded: nothing said about classes that might be wrong


def test_the_stage_refuses_a_file_that_is_not_a_model(tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.keras").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "params.yaml").write_text(json.dumps({"export": {"formats": ["litert"]}}))
    result = run_stage(tmp_path)
    assert result.returncode == 1 and not (tmp_path / "exports").exists()
    assert result.stderr.strip().startswith("error: models/model.keras is not a loadable Keras model")


def test_onnx_without_its_converter_is_refused_in_one_line_before_any_work(keras_model: Path, tmp_path: Path):
    blocker = tmp_path / "no_tf2onnx"
    blocker.mkdir()
    (blocker / "tf2onnx.py").write_text("raise ImportError('tf2onnx is not installed here')\n")
    (keras_model / "params.yaml").write_text(json.dumps({"export": {"formats": ["litert", "onnx"]}}))
    result = run(STAGE, keras_model, check=False, import_root=True, env={"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"})
    assert result.returncode == 1 and not (keras_model / "exports" / LITERT_FILE).exists()
    assert result.stderr.strip() == (
        "error: export.formats lists onnx, which needs tf2onnx: pip install -e '.[export]' (or drop onnx)"
    )


def test_an_older_model_whose_statistics_would_become_onnx_inputs_is_refused(tmp_path: Path):
    from cifar10.export import export_model
    from cifar10.framework import keras

    # The format train wrote before the Standardize layer: uint8 -> Rescaling -> Normalization -> network.
    core = build_seed_cnn(train_params(widths=(4, 8, 8)), seed=3)
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    scaled = keras.layers.Rescaling(1.0, dtype="float32")(inputs)
    old = keras.Model(inputs, core(keras.layers.Normalization(axis=None, mean=120.0, variance=4096.0)(scaled)))
    with pytest.raises(StageError, match=r"^the ONNX export needs the inputs \['image', .*retrain it"):
        export_model(old, tmp_path / "exports", ("onnx",))
    assert not (tmp_path / "exports").exists()  # nothing half-written
