"""Stage 4: score the saved model on the test batch, read straight from the archive as raw uint8 images.

The test batch and its labels are those of dataset.name and dataset.labels; the model must carry the same
class names as the archive's meta member (CIFAR-10's 10, CIFAR-100's 100 fine or 20 coarse).

Testing the raw-image model end to end checks the normalization it carries, not just the network.
With evaluate.flip_tta, each image's probabilities are the mean of its own and its mirror image's.
Writes metrics/evaluate.json (test accuracy and loss), per-class precision and recall (CSV, drawn as a
bar chart), one row per test image (actual, predicted) for DVC's confusion-matrix plot, and PNGs: the
labelled confusion matrix,
the first 16 test images with their predictions (the tutorial's grid), and the most confident
mistakes of each class.
"""

from __future__ import annotations

import time

from cifar10.archive import layout_of, load_test
from cifar10.atomic import atomic_dir, write_json
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
    args, (params, dataset), _ = start_stage(
        __doc__,
        {
            "model": "models/model.keras",
            "archive": "the data set's archive (its test batch is scored)",
            "metrics": "metrics/evaluate.json",
            "predictions": "CSV of actual and predicted classes",
            "per_class": "CSV of per-class precision and recall",
            "figures": "folder for the PNG figures",
        },
        section=("evaluate", "dataset"),
        seeded=False,
    )
    pin_stage_devices(args.params)
    from cifar10.classifier import class_names_of, load_classifier, predict_probabilities  # Keras starts here

    model = load_classifier(args.model)
    test = load_test(args.archive, layout_of(dataset.name, dataset.labels))
    if not len(test.labels):
        raise DataError(f"{args.archive}: the test batch holds no images; nothing to evaluate")
    names, model_names = test.class_names, class_names_of(model)
    if model_names != names:
        raise DataError(
            f"{args.model} predicts {len(model_names)} classes ({', '.join(model_names[:3])}, ...) but the "
            f"{dataset.name} {dataset.labels} test batch has {len(names)} ({', '.join(names[:3])}, ...); "
            "train it with the same dataset params"
        )
    start = time.perf_counter()
    probabilities = predict_probabilities(model, test.images, params.batch_size, params.flip_tta)
    seconds = time.perf_counter() - start
    predicted = probabilities.argmax(axis=1)
    counts = confusion_matrix(test.labels, predicted, len(names))
    scores = score_predictions(probabilities, test.labels, counts)
    with atomic_dir(args.figures) as tmp:
        confusion_png(counts, names, tmp / "confusion.png", scores["test_accuracy"])
        first_predictions_grid(test.images, test.labels, predicted, names, tmp / "first_predictions.png")
        mistakes_grid(test.images, probabilities, predicted, test.labels, names, tmp / "mistakes.png")
    write_predictions(args.predictions, test.labels, predicted, names)
    write_per_class(args.per_class, per_class_scores(counts, names))
    write_json(args.metrics, scores)
    print(
        f"evaluate: test accuracy {scores['test_accuracy']:.4f}, loss {scores['test_loss']:.4f} "
        f"on {len(test.labels)} images "
        f"({len(test.labels) / seconds:.0f} images/s)"
    )


if __name__ == "__main__":
    run_stage(main)
