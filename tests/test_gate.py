"""The quality gate: a floor on test accuracy and a maximum drop from a baseline git revision."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cifar10.errors import DataError, StageError
from cifar10.gate import MAX_METRICS_BYTES, baseline_accuracy, check_gate, parse_test_accuracy
from cifar10.params import GateParams
from tests.conftest import git, run, run_limited


def gate(floor: float = 0.0, rev: str = "", drop: float = 0.01) -> GateParams:
    return GateParams(min_test_accuracy=floor, baseline_rev=rev, max_drop=drop)


def test_the_floor_fails_below_and_passes_at_it():
    assert check_gate(0.80, gate(floor=0.80), None) == "gate: test accuracy 0.8000 passes (floor 0.8000)"
    with pytest.raises(StageError, match=r"^gate: test accuracy 0.7999 is below gate.min_test_accuracy 0.8000$"):
        check_gate(0.7999, gate(floor=0.80), None)
    assert check_gate(0.0, gate(), None) == "gate: test accuracy 0.0000 passes (no bar set)"  # off by default


def test_the_baseline_allows_exactly_max_drop():
    assert check_gate(0.875, gate(rev="main", drop=0.125), 1.0).startswith("gate: test accuracy 0.8750 passes (main")
    # Not exact in binary: 0.5016 - 0.02 < 0.4816 in floating point, yet the drop is exactly max_drop.
    assert check_gate(0.4816, gate(rev="main", drop=0.02), 0.5016).startswith("gate: test accuracy 0.4816 passes")
    with pytest.raises(StageError, match=r"is 0.0201 below main's 0.5016"):
        check_gate(0.4815, gate(rev="main", drop=0.02), 0.5016)
    with pytest.raises(StageError, match=r"is 0.1260 below main's 1.0000, more than gate.max_drop 0.125$"):
        check_gate(0.874, gate(rev="main", drop=0.125), 1.0)
    # Both bars are checked: passing one does not excuse the other.
    with pytest.raises(StageError, match="below gate.min_test_accuracy"):
        check_gate(0.85, gate(floor=0.9, rev="main"), 0.85)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"{", "is not JSON"),
        (b"[0.9]", "has no test_accuracy in [0, 1] (found None)"),
        (b'{"accuracy": 0.9}', "has no test_accuracy in [0, 1] (found None)"),
        (b'{"test_accuracy": NaN}', "has no test_accuracy in [0, 1] (found nan)"),
        (b'{"test_accuracy": 1.5}', "has no test_accuracy in [0, 1] (found 1.5)"),
        (b'{"test_accuracy": true}', "has no test_accuracy in [0, 1] (found True)"),
        (b'{"test_accuracy": "0.9"}', "has no test_accuracy in [0, 1] (found 0.9)"),
        (b"[" * 60_000, "is not JSON"),
        (b" " * (MAX_METRICS_BYTES + 1), "is over 64 KiB; metrics/evaluate.json holds two numbers"),
    ],
    ids=["broken", "list", "old key", "nan", "above 1", "bool", "string", "deep", "huge"],
)
def test_a_metrics_file_that_is_not_two_numbers_is_refused_in_one_line(text: bytes, reason: str):
    with pytest.raises(DataError) as info:
        parse_test_accuracy(text, "m.json")
    assert str(info.value) == f"m.json {reason}"


@pytest.fixture()
def history(tmp_path: Path) -> Path:
    """A git repo whose commit tagged v1 records test accuracy 0.9 and whose HEAD records 0.5."""
    git("init", "-q", "-b", "main", cwd=tmp_path)
    git("config", "user.name", "gate test", cwd=tmp_path)
    git("config", "user.email", "gate@example.com", cwd=tmp_path)
    (tmp_path / "metrics").mkdir()
    for accuracy, tag in ((0.9, "v1"), (0.5, None)):
        (tmp_path / "metrics/evaluate.json").write_text(json.dumps({"test_accuracy": accuracy, "test_loss": 0.3}))
        git("add", "-A", cwd=tmp_path)
        git("commit", "-qm", f"accuracy {accuracy}", cwd=tmp_path)
        if tag:
            git("tag", tag, cwd=tmp_path)
    return tmp_path


def test_the_baseline_is_read_from_the_revision_not_the_workspace(history: Path, monkeypatch):
    monkeypatch.chdir(history)
    assert baseline_accuracy("v1", Path("metrics/evaluate.json")) == 0.9
    assert baseline_accuracy("HEAD", Path("metrics/evaluate.json")) == 0.5
    with pytest.raises(StageError, match=r"^gate.baseline_rev 'nope': cannot read metrics/evaluate.json there: "):
        baseline_accuracy("nope", Path("metrics/evaluate.json"))
    with pytest.raises(StageError, match=r"there: a revision cannot start with '-'$"):
        baseline_accuracy("--output=x", Path("metrics/evaluate.json"))


def test_the_stage_stops_the_pipeline_with_one_line(history: Path):
    def stage(**gate_params) -> tuple[int, str, str]:
        params = {"gate": {"min_test_accuracy": 0.0, "baseline_rev": "", "max_drop": 0.01, **gate_params}}
        (history / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
        result = run([sys.executable, "-m", "stages.gate", "metrics/evaluate.json"], history, False, import_root=True)
        return result.returncode, result.stdout.strip(), result.stderr.strip()

    code, out, err = stage()
    assert (code, out, err) == (0, "gate: test accuracy 0.5000 passes (no bar set)", "")
    code, out, err = stage(baseline_rev="v1", max_drop=0.1)
    assert (code, out) == (1, "")
    assert err == "error: gate: test accuracy 0.5000 is 0.4000 below v1's 0.9000, more than gate.max_drop 0.1"
    code, out, err = stage(min_test_accuracy=0.6)
    assert (code, err) == (1, "error: gate: test accuracy 0.5000 is below gate.min_test_accuracy 0.6000")
    (history / "metrics/evaluate.json").unlink()
    code, _, err = stage()
    assert (code, err) == (1, "error: metrics metrics/evaluate.json not found; run the evaluate stage first")


def test_a_huge_metrics_file_in_the_baseline_is_refused_unread(history: Path):
    (history / "metrics/evaluate.json").write_bytes(b"{" + b" " * 50_000_000 + b"}")
    git("commit", "-qam", "50 MB of metrics", cwd=history)
    git("tag", "huge", cwd=history)
    code = (
        "from pathlib import Path; from cifar10.gate import baseline_accuracy; "
        "baseline_accuracy('huge', Path('metrics/evaluate.json'))"
    )
    result = run_limited([sys.executable, "-c", code], history, memory_mb=400, timeout_s=60)
    assert result.returncode == 1
    assert (
        result.stderr.decode()
        .strip()
        .splitlines()[-1]
        .endswith("gate.baseline_rev 'huge': cannot read metrics/evaluate.json there: it is over 64 KiB")
    )
