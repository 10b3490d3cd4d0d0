"""The accuracy curve of a training run, from the one line per epoch that the train stage prints in a log.

    python benchmarks/plot_training_log.py LOG OUT.png [--epochs 12 32 79]

Keras prints `Epoch E/N` and then `... accuracy: A - loss: L - val_accuracy: V - val_loss: W` for each epoch
(verbose=2, as the train stage does outside a terminal); a resumed run starts a new `Epoch E/N` count, so
the last line seen for an epoch wins. The script draws training and validation accuracy per epoch and prints
the validation accuracy at the epochs asked for.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EPOCH = re.compile(
    r"^Epoch (\d+)/\d+\n.*? accuracy: ([\d.]+) - loss: [\d.]+ - val_accuracy: ([\d.]+) - val_loss: [\d.]+$", re.M
)


def read_curve(log: str) -> dict[int, tuple[float, float]]:
    """Return {epoch: (training accuracy, validation accuracy)} from a train-stage log."""
    return {int(e): (float(a), float(v)) for e, a, v in EPOCH.findall(log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, nargs="*", default=[12, 32, 79])
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    curve = read_curve(args.log.read_text())
    epochs = sorted(curve)
    if epochs != list(range(1, len(epochs) + 1)):
        raise SystemExit(f"error: {args.log} lacks epochs: found {len(epochs)}, up to {max(epochs, default=0)}")
    for epoch in args.epochs:
        print(f"epoch {epoch}: validation accuracy {curve[epoch][1]:.4f}")
    print(f"epoch {epochs[-1]}: validation accuracy {curve[epochs[-1]][1]:.4f} (last)")
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    axes.plot(epochs, [curve[e][0] for e in epochs], label="training (augmented, dropout on)")
    axes.plot(epochs, [curve[e][1] for e in epochs], label="validation")
    for epoch in args.epochs:
        axes.annotate(f"{curve[epoch][1]:.3f}", (epoch, curve[epoch][1]), textcoords="offset points", xytext=(0, -14))
    axes.set(xlabel="Epoch", ylabel="Accuracy", ylim=(0.3, 1.0), title=args.title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"curve: {args.out}")


if __name__ == "__main__":
    main()
