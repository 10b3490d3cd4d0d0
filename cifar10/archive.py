"""Read CIFAR-10 batches straight from the official `cifar-10-python.tar.gz`, without extracting it.

The batches are pickles, and the archive comes from the network, so they are loaded by an
unpickler that can build only what the official files hold: dicts, bytes, lists, ints and
numpy arrays. Anything else (a crafted pickle that would call `os.system`, say) is refused
before it runs.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cifar10.dataset import CLASS_NAMES
from cifar10.errors import DataError

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
PIXELS = 32 * 32 * 3  # bytes per image in a batch row: R plane, G plane, B plane, each row-major


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as `_codecs.encode(str, 'latin1')`.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array rebuilder, whichever module holds it


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals that numpy arrays and bytes need."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def safe_unpickle(data: bytes, what: str) -> dict[bytes, Any]:
    """Return the dict pickled in `data`; raise DataError for any other object or global."""
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{what} is not a CIFAR-10 batch pickle: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, bytes) for k in obj):
        raise DataError(f"{what} must hold a dict with bytes keys, got {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (N, 32, 32, 3) uint8, NHWC
    labels: np.ndarray  # (N,) uint8 class indices 0..9


def parse_batch(obj: dict[bytes, Any], what: str) -> Batch:
    """Return the images (NHWC uint8) and labels of one unpickled batch dict, after checking both."""
    for key in (b"data", b"labels"):
        if key not in obj:
            raise DataError(f"{what} has no {key!r} entry")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{what}: data must be a uint8 array of shape (N, {PIXELS}), got {dtype} {shape}")
    if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise DataError(f"{what}: labels must be a list of integers")
    if len(labels) != len(data):
        raise DataError(f"{what}: {len(labels)} labels for {len(data)} images")
    label_array = np.asarray(labels, dtype=np.int64)
    if label_array.size and (label_array.min() < 0 or label_array.max() >= len(CLASS_NAMES)):
        bad = int(label_array[(label_array < 0) | (label_array >= len(CLASS_NAMES))][0])
        raise DataError(f"{what}: labels must be in 0..{len(CLASS_NAMES) - 1}, got {bad}")
    # Each row holds the R, G and B planes one after another, each 32x32 row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Batch(np.ascontiguousarray(images), label_array.astype(np.uint8))


def _check_member_name(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"archive member {name!r} points outside the archive folder; refusing the archive")


def read_archive(path: Path, batches: tuple[str, ...] = (*TRAIN_BATCHES, TEST_BATCH)) -> dict[str, Any]:
    """Return {batch name: Batch} for the named batches (default: all six), and 'label_names'.

    Members are read in memory; nothing is extracted to disk. Every member name is checked,
    the unread ones too.
    """
    wanted = {f"{BATCH_DIR}/{name}" for name in (*batches, META)}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                _check_member_name(member.name)
                if member.name in wanted and member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None  # isfile() members always have data
                    found[member.name] = extracted.read()
    except FileNotFoundError:
        raise DataError(f"archive {path} not found") from None
    except tarfile.ReadError as exc:
        raise DataError(f"{path} is not a readable gzip-compressed tar archive ({exc})") from None
    except (EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path} is truncated or corrupt ({exc})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{path} has no member {missing[0]}")

    meta = safe_unpickle(found[f"{BATCH_DIR}/{META}"], META)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or [n.decode() if isinstance(n, bytes) else n for n in names] != list(CLASS_NAMES):
        raise DataError(f"{META}: label_names must be the 10 CIFAR-10 classes in order, got {names!r}")

    result: dict[str, Any] = {"label_names": CLASS_NAMES}
    for name in batches:
        result[name] = parse_batch(safe_unpickle(found[f"{BATCH_DIR}/{name}"], name), name)
    return result


def load_train(path: Path) -> Batch:
    """Return the five training batches of the archive at `path`, joined in order."""
    batches = read_archive(path, TRAIN_BATCHES)
    train = [batches[name] for name in TRAIN_BATCHES]
    return Batch(np.concatenate([b.images for b in train]), np.concatenate([b.labels for b in train]))


def load_test(path: Path) -> Batch:
    """Return the test batch alone (evaluation and predictions need no training images)."""
    return read_archive(path, (TEST_BATCH,))[TEST_BATCH]
