"""Stage 3: train the CNN on the normalized arrays and save a model that takes raw uint8 images.

Writes the model files (cifar10/classifier.py; meta.json records speed and device), per-epoch DVCLive logs
and metrics/train.json (validation accuracy, epochs, minutes).
End-of-epoch checkpoints go to a folder outside DVC's outputs (git-ignored, guarded by a
fingerprint of params, seed and data), so a killed run continues where it stopped while the
stage's outputs stay cacheable and restorable from DVC's run cache.
"""

from __future__ import annotations

import json
import time

from cifar10.atomic import write_json
from cifar10.devices import devices_note, pin_stage_devices, request_determinism
from cifar10.errors import run_stage
from cifar10.normalized import read_class_names, read_normalized
from cifar10.params import as_dict
from cifar10.stage import start_stage


def main() -> None:
    args, params, seed = start_stage(
        __doc__,
        {
            "data": "folder written by the normalize stage",
            "models": "folder for the trained model files",
            "live": "DVCLive folder for per-epoch metrics",
            "metrics": "metrics/train.json",
            "checkpoints": "folder for end-of-epoch checkpoints (kept between runs, not a DVC output)",
        },
        section="train",
        seeded=True,
    )
    resources = pin_stage_devices(args.params)
    devices = resources.devices
    if params.deterministic:
        request_determinism()
    # Keras and its backend start here, after the devices are pinned.
    from dvclive import Live

    from cifar10.classifier import save_classifier
    from cifar10.distribution import configure_distribution
    from cifar10.model import DTYPE_POLICIES
    from cifar10.training import configure_runtime, headline, resolve_precision, summarize, train_model

    arrays, stats = read_normalized(args.data)  # numpy only: a bad folder fails before any worker waits for others
    class_names = read_class_names(args.data)
    # Before the backend runs anything: JAX's processes must connect, TensorFlow's multi-worker strategy be made.
    distribution = configure_distribution(resources.strategy)
    params = resolve_precision(params)  # "auto": bfloat16 or none for this machine, used and recorded as such
    device = configure_runtime(params, seed)
    if note := devices_note(devices, device):
        print(f"train: {note}")
    if resources.strategy != "one":
        print(f"train: {distribution.describe(resources.strategy)}")
    print(
        f"train: {len(arrays['x_train'])} training, {len(arrays['x_val'])} validation images, "
        f"{len(class_names)} classes, on {device} in {DTYPE_POLICIES[params.mixed_precision]}"
    )

    start = time.perf_counter()
    # dvcyaml=False: dvc.yaml is hand-written and declares the plots; DVCLive only writes its files.
    # The resolved params travel in models/meta.json, so DVCLive logs only the per-epoch metrics.
    with Live(str(args.live), dvcyaml=False, save_dvc_exp=False) as live:
        result = train_model(arrays, stats, params, seed, live, args.checkpoints, distribution, class_names)
    wall = time.perf_counter() - start

    summary = summarize(result, params, device, wall)
    meta = {
        "seed": seed,
        "train": as_dict(params),
        "stats": stats.to_json(),
        "class_names": list(class_names),  # also inside model.keras (its ClassNames layer)
        "training": summary,  # speed, device and final figures travel with the model, not in the metrics
    }
    save_classifier(result.model, args.models, meta)
    write_json(args.metrics, headline(summary))
    print(f"train: {json.dumps(summary)}")


if __name__ == "__main__":
    run_stage(main)
