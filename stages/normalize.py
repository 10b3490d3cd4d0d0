"""Stage 2: split the archive's training images into train / validation and z-score the pixels.

Statistics come from the training part only and go to stats.json; train embeds them in the
model, so the saved model takes raw uint8 images. The labels are those dataset.name and dataset.labels
pick (CIFAR-100: fine or coarse), and the class names, from the archive's meta member, go to stats.json.
The test batch stays in the archive, where evaluate reads it.
"""

from __future__ import annotations

from cifar10.archive import layout_of, load_train
from cifar10.errors import run_stage
from cifar10.normalized import write_normalized
from cifar10.preprocessing import split_and_normalize
from cifar10.stage import start_stage


def main() -> None:
    args, (params, dataset), seed = start_stage(
        __doc__,
        {"archive": "the verified archive", "output": "folder for the .npy arrays and stats.json"},
        section=("normalize", "dataset"),
        seeded=True,
    )
    train = load_train(args.archive, layout_of(dataset.name, dataset.labels))
    arrays, stats = split_and_normalize(train.images, train.labels, params, seed)
    write_normalized(args.output, arrays, stats, params.method, train.class_names)
    print(
        f"normalize: {dataset.name} ({len(train.class_names)} {dataset.labels} classes), "
        f"{len(arrays['y_train'])} training and {len(arrays['y_val'])} validation images, "
        f"mean {[round(m, 3) for m in stats.mean]}, std {[round(s, 3) for s in stats.std]}"
    )


if __name__ == "__main__":
    run_stage(main)
