"""Stage 4: score the saved model on the test batch, read straight from the archive as raw uint8 images.

Testing the raw-image model end to end checks the normalization it carries, not just the network.
Writes metrics/evaluate.json (test accuracy and loss), per-class precision and recall (CSV, drawn as a
bar chart), one row per test image (actual, predicted) for DVC's confusion-matrix plot, and PNGs: the
labelled confusion matrix,
the first 16 test images with their predictions (the tutorial's grid), and the most confident
mistakes of each class.
"""

from __future__ import annotations

import time

from cifar10.archive import load_test
from cifar10.atomic import atomic_dir, write_json
from cifar10.dataset import CLASS_NAMES
from cifar10.devices import pin_stage_devices
from cifar10.errors import DataError, run_stage
from cifar10.evaluation import (
    confusion_matrix,
    per_class_scores,
    score_predictions,
    write_per_class,
    write_predictions,
)
from cifar10.figures import confusion_png, first_predictions_grid, mistakes_grid
from cifar10.stage import start_stage


def main() -> None:
    args, params, _ = start_stage(
        __doc__,
        {
            "model": "models/model.keras",
            "archive": "the CIFAR-10 archive (its test batch is scored)",
            "metrics": "metrics/evaluate.json",
            "predictions": "CSV of actual and predicted classes",
            "per_class": "CSV of per-class precision and recall",
            "figures": "folder for the PNG figures",
        },
        section="evaluate",
        seeded=False,
    )
    pin_stage_devices(args.params)
    from cifar10.classifier import load_classifier, predict_probabilities  # Keras starts here, on those devices

    model = load_classifier(args.model)
    test = load_test(args.archive)
    if not len(test.labels):
        raise DataError(f"{args.archive}: the test batch holds no images; nothing to evaluate")
    start = time.perf_counter()
    probabilities = predict_probabilities(model, test.images, params.batch_size)
    seconds = time.perf_counter() - start
    predicted = probabilities.argmax(axis=1)
    counts = confusion_matrix(test.labels, predicted, len(CLASS_NAMES))
    scores = score_predictions(probabilities, test.labels, counts)
    with atomic_dir(args.figures) as tmp:
        confusion_png(counts, CLASS_NAMES, tmp / "confusion.png", scores["test_accuracy"])
        first_predictions_grid(test.images, test.labels, predicted, CLASS_NAMES, tmp / "first_predictions.png")
        mistakes_grid(test.images, probabilities, predicted, test.labels, CLASS_NAMES, tmp / "mistakes.png")
    write_predictions(args.predictions, test.labels, predicted, CLASS_NAMES)
    write_per_class(args.per_class, per_class_scores(counts, CLASS_NAMES))
    write_json(args.metrics, scores)
    print(
        f"evaluate: test accuracy {scores['test_accuracy']:.4f}, loss {scores['test_loss']:.4f} "
        f"on {len(test.labels)} images "
        f"({len(test.labels) / seconds:.0f} images/s)"
    )


if __name__ == "__main__":
    run_stage(main)
