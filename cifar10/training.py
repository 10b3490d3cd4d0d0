"""The train stage's core: seed and precision set-up, the fit loop with per-epoch logging and checkpoints,
and the float32 inference model it exports."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dvclive import Live

from cifar10.augmentation import AUGMENT_NAME, build_trainer, warped_dataset
from cifar10.checkpoint import Resume, fingerprint, load_checkpoint, resume_point, save_checkpoint
from cifar10.dataset import CLASS_NAMES
from cifar10.distribution import (
    Distribution,
    ProcessPart,
    build_from_batch,
    check_workers_agree,
    fit_input,
    reset_distribution,
)
from cifar10.errors import StageError
from cifar10.framework import accelerator, has_bfloat16_hardware, keras, tf
from cifar10.input_pipeline import steps_per_epoch, train_batches, train_steps, usable_images, validation_inputs
from cifar10.model import CORE_NAME, DTYPE_POLICIES, build_inference_model, build_seed_cnn, make_loss, make_optimizer
from cifar10.normalized import Stats
from cifar10.params import TrainParams
from cifar10.seeds import stream_seed

VAL_BATCH = 500  # images per validation step; no effect on the result


@dataclass
class TrainResult:
    model: keras.Model  # the inference model: raw uint8 in, probabilities out
    history: dict[str, list[float]]  # per-epoch logs, resumed epochs included
    epoch_seconds: list[float]  # training time of each epoch, validation excluded
    num_train: int
    resumed_from: int  # epochs taken from a checkpoint (0: trained from scratch)
    replicas: int = 1  # devices each batch was split over


def resolve_precision(params: TrainParams) -> TrainParams:
    """Return `params` with train.mixed_precision "auto" replaced by this machine's choice: bfloat16 where the
    hardware runs it natively (cifar10.framework.has_bfloat16_hardware), else none (float32).

    The stage trains, fingerprints its checkpoints and records the resolved value, so a bfloat16 checkpoint is
    never resumed as a float32 run. bfloat16 was checked against float32 on a GPU before it became the default
    there (README: Precision by hardware): the tutorial recipe 1.6 to 2.1 points higher in validation after 20
    epochs (2 seeds each), the fast recipe 0.4 points higher in test accuracy and 0.7 lower in validation.
    """
    if params.mixed_precision != "auto":
        return params
    return dataclasses.replace(params, mixed_precision="bfloat16" if has_bfloat16_hardware() else "none")


def configure_runtime(params: TrainParams, seed: int) -> str:
    """Seed the weight initialisation, set determinism and precision; return the device ("GPU" or "CPU")."""
    # Python, numpy and the backend's global generators: Keras draws initial weights from these.
    keras.utils.set_random_seed(stream_seed(seed, "init") % 2**32)
    if params.deterministic and keras.backend.backend() == "tensorflow":
        tf.config.experimental.enable_op_determinism()  # under JAX: XLA_FLAGS, set before start-up (cifar10.devices)
    keras.mixed_precision.set_dtype_policy(DTYPE_POLICIES[resolve_precision(params).mixed_precision])
    return accelerator()


class EpochLog(keras.callbacks.Callback):
    """Times each epoch's training part, checks it trained on `steps` real batches and reached a finite loss,
    logs to DVCLive, saves a checkpoint."""

    def __init__(
        self, live: Live | None, checkpoints: Path | None, run_fingerprint: str, resume: Resume, steps: int
    ) -> None:
        super().__init__()
        self.live = live
        self.steps = steps
        self.checkpoints = checkpoints
        self.run_fingerprint = run_fingerprint
        self.history: dict[str, list[float]] = {k: list(v) for k, v in resume.history.items()}
        self.epoch_seconds: list[float] = list(resume.epoch_seconds)
        self._start = 0.0
        self._train_end: float | None = None
        self._batches = 0
        for epoch in range(resume.epochs_done):  # the resumed epochs' curves, so DVCLive's plots stay whole
            self._log({k: v[epoch] for k, v in self.history.items()}, self.epoch_seconds[epoch])

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._train_end, self._batches = time.perf_counter(), None, 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._train_end is None:  # fit validates after the epoch's last training step
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        end = self._train_end if self._train_end is not None else time.perf_counter()
        logs = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        if self._batches != self.steps:
            # Keras only warns when the dataset runs dry ("Your input ran out of data") and logs a loss of 0.
            self.model.stop_training = True
            raise StageError(
                f"epoch {epoch + 1} trained on {self._batches} of {self.steps} batches: the input pipeline ran out "
                "of data (a bug in the resume position or the dataset length)"
            )
        # A missing training loss counts as diverged; a missing val_loss just means no validation part.
        for name, value in (("loss", logs.get("loss", float("nan"))), ("val_loss", logs.get("val_loss", 0.0))):
            if not np.isfinite(value):
                self.model.stop_training = True
                raise StageError(
                    f"training diverged: {name} is {value} in epoch {epoch + 1}; "
                    "lower train.lr_values or check train.optimizer and train.weight_decay"
                )
        logs["learning_rate"] = float(self.model.optimizer.learning_rate)  # the rate the next step will use
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)
        self.epoch_seconds.append(end - self._start)
        self._log(logs, self.epoch_seconds[-1])
        if self.checkpoints is not None:
            save_checkpoint(
                self.checkpoints, self.model, epoch + 1, self.history, self.epoch_seconds, self.run_fingerprint
            )

    def _log(self, logs: dict[str, float], seconds: float) -> None:
        if self.live is None:
            return
        for name, value in logs.items():
            if name == "learning_rate":
                self.live.log_metric(name, value)
            else:
                split = "val" if name.startswith("val_") else "train"
                self.live.log_metric(f"{split}/{name.removeprefix('val_')}", value)
        self.live.log_metric("epoch_seconds", seconds)
        self.live.next_step()


def warp_in_input_pipeline(distribution: Distribution) -> bool:
    """Return whether the augmentation warp runs in a tf.data map (TensorFlow, one CPU process, no strategy)
    rather than in the train step: on a CPU the map overlaps the warp with training; on an accelerator, and
    under a strategy that slices each batch across devices, the warp stays in the step."""
    return (
        keras.backend.backend() == "tensorflow"
        and distribution.engine is None
        and distribution.workers == 1
        and accelerator() == "CPU"
    )


def train_model(
    arrays: dict[str, np.ndarray],
    stats: Stats,
    params: TrainParams,
    seed: int,
    live: Live | None = None,
    checkpoints: Path | None = None,
    distribution: Distribution | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> TrainResult:
    """Train the CNN on normalized arrays (x_train, y_train, x_val, y_val) and return the inference model.

    With `checkpoints`, a checkpoint is saved there after every epoch, and a matching one found
    there at the start is resumed from. An empty validation part (val_size 0) skips validation.
    `distribution`: a data-parallel run's set-up (cifar10.distribution); each batch splits evenly over its
    devices. It ends with the training: the returned model is built on one device.
    `class_names`: the classes the labels index (stats.json's); the network gets one output per name, and the
    inference model carries the names.
    """
    params = resolve_precision(params)  # the fingerprint holds what trains: "bfloat16" or "none", never "auto"
    distribution = distribution or Distribution()
    replicas = distribution.replicas
    if params.batch_size % replicas:
        raise StageError(
            f"train.batch_size {params.batch_size} must be a multiple of the {replicas} devices that "
            "resources.strategy splits each batch over"
        )
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    # Validation batches split over the devices too: a batch size and an image count that the devices divide.
    keep = usable_images(len(arrays["x_val"]), replicas)
    x_val, y_val = arrays["x_val"][:keep], arrays["y_val"][:keep]
    val_batch = max(replicas, VAL_BATCH - VAL_BATCH % replicas)
    steps = steps_per_epoch(len(x_train), params.batch_size, replicas)
    run_fingerprint = fingerprint(params, seed, arrays, stats, replicas, class_names)
    # Under JAX across processes each process validates its own part, which Keras assembles into the global batch.
    own_part = ProcessPart(distribution)
    try:
        # The workers of a multi-worker run agree on where to start before any of them loads a model: loading runs
        # collective operations, which must happen on all workers or on none.
        point = resume_point(checkpoints, run_fingerprint, params.epochs) if checkpoints else Resume(None)
        check_workers_agree(distribution, run_fingerprint, point.epochs_done)
        resume = load_checkpoint(checkpoints, run_fingerprint, params.epochs) if point.epochs_done else point
        if checkpoints:
            print(f"train: {resume.reason}")
        if resume.epochs_done != point.epochs_done and distribution.workers > 1:
            raise StageError(
                f"worker {distribution.worker} cannot resume its checkpoint ({resume.reason}); remove checkpoints/ "
                "on every worker to start over"
            )
        if resume.model is not None:
            trainer = resume.model
        else:
            # Under a tf.distribute strategy each replica would normalize its batches by its own slice's statistics;
            # synchronized, they are the global batch's, as on one device (JAX runs one program over the batch).
            synced = distribution.engine is not None and replicas > 1
            network = build_seed_cnn(params, seed, num_classes=len(class_names), sync_batch_norm=synced)
            trainer = build_trainer(network, params)
            trainer.compile(
                optimizer=make_optimizer(params, steps),
                loss=make_loss(params),
                metrics=["accuracy"],
            )
        core = trainer.get_layer(CORE_NAME)
        if distribution.engine is not None:
            build_from_batch(trainer, next(train_batches(x_train, y_train, params, seed, replicas=replicas)))
        epoch_log = EpochLog(live, checkpoints, run_fingerprint, resume, steps)
        if resume.epochs_done < params.epochs:
            if warp_in_input_pipeline(distribution):
                data = warped_dataset(
                    x_train,
                    y_train,
                    train_steps(len(x_train), x_train.shape[1:3], params, seed, resume.epochs_done),
                    trainer.get_layer(AUGMENT_NAME),
                )
                # Keras restarts a dataset of known length that runs out, so a short one would train its
                # first epochs again, silently (EpochLog's batch count catches this only for the generator).
                expected, batches = (params.epochs - resume.epochs_done) * steps, int(data.cardinality())
                if batches != expected:
                    raise StageError(
                        f"the input pipeline holds {batches} batches for the {expected} steps of "
                        f"epochs {resume.epochs_done + 1}-{params.epochs} (a bug in the resume position or the "
                        "dataset length)"
                    )
            else:
                data = fit_input(
                    lambda: train_batches(x_train, y_train, params, seed, resume.epochs_done, replicas), distribution
                )
            trainer.fit(
                data,
                initial_epoch=resume.epochs_done,
                epochs=params.epochs,
                steps_per_epoch=steps,
                shuffle=False,  # the batches are shuffled already, seeded per epoch
                validation_data=validation_inputs(*own_part(x_val, y_val)) if len(x_val) else None,
                validation_batch_size=val_batch // own_part.share,
                callbacks=[epoch_log],
                verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, one line per epoch in logs
            )
    finally:
        reset_distribution()  # also when training fails: the process's next model is built on one device
    # Export in float32 whatever the training precision, so the model runs anywhere at full accuracy.
    training_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        export_core = build_seed_cnn(params, seed, num_classes=len(class_names))
        export_core.set_weights(core.get_weights())
        model = build_inference_model(export_core, stats, class_names)
    finally:
        keras.mixed_precision.set_dtype_policy(training_policy)
    return TrainResult(model, epoch_log.history, epoch_log.epoch_seconds, len(x_train), resume.epochs_done, replicas)


def headline(summary: dict) -> dict:
    """Return metrics/train.json from summarize()'s record: the few figures worth a column in `dvc exp show`."""
    return {
        "val_accuracy": summary["val_accuracy"],
        "epochs": summary["epochs"],
        "train_minutes": round(summary["wall_seconds"] / 60, 2),
    }


def summarize(result: TrainResult, params: TrainParams, device: str, wall_seconds: float) -> dict:
    """Return the training record kept in models/meta.json: final losses and accuracies, cost and speed
    (validation figures None without a validation part)."""
    last = {name: float(values[-1]) for name, values in result.history.items()}
    # Speed is steady-state: the first epoch of a process also pays for tracing the graph; leave it out when we can.
    first = result.resumed_from if result.resumed_from < len(result.epoch_seconds) else 0
    timed = [s for i, s in enumerate(result.epoch_seconds) if i != first] or result.epoch_seconds
    return {
        "accuracy": last["accuracy"],
        "loss": last["loss"],
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "epochs": len(result.epoch_seconds),
        "wall_seconds": round(wall_seconds, 2),
        "seconds_per_epoch": round(float(np.mean(timed)), 2),
        "images_per_second": round(result.num_train * len(timed) / float(np.sum(timed)), 1),
        "resumed_from_epoch": result.resumed_from,
        "device": device,
        "replicas": result.replicas,
        "mixed_precision": params.mixed_precision,
    }
