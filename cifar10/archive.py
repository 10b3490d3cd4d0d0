"""Read CIFAR-10 and CIFAR-100 batches straight from the official archives, without extracting them.

The two layouts (see LAYOUTS): `cifar-10-python.tar.gz` holds `cifar-10-batches-py/` with data_batch_1..5,
test_batch and batches.meta (`label_names`); `cifar-100-python.tar.gz` holds `cifar-100-python/` with train,
test and meta (`fine_label_names`, `coarse_label_names`), each image labelled with both `fine_labels` and
`coarse_labels`. Class names come from the meta member, checked (CIFAR-10's must be its known ten).

The archive may come from anywhere (a mirror is trusted only as far as its md5, and evaluate and
`cifar10-predict --archive` check no md5 at all), so the reader treats it as hostile:

- gzip and tar are read here in bounded chunks, with a cap on every size, and the gzip CRC and length are
  checked at the end of the stream; only regular files and folders may appear, each name once;
- the batches are pickles, loaded by an unpickler that runs no code: the few globals it knows become inert
  records of their arguments, and the one object numpy may have written, a uint8 array, is built here from
  its pixel bytes once the record is exactly what numpy writes for one.
"""

from __future__ import annotations

import gzip
import io
import pickle
import pickletools
import re
import reprlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, NoReturn

import numpy as np

from cifar10.atomic import require_regular_file
from cifar10.dataset import CLASS_NAMES, class_names_problem
from cifar10.errors import DataError

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
PIXELS = 32 * 32 * 3  # bytes per image in a batch row: R plane, G plane, B plane, each row-major

# Caps, far above what a CIFAR-10 archive needs, so that a crafted one is refused before it costs much.
# The official archive decompresses to about 178 MiB. Python 3 writes bigger pickles of the same images
# (protocol 2 stores bytes as UTF-8 text, 2 bytes for each pixel >= 128): the 50,000-image archive of
# ../shared/tools/make-cifar-archive decompresses to 213 MiB, and a batch of 10,000 noise images is 44 MiB.
MAX_TOTAL_BYTES = 512 * 2**20  # 512 MiB: the whole decompressed tar stream, skipped members included
MAX_MEMBER_BYTES = 128 * 2**20  # 128 MiB per member; an official batch (10,000 images) is 30 MiB
# CIFAR-100 keeps its 50,000 training images in one member: 155 MiB in the official archive, up to about
# 230 MiB when Python 3 writes them with protocol 2 (see above).
MAX_CIFAR100_MEMBER_BYTES = 320 * 2**20
MAX_META_BYTES = 2**20  # 1 MiB for the meta member before it is unpickled; CIFAR-100's official one is 1.5 KiB
MAX_HEADER_BYTES = 8 * 2**10  # 8 KiB for a GNU long name or a pax header; a Linux path is at most 4 KiB
MAX_MEMBERS = 1000  # entries in the archive; the official one has 8 (the folder and its 7 files)
MAX_PICKLE_OPERATIONS = 1_000_000  # opcodes in one batch pickle; a 10,000-image batch takes about 90,000,
# CIFAR-100's 50,000-image train member 200,000 (protocol 4) to 700,000 (protocol 0)
READ_CHUNK_BYTES = 2**20  # 1 MiB: decompressed bytes asked of gzip at a time
TAR_BLOCK = 512  # bytes: tar headers and member data come in blocks of this size



@dataclass(frozen=True)
class Layout:
    """Where one data set's members, labels and class names are in its archive (one per dataset.name, labels)."""

    dataset: str  # dataset.name: cifar10 | cifar100
    labels: str  # dataset.labels: fine | coarse (CIFAR-10: fine only)
    folder: str  # the archive's top folder
    train: tuple[str, ...]  # training members, joined in this order
    test: str
    meta: str
    label_key: bytes  # each batch's list of class indices
    names_key: bytes  # the meta member's list of class names
    num_classes: int
    max_member_bytes: int


LAYOUTS = {
    ("cifar10", "fine"): Layout(
        "cifar10", "fine", BATCH_DIR, TRAIN_BATCHES, TEST_BATCH, META, b"labels", b"label_names", 10, MAX_MEMBER_BYTES
    ),
    **{
        ("cifar100", kind): Layout(
            "cifar100",
            kind,
            "cifar-100-python",
            ("train",),
            "test",
            "meta",
            f"{kind}_labels".encode(),
            f"{kind}_label_names".encode(),
            100 if kind == "fine" else 20,
            MAX_CIFAR100_MEMBER_BYTES,
        )
        for kind in ("fine", "coarse")
    },
}
CIFAR10 = LAYOUTS[("cifar10", "fine")]


