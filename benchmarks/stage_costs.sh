#!/usr/bin/env bash
# Stage costs apart from train on the real holdout archive, in a fresh clone of the project (README: cost growth).
# Needs the holdout archive at /tmp/holdout.tar.gz (../shared/tools/make-cifar-archive /tmp/holdout.tar.gz) and the
# project's .venv; times each `dvc repro` step, a no-op repro twice and `dvc status`.
set -euo pipefail
export PATH=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin:$PATH DVC_NO_ANALYTICS=1
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf /tmp/sc && git clone -q "$root" /tmp/sc && cd /tmp/sc
git config user.email t@t && git config user.name t
md5=$(md5sum /tmp/holdout.tar.gz | cut -d' ' -f1)
python - "$md5" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["download"].update(url="file:///tmp/holdout.tar.gz", md5=sys.argv[1])
p["train"]["epochs"] = 1
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
t() { local s; s=$(date +%s.%N); "$@" > /tmp/sc_last.log 2>&1 || { cat /tmp/sc_last.log; exit 1; }; python -c "print(round($(date +%s.%N) - $s, 1))"; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores"
echo "dvc repro download (150 MiB local archive: copy, md5): $(t dvc repro download) s"
echo "dvc repro normalize (45,000 images: read, split, statistics, write): $(t dvc repro normalize) s"
echo "dvc repro train (1 epoch of the tutorial recipe, for the next steps): $(t dvc repro train) s"
echo "dvc repro evaluate (5,000 test images, figures): $(t dvc repro evaluate) s"
grep "evaluate:" /tmp/sc_last.log || true
echo "dvc repro (export, preview, gate): $(t dvc repro) s"
echo "dvc repro, nothing changed (1st): $(t dvc repro) s"
echo "dvc repro, nothing changed (2nd): $(t dvc repro) s"
tail -3 /tmp/sc_last.log
echo "dvc status: $(t dvc status) s"
du -sh data/raw data/normalized models .dvc/cache | tr '\n' ' '; echo
