#!/usr/bin/env bash
# On a GPU machine without TensorFlow (KERAS_BACKEND=jax): does resources.devices pin the run and turn memory
# growth on, and what do float32 and bfloat16 cost per epoch? Three 3-epoch train runs on the holdout archive,
# GPU memory in use sampled every 0.5 s during each:
#   1. float32, resources.devices [] (JAX reserves 75% of the GPU up front)
#   2. float32, resources.devices [0] (memory growth: only what the run needs)
#   3. bfloat16, resources.devices [0]
#
#   benchmarks/gpu_devices_and_precision.sh SOURCE.tar.gz MAKE_ARCHIVE OUT_DIR
set -euo pipefail
source_tar=$1 make_archive=$2 out=$3
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
source "$(dirname "$0")/gpu_common.sh"
prepare_holdout "$source_tar" "$make_archive"
set_params train.epochs=3
for run in "none []" "none [0]" "bfloat16 [0]"; do
    set -- $run
    set_params train.mixed_precision="$1" resources.devices="$2"
    rm -rf checkpoints models
    (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null || echo 0; sleep 0.5; done) > /tmp/memory.txt &
    sampler=$!
    python3 -m stages.train data/normalized models dvclive metrics/train.json checkpoints | grep -v "^Epoch\|step - acc"
    kill $sampler
    peak=$(sort -n /tmp/memory.txt | tail -1)
    echo "RESULT precision=$1 devices=$2 peak_gpu_memory_mib=$peak training=$(python3 -c "import json; t = json.load(open('models/meta.json'))['training']; print(json.dumps({k: t[k] for k in ('device', 'seconds_per_epoch', 'images_per_second', 'val_accuracy')}))")"
done
