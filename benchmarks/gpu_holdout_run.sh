#!/usr/bin/env bash
# The GPU figures in the README: the train and evaluate stages on a GPU machine without TensorFlow, under
# KERAS_BACKEND=jax, on the holdout archive (45,000 real CIFAR-10 training images, a stratified 5,000-image
# holdout as the test batch), with the tutorial recipe of params.yaml.
#
#   benchmarks/gpu_holdout_run.sh SOURCE.tar.gz MAKE_ARCHIVE OUT_DIR [EPOCHS] [BUDGET_SECONDS]
#
# SOURCE.tar.gz: the JPEG training images; MAKE_ARCHIVE: the script that builds the archive from them.
# The stages run by hand, exactly as dvc.yaml runs them (the machine has no git or DVC set-up to spare).
# Train runs 2 epochs first (speed, compilation), then resumes from that checkpoint to EPOCHS (default
# 125: the result equals a straight run, see cifar10/checkpoint.py), or to as many epochs as fit in
# BUDGET_SECONDS at the measured speed. Logs, metrics and models/meta.json go to OUT_DIR.
set -euo pipefail
source_tar=$1 make_archive=$2 out=$3 epochs=${4:-125} budget=${5:-360}
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
python3 -c "import tensorflow" 2>/dev/null && echo "TensorFlow is installed" || echo "TensorFlow: not installed"

source "$(dirname "$0")/gpu_common.sh"
prepare_holdout "$source_tar" "$make_archive"
set_params train.epochs=2 train.mixed_precision=none  # float32, as when the README's figures ran
train() { python3 -m stages.train data/normalized models dvclive metrics/train.json checkpoints; }
t0=$(date +%s.%N); train; t1=$(date +%s.%N)
per_epoch=$(python3 -c "import json; print(json.load(open('models/meta.json'))['training']['seconds_per_epoch'])")
fit=$(python3 -c "print(max(2, min($epochs, int(($budget - 60) / ($per_epoch * 1.1)))))")  # 60 s: compilation
echo "2 epochs took $(python3 -c "print(round($t1 - $t0, 1))") s in all; $per_epoch s per epoch; training to $fit epochs"
set_params train.epochs="$fit"
train
python3 -m stages.evaluate models/model.keras data/raw/archive.tar.gz \
    metrics/evaluate.json metrics/predictions.csv metrics/per_class.csv plots/evaluate
cp metrics/train.json metrics/evaluate.json metrics/per_class.csv models/meta.json "$out/"
cp dvclive/metrics.json "$out/dvclive_metrics.json" 2>/dev/null || true
