#!/usr/bin/env bash
# The fast recipe's GPU figures (README: the fast recipe) and the bfloat16-against-float32 check of issue 9:
# the train and evaluate stages on a GPU machine without TensorFlow, under KERAS_BACKEND=jax, on the holdout
# archive, as benchmarks/gpu_holdout_run.sh runs them.
#
#   benchmarks/gpu_fast_recipe.sh SOURCE.tar.gz MAKE_ARCHIVE OUT_DIR SOLO_CONFIG [CONFIG...]
#
# A CONFIG is NAME:KEY=VALUE;KEY=VALUE (params.yaml keys: seed or section.key), e.g. "fast:train.epochs=30;seed=1".
# SOLO_CONFIG runs first and alone on the GPU, so its seconds per epoch are its own (SOLO=N: the first N configs,
# one after another, each alone); the other configs then run side by side (one process each, so each one's
# times are inflated by the others: their accuracy is the figure). Each config trains from scratch in a copy of
# the project, then evaluate scores it; OUT_DIR gets a log per config and summary.txt: per-epoch validation
# accuracy and seconds, the train stage's wall seconds, test accuracy.
set -euo pipefail
source_tar=$1 make_archive=$2 out=$3
shift 3
# Every config shares the one GPU: each JAX process takes the memory it needs, not 75% of the card up front.
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if ! [[ ${SOLO:-1} =~ ^[0-9]+$ ]] || (( ${SOLO:-1} > $# )); then
    echo "SOLO=${SOLO:-1}: give a whole number of configs, at most the $# given" >&2
    exit 2
fi
mkdir -p "$out"
root=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import keras; print('keras', keras.__version__, keras.backend.backend())"

source "$(dirname "$0")/gpu_common.sh"
prepare_holdout "$source_tar" "$make_archive" > "$out/prepare.log" 2>&1
tail -3 "$out/prepare.log"

run_config() {  # run_config "NAME:KEY=VALUE;...": train and evaluate in a copy of the project
    local name=${1%%:*} sets=${1#*:} dir
    dir=/tmp/configs/$name
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r "$root/stages" "$root/cifar10" "$root/params.yaml" "$dir/"
    ln -s "$root/data" "$dir/data"
    (
        cd "$dir"
        IFS=";" read -ra pairs <<< "$sets"
        set_params "${pairs[@]}"
        start=$(date +%s.%N)
        python3 -m stages.train data/normalized models dvclive metrics/train.json checkpoints
        echo "train wall seconds: $(python3 -c "print(round($(date +%s.%N) - $start, 1))")"
        python3 -m stages.evaluate models/model.keras data/raw/archive.tar.gz \
            metrics/evaluate.json metrics/predictions.csv metrics/per_class.csv plots/evaluate
    ) > "$out/$name.log" 2>&1 || echo "$name failed (exit $?)" >> "$out/$name.log"
}

summarize() {  # summarize NAME: one line of per-epoch validation accuracy and seconds, and the test accuracy
    python3 - "/tmp/configs/$1" "$1" "$out" <<'PY'
import csv, json, sys
from pathlib import Path
d, name = Path(sys.argv[1]), sys.argv[2]
def column(path):
    try:
        return [float(r[path.stem]) for r in csv.DictReader(open(path), delimiter="\t")]
    except OSError:
        return []
val = column(d / "dvclive/plots/metrics/val/accuracy.tsv")
secs = column(d / "dvclive/plots/metrics/epoch_seconds.tsv")
log = Path(sys.argv[3]) / f"{name}.log"
wall = [line.split(":")[1].strip() for line in log.read_text().splitlines() if line.startswith("train wall seconds:")]
test = json.load(open(d / "metrics/evaluate.json"))["test_accuracy"] if (d / "metrics/evaluate.json").exists() else None
train = json.load(open(d / "models/meta.json"))["training"] if (d / "models/meta.json").exists() else {}
print(f"== {name}: test {test}, {train.get('seconds_per_epoch')} s/epoch, {train.get('images_per_second')} img/s, "
      f"precision {train.get('mixed_precision')}, train stage {wall[0] if wall else None} s")
print("   val accuracy by epoch: " + " ".join(f"{v:.4f}" for v in val))
print("   seconds by epoch: " + " ".join(f"{s:.2f}" for s in secs))
PY
}

for _ in $(seq "${SOLO:-1}"); do
    run_config "$1"
    summarize "${1%%:*}" | tee -a "$out/summary.txt"
    shift
done
for config in "$@"; do (run_config "$config"; summarize "${config%%:*}" >> "$out/summary.txt") & done
wait
cat "$out/summary.txt"