def layout_of(dataset: str, labels: str) -> Layout:
    """Return the archive layout for dataset.name and dataset.labels (as checked by DatasetParams)."""
    if (dataset, labels) not in LAYOUTS:
        raise DataError(f"no archive layout for dataset {dataset!r} with {labels!r} labels")
    return LAYOUTS[(dataset, labels)]


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlevel = 3


def _shown(value: Any) -> str:
    """Return a short, one-line repr of a value from the archive, for an error message; never raises."""
    try:
        text = _SHORT_REPR.repr(value)
    except ValueError:  # an int beyond Python's 4,300-digit limit for str()
        return "a number too large to print"
    return text if len(text) <= 120 else text[:117] + "..."


def _one_line(text: str, limit: int = 200) -> str:
    """Return `text` escaped to printable characters and cut to `limit`, for an error message."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# Pickles: inert globals, and arrays built from exactly what numpy writes.

# Every global a batch pickle may name: numpy's array rebuilder (numpy 2 writes `numpy._core`; numpy 1 and
# the official 2009 files `numpy.core`), the array and dtype classes, and `_codecs.encode`, which protocol-2
# pickles written by Python 3 use for bytes. None of them is ever called: see _InertGlobal.
ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
}


class _InertGlobal:
    """An allowed global as the unpickler hands it out: REDUCE on it records the call, and nothing runs."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name  # a value of ALLOWED_GLOBALS

    def __repr__(self) -> str:
        return f"numpy.{self.name}"

    def called_with(self, args: tuple) -> Any:
        """Return what REDUCE on this global with `args` gives: latin-1 bytes for `encode`, else a record."""
        if self.name != "encode":
            return _InertCall(self.name, args)
        # Encoding a str as latin-1 touches no memory but the str's, and dict keys must be real bytes.
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"refused _codecs.encode{_shown(args)}: only (str, 'latin1') makes bytes")
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise pickle.UnpicklingError("refused _codecs.encode of text that is not latin-1") from None


class _NoState:
    """The state of a record that no BUILD reached, named so in an error message."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "none (no BUILD)"


_NO_STATE = _NoState()


class _InertCall:
    """A call of numpy.ndarray, numpy.dtype or numpy's _reconstruct as the pickle wrote it: the function's name,
    its arguments and the state a BUILD gave it, all plain data."""

    __slots__ = ("function", "args", "state")

    def __init__(self, function: str, args: tuple) -> None:
        self.function = function
        self.args = args
        self.state: Any = _NO_STATE

    def __repr__(self) -> str:
        return f"numpy.{self.function}(...)"  # not the arguments: records can nest a million deep


# The opcodes a batch pickle may use: plain values, containers, the memo, globals and REDUCE/BUILD, from
# protocols 0 to 4. Refused: persistent ids and the extension registry (nothing here defines them), INST,
# OBJ, NEWOBJ and NEWOBJ_EX (they instantiate classes; numpy writes REDUCE), and protocol 5's BYTEARRAY8,
# which allocates whatever length its 8 bytes claim before reading any data, and out-of-band buffers.
_ALLOWED_OPCODES = frozenset(
    {
        *("MARK", "STOP", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE"),
        *("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"),
        *("STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"),
        *("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"),
        *("EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND", "APPENDS"),
        # No sets: the batches hold none, and a set item is hashed like a dict key (see _scalar_keys).
        *("EMPTY_DICT", "DICT", "SETITEM", "SETITEMS"),
        *("GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"),
        *("GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PROTO", "FRAME"),
    }
)
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}


class _OpcodeTable(dict):
    """The unpickler's opcode -> handler table; an opcode missing from it is refused by name."""

    def __missing__(self, code: int) -> NoReturn:
        raise pickle.UnpicklingError(f"refused pickle opcode {_OPCODE_NAMES.get(code, hex(code))}")


