"""cifar10-predict: classify image files (any size, PNG/JPEG/...) or test-set samples with the trained model.

    cifar10-predict cat.png truck.jpg            # top-3 classes, one line per image
    cifar10-predict --test-samples 16 --json     # the first 16 test images, as JSON lines

The model (models/model.keras) takes raw uint8 images and normalizes them itself. A file that
cannot be read as an image gets one line on stderr; the others are still classified, and the exit
status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifar10.archive import load_test
from cifar10.dataset import CLASS_NAMES, IMAGE_SHAPE
from cifar10.errors import StageError


@dataclass(frozen=True)
class Prediction:
    name: str  # the file, or test:<index>
    top: list[tuple[str, float]]  # (class, probability), most likely first
    truth: str | None = None  # the true class, for test samples

    def as_line(self) -> str:
        ranked = "  ".join(f"{cls} {p:.3f}" for cls, p in self.top)
        return f"{self.name}: {ranked}" + (f"  (true: {self.truth})" if self.truth else "")

    def as_json(self) -> str:
        record: dict = {"image": self.name, "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}
        if self.truth:
            record["true"] = self.truth
        return json.dumps(record)


def load_image(path: Path) -> np.ndarray:
    """Return the image at `path` as RGB uint8 (32, 32, 3), resized with antialiasing; StageError if unreadable."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != IMAGE_SHAPE[:2][::-1]:
                rgb = rgb.resize(IMAGE_SHAPE[:2][::-1], Image.Resampling.LANCZOS)
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise StageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise StageError(f"{path}: is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise StageError(f"{path}: not a readable image ({type(exc).__name__})") from None


def top_k(probabilities: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """For each row of probabilities, the k most likely (class name, probability)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(CLASS_NAMES[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, order)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cifar10-predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="image files (PNG, JPEG, ...; any size)")
    parser.add_argument(
        "--test-samples",
        type=int,
        metavar="N",
        default=0,
        help="also classify the first N images of the archive's test batch",
    )
    parser.add_argument("--model", type=Path, default=Path("models/model.keras"))
    parser.add_argument(
        "--archive",
        type=Path,
        default=Path("data/raw/cifar-10-python.tar.gz"),
        help="the CIFAR-10 archive, for --test-samples",
    )
    parser.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if not args.images and args.test_samples <= 0:
        parser.error("give image files or --test-samples N")
    if not 1 <= args.top <= len(CLASS_NAMES):
        parser.error(f"--top must be in 1..{len(CLASS_NAMES)}")

    failures = 0
    names: list[str] = []
    images: list[np.ndarray] = []
    truths: list[str | None] = []
    for path in args.images:
        try:
            images.append(load_image(path))
            names.append(str(path))
            truths.append(None)
        except StageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
    try:
        if args.test_samples > 0:
            test = load_test(args.archive)
            n = min(args.test_samples, len(test.images))
            images.extend(test.images[:n])
            names.extend(f"test:{i}" for i in range(n))
            truths.extend(CLASS_NAMES[c] for c in test.labels[:n])
        if not images:
            return 1
        # Keras (and TensorFlow) load only now, so `--help` and argument errors answer at once.
        from cifar10.classifier import load_classifier, predict_probabilities

        model = load_classifier(args.model)
        probabilities = predict_probabilities(model, np.stack(images), batch_size=256)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, top, truth in zip(names, top_k(probabilities, args.top), truths):
        prediction = Prediction(name, top, truth)
        print(prediction.as_json() if args.json else prediction.as_line())
    return 1 if failures else 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
