"""The checkpoint fingerprint: every input of a training run changes it, except the number of epochs."""

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
        return {"elu": "relu", "nearest": "reflect", "rmsprop": "adam", "none": "bfloat16"}[value]
    if isinstance(value, tuple):
        return (*value[:-1], _other_value(value[-1]))
    if isinstance(value, int):
        return value + 1
    return value * 0.5


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


def test_an_edit_to_the_library_changes_the_fingerprint(tmp_path, monkeypatch):
    copy = tmp_path / "cifar10"
    shutil.copytree(checkpoint.LIBRARY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert checkpoint.code_digest(copy) == checkpoint.code_digest()
    params, arrays = train_params(), _arrays()
    base = fingerprint(params, 42, arrays, BASE_STATS)
    (copy / "input_pipeline.py").write_text((copy / "input_pipeline.py").read_text() + "\n# an edit\n")
    monkeypatch.setattr(checkpoint, "LIBRARY", copy)
    assert fingerprint(params, 42, arrays, BASE_STATS) != base