def _counted(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """Return `handler` behind a count of the opcodes run, refused past MAX_PICKLE_OPERATIONS.

    Each opcode creates at most a few hundred bytes of objects beyond the data it reads (an empty dict, a
    memo entry, a list), so the count bounds the memory a pickle of a capped size can ask for.
    """

    def run_counted(unpickler: _BatchUnpickler) -> None:
        unpickler.operations += 1
        if unpickler.operations > MAX_PICKLE_OPERATIONS:
            raise pickle.UnpicklingError(f"more than {MAX_PICKLE_OPERATIONS:,} pickle operations")
        handler(unpickler)

    return run_counted


_SCALAR_KEYS = (bytes, str, int, bool, float, type(None))


def _scalar_keys(handler: Callable[[Any], None], keys: Callable[[list], list]) -> Callable[[Any], None]:
    """Return `handler` (a dict-building opcode) behind a check that the keys it stores are scalars.

    Hashing a key recurses in C through nested tuples: a tuple nested 900,000 deep, built by one opcode per
    level and used as a key, crashes the process with SIGSEGV. The batches' keys are bytes.
    """

    def run_checked(unpickler: _BatchUnpickler) -> None:
        for key in keys(unpickler.stack):
            if type(key) not in _SCALAR_KEYS:
                raise pickle.UnpicklingError(f"refused a dict key of type {type(key).__name__}")
        handler(unpickler)

    return run_checked


def _keys_since_mark(stack: list) -> list:
    return stack[0::2]  # DICT and SETITEMS: the stack holds key, value, key, value... since the mark


def _last_key(stack: list) -> list:
    return stack[-2:-1]  # SETITEM: the stack ends with key, value


def _load_reduce(unpickler: _BatchUnpickler) -> None:
    """REDUCE: record the call of an allowed global; anything else on the stack is refused."""
    args = unpickler.stack.pop()
    function = unpickler.stack[-1]
    if not isinstance(function, _InertGlobal) or type(args) is not tuple:
        raise pickle.UnpicklingError(f"refused a call of a {type(function).__name__}")
    unpickler.stack[-1] = function.called_with(args)


def _load_build(unpickler: _BatchUnpickler) -> None:
    """BUILD: store the state in a record that has none yet; BUILD on anything else is refused."""
    state = unpickler.stack.pop()
    target = unpickler.stack[-1]
    if not isinstance(target, _InertCall):
        raise pickle.UnpicklingError(f"refused BUILD on a {type(target).__name__}")
    if target.state is not _NO_STATE:
        raise pickle.UnpicklingError(f"refused a second BUILD of numpy.{target.function}")
    target.state = state


class _BatchUnpickler(pickle._Unpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS, as inert stand-ins, runs only _ALLOWED_OPCODES and stops
    after MAX_PICKLE_OPERATIONS.

    It is CPython's pure-Python unpickler, not the C one: the C unpickler keeps its memo in an array sized by
    the largest index a PUT names, so a 9-byte pickle (`LONG_BINPUT 200000000`) makes it zero 3 GB. Here the
    memo is a dict, and every opcode goes through the table below. It takes 0.32 s where the C one takes
    0.24 s for a 10,000-image batch.
    """

    dispatch = _OpcodeTable(
        {
            code: _counted(pickle._Unpickler.dispatch[code])
            for code, name in _OPCODE_NAMES.items()
            if name in _ALLOWED_OPCODES
        }
    )
    dispatch.update(
        {
            pickle.DICT[0]: _scalar_keys(dispatch[pickle.DICT[0]], _keys_since_mark),
            pickle.SETITEMS[0]: _scalar_keys(dispatch[pickle.SETITEMS[0]], _keys_since_mark),
            pickle.SETITEM[0]: _scalar_keys(dispatch[pickle.SETITEM[0]], _last_key),
        }
    )
    dispatch[pickle.REDUCE[0]] = _counted(_load_reduce)
    dispatch[pickle.BUILD[0]] = _counted(_load_build)

    def __init__(self, data: bytes) -> None:
        # encoding="bytes": the official files come from Python 2, whose str pickles are bytes here.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.operations = 0

    def find_class(self, module: str, name: str) -> Any:
        role = ALLOWED_GLOBALS.get((module, name))
        if role is None:
            raise pickle.UnpicklingError(f"refused to load {_one_line(module)}.{_one_line(name)}")
        return _InertGlobal(role)


def _same(value: Any, expected: Any) -> bool:
    """Return whether `value` equals `expected` with the same types throughout (so False is not 0, 'b' not b'b')."""
    if type(value) is not type(expected):
        return False
    if type(expected) is tuple:
        return len(value) == len(expected) and all(map(_same, value, expected))
    return value == expected


def _one_of(value: Any, accepted: tuple) -> bool:
    return any(_same(value, candidate) for candidate in accepted)


# What numpy writes for dtype('uint8'): dtype('u1', False, True), then BUILD with this state (version 3,
# byte order '|', no subarray, no fields, no element size or alignment of its own, no flags). Python 2 wrote
# the same with 0 and 1 for the booleans, and its str became bytes.
_UINT8_DTYPE_ARGS = tuple((code, align, copy) for code in ("u1", b"u1") for align in (False, 0) for copy in (True, 1))
_UINT8_DTYPE_STATES = tuple((3, order, None, None, None, -1, -1, 0) for order in ("|", b"|"))


def _uint8_dtype_refusal(dtype: Any) -> str | None:
    """Return what is wrong with a pickled dtype, or None when it is exactly numpy's uint8."""
    if not isinstance(dtype, _InertCall) or dtype.function != "dtype":
        return f"a dtype given as {type(dtype).__name__}"
    state = dtype.state
    if type(state) is tuple and len(state) >= 5:
        if state[2] is not None:
            return "a dtype with a subarray"
        if state[3] is not None or state[4] is not None:
            return "a dtype with fields (a structured or object dtype)"
    if len(dtype.args) == 3 and not _one_of(dtype.args[0], ("u1", b"u1")):
        return f"dtype {_shown(dtype.args[0])}"
    if not _one_of(dtype.args, _UINT8_DTYPE_ARGS) or not _one_of(state, _UINT8_DTYPE_STATES):
        return f"a dtype pickled as numpy never writes uint8: numpy.dtype{_shown(dtype.args)}, state {_shown(state)}"
    return None


def _array_from_record(record: _InertCall, what: str) -> np.ndarray:
    """Return the (N, 3072) uint8 array that a pickled array record describes, built from its pixel bytes.

    numpy pickles such an array as `_reconstruct(ndarray, (0,), b'b')` and then BUILD with
    `(1, (N, 3072), <uint8 dtype>, False, <N * 3072 bytes>)`; any other record raises DataError. No numpy
    function sees the record: the array is `np.frombuffer` over bytes whose length has been checked.
    """

    def refuse(reason: str) -> NoReturn:
        raise DataError(f"{what} must be a uint8 array of shape (N, {PIXELS}), got {reason}")

    if record.function != "_reconstruct":
        refuse(f"numpy.{record.function}{_shown(record.args)} instead of a pickled array")
    args = record.args
    if not (len(args) == 3 and isinstance(args[0], _InertGlobal) and args[0].name == "ndarray"):
        refuse("numpy._reconstruct of something other than numpy.ndarray")
    if not _same(args[1], (0,)) or not _same(args[2], b"b"):
        refuse(f"numpy._reconstruct(ndarray, {_shown(args[1])}, {_shown(args[2])}) instead of (ndarray, (0,), b'b')")
    state = record.state
    if state is _NO_STATE:
        refuse("an array with no state (no shape, dtype or pixel bytes)")
    if type(state) is not tuple or len(state) != 5 or not _same(state[0], 1):
        refuse(f"an array state numpy never writes: {_shown(state)}")
    _, shape, dtype, fortran_order, pixels = state
    dtype_refusal = _uint8_dtype_refusal(dtype)
    if dtype_refusal:
        refuse(dtype_refusal)
    shape_is_2d = type(shape) is tuple and len(shape) == 2 and all(type(n) is int for n in shape)
    if not shape_is_2d or shape[0] < 0 or shape[1] != PIXELS:
        refuse(f"shape {_shown(shape)}")
    if not _one_of(fortran_order, (False, 0)):
        refuse("a Fortran-order array")
    if type(pixels) is not bytes:
        refuse(f"pixels as {type(pixels).__name__} instead of bytes")
    rows = shape[0]
    if len(pixels) != rows * PIXELS:
        refuse(f"{len(pixels)} bytes of pixels for {rows} rows ({rows * PIXELS} expected)")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(rows, PIXELS)


def _holds_inert(values: list[Any]) -> bool:
    """Return whether any numpy record or global hides in `values` or in the containers within them."""
    pending, seen = list(values), set()
    while pending:  # a loop, not recursion: a pickle can nest lists a million deep
        item = pending.pop()
        if isinstance(item, (_InertCall, _InertGlobal)):
            return True
        if isinstance(item, (list, tuple, set, frozenset, dict)) and id(item) not in seen:
            seen.add(id(item))
            pending.extend(item.items() if isinstance(item, dict) else item)
    return False


def safe_unpickle(data: bytes, what: str) -> dict[bytes, Any]:
    """Return the dict pickled in `data`, its array entries built as uint8 (N, 3072) arrays.

    Raises DataError for any global outside ALLOWED_GLOBALS, any refused opcode, a pickle of another type,
    and any array that is not exactly numpy's pickle of a uint8 C-order (N, 3072) array.
    """
    try:
        obj = _BatchUnpickler(data).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError) as exc:  # fmt: skip
        reason = "it ends before its STOP opcode" if isinstance(exc, EOFError) else _one_line(str(exc))
        raise DataError(f"{what} is not a CIFAR batch pickle: {reason}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, bytes) for k in obj):
        kind = "a numpy object" if isinstance(obj, (_InertCall, _InertGlobal)) else type(obj).__name__
        raise DataError(f"{what} must hold a dict with bytes keys, got {kind}")
    result: dict[bytes, Any] = {}
    for key, value in obj.items():
        if isinstance(value, _InertCall):
            value = _array_from_record(value, f"{what}: {_one_line(key.decode('latin-1'))}")
        result[key] = value
    if _holds_inert(list(result.values())):
        raise DataError(f"{what} is not a CIFAR batch pickle: numpy objects may only be top-level arrays")
    return result


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (N, 32, 32, 3) uint8, NHWC
    labels: np.ndarray  # (N,) uint8 class indices 0..len(class_names) - 1
    class_names: tuple[str, ...]  # from the archive's meta member


def parse_batch(obj: dict[bytes, Any], what: str, layout: Layout, class_names: tuple[str, ...]) -> Batch:
    """Return the images (NHWC uint8) and the layout's labels of one unpickled batch dict, after checking both."""
    for key in (b"data", layout.label_key):
        if key not in obj:
            raise DataError(f"{what} has no {key!r} entry")
    data, labels = obj[b"data"], obj[layout.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{what}: data must be a uint8 array of shape (N, {PIXELS}), got {dtype} {shape}")
    # Plain ints only: a bool is an int to Python, and numpy would wrap a huge int around.
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"{what}: labels must be a list of integers")
    if len(labels) != len(data):
        raise DataError(f"{what}: {len(labels)} labels for {len(data)} images")
    bad = next((v for v in labels if not 0 <= v < layout.num_classes), None)
    if bad is not None:
        raise DataError(f"{what}: {_label_word(layout)} must be in 0..{layout.num_classes - 1}, got {_shown(bad)}")
    # Each row holds the R, G and B planes one after another, each 32x32 row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Batch(np.ascontiguousarray(images), np.array(labels, dtype=np.uint8), class_names)


def _label_word(layout: Layout) -> str:
    return layout.label_key.decode()  # labels, fine_labels or coarse_labels, as the pickle names them


def parse_meta(obj: dict[bytes, Any], layout: Layout) -> tuple[str, ...]:
    """Return the class names in an unpickled meta dict, after checking them: CIFAR-10's must be its ten
    known names in order; CIFAR-100's exactly 100 (fine) or 20 (coarse) usable names (see class_names_problem).
    Names pickled as bytes (Python 2's str) must be UTF-8."""
    what = f"{layout.meta}: {layout.names_key.decode()}"
    names = obj.get(layout.names_key)
    if names is None:
        raise DataError(f"{layout.meta} has no {layout.names_key!r} entry")
    if isinstance(names, list) and all(type(n) in (bytes, str) for n in names):
        try:
            names = [n.decode("utf-8") if type(n) is bytes else n for n in names]
        except UnicodeDecodeError:
            raise DataError(f"{what}: class names must be UTF-8 text") from None
    if layout.dataset == "cifar10":
        if names != list(CLASS_NAMES):
            raise DataError(f"{what} must be the 10 CIFAR-10 classes in order, got {_shown(names)}")
        return CLASS_NAMES
    problem = class_names_problem(names, layout.num_classes)
    if problem:
        raise DataError(f"{what} {problem}")
    return tuple(names)


# ---------------------------------------------------------------------------------------------------------
# The gzip-compressed tar stream.
#
# Read here rather than with `tarfile`: tarfile reads a GNU long name or a pax header of any size into
# memory before a caller sees it (1 GiB of name: 2.1 GB), expands sparse members to the size they claim,
# lets a later member of the same name win, and stops before the gzip trailer, so a bad CRC goes unseen.
# gzip.GzipFile is kept: read(n) never returns more than n bytes however well the data compresses, and
# it checks the CRC and length of each gzip member when the stream reaches it.

_ZERO_BLOCK = bytes(TAR_BLOCK)
_REGULAR_FILE = (b"0", b"\0")
_FOLDER = b"5"
_GNU_LONG_NAME = b"L"
_PAX_HEADER = b"x"
_PAX_GLOBAL_HEADER = b"g"
_REFUSED_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"K": "a GNU long link name (a link)",
    b"S": "a GNU sparse file",
    b"V": "a volume label",
    b"M": "a multi-volume continuation",
    b"D": "a GNU dump folder",
    b"N": "an old GNU long name",
}
_POSIX_MAGIC = b"ustar\x0000"  # magic and version of a POSIX header, whose prefix field extends the name
_OCTAL = re.compile(rb"[0-7]+")


class _Header(NamedTuple):
    name: str
    kind: bytes  # the typeflag byte
    size: int  # bytes of data that follow, before padding to TAR_BLOCK


class _TarStream:
    """The decompressed bytes of a gzip file, read in chunks of at most READ_CHUNK_BYTES and counted against
    MAX_TOTAL_BYTES before they are read."""

    def __init__(self, gz: gzip.GzipFile, path: Path) -> None:
        self._gz = gz
        self.path = path
        self.position = 0  # decompressed bytes read so far

    def _reserve(self, size: int) -> None:
        if self.position + size > MAX_TOTAL_BYTES:
            raise DataError(
                f"{self.path} decompresses to more than {MAX_TOTAL_BYTES // 2**20} MiB, far more than CIFAR-10 "
                "or CIFAR-100 needs; refusing it"
            )

    def _read_up_to(self, size: int) -> bytes:
        chunk = self._gz.read(size)
        self.position += len(chunk)
        return chunk

    def read(self, size: int) -> bytes:
        """Return the next `size` bytes; raise DataError if the stream ends first."""
        self._reserve(size)
        chunks = []
        left = size
        while left:
            chunk = self._read_up_to(min(left, READ_CHUNK_BYTES))
            if not chunk:
                raise DataError(f"{self.path} is truncated or corrupt (the tar data ends inside a member)")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def skip(self, size: int) -> None:
        """Read and discard the next `size` bytes, a chunk at a time."""
        self._reserve(size)
        left = size
        while left:
            chunk = self._read_up_to(min(left, READ_CHUNK_BYTES))
            if not chunk:
                raise DataError(f"{self.path} is truncated or corrupt (the tar data ends inside a member)")
            left -= len(chunk)

    def next_block(self) -> bytes | None:
        """Return the next TAR_BLOCK bytes, or None where the stream ends cleanly between blocks."""
        start = self.position
        self._reserve(TAR_BLOCK)
        block = self._read_up_to(TAR_BLOCK)
        if not block and start:
            return None
        if len(block) < TAR_BLOCK:
            if not start:
                raise DataError(f"{self.path} is not a readable gzip-compressed tar archive (it holds no tar header)")
            raise DataError(f"{self.path} is truncated or corrupt (the tar data ends inside a header)")
        return block

    def drain_zeros(self) -> None:
        """Read the rest of the stream, which must be zeros: tar's padding after its end-of-archive block.

        Reading to the end makes gzip check its CRC and length; refusing anything but zeros refuses members
        hidden behind the end marker, which `tar --ignore-zeros` would read and this reader would not.
        """
        while chunk := self._read_up_to(READ_CHUNK_BYTES):
            if chunk.count(0) != len(chunk):
                raise DataError(f"{self.path} is truncated or corrupt (data after the tar end-of-archive block)")
            self._reserve(0)


def _number_field(field: bytes, where: str) -> int:
    """Return the value of a tar number field: octal text, or GNU base-256 for sizes of 8 GiB and more."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not _OCTAL.fullmatch(text):
        raise DataError(f"{where}: a tar header holds {_shown(field)} where a number belongs")
    return int(text, 8)


def _text_field(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_header(block: bytes, stream: _TarStream) -> _Header:
    """Return the name, typeflag and data size in a tar header block, after checking its checksum."""
    where = f"{stream.path} is truncated or corrupt (byte {stream.position - TAR_BLOCK} of the tar data)"
    if stream.position == TAR_BLOCK:  # the first header: a gzip file of something else fails here
        where = f"{stream.path} is not a readable gzip-compressed tar archive (no tar header at its start)"
    stored = _number_field(block[148:156], where)
    # The checksum is the sum of the header's bytes with its own field read as spaces, unsigned or signed.
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 0x20
    signed = unsigned - 256 * (sum(b >= 128 for b in block[:148]) + sum(b >= 128 for b in block[156:]))
    if stored not in (unsigned, signed):
        raise DataError(f"{where}: tar header checksum mismatch")
    name = _text_field(block[0:100])
    if block[257:265] == _POSIX_MAGIC and block[345]:
        name = f"{_text_field(block[345:500])}/{name}"
    return _Header(name, block[156:157], _number_field(block[124:136], where))


def _read_extension(stream: _TarStream, header: _Header, what: str) -> bytes:
    """Return the data of a GNU long name or pax header, refused past MAX_HEADER_BYTES before it is read."""
    if header.size > MAX_HEADER_BYTES:
        raise DataError(
            f"{stream.path} has {what} of {header.size} bytes, more than the {MAX_HEADER_BYTES // 2**10} KiB "
            "allowed; refusing the archive"
        )
    data = stream.read(header.size)
    stream.skip(-header.size % TAR_BLOCK)
    return data


def _pax_records(data: bytes, stream: _TarStream) -> dict[str, str]:
    """Return the `key=value` records of a pax header; raise DataError if they are malformed."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position]:  # NULs may pad the end
        space = data.find(b" ", position)
        length_text = data[position:space]
        # At most 20 ASCII digits: int() refuses over 4,300 digits with a ValueError (a traceback).
        if space < 0 or not re.fullmatch(rb"[0-9]{1,20}", length_text):
            raise DataError(f"{stream.path} is truncated or corrupt (a malformed pax header)")
        record = data[position : position + int(length_text)]
        key, equals, value = record[len(length_text) + 1 :].partition(b"=")
        if not equals or not record.endswith(b"\n"):
            raise DataError(f"{stream.path} is truncated or corrupt (a malformed pax header)")
        records[key.decode("utf-8", "surrogateescape")] = value[:-1].decode("utf-8", "surrogateescape")
        position += len(record)
    return records


def _member_path(name: str) -> str:
    """Return a member name as a plain relative path ('./a//b/' -> 'a/b'); refuse one that leaves its folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"archive member {_shown(name)} points outside the archive folder; refusing the archive")
    return str(path)  # PurePosixPath drops '.' parts and repeated and trailing slashes


def _read_tar(
    stream: _TarStream, wanted: set[str], max_member_bytes: int, metas: frozenset[str] = frozenset()
) -> dict[str, bytes]:
    """Return {member path: contents} for the wanted members, after reading the stream to its end.

    Every header is checked, the unread members' too; the others' data is read and discarded. A member over
    `max_member_bytes`, or a meta member (`metas`) over MAX_META_BYTES, is refused at its header.
    """
    found: dict[str, bytes] = {}
    seen: set[str] = set()
    long_name: str | None = None  # from a GNU long-name header, for the next member
    pax: dict[str, str] = {}  # from a pax header, for the next member
    while True:
        block = stream.next_block()
        if block is None:  # the stream ended without an end-of-archive block, as tarfile also accepts
            return found
        if block == _ZERO_BLOCK:
            stream.drain_zeros()
            return found
        header = _parse_header(block, stream)
        if header.kind == _GNU_LONG_NAME:
            long_name = _text_field(_read_extension(stream, header, "a GNU long name"))
            continue
        if header.kind in (_PAX_HEADER, _PAX_GLOBAL_HEADER):
            records = _pax_records(_read_extension(stream, header, "a pax header"), stream)
            if any(key.startswith("GNU.sparse.") for key in records):
                shown = _shown(records.get("GNU.sparse.name", records.get("path", header.name)))
                raise DataError(
                    f"archive member {shown} is a GNU sparse file; only regular files and folders are read, "
                    "refusing the archive"
                )
            if header.kind == _PAX_GLOBAL_HEADER:
                if "path" in records or "size" in records:
                    raise DataError(f"{stream.path} has a global pax header that renames or resizes members")
                continue
            pax = records
            continue

        name = pax.get("path", long_name if long_name is not None else header.name)
        size = header.size
        if "size" in pax:
            if not re.fullmatch(r"[0-9]{1,20}", pax["size"], re.ASCII):  # str.isdigit() takes "²" too
                raise DataError(f"{stream.path} is truncated or corrupt (a pax size of {_shown(pax['size'])})")
            size = int(pax["size"])
        long_name, pax = None, {}
        path = _member_path(name)
        if len(seen) >= MAX_MEMBERS:
            raise DataError(
                f"{stream.path} has more than {MAX_MEMBERS} members; refusing it (the official archives have 8 and 5)"
            )
        is_folder = header.kind == _FOLDER or (header.kind == b"\0" and name.endswith("/"))  # V7 tar's folders
        if not is_folder and header.kind not in _REGULAR_FILE:
            kind = _REFUSED_KINDS.get(header.kind, f"of unknown type {_shown(header.kind)}")
            raise DataError(
                f"archive member {_shown(name)} is {kind}; only regular files and folders are read, "
                "refusing the archive"
            )
        if not is_folder and name.endswith("/"):
            raise DataError(
                f"archive member {_shown(name)} is a regular file with a folder's name; refusing the archive"
            )
        if path in seen:
            raise DataError(f"{stream.path} has two members named {_shown(path)}; refusing the archive")
        seen.add(path)
        if is_folder:
            if size:
                raise DataError(f"archive folder {_shown(name)} claims {size} bytes of data; refusing the archive")
            continue
        limit, kind = (MAX_META_BYTES, "a meta member") if path in metas else (max_member_bytes, "a member")
        if size > limit:
            raise DataError(
                f"archive member {_shown(name)} is {size} bytes, more than the {limit // 2**20} MiB "
                f"{kind} may have; refusing the archive"
            )
        if path in wanted:
            found[path] = stream.read(size)
            stream.skip(-size % TAR_BLOCK)
        else:
            stream.skip(size + -size % TAR_BLOCK)


def _read_members(
    path: Path, wanted: set[str], max_member_bytes: int, metas: frozenset[str] = frozenset()
) -> dict[str, bytes]:
    """Return {member path: contents} for the wanted members of the gzip-compressed tar at `path`.

    The whole file is read and checked, to its gzip CRC and length, before anything is returned.
    """
    # Only a regular file: opening a FIFO would block forever and a device such as /dev/zero never ends.
    require_regular_file(path, "archive")
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"archive {path} not found") from None
    except OSError as exc:
        raise DataError(f"cannot read archive {path}: {exc.strerror or exc}") from None
    with raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        stream = _TarStream(gz, path)
        try:
            return _read_tar(stream, wanted, max_member_bytes, metas)
        except gzip.BadGzipFile as exc:
            if stream.position == 0:
                raise DataError(f"{path} is not a readable gzip-compressed tar archive ({exc})") from None
            raise DataError(f"{path} is truncated or corrupt ({exc})") from None
        except (EOFError, zlib.error, OSError) as exc:
            raise DataError(f"{path} is truncated or corrupt ({exc})") from None


def _read_layout_members(path: Path, layout: Layout, members: tuple[str, ...]) -> dict[str, bytes]:
    """Return {member name: bytes} for the named members of `layout` and its meta member, all present."""
    wanted = {f"{layout.folder}/{name}" for name in (*members, layout.meta)}
    found = _read_members(path, wanted, layout.max_member_bytes, frozenset({f"{layout.folder}/{layout.meta}"}))
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"{path} has no member {missing[0]} (dataset.name {layout.dataset} expects the {layout.folder}/ layout)"
        )
    meta = found.pop(f"{layout.folder}/{layout.meta}")
    return {layout.meta: meta, **{name[len(layout.folder) + 1 :]: data for name, data in found.items()}}


def read_archive(path: Path, batches: tuple[str, ...] | None = None, layout: Layout = CIFAR10) -> dict[str, Any]:
    """Return {batch name: Batch} for the named batches of `layout` (default: all of them), and 'label_names'.

    Members are read in memory; nothing is extracted to disk. Every member name is checked,
    the unread ones too, and the whole archive is read and checked before any pickle is loaded.
    """
    batches = (*layout.train, layout.test) if batches is None else batches
    members = _read_layout_members(path, layout, batches)
    names = parse_meta(safe_unpickle(members.pop(layout.meta), layout.meta), layout)
    result: dict[str, Any] = {"label_names": names}
    for name in dict.fromkeys(batches):
        # pop: each batch's pickle is freed once its arrays are built
        result[name] = parse_batch(safe_unpickle(members.pop(name), name), name, layout, names)
    return result


def load_train(path: Path, layout: Layout = CIFAR10) -> Batch:
    """Return the training images of the archive at `path` (CIFAR-10: its five batches, joined in order)."""
    batches = read_archive(path, layout.train, layout)
    train = [batches[name] for name in layout.train]
    return Batch(
        np.concatenate([b.images for b in train]), np.concatenate([b.labels for b in train]), batches["label_names"]
    )


def load_test(path: Path, layout: Layout = CIFAR10) -> Batch:
    """Return the test batch alone (evaluation and predictions need no training images)."""
    return read_archive(path, (layout.test,), layout)[layout.test]


def load_test_sets(path: Path) -> list[Batch]:
    """Return the test images of an archive of either layout, once per kind of labels it has: CIFAR-10's
    batch, or CIFAR-100's with fine labels, then with coarse ones. For cifar10-predict, which knows the model
    but not the data set: it picks the one whose class names are the model's."""
    wanted = {f"{layout.folder}/{name}" for layout in LAYOUTS.values() for name in (layout.test, layout.meta)}
    metas = frozenset(f"{layout.folder}/{layout.meta}" for layout in LAYOUTS.values())
    found = _read_members(path, wanted, MAX_CIFAR100_MEMBER_BYTES, metas)
    folders = {layout.folder for layout in LAYOUTS.values() if f"{layout.folder}/{layout.test}" in found}
    if len(folders) != 1:
        raise DataError(
            f"{path} must hold the test batch of exactly one data set (cifar-10-batches-py/test_batch or "
            f"cifar-100-python/test), found {len(folders)}"
        )
    layouts = [layout for layout in LAYOUTS.values() if layout.folder in folders]
    meta_name = f"{layouts[0].folder}/{layouts[0].meta}"
    if meta_name not in found:
        raise DataError(f"{path} has no member {meta_name}")
    meta = safe_unpickle(found.pop(meta_name), layouts[0].meta)
    test = safe_unpickle(found.pop(f"{layouts[0].folder}/{layouts[0].test}"), layouts[0].test)
    return [parse_batch(test, layout.test, layout, parse_meta(meta, layout)) for layout in layouts]
