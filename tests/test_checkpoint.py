"""The checkpoint fingerprint: every input of a training run changes it, the number of epochs only where the
schedule depends on it (tests/test_fast_recipe.py)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import cifar10.checkpoint as checkpoint
from cifar10.checkpoint import fingerprint
from cifar10.normalized import Stats
from cifar10.params import TrainParams
from tests.conftest import train_params

BASE_STATS = Stats((120.0,), (60.0,), 1e-7)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(6, 32, 32, 3)).astype(np.float32),
        "y_train": np.arange(6, dtype=np.uint8),
        "x_val": rng.normal(size=(2, 32, 32, 3)).astype(np.float32),
        "y_val": np.array([1, 2], dtype=np.uint8),
    }


def _other_value(value):
    """A different valid value of the same kind, for any train param."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return {
            "elu": "relu",
            "nearest": "reflect",
            "rmsprop": "adam",
            "none": "bfloat16",
            "auto": "none",
            "tutorial": "resnet",
            "step": "linear",
        }[value]
    if isinstance(value, tuple):
        return (*value[:-1], _other_value(value[-1]))
    if isinstance(value, int):
        return value + 1
    return value * 0.5 if value else 0.1  # 0.0 (label smoothing off) -> 0.1


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrainParams) if f.name != "epochs"])
def test_every_train_param_changes_the_fingerprint(field):
    base = train_params()
    changed = dataclasses.replace(base, **{field: _other_value(getattr(base, field))})
    assert fingerprint(changed, 42, _arrays(), BASE_STATS) != fingerprint(base, 42, _arrays(), BASE_STATS)


def test_seed_stats_and_every_array_change_the_fingerprint_but_epochs_do_not():
    params, arrays = train_params(), _arrays()
    base = fingerprint(params, 42, arrays, BASE_STATS)
    assert fingerprint(params, 42, _arrays(), BASE_STATS) == base  # a pure function of its inputs
    assert fingerprint(dataclasses.replace(params, epochs=7), 42, arrays, BASE_STATS) == base  # a run may extend
    assert fingerprint(params, 43, arrays, BASE_STATS) != base
    assert fingerprint(params, 42, arrays, Stats((121.0,), (60.0,), 1e-7)) != base
    assert fingerprint(params, 42, arrays, Stats((120.0,), (61.0,), 1e-7)) != base
    for name in arrays:
        changed = {k: v.copy() for k, v in arrays.items()}
        changed[name].flat[-1] += 1  # one label or one pixel
        assert fingerprint(params, 42, changed, BASE_STATS) != base, name
    empty_val = {**arrays, "x_val": arrays["x_val"][:0], "y_val": arrays["y_val"][:0]}
    assert fingerprint(params, 42, empty_val, BASE_STATS) != base
    # A data-parallel run on 2 devices visits other batches (a multiple of 2 images an epoch): not resumable as 1.
    assert fingerprint(params, 42, arrays, BASE_STATS, replicas=1) == base
    assert fingerprint(params, 42, arrays, BASE_STATS, replicas=2) != base


