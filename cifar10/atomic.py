"""Safe files: write-then-rename for outputs, so a crash never leaves a half-written output for DVC to cache,
and the regular-file check for inputs, so a FIFO or a device never blocks or floods a reader.

A writer's temporary siblings are named `.{name}.XXXXXXXX.tmp` (and `.{name}.XXXXXXXX.old` while a folder is
swapped) and git-ignored. A writer killed with `kill -9` cannot remove them, so the next write of the same path
does: each live writer holds an exclusive `flock` on its sibling, which the kernel drops when the process ends
however it ends, so a sibling whose lock can be taken was left by a dead writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cifar10.errors import DataError

NO_SUCH_FILE = "no such file"  # what non_regular_file_reason says of a missing path

# What `os.stat` reports for each kind of file that is not a regular one; a reader must never open these.
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),  # opening it blocks until a writer comes
    (stat.S_ISCHR, "a character device"),  # /dev/zero, /dev/urandom: endless
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def non_regular_file_reason(path: Path) -> str | None:
    """Return None if `path` is a regular file (or a symlink to one), else why not, e.g. "no such file" or
    "is a named pipe (FIFO), not a regular file".

    It only stats the path: opening a FIFO blocks until a writer comes, and a device such as /dev/zero never ends.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return NO_SUCH_FILE
    except OSError as exc:  # permission denied on a folder above it, a name too long, a symlink loop
        return f"cannot be examined ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"is {kind}, not a regular file"


def require_regular_file(path: Path, what: str, missing_hint: str = "") -> None:
    """Raise DataError unless `path` is a regular file: `<what> <path> not found<missing_hint>`, or
    `<what> <path> is a named pipe (FIFO), not a regular file` and the like."""
    reason = non_regular_file_reason(path)
    if reason == NO_SUCH_FILE:
        raise DataError(f"{what} {path} not found{missing_hint}")
    if reason:
        raise DataError(f"{what} {path} {reason}")


def _default_mode(directory: bool) -> int:
    # mkstemp/mkdtemp create private (0600/0700) entries; give outputs the modes the user's umask gives.
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _sibling_pattern(path: Path) -> re.Pattern[str]:
    # mkstemp and mkdtemp put 8 characters of [a-z0-9_] between the prefix and the suffix.
    return re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.(?:tmp|old)")


def _remove_stale_siblings(path: Path) -> list[Path]:
    """Delete the temporary siblings of `path` that writers killed mid-write left behind; return what was deleted.

    A sibling still locked by a live writer (another process writing the same path) is left alone. Best effort:
    a sibling that cannot be deleted stays, and the write goes on.
    """
    if not path.parent.is_dir():
        return []
    pattern = _sibling_pattern(path)
    removed = []
    for entry in os.scandir(path.parent):
        if not pattern.fullmatch(entry.name):
            continue
        sibling = Path(entry.path)
        try:
            # O_NOFOLLOW: a symlink wearing the name is not followed; O_NONBLOCK: nor does a FIFO block us.
            fd = os.open(sibling, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            # Fails while its writer is alive, and on a file system without such locks: then nothing is deleted.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                shutil.rmtree(sibling)
            else:
                sibling.unlink()
            removed.append(sibling)
        except OSError:
            continue
        finally:
            os.close(fd)  # releases the lock; a writer waiting for it sees its entry gone and makes another
    return removed


def _create_locked_sibling(path: Path, suffix: str, directory: bool) -> tuple[Path, int]:
    """Create `.{name}.XXXXXXXX{suffix}` beside `path`, empty, and lock it; return it and the descriptor that holds
    the lock (close it when done)."""
    while True:
        if directory:
            name = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without such locks (NFS, for a folder): no clean-up can take it either
            return Path(name), fd
        # Between creation and the lock, another writer's clean-up may have taken it for stale and deleted it.
        if os.fstat(fd).st_nlink:
            return Path(name), fd
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Stale temporary siblings of `path` (from writers that were killed) are deleted first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    tmp, lock = _create_locked_sibling(path, ".tmp", directory=False)
    try:
        tmp.chmod(_default_mode(directory=False))
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(lock)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; swap it in for `path` only if the block succeeds.

    Stale temporary siblings of `path` (from writers that were killed) are deleted first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    tmp, lock = _create_locked_sibling(path, ".tmp", directory=True)
    try:
        tmp.chmod(_default_mode(directory=True))
        yield tmp
        if path.exists():
            old, old_lock = _create_locked_sibling(path, ".old", directory=True)
            try:
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old)
            finally:
                os.close(old_lock)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        os.close(lock)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically: the one way this project writes JSON.

    NaN and infinity are not JSON; a file holding them would break `dvc metrics` and every other reader,
    so they are refused with DataError instead of written.
    """
    try:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise DataError(f"refusing to write {path}: it would hold a non-finite number (NaN or infinity)") from None
    with atomic_file(path) as tmp:
        tmp.write_text(text)
