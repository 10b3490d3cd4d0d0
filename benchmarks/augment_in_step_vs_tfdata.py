"""Where the augmentation runs, under TensorFlow on this machine: in the train step (the pipeline since it runs
on JAX too) against the tf.data pipeline it replaced (commit 51980d0), arms alternated, same network and data.

    python benchmarks/augment_in_step_vs_tfdata.py [--rounds 3]

Prints images/s of each arm per round (training steps only: 1 warm-up epoch of 80 batches, then 2 timed).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cifar10.augmentation import build_trainer
from cifar10.framework import keras
from cifar10.input_pipeline import train_batches
from cifar10.model import build_seed_cnn, make_optimizer
from cifar10.params import load_section_from

ROOT = Path(__file__).resolve().parents[1]
OLD = "51980d0:cifar10/input_pipeline.py"  # the last tf.data pipeline


def old_pipeline():
    source = subprocess.run(["git", "show", OLD], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "tfdata_pipeline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tfdata_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(arm: str, x: np.ndarray, y: np.ndarray, params, tfdata) -> float:
    steps = len(x) // params.batch_size
    core = build_seed_cnn(params, 0)
    model = core if arm == "tfdata" else build_trainer(core, params)
    model.compile(make_optimizer(params, steps), keras.losses.SparseCategoricalCrossentropy())
    data = tfdata.train_dataset(x, y, params, 0) if arm == "tfdata" else train_batches(x, y, params, 0)
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(data, epochs=3, steps_per_epoch=steps, verbose=0, callbacks=[Timer()])
    return 2 * len(x) / sum(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64 * 80, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    params = load_section_from(ROOT / "params.yaml", "train", epochs=3)
    tfdata = old_pipeline()
    for r in range(args.rounds):
        for arm in ("tfdata", "in_step") if r % 2 == 0 else ("in_step", "tfdata"):
            print(f"round {r} {arm:8s} {rate(arm, x, y, params, tfdata):7.1f} images/s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
