"""Write-then-rename: a failure part-way leaves the previous output whole, and a killed writer's temporary files
go at the next write of the same path (never a live writer's)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cifar10.atomic import atomic_dir, atomic_file, write_json
from cifar10.errors import DataError
from tests.conftest import ROOT, stage_env


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


# A writer killed with `kill -9` part-way: in the block, or between moving the old folder aside and the new one in.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from cifar10.atomic import atomic_dir, atomic_file

target, how = Path(sys.argv[1]), sys.argv[2]
if how == "file":
    with atomic_file(target) as tmp:
        tmp.write_text('{"accura')
        os.kill(os.getpid(), signal.SIGKILL)
elif how == "folder":
    with atomic_dir(target) as tmp:
        (tmp / "x.npy").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
else:
    real_replace = os.replace

    def replace_then_die(source, destination):
        real_replace(source, destination)
        os.kill(os.getpid(), signal.SIGKILL)

    with atomic_dir(target) as tmp:
        (tmp / "x.npy").write_text("newer")
        os.replace = replace_then_die
"""


def _write_whole(target: Path, value: str) -> None:
    if target.suffix == ".json":
        write_json(target, {"accuracy": value})
    else:
        with atomic_dir(target) as tmp:
            (tmp / "x.npy").write_text(value)


def _read_whole(target: Path) -> str:
    return json.loads(target.read_text())["accuracy"] if target.suffix == ".json" else (target / "x.npy").read_text()


@pytest.mark.parametrize("how", ["file", "folder", "folder-mid-swap"])
def test_a_killed_writers_temporary_siblings_go_at_the_next_write(how: str, tmp_path: Path):
    target = tmp_path / ("train.json" if how == "file" else "normalized")
    _write_whole(target, "old")
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), how], cwd=ROOT, env=stage_env())
    assert result.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != target.name)
    assert left and all(re.fullmatch(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(tmp|old)", n) for n in left)
    if how == "folder-mid-swap":
        assert not target.exists() and sorted(Path(n).suffix for n in left) == [".old", ".tmp"]
    else:
        assert _read_whole(target) == "old"  # the killed writer never touched the output

    _write_whole(target, "new")  # the next run writes the same path
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert _read_whole(target) == "new"


def test_a_live_writers_temporary_siblings_and_other_names_are_left_alone(tmp_path: Path):
    target, folder = tmp_path / "train.json", tmp_path / "normalized"
    lookalike = tmp_path / ".train.json.backup.tmp"  # not 8 characters of mkstemp's alphabet: not ours
    lookalike.write_text("keep")
    with atomic_file(target) as live_file, atomic_dir(folder) as live_folder:
        live_file.write_text('{"writer": 1}\n')
        (live_folder / "x.npy").write_text("writer 1")
        write_json(target, {"writer": 2})  # another writer of the same paths meanwhile
        _write_whole(folder, "writer 2")
        assert live_file.exists() and (live_folder / "x.npy").exists()
    assert json.loads(target.read_text()) == {"writer": 1}  # the first writers finished last
    assert (folder / "x.npy").read_text() == "writer 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [lookalike.name, "normalized", "train.json"]


def test_temporary_siblings_are_git_ignored():
    def ignored(name: str) -> bool:
        return subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=ROOT).returncode == 0

    assert ignored("plots/.evaluate.k2j4h5g6.tmp") and ignored("plots/.evaluate.k2j4h5g6.old")
    assert ignored("metrics/.evaluate.json.a1b2c3d4.tmp")
    assert not ignored("metrics/evaluate.json")


def test_write_json_refuses_nan_and_keeps_the_previous_file(tmp_path: Path):
    target = tmp_path / "evaluate.json"
    write_json(target, {"accuracy": 0.5})
    with pytest.raises(DataError, match="non-finite number"):
        write_json(target, {"accuracy": float("nan")})
    assert json.loads(target.read_text()) == {"accuracy": 0.5}  # strict JSON, parsed by the standard library
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate.json"]


def test_a_sibling_deleted_before_its_writer_locks_it_is_made_again(tmp_path: Path, monkeypatch):
    """Another writer's clean-up can take a sibling for stale in the instant between its creation and its lock."""
    real_flock, stolen = fcntl.flock, []

    def flock_after_a_cleanup(fd: int, operation: int) -> None:
        if not stolen:
            stolen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
            stolen[0].unlink()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_cleanup)
    write_json(tmp_path / "train.json", {"accuracy": 1.0})
    assert stolen and stolen[0].name.startswith(".train.json.")
    assert json.loads((tmp_path / "train.json").read_text()) == {"accuracy": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json"]


def test_without_file_locks_writes_work_and_nothing_is_taken_for_stale(tmp_path: Path, monkeypatch):
    """NFS refuses `flock` on a folder opened read-only: then no sibling can be told stale, so none is deleted."""
    left_behind = tmp_path / ".normalized.a1b2c3d4.tmp"
    left_behind.mkdir()

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    _write_whole(tmp_path / "normalized", "new")
    assert _read_whole(tmp_path / "normalized") == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [left_behind.name, "normalized"]
