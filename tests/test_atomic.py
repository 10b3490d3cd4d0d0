"""Write-then-rename: a failure part-way leaves the previous output whole and no temporary files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar10.atomic import atomic_dir, atomic_file, write_json


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "metrics" / "train.json"
    write_json(target, {"accuracy": 0.5})
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text('{"accura')  # a crash half-way through writing
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["train.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # the umask's mode, not mkstemp's private one


def test_atomic_dir_swaps_whole_folders(tmp_path: Path):
    target = tmp_path / "normalized"
    with atomic_dir(target) as tmp:
        (tmp / "x.npy").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "x.npy").write_text("half")
        raise RuntimeError("killed")
    assert (target / "x.npy").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "y.npy").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["y.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normalized"]
