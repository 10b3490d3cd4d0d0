#!/usr/bin/env bash
# On a GPU machine under KERAS_BACKEND=jax: are two runs of the same params identical, with and without
# train.deterministic (which puts --xla_gpu_deterministic_ops=true in XLA_FLAGS)? Two 2-epoch train runs of each
# on the holdout archive; prints each run's final loss and validation figures and its seconds per epoch.
#
#   benchmarks/gpu_determinism.sh SOURCE.tar.gz MAKE_ARCHIVE OUT_DIR
set -euo pipefail
source_tar=$1 make_archive=$2 out=$3
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
source "$(dirname "$0")/gpu_common.sh"
prepare_holdout "$source_tar" "$make_archive"
set_params train.epochs=2 train.mixed_precision=none  # float32, as when the README's figures ran
for deterministic in false false true true; do
    set_params train.deterministic="$deterministic"
    rm -rf checkpoints models
    python3 -m stages.train data/normalized models dvclive metrics/train.json checkpoints > /tmp/train.log
    echo "RESULT deterministic=$deterministic $(python3 -c "import json; t = json.load(open('models/meta.json'))['training']; print(json.dumps({k: t[k] for k in ('loss', 'val_loss', 'val_accuracy', 'seconds_per_epoch', 'device')}))")"
done
