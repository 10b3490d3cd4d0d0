"""Images per second of the training input pipeline alone and of full training steps, on this machine.

    python benchmarks/throughput.py [--steps 60] [--batch-size 64] [--precision none bfloat16] [--jit]

Synthetic normalized images of the real shape; the network, batches and augmentation are the pipeline's own
(cifar10.model, cifar10.input_pipeline, cifar10.augmentation), on whichever Keras backend KERAS_BACKEND names.
The first 10 steps (tracing, warm-up) are not timed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from cifar10.augmentation import build_trainer
from cifar10.framework import accelerator, keras
from cifar10.input_pipeline import steps_per_epoch, train_batches
from cifar10.model import DTYPE_POLICIES, build_seed_cnn, make_optimizer
from cifar10.params import TrainParams, load_section_from

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the committed recipe
WARMUP = 10


def pipeline_rate(x: np.ndarray, y: np.ndarray, params: TrainParams, steps: int) -> float:
    """Images per second that the batch generator (shuffle, gather, augmentation draws) delivers on its own."""
    it = train_batches(x, y, params, seed=0)
    for _ in range(WARMUP):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * params.batch_size / (time.perf_counter() - start)


def training_rate(x: np.ndarray, y: np.ndarray, params: TrainParams, steps: int, jit: bool) -> float:
    """Images per second of `fit` on the pipeline: forward, backward and update included."""
    keras.mixed_precision.set_dtype_policy(DTYPE_POLICIES[params.mixed_precision])
    model = build_trainer(build_seed_cnn(params, seed=0), params)
    model.compile(
        make_optimizer(params, steps_per_epoch(len(x), params.batch_size)),
        keras.losses.SparseCategoricalCrossentropy(),
        jit_compile=jit,
    )
    ds = train_batches(x, y, params, seed=0)
    model.fit(ds, steps_per_epoch=WARMUP, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * params.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64])
    parser.add_argument("--precision", nargs="+", default=["none", "bfloat16"])
    parser.add_argument("--jit", action="store_true", help="also time XLA-compiled steps")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8192, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=8192).astype(np.uint8)
    device = accelerator() if accelerator() == "GPU" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}, Keras {keras.__version__} on {keras.backend.backend()}")
    for batch in args.batch_size:
        params = load_section_from(PARAMS, "train", batch_size=batch, epochs=1000)
        print(f"batch {batch:4d}  input pipeline alone      {pipeline_rate(x, y, params, args.steps):9.0f} images/s")
        for precision in args.precision:
            for jit in [False, True] if args.jit else [False]:
                p = load_section_from(PARAMS, "train", batch_size=batch, epochs=1000, mixed_precision=precision)
                rate = training_rate(x, y, p, args.steps, jit)
                print(f"batch {batch:4d}  training {precision:9s} jit={str(jit):5s} {rate:9.0f} images/s")


if __name__ == "__main__":
    main()
