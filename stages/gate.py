"""Stage 5: the quality gate. Fails `dvc repro` when the test accuracy is below gate.min_test_accuracy, or
more than gate.max_drop below the accuracy recorded at the git revision gate.baseline_rev.

Both bars are off by default. Nothing is written: the stage passes or stops the pipeline with one line.
The baseline is read when this stage runs, i.e. after each new evaluation or a change of the gate params;
`dvc repro --force --single-item gate` checks again after the baseline revision has moved.
"""

from __future__ import annotations

from cifar10.errors import run_stage
from cifar10.gate import baseline_accuracy, check_gate, read_test_accuracy
from cifar10.stage import start_stage


def main() -> None:
    args, params, _ = start_stage(
        __doc__, {"metrics": "metrics/evaluate.json, written by the evaluate stage"}, section="gate", seeded=False
    )
    accuracy = read_test_accuracy(args.metrics)
    baseline = baseline_accuracy(params.baseline_rev, args.metrics) if params.baseline_rev else None
    print(check_gate(accuracy, params, baseline))


if __name__ == "__main__":
    run_stage(main)
