"""The export stage: each requested format, loaded by its own runtime, predicts what the .keras model does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar10.export import LITERT_FILE, MANIFEST, SAVED_MODEL
from cifar10.framework import tf
from cifar10.model import build_inference_model, build_seed_cnn
from cifar10.normalized import Stats
from tests.conftest import run, train_params

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


def test_saved_model_and_litert_predict_as_the_keras_model(keras_model: Path):
    from cifar10.classifier import load_classifier, predict_probabilities

    out = _export(keras_model, ["saved_model", "litert"])
    assert out.strip() == f"export: {Path('exports') / SAVED_MODEL}, {Path('exports') / LITERT_FILE}"
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    expected = predict_probabilities(load_classifier(keras_model / "models/model.keras"), images, batch_size=6)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images get different answers: a real comparison
    served = saved_model_probabilities(keras_model / "exports" / SAVED_MODEL, images)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    lite = litert_probabilities(keras_model / "exports" / LITERT_FILE, images)
    np.testing.assert_allclose(lite, expected, atol=1e-4)


def test_no_format_writes_only_the_manifest_and_a_dropped_format_disappears(keras_model: Path):
    _export(keras_model, ["litert"])
    assert sorted(p.name for p in (keras_model / "exports").iterdir()) == [MANIFEST, LITERT_FILE]
    assert json.loads((keras_model / "exports" / MANIFEST).read_text())["files"] == {"litert": LITERT_FILE}
    assert _export(keras_model, []).strip() == "export: no format requested (export.formats: [])"
    assert [p.name for p in (keras_model / "exports").iterdir()] == [MANIFEST]
    manifest = json.loads((keras_model / "exports" / MANIFEST).read_text())
    assert manifest["files"] == {} and manifest["class_names"][0] == "airplane"


def test_the_stage_refuses_a_file_that_is_not_a_model(tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.keras").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "params.yaml").write_text(json.dumps({"export": {"formats": ["litert"]}}))
    result = run_stage(tmp_path)
    assert result.returncode == 1 and not (tmp_path / "exports").exists()
    assert result.stderr.strip().startswith("error: models/model.keras is not a loadable Keras model")
