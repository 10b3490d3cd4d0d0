"""Pictures people would rather look at than read: image grids and a labelled confusion matrix (PNG).

Pure functions from arrays to a saved PNG; matplotlib runs headless (Agg). They stay readable with
CIFAR-100's 100 classes: titles cut to fit their cell, at most MAX_MISTAKE_ROWS rows of mistakes, and a
confusion matrix that grows with the classes and drops its per-cell counts past MAX_COUNTED_CLASSES.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cifar10.atomic import atomic_file  # noqa: E402

DPI = 100
MAX_TITLE_CHARS = 16  # per title line in a 1.6-inch grid cell at 8 pt; longer names end in "…"
MAX_MISTAKE_ROWS = 20  # classes shown in mistakes.png; with 100 classes, those with the most confident mistakes
MAX_COUNTED_CLASSES = 20  # above this, the confusion matrix shows colours only: 10,000 numbers would be a blur


def short_name(text: str, limit: int = MAX_TITLE_CHARS) -> str:
    """Return `text` cut to `limit` characters, the last one "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def labelled_grid(
    images: np.ndarray, titles: list[str], colours: list[str], columns: int, path: Path, suptitle: str
) -> None:
    """Save uint8 images (N, 32, 32, 3) in a grid, each with its title in its colour."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, colour in zip(axes.flat, images, titles, colours):
        ax.imshow(image, interpolation="nearest")
        ax.set_title("\n".join(short_name(line) for line in title.split("\n")), fontsize=8, color=colour)
    fig.suptitle(suptitle, fontsize=10)
    _save(fig, path)


def first_predictions_grid(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: tuple[str, ...],
    path: Path,
    count: int = 16,
) -> None:
    """The tutorial's grid: the first `count` test images, each titled with a mark and its classes.

    Right and wrong are told by the mark (✓ or ✗), not by colour alone; the colours (blue, orange) are
    also distinguishable with the common colour-vision deficiencies.
    """
    n = min(count, len(images))
    titles = [
        f"✓ {class_names[t]}" if t == p else f"✗ {class_names[t]}\n→ {class_names[p]}"
        for t, p in zip(labels[:n], predicted[:n])
    ]
    colours = ["tab:blue" if t == p else "tab:orange" for t, p in zip(labels[:n], predicted[:n])]
    right = int(np.sum(labels[:n] == predicted[:n]))
    labelled_grid(
        images[:n],
        titles,
        colours,
        4,
        path,
        f"First {n} test images: {right} right (✓), {n - right} wrong (✗ true → predicted)",
    )


def confident_mistakes(
    probabilities: np.ndarray, predicted: np.ndarray, labels: np.ndarray, per_class: int
) -> list[np.ndarray]:
    """For each class, the indices of its images the model got wrong, most confident mistake first.

    `predicted` is the argmax of `probabilities`, computed once by the caller.
    """
    confidence = probabilities.max(axis=1)
    rows = []
    for c in range(probabilities.shape[1]):
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        rows.append(wrong[np.argsort(-confidence[wrong], kind="stable")][:per_class])
    return rows


def mistakes_grid(
    images: np.ndarray,
    probabilities: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    path: Path,
    per_class: int = 8,
    max_rows: int = MAX_MISTAKE_ROWS,
) -> None:
    """A row per true class with mistakes: its most confident ones, titled with the predicted class and probability.

    Classes without a mistake get no row, and the grid is only as wide as the longest row, so the figure
    holds no empty cells beyond the ends of rows. Of more than `max_rows` such classes, the `max_rows` whose
    most confident mistake is the most confident are shown, in class order, and the title says so.
    """
    rows = [
        (name, row) for name, row in zip(class_names, confident_mistakes(probabilities, predicted, labels, per_class))
    ]
    rows = [(name, row) for name, row in rows if len(row)]
    with_mistakes = len(rows)
    if with_mistakes > max_rows:
        top = probabilities.max(axis=1)
        keep = sorted(np.argsort([-top[row[0]] for _, row in rows], kind="stable")[:max_rows])
        rows = [rows[i] for i in keep]
    if not rows:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "No mistakes on the test images", ha="center", va="center")
        _save(fig, path)
        return
    columns = max(len(row) for _, row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns + 1, 1.3 * len(rows) + 0.4), squeeze=False)
    for r, (name, row) in enumerate(rows):
        for k in range(columns):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if k == 0:
                ax.set_ylabel(short_name(name, 24), fontsize=9, rotation=0, ha="right", va="center")
            if k < len(row):
                i = row[k]
                ax.imshow(images[i], interpolation="nearest")
                guess = short_name(class_names[predicted[i]], 13)
                ax.set_title(f"{guess} {probabilities[i, predicted[i]]:.2f}", fontsize=7)
            else:  # past the end of a shorter row (column 0 always holds an image)
                ax.axis("off")
    shown = f" ({len(rows)} of the {with_mistakes} classes with mistakes)" if len(rows) < with_mistakes else ""
    fig.suptitle(
        f"Most confident mistakes per true class{shown} (title: predicted class, probability)", fontsize=10
    )
    fig.subplots_adjust(wspace=0.05, hspace=0.45)
    _save(fig, path)


def confusion_png(counts: np.ndarray, class_names: tuple[str, ...], path: Path, accuracy: float) -> None:
    """The confusion matrix with class names and counts; rows are true classes.

    Up to MAX_COUNTED_CLASSES classes it is 7.5 x 6.5 inches with each count written in its cell; with more
    (CIFAR-100) it grows by 0.16 inch a class, names in 6 pt, and colours alone tell the counts.
    """
    n = len(class_names)
    counted = n <= MAX_COUNTED_CLASSES
    size = (7.5, 6.5) if counted else (0.16 * n + 3, 0.16 * n + 2)
    fig, ax = plt.subplots(figsize=size)
    shown = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45 if counted else 90, ha="right" if counted else "center")
    ax.set_yticks(range(n), class_names)
    if not counted:
        ax.tick_params(labelsize=6)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(counts.shape[0] if counted else 0):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if counts[i, j] > threshold else "black",
            )
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(f"Confusion matrix (test accuracy {accuracy:.2%})")
    _save(fig, path)
