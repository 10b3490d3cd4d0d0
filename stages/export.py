"""Stage: write the trained model in the formats listed in export.formats (exports/), for other runtimes.

models/model.keras is always there (written by train); this stage adds a SavedModel, a LiteRT and an ONNX file
on request, each taking raw uint8 RGB images like the .keras model (cifar10/export.py). With no format
listed it writes only exports/manifest.json.
"""

from __future__ import annotations

from cifar10.errors import run_stage
from cifar10.export import export_model
from cifar10.stage import start_stage


def main() -> None:
    args, params, _ = start_stage(
        __doc__,
        {"model": "models/model.keras", "exports": "the folder to write"},
        section="export",
        seeded=False,
    )
    model = None
    if params.formats:  # Keras (and TensorFlow) load only when there is something to export
        from cifar10.classifier import load_classifier

        model = load_classifier(args.model)
    written = export_model(model, args.exports, params.formats)
    print(f"export: {', '.join(str(p) for p in written) or 'no format requested (export.formats: [])'}")


if __name__ == "__main__":
    run_stage(main)
