"""End-of-epoch training checkpoints, so a killed train stage continues from its last finished epoch.

A checkpoint is the compiled training model saved as .keras (weights, optimizer slots and step
counter, hence the learning-rate schedule position) plus state.json: the epochs done, their logs
and timings, the dropout layers' seed-generator states (Keras' loader resets them to 0, so they are
stored apart), and a fingerprint of the train params, the seed, the input data and the code.
The input pipeline's randomness is keyed by (seed, epoch) and (seed, step), so it needs no state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import cifar10.augmentation  # noqa: F401  (registers the augmentation layer inside a checkpoint's model)
import cifar10.model  # noqa: F401  (registers the learning-rate schedule that a checkpoint's optimizer names)
from cifar10.atomic import atomic_dir, write_json
from cifar10.dataset import CLASS_NAMES
from cifar10.framework import keras, tf
from cifar10.normalized import Stats
from cifar10.params import TrainParams, as_dict

MODEL_FILE = "train_state.keras"
STATE_FILE = "state.json"
CHANGED = "train params, seed, input data or code changed since the checkpoint, starting fresh"
LIBRARY = Path(__file__).resolve().parent  # cifar10/: the code a training run executes


def code_digest(library: Path | None = None) -> str:
    """Return a hash of the library's source files, the Keras backend and the Keras and TensorFlow versions.

    An edit anywhere in cifar10/ makes DVC rerun train only if train depends on the file, and then a
    checkpoint written by the old code must not be resumed as if nothing changed (a finished one would be
    exported as the new code's model). Hashing the whole package errs on the side of starting fresh.
    """
    versions = f"keras {keras.__version__} {keras.backend.backend()} tensorflow {getattr(tf, '__version__', None)}"
    digest = hashlib.sha256(versions.encode())
    for path in sorted((library or LIBRARY).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fingerprint(
    params: TrainParams,
    seed: int,
    arrays: dict[str, np.ndarray],
    stats: Stats,
    replicas: int = 1,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> str:
    """Return a hash of everything that shapes the training run: params, seed, statistics, arrays, code
    (`code_digest`), the device count of a data-parallel run and the class names (their number is the
    network's output size); the number of epochs only where the schedule depends on it.

    Leaving `epochs` out lets a finished run of the step schedule be extended (3 -> 10 epochs) from its
    checkpoint: nothing in that run depends on the total, so the result equals a straight 10-epoch run. The
    linear schedule ends at the last epoch, so there the total is part of the run.
    """
    digest = hashlib.sha256()
    settings = as_dict(params)
    if params.lr_schedule == "step":
        del settings["epochs"]
    # replicas: a data-parallel run visits a multiple of its device count each epoch (cifar10.input_pipeline).
    run = {
        "seed": seed,
        "train": settings,
        "stats": stats.to_json(),
        "code": code_digest(),
        "replicas": replicas,
        "class_names": list(class_names),
    }
    digest.update(json.dumps(run, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}{array.dtype}{array.shape}".encode())
        digest.update(array)  # the raw bytes, without a copy; an empty array (val_size 0) adds nothing
    return digest.hexdigest()


@dataclass
class Resume:
    model: keras.Model | None  # the compiled training model, or None to start fresh
    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    reason: str = ""  # what the log says about the decision


def _seed_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def save_checkpoint(
    folder: Path, model: keras.Model, epochs_done: int, history: dict, epoch_seconds: list[float], run_fingerprint: str
) -> None:
    """Replace the checkpoint in `folder` with the model after `epochs_done` epochs, atomically."""
    with atomic_dir(folder) as tmp:
        model.save(tmp / MODEL_FILE)
        state = {
            "epochs_done": epochs_done,
            "fingerprint": run_fingerprint,
            "history": history,
            "epoch_seconds": epoch_seconds,
            "seed_states": [np.asarray(v.numpy()).tolist() for v in _seed_states(model)],
        }
        write_json(tmp / STATE_FILE, state)


def resume_point(folder: Path, run_fingerprint: str, epochs: int) -> Resume:
    """Return where to start, from the checkpoint's state file alone (no model is loaded): after its epochs if it
    matches `run_fingerprint` and fits in `epochs`, else at epoch 1 with the reason."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return Resume(None, reason="no checkpoint, starting at epoch 1")
    try:
        state = json.loads(state_path.read_text())
        done = int(state["epochs_done"])
        history, seconds = state["history"], state["epoch_seconds"]
        # What the resumed run replays into its logs: one value per finished epoch, or the file is damaged.
        if not (isinstance(seconds, list) and len(seconds) == done and isinstance(history, dict)) or any(
            not isinstance(values, list) or len(values) != done for values in history.values()
        ):
            raise ValueError(f"history and timings do not cover the {done} epochs done")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Resume(None, reason=f"checkpoint unreadable ({exc!r}), starting fresh")
    if state.get("fingerprint") != run_fingerprint:
        return Resume(None, reason=CHANGED)
    if done > epochs:
        return Resume(None, reason=f"checkpoint is at epoch {done}, past train.epochs={epochs}, starting fresh")
    return Resume(None, done, history, seconds, f"resuming after epoch {done} of {epochs}")


def load_checkpoint(folder: Path, run_fingerprint: str, epochs: int) -> Resume:
    """Return where to start: the checkpoint in `folder`, its model loaded, if it matches `run_fingerprint` and
    fits in `epochs` (resume_point); a model that does not load means starting fresh."""
    point = resume_point(folder, run_fingerprint, epochs)
    if not point.epochs_done:
        return point
    state = json.loads((folder / STATE_FILE).read_text())  # read whole and checked by resume_point
    done, history, seconds = point.epochs_done, point.history, point.epoch_seconds
    try:
        model = keras.models.load_model(folder / MODEL_FILE)
        variables, saved = _seed_states(model), state["seed_states"]
        if len(variables) != len(saved):
            raise ValueError(f"{len(saved)} seed states for {len(variables)} generators")
        for variable, value in zip(variables, saved):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    except Exception as exc:  # a damaged file must not stop training, only the resume
        return Resume(None, reason=f"checkpoint model unreadable ({type(exc).__name__}), starting fresh")
    return Resume(model, done, history, seconds, f"resuming after epoch {done} of {epochs}")