def test_an_edit_to_the_library_changes_the_fingerprint(tmp_path, monkeypatch):
    copy = tmp_path / "cifar10"
    shutil.copytree(checkpoint.LIBRARY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert checkpoint.code_digest(copy) == checkpoint.code_digest()
    params, arrays = train_params(), _arrays()
    base = fingerprint(params, 42, arrays, BASE_STATS)
    (copy / "input_pipeline.py").write_text((copy / "input_pipeline.py").read_text() + "\n# an edit\n")
    monkeypatch.setattr(checkpoint, "LIBRARY", copy)
    assert fingerprint(params, 42, arrays, BASE_STATS) != base


# --- Saving and resuming ----------------------------------------------------------------------------------------


def _trained_model(seed: int = 1):
    """A tiny compiled network after one optimizer step, with its dropout generators moved off their start."""
    from cifar10.framework import keras
    from cifar10.model import build_seed_cnn, make_optimizer

    params = train_params(widths=(4, 4, 4), dropout=(0.5, 0.5, 0.5))
    model = build_seed_cnn(params, seed)
    model.compile(optimizer=make_optimizer(params, 10), loss=keras.losses.SparseCategoricalCrossentropy())
    arrays = _arrays()
    model.fit(arrays["x_train"], arrays["y_train"], batch_size=6, epochs=1, verbose=0)
    return model


def test_a_saved_checkpoint_resumes_weights_optimizer_dropout_state_and_logs(tmp_path):
    model = _trained_model()
    states = checkpoint._seed_states(model)
    assert len(states) == 3  # one generator per dropout layer
    for k, variable in enumerate(states):
        variable.assign(np.asarray([k + 5, 7 * k + 1], dtype=variable.dtype))  # Keras' loader would reset them
    history = {"loss": [2.0, 1.5], "accuracy": [0.1, 0.2]}
    checkpoint.save_checkpoint(tmp_path / "ck", model, 2, history, [3.5, 2.25], "fp-1")

    state = __import__("json").loads((tmp_path / "ck" / checkpoint.STATE_FILE).read_text())
    assert state == {
        "epochs_done": 2,
        "fingerprint": "fp-1",
        "history": history,
        "epoch_seconds": [3.5, 2.25],
        "seed_states": [[5, 1], [6, 8], [7, 15]],
    }
    # Where the workers of a run agree to start: the state file alone, read before any model is loaded.
    point = checkpoint.resume_point(tmp_path / "ck", "fp-1", epochs=3)
    assert point.model is None and (point.epochs_done, point.history, point.epoch_seconds) == (2, history, [3.5, 2.25])
    assert point.reason == "resuming after epoch 2 of 3"
    resume = checkpoint.load_checkpoint(tmp_path / "ck", "fp-1", epochs=2)  # done == epochs: resumable
    assert (resume.epochs_done, resume.history, resume.epoch_seconds) == (2, history, [3.5, 2.25])
    assert resume.reason == "resuming after epoch 2 of 2"
    for saved, loaded in zip(model.weights, resume.model.weights):
        assert np.array_equal(np.asarray(saved), np.asarray(loaded)), saved.path
    assert int(resume.model.optimizer.iterations) == int(model.optimizer.iterations) == 1
    assert [np.asarray(v).tolist() for v in checkpoint._seed_states(resume.model)] == [[5, 1], [6, 8], [7, 15]]


def test_a_checkpoint_that_does_not_fit_the_run_is_not_resumed(tmp_path):
    folder = tmp_path / "ck"
    assert checkpoint.load_checkpoint(folder, "fp", 3).reason == "no checkpoint, starting at epoch 1"
    checkpoint.save_checkpoint(folder, _trained_model(), 2, {"loss": [2.0, 1.5]}, [1.0, 1.0], "fp")
    other = checkpoint.load_checkpoint(folder, "another run", 3)
    assert other.model is None and other.reason == checkpoint.CHANGED
    shorter = checkpoint.load_checkpoint(folder, "fp", 1)
    assert shorter.model is None
    assert shorter.reason == "checkpoint is at epoch 2, past train.epochs=1, starting fresh"
    assert (shorter.epochs_done, shorter.history, shorter.epoch_seconds) == (0, {}, [])


UNCOVERED = "ValueError('history and timings do not cover the 2 epochs done')"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: {**s, "epoch_seconds": [1.0]}, UNCOVERED),
        (lambda s: {**s, "history": {"loss": [2.0]}}, UNCOVERED),
        (lambda s: {**s, "history": {"loss": 2.0}}, UNCOVERED),
        (lambda s: {**s, "history": [[2.0, 1.5]]}, UNCOVERED),
        (lambda s: {**s, "epoch_seconds": "1.0 1.0"}, UNCOVERED),
        (lambda s: {k: v for k, v in s.items() if k != "history"}, "KeyError('history')"),
        (lambda s: {**s, "epochs_done": "two"}, "ValueError(\"invalid literal for int() with base 10: 'two'\")"),
    ],
    ids=["timings", "history", "history-not-list", "history-not-dict", "timings-not-list", "no-history", "done"],
)
def test_a_damaged_state_file_starts_fresh_and_says_why(tmp_path, edit, reason):
    import json

    folder = tmp_path / "ck"
    checkpoint.save_checkpoint(folder, _trained_model(), 2, {"loss": [2.0, 1.5]}, [1.0, 1.0], "fp")
    state = json.loads((folder / checkpoint.STATE_FILE).read_text())
    (folder / checkpoint.STATE_FILE).write_text(json.dumps(edit(state)))
    resume = checkpoint.load_checkpoint(folder, "fp", 5)
    assert resume.model is None and resume.reason == f"checkpoint unreadable ({reason}), starting fresh"


def test_a_damaged_model_file_or_missing_seed_states_start_fresh(tmp_path):
    import json

    folder = tmp_path / "ck"
    checkpoint.save_checkpoint(folder, _trained_model(), 1, {"loss": [2.0]}, [1.0], "fp")
    state = json.loads((folder / checkpoint.STATE_FILE).read_text())
    (folder / checkpoint.STATE_FILE).write_text(json.dumps({**state, "seed_states": state["seed_states"][:2]}))
    resume = checkpoint.load_checkpoint(folder, "fp", 5)
    assert resume.model is None and resume.reason == "checkpoint model unreadable (ValueError), starting fresh"
    (folder / checkpoint.MODEL_FILE).write_bytes(b"PK\x03\x04 not a model")
    resume = checkpoint.load_checkpoint(folder, "fp", 5)
    assert resume.model is None and resume.reason.startswith("checkpoint model unreadable (")
    (folder / checkpoint.STATE_FILE).write_text("{not json")
    assert checkpoint.load_checkpoint(folder, "fp", 5).reason.startswith("checkpoint unreadable (JSONDecodeError(")


def test_a_tensorflow_or_keras_upgrade_changes_the_code_digest(monkeypatch):
    before = checkpoint.code_digest()
    monkeypatch.setattr(checkpoint.tf, "__version__", "0.0.0-other")
    after_tf = checkpoint.code_digest()
    monkeypatch.setattr(checkpoint.keras, "__version__", "0.0.0-other")
    assert len({before, after_tf, checkpoint.code_digest()}) == 3
