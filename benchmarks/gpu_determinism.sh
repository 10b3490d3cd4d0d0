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
md5=$(python3 "$make_archive" /tmp/holdout.tar.gz --source "$source_tar" | grep -oE '[0-9a-f]{32}' | tail -1)
set_params() {  # set_params SECTION.KEY=YAML...
    python3 - "$@" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
for item in sys.argv[1:]:
    key, value = item.split("=", 1)
    section, name = key.split(".")
    params[section][name] = yaml.safe_load(value)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
}
set_params download.url=file:///tmp/holdout.tar.gz download.md5="$md5" train.epochs=2
python3 -m stages.download data/raw/cifar-10-python.tar.gz
python3 -m stages.normalize data/raw/cifar-10-python.tar.gz data/normalized
for deterministic in false false true true; do
    set_params train.deterministic="$deterministic"
    rm -rf checkpoints models
    python3 -m stages.train data/normalized models dvclive metrics/train.json checkpoints > /tmp/train.log
    echo "RESULT deterministic=$deterministic $(python3 -c "import json; t = json.load(open('models/meta.json'))['training']; print(json.dumps({k: t[k] for k in ('loss', 'val_loss', 'val_accuracy', 'seconds_per_epoch', 'device')}))")"
done
