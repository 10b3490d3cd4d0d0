# Sourced by the gpu_*.sh scripts: params editing and the holdout archive, run through the real stages.

set_params() {  # set_params SECTION.KEY=YAML... or KEY=YAML...: edit params.yaml in place
    python3 - "$@" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
for item in sys.argv[1:]:
    key, value = item.split("=", 1)
    if "." in key:
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    else:  # a top-level key: seed
        params[key] = yaml.safe_load(value)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
}

prepare_holdout() {  # prepare_holdout SOURCE.tar.gz MAKE_ARCHIVE: build the archive, then download and normalize
    local start md5
    start=$(date +%s.%N)
    md5=$(python3 "$2" /tmp/holdout.tar.gz --source "$1" | grep -oE '[0-9a-f]{32}' | tail -1)
    echo "archive built in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s, md5 $md5"
    set_params download.url=file:///tmp/holdout.tar.gz download.md5="$md5"
    python3 -m stages.download data/raw/archive.tar.gz
    python3 -m stages.normalize data/raw/archive.tar.gz data/normalized
}
