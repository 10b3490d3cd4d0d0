"""How the batches reach TensorFlow on this machine: the warp in the train step with the batches from a Python
generator (as under JAX, and under a tf.distribute strategy) against the warp in a parallel tf.data map built
from tensors (what train uses on a CPU), arms alternated, same network, data and draws.

    python benchmarks/augment_in_step_vs_tfdata.py [--rounds 3] [--batches 80]

Each arm runs in a fresh process: a dataset that calls Python slows TensorFlow for the rest of its process, so
arms sharing one would measure each other. Prints images/s of each arm per round (training steps only: 1
warm-up epoch, then 2 timed) and the ratio per round.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cifar10.augmentation import AUGMENT_NAME, build_trainer, warped_dataset
from cifar10.framework import keras
from cifar10.input_pipeline import train_batches, train_steps
from cifar10.model import build_seed_cnn, make_optimizer
from cifar10.params import load_section_from

ROOT = Path(__file__).resolve().parents[1]


def rate(arm: str, x: np.ndarray, y: np.ndarray, params) -> float:
    steps = len(x) // params.batch_size
    trainer = build_trainer(build_seed_cnn(params, 0), params)
    trainer.compile(make_optimizer(params, steps), keras.losses.SparseCategoricalCrossentropy())
    if arm == "tf.data":
        data = warped_dataset(x, y, train_steps(len(x), x.shape[1:3], params, 0), trainer.get_layer(AUGMENT_NAME))
    else:
        data = train_batches(x, y, params, 0)
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    trainer.fit(data, epochs=3, steps_per_epoch=steps, verbose=0, callbacks=[Timer()])
    return 2 * len(x) / sum(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=80, help="batches per epoch")
    parser.add_argument("--arm", choices=("in_step", "tf.data"), help="run one arm here and print its rate")
    args = parser.parse_args()
    if args.arm:
        params = load_section_from(ROOT / "params.yaml", "train", epochs=3)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(params.batch_size * args.batches, 32, 32, 3)).astype(np.float32)
        y = rng.integers(0, 10, len(x))
        print(rate(args.arm, x, y, params))
        return
    rates: dict[str, list[float]] = {"in_step": [], "tf.data": []}
    for r in range(args.rounds):
        for arm in ("tf.data", "in_step") if r % 2 == 0 else ("in_step", "tf.data"):
            cmd = [sys.executable, __file__, "--arm", arm, "--batches", str(args.batches)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rates[arm].append(float(out.split()[-1]))
            print(f"round {r} {arm:8s} {rates[arm][-1]:7.1f} images/s", flush=True)
    ratios = [a / b for a, b in zip(rates["tf.data"], rates["in_step"])]
    print("tf.data / in_step per round: " + ", ".join(f"{q:.2f}x" for q in ratios))


if __name__ == "__main__":
    sys.exit(main())
