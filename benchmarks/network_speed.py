"""Training speed of the network alone (no input pipeline, no augmentation), under any Keras 3 backend.

    KERAS_BACKEND=jax python benchmarks/network_speed.py --batch-size 64 256 --precision none bfloat16

Used to time the recipe's network on a GPU machine that has JAX but no TensorFlow: the same
`build_seed_cnn` and optimizer as the train stage, fed from in-memory arrays. Prints images per
second and the implied seconds per 40,000-image epoch. The first 20 steps (compilation) are not timed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from cifar10.framework import keras
from cifar10.model import DTYPE_POLICIES, build_seed_cnn, make_optimizer
from cifar10.params import load_section_from

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the committed recipe
EPOCH_IMAGES = 40_000  # the default split: 50,000 - 5,000 validation (- 5,000 holdout on the shared archive)


def images_per_second(batch: int, precision: str, steps: int) -> float:
    keras.mixed_precision.set_dtype_policy(DTYPE_POLICIES[precision])
    params = load_section_from(PARAMS, "train", batch_size=batch)
    model = build_seed_cnn(params, seed=0)
    model.compile(make_optimizer(params, 625), keras.losses.SparseCategoricalCrossentropy())
    rng = np.random.default_rng(0)
    n = batch * steps
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    model.fit(x[: 20 * batch], y[: 20 * batch], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--precision", nargs="+", default=["none", "bfloat16"])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPU cores")
    for batch in args.batch_size:
        for precision in args.precision:
            rate = images_per_second(batch, precision, args.steps)
            print(f"batch {batch:4d} {precision:9s} {rate:9.0f} images/s  {EPOCH_IMAGES / rate:7.1f} s per epoch")


if __name__ == "__main__":
    main()
