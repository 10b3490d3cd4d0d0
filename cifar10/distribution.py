"""Data-parallel training over several devices or machines, on the distribution engine of the Keras backend.

resources.strategy:
    one           the first device
    mirrored      every visible device of this machine: tf.distribute.MirroredStrategy under TensorFlow,
                  keras.distribution.DataParallel under JAX
    multi_worker  every device of several processes, one per machine: tf.distribute.MultiWorkerMirroredStrategy
                  configured by TF_CONFIG under TensorFlow; under JAX keras.distribution.initialize(), configured
                  by KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID, then DataParallel

Whatever the engine, each global batch (train.batch_size) is cut into equal slices in device order, one per
device, and the gradient is the mean over the global batch; batch normalization uses the global batch's
statistics too (synchronized across replicas under TensorFlow, one program over the whole batch under JAX). So
train.batch_size and train.lr_values mean on N devices what they mean on one. Every process of a multi-worker run
draws the same global batches from the same seed and keeps its own slices, so no data moves between machines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifar10.errors import StageError
from cifar10.framework import keras, tf

Batch = tuple[tuple[np.ndarray, np.ndarray], np.ndarray]  # ((images, draws), labels), as input_pipeline yields


@dataclass(frozen=True)
class Distribution:
    replicas: int = 1  # devices each global batch is split over, all processes together
    workers: int = 1  # processes (machines) taking part
    worker: int = 0  # this process's index; worker 0 is the chief
    engine: Any = None  # the tf.distribute strategy under TensorFlow; None otherwise

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    def describe(self, strategy: str) -> str:
        where = f"{self.replicas} devices"
        if self.workers > 1:
            where += f" in {self.workers} processes, this is worker {self.worker}"
        return f"each batch split over {where} (resources.strategy {strategy})"


def configure_distribution(strategy: str) -> Distribution:
    """Set up the engine for resources.strategy, before any model is built; return how batches are split."""
    if strategy == "one":
        return Distribution()
    if keras.backend.backend() == "jax":
        return _jax_distribution(strategy)
    if keras.backend.backend() == "tensorflow" and tf is not None:
        return _tf_distribution(strategy)
    raise StageError(f"resources.strategy {strategy} needs KERAS_BACKEND=tensorflow or jax")


def _jax_distribution(strategy: str) -> Distribution:
    import jax

    if strategy == "multi_worker":
        names = ("JOB_ADDRESSES", "NUM_PROCESSES", "PROCESS_ID")
        missing = [f"KERAS_DISTRIBUTION_{v}" for v in names if f"KERAS_DISTRIBUTION_{v}" not in os.environ]
        if missing:
            raise StageError(
                "resources.strategy multi_worker under JAX needs KERAS_DISTRIBUTION_JOB_ADDRESSES, "
                f"_NUM_PROCESSES and _PROCESS_ID in the environment; missing: {', '.join(missing)}"
            )
        # Cross-process collectives between CPU devices go through gloo (GPUs use NCCL whatever this says).
        # Both calls must come before JAX starts its backend: configure_distribution runs first in the stage.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize()  # jax.distributed.initialize from the variables above
    devices = keras.distribution.list_devices()  # every process's devices, in process order
    if len(jax.local_devices()) * jax.process_count() != len(devices):
        raise StageError(
            f"resources.strategy {strategy}: the {jax.process_count()} processes must hold the same number of "
            f"devices ({len(devices)} in all, {len(jax.local_devices())} here)"
        )
    # Each process feeds its own slice of every batch (fit_input), so Keras must not shard the input again.
    data_parallel = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(data_parallel)
    return Distribution(len(devices), jax.process_count(), jax.process_index())


def _tf_distribution(strategy: str) -> Distribution:
    if strategy == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise StageError("resources.strategy multi_worker under TensorFlow needs TF_CONFIG in the environment")
        engine = tf.distribute.MultiWorkerMirroredStrategy()
        _average_scalars_across_workers()
        resolver = engine.cluster_resolver
        cluster = resolver.cluster_spec().as_dict()
        if set(cluster) != {"worker"} or resolver.task_type != "worker":
            # A chief or evaluator task would hold replicas that the slicing below does not count.
            raise StageError(
                "resources.strategy multi_worker: TF_CONFIG must list only \"worker\" tasks (worker 0 is the "
                f"chief), got {sorted(cluster)} and task type {resolver.task_type!r}"
            )
        workers, worker = len(cluster["worker"]), resolver.task_id
        if engine.num_replicas_in_sync % workers:
            raise StageError(f"resources.strategy multi_worker: the {workers} workers must hold equal device counts")
    else:
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        engine = tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
        workers, worker = 1, 0
    # Every model and optimizer built from here on (or loaded from a checkpoint) is mirrored.
    tf.distribute.experimental_set_strategy(engine)
    return Distribution(engine.num_replicas_in_sync, workers, worker, engine)


def _average_scalars_across_workers() -> None:
    """Let Keras average the step's scalar results (loss, metrics) across the workers of a multi-worker run.

    Keras 3 (3.15 here) averages them with `strategy.reduce("MEAN", value, axis=0)` under
    MultiWorkerMirroredStrategy, which fails on a scalar ("Invalid reduction dimension 0 for input with 0
    dimensions", keras-team/keras#20585, open). The mean across replicas is `axis=None`, which is what the
    single-machine path computes; every replica holds an equal slice, so it is the global batch's value.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer  # the module whose function fit calls

    original = tf_trainer.reduce_per_replica
    if getattr(original, "averages_scalars", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str = "auto") -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):  # noqa: SLF001
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.averages_scalars = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def check_workers_agree(distribution: Distribution, run_fingerprint: str, epochs_done: int) -> None:
    """Stop every worker of a multi-worker run, in one line, unless all have the same run (params, seed, data,
    code: the checkpoint fingerprint) and resume from the same epoch. Otherwise they would wait on each other
    forever (different step counts), or train different weights under the name of one model."""
    if distribution.workers == 1:
        return
    # The fingerprint's first 64 bits as four 16-bit numbers, exact in float32, plus the epoch.
    mine = np.array([*(int(run_fingerprint[i : i + 4], 16) for i in range(0, 16, 4)), epochs_done], np.float32)
    if distribution.engine is None:
        from jax.experimental import multihost_utils

        everyone = np.asarray(multihost_utils.process_allgather(mine))
    else:
        engine = distribution.engine

        @tf.function
        def gather() -> tf.Tensor:
            return engine.gather(engine.run(lambda: tf.constant(mine)[None]), axis=0)

        everyone = gather().numpy()  # one row per replica
    if not (everyone == everyone[0]).all():
        reasons = []
        if len({tuple(row[:-1]) for row in everyone}) > 1:
            reasons.append("different params, seed, data or code")
        epochs = sorted({int(row[-1]) for row in everyone})
        if len(epochs) > 1:
            reasons.append(f"checkpoints at epochs {epochs}")
        raise StageError(
            f"the {distribution.workers} workers of this multi_worker run disagree ({' and '.join(reasons)}); run the "
            "same commit and params everywhere, and remove checkpoints/ on every worker to start over"
        )


