"""The quality gate: a test accuracy below a floor, or too far below a baseline revision's, fails the pipeline.

The baseline is a git revision's metrics/evaluate.json (metrics live in git, so no DVC remote is needed).
Its bytes are untrusted like any file: at most MAX_METRICS_BYTES, plain JSON, a finite accuracy in [0, 1].
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from cifar10.atomic import require_regular_file
from cifar10.errors import DataError, StageError
from cifar10.params import GateParams

MAX_METRICS_BYTES = 64 * 2**10  # metrics/evaluate.json is under 100 bytes
GIT_DEADLINE_S = 30.0  # per git command; a local `git show` takes milliseconds


def parse_test_accuracy(text: str | bytes, source: str) -> float:
    """Return the test accuracy in metrics/evaluate.json's text; DataError naming `source` otherwise."""
    if len(text) > MAX_METRICS_BYTES:
        raise DataError(f"{source} is over {MAX_METRICS_BYTES // 2**10} KiB; metrics/evaluate.json holds two numbers")
    try:
        metrics = json.loads(text, parse_constant=lambda name: math.nan)
    except (ValueError, RecursionError):
        raise DataError(f"{source} is not JSON") from None
    value = metrics.get("test_accuracy") if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise DataError(f"{source} has no test_accuracy in [0, 1] (found {str(value)[:40]})")
    return float(value)


def read_test_accuracy(path: Path) -> float:
    """Return the test accuracy in the metrics file at `path` (read at most MAX_METRICS_BYTES + 1 bytes)."""
    require_regular_file(path, "metrics", "; run the evaluate stage first")
    with path.open("rb") as f:
        return parse_test_accuracy(f.read(MAX_METRICS_BYTES + 1), str(path))


def _git(args: list[str], what: str) -> bytes:
    try:
        result = subprocess.run(["git", *args], capture_output=True, timeout=GIT_DEADLINE_S, check=False)
    except FileNotFoundError:
        raise StageError(f"{what}: git is not installed") from None
    except subprocess.TimeoutExpired:
        raise StageError(f"{what}: git did not answer within {GIT_DEADLINE_S:g} s") from None
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise StageError(f"{what}: {reason[-1][:160] if reason else f'git exited {result.returncode}'}")
    return result.stdout


def baseline_accuracy(rev: str, metrics: Path) -> float:
    """Return the test accuracy recorded in `metrics` (a path relative to the working folder) at git `rev`."""
    what = f"gate.baseline_rev {rev!r}: cannot read {metrics.as_posix()} there"
    if rev.startswith("-"):  # never an option to git, whatever the caller checked
        raise StageError(f"{what}: a revision cannot start with '-'")
    # Resolve once to an object id, so the size checked is the size of the blob read, even if the branch moves.
    blob = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}:./{metrics.as_posix()}"], what)
    blob_id = blob.decode("ascii", errors="replace").strip()
    size = _git(["cat-file", "-s", blob_id], what)
    if not size.strip().isdigit() or int(size) > MAX_METRICS_BYTES:
        raise DataError(f"{what}: it is over {MAX_METRICS_BYTES // 2**10} KiB")
    return parse_test_accuracy(_git(["cat-file", "blob", blob_id], what), f"{metrics.as_posix()} at {rev}")


def check_gate(accuracy: float, params: GateParams, baseline: float | None) -> str:
    """Return the passing verdict as one line, or raise StageError saying which bar `accuracy` missed."""
    if accuracy < params.min_test_accuracy:
        raise StageError(
            f"gate: test accuracy {accuracy:.4f} is below gate.min_test_accuracy {params.min_test_accuracy:.4f}"
        )
    # A drop of exactly max_drop passes: compared with a margin far below one test image in 10,000, since
    # 0.5016 - 0.02 is not 0.4816 in binary floating point.
    if baseline is not None and baseline - accuracy > params.max_drop + 1e-9:
        raise StageError(
            f"gate: test accuracy {accuracy:.4f} is {baseline - accuracy:.4f} below {params.baseline_rev}'s "
            f"{baseline:.4f}, more than gate.max_drop {params.max_drop:g}"
        )
    bars = []
    if params.min_test_accuracy > 0:
        bars.append(f"floor {params.min_test_accuracy:.4f}")
    if baseline is not None:
        bars.append(f"{params.baseline_rev} {baseline:.4f} - {params.max_drop:g}")
    return f"gate: test accuracy {accuracy:.4f} passes ({', '.join(bars) if bars else 'no bar set'})"
