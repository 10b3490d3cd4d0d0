"""How the train stage's time per epoch grows with the batch size and with the number of training images.

    python benchmarks/cost_growth.py [--images 3200 6400 12800] [--batch-sizes 32 64 128 256] [--epochs 2]

Each point is one run of the train stage (the committed recipe, float32) in its own process on synthetic
images of the real shape (speed does not depend on their content), timed from the second epoch on, as
metrics and `make benchmark` are. The batch sizes run at the middle image count, the image counts at batch
64. Points are run in an interleaved order, so a machine that slows down mid-run does not bias one column.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from compare_tutorial import machine, prepare, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[3200, 6400, 12800])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the first is not timed")
    args = parser.parse_args()
    middle = args.images[len(args.images) // 2]
    points = [(middle, b) for b in args.batch_sizes] + [(n, 64) for n in args.images if (n, 64) != (middle, 64)]
    points = points[::2] + points[1::2]  # interleaved: neighbours in the tables are not neighbours in time
    print(f"machine: {machine()}")
    seconds: dict[tuple[int, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for images in sorted({n for n, _ in points}):
            folder = Path(tmp) / str(images)
            folder.mkdir()
            prepare(folder, images)
        for images, batch in points:
            rate = run_stage(Path(tmp) / str(images) / "normalized", args.epochs, "none", Path(tmp), batch_size=batch)
            seconds[(images, batch)] = images / rate
            print(f"{images:6d} images, batch {batch:4d}: {rate:7.1f} images/s, {images / rate:6.1f} s per epoch")
    print(f"\nbatch size ({middle} images) | images/s | s per epoch")
    for batch in args.batch_sizes:
        print(f"{batch} | {middle / seconds[(middle, batch)]:.0f} | {seconds[(middle, batch)]:.1f}")
    print("\nimages (batch 64) | images/s | s per epoch")
    for images in args.images:
        print(f"{images} | {images / seconds[(images, 64)]:.0f} | {seconds[(images, 64)]:.1f}")


if __name__ == "__main__":
    main()