def reset_distribution() -> None:
    """Undo configure_distribution in this process (tests train several ways in one process)."""
    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)
    elif tf is not None:
        tf.distribute.experimental_set_strategy(None)


def slices(batch: Batch, first: int, count: int, replicas: int) -> Iterator[Batch]:
    """Yield slices `first`..`first + count - 1` of a global batch cut into `replicas` equal slices."""
    (images, draws), labels = batch
    size = len(labels) // replicas
    for k in range(first, first + count):
        part = slice(k * size, (k + 1) * size)
        yield (images[part], draws[part]), labels[part]


class ProcessPart:
    """This process's contiguous part of arrays that every process holds whole (the validation set): all of them
    except under JAX across processes, where Keras takes each process's batches as its share of the global one."""

    def __init__(self, distribution: Distribution) -> None:
        self.worker = distribution.worker
        self.share = distribution.workers if distribution.engine is None else 1

    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        size = len(arrays[0]) // self.share  # the arrays are cut to a multiple of the device count already
        return tuple(a[self.worker * size : (self.worker + 1) * size] if self.share > 1 else a for a in arrays)


def fit_input(stream: Callable[[], Iterable[Batch]], distribution: Distribution) -> Any:
    """Return what `fit` should get for the global batches that `stream()` yields, under `distribution`.

    One process: the batches themselves (under JAX's DataParallel, Keras shards each over the devices).
    JAX across processes: this process's part of each batch, which Keras assembles into the global array.
    TensorFlow with a strategy: a distributed dataset whose replica k gets slice k of every batch, exactly.
    Keras iterates that dataset once to build the model before training, then afresh: each iteration calls
    `stream()` again, so every one starts at the first batch.
    """
    engine = distribution.engine
    if engine is None:
        if distribution.workers == 1:
            return stream()
        # Processes hold equal numbers of devices, in process order: this one's part is slice `worker`.
        return (next(slices(batch, distribution.worker, 1, distribution.workers)) for batch in stream())
    (images, draws), labels = next(iter(stream()))
    signature = ((_spec(images), _spec(draws)), _spec(labels))

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # One input pipeline per worker; tf.distribute hands its elements to the worker's replicas in turn,
        # so the worker yields its replicas' slices of each global batch in replica order.
        first = context.input_pipeline_id * distribution.local_replicas

        def pieces() -> Iterator[Batch]:
            for batch in stream():
                yield from slices(batch, first, distribution.local_replicas, distribution.replicas)

        return tf.data.Dataset.from_generator(pieces, output_signature=signature).prefetch(2)

    return engine.distribute_datasets_from_function(dataset_fn)


def build_from_batch(trainer: keras.Model, batch: Batch) -> None:
    """Make `fit` build `trainer`'s loss, metrics and optimizer from `batch` (a plain global batch); for a trainer
    made under a tf.distribute strategy.

    Under a tf.distribute strategy, Keras 3 (3.15 here) builds them before training from one batch pulled off
    the distributed dataset and averaged across replicas; under MultiWorkerMirroredStrategy that averaging fails
    ("Attempt to convert a value (PerReplica...) with an unsupported type", keras-team/keras#20585, open).
    The build needs only the batch's shapes and dtypes, which a plain batch has.
    """
    build = trainer._maybe_symbolic_build  # noqa: SLF001  (the hook fit and evaluate call first)
    trainer._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(data_batch=batch)


def _spec(array: np.ndarray) -> Any:
    """The TensorSpec of slices of `array`'s batches: any number of rows, the rest of the shape as it is."""
    return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))
