"""A hostile `cifar-10-python.tar.gz`: pickles that would corrupt memory, bombs, odd tar members, damaged gzip.

Every payload is built here, from bytes. The ones that could take the machine down (memory-unsafe pickles,
bombs, sparse members, huge headers) run in a subprocess under a 1 GiB address-space limit, and must end
with exit status 1 and one `error:` line, never a signal or a traceback.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from cifar10.archive import ALLOWED_GLOBALS, MAX_MEMBERS, layout_of, read_archive, safe_unpickle
from cifar10.errors import DataError
from tests.conftest import (
    CIFAR100_TEST,
    CIFAR100_TRAIN,
    FINE_NAMES,
    PER_BATCH,
    ROOT,
    TEST_IMAGES,
    run_limited,
    synthetic_batches,
    synthetic_cifar100,
    write_archive,
)

GiB = 2**30
MiB = 2**20
BATCH_1 = "cifar-10-batches-py/data_batch_1"

# ---------------------------------------------------------------------------------------------------------
# Pickles written opcode by opcode, so that a test can say exactly what numpy would be asked to do.


class Opcodes(bytes):
    """Pickle opcodes that push one object; they nest inside the values given to `opcodes`."""


def opcodes(value: object) -> Opcodes:
    """Return protocol-2 opcodes that push `value`: Opcodes as they are, containers item by item, and
    anything else as pickle writes it (without memo entries, so fragments can be concatenated)."""
    if isinstance(value, Opcodes):
        return value
    if isinstance(value, tuple):
        return Opcodes(b"(" + b"".join(opcodes(v) for v in value) + b"t")
    if isinstance(value, list):
        return Opcodes(b"](" + b"".join(opcodes(v) for v in value) + b"e")
    if isinstance(value, dict):
        return Opcodes(b"}(" + b"".join(opcodes(k) + opcodes(v) for k, v in value.items()) + b"u")
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.fast = True  # no memo: PUT indices would clash between fragments
    pickler.dump(value)
    return Opcodes(buffer.getvalue()[2:-1])  # without PROTO and STOP


def global_(module: str, name: str) -> Opcodes:
    return Opcodes(b"c" + f"{module}\n{name}\n".encode())


def call(module: str, name: str, *args: object) -> Opcodes:
    """Opcodes for `module.name(*args)` (REDUCE)."""
    return Opcodes(global_(module, name) + opcodes(args) + b"R")


def build(target: object, state: object) -> Opcodes:
    """Opcodes for `target.__setstate__(state)` (BUILD)."""
    return Opcodes(opcodes(target) + opcodes(state) + b"b")


def memo_put(value: object, index: int) -> Opcodes:
    return Opcodes(opcodes(value) + b"q" + bytes([index]))


def memo_get(index: int) -> Opcodes:
    return Opcodes(b"h" + bytes([index]))


def pickled(value: object) -> bytes:
    return b"\x80\x02" + opcodes(value) + b"."


def numpy_dtype(code: str, state: tuple) -> Opcodes:
    return build(call("numpy", "dtype", code, False, True), state)


UINT8 = numpy_dtype("u1", (3, "|", None, None, None, -1, -1, 0))  # what numpy writes for dtype('uint8')
OBJECT = numpy_dtype("O8", (3, "|", None, None, None, -1, -1, 63))
OBJECT_FIELD_STATE = (3, "|", None, ("f",), {"f": (OBJECT, 0)}, 8, 1, 27)  # dtype([('f', 'O')])
# A 1-byte void dtype that claims a (3072,) uint8 subarray: numpy turns an array of it into uint8 (n, 3072).
SUBARRAY_V1 = numpy_dtype("V1", (3, "|", (UINT8, (3072,)), None, None, -1, 1, 0))


def numpy_array(shape: tuple, dtype: Opcodes, pixels: object, fortran_order: object = False) -> Opcodes:
    """Opcodes for an array the way numpy pickles one: _reconstruct(ndarray, (0,), b'b') + BUILD."""
    empty = call("numpy._core.multiarray", "_reconstruct", global_("numpy", "ndarray"), (0,), b"b")
    return build(empty, (1, shape, dtype, fortran_order, pixels))


def batch_pickle(data: Opcodes, rows: int = PER_BATCH, after: dict | None = None) -> bytes:
    """A data_batch pickle with `data` as its pixels and `rows` labels; `after` adds entries after data."""
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [i % 10 for i in range(rows)], b"data": data}
    return pickled({**batch, **(after or {})})


def archive_with(path: Path, member: str, payload: bytes) -> Path:
    """Write the synthetic archive with one member's bytes replaced by `payload`; return its path."""
    write_archive(path, synthetic_batches(), extra={f"cifar-10-batches-py/{member}": payload})
    return path


def test_the_opcode_builder_writes_what_numpy_reads():
    pixels = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    rebuilt = pickle.loads(pickled(numpy_array((2, 3072), UINT8, pixels.tobytes())))
    assert rebuilt.dtype == np.uint8 and np.array_equal(rebuilt, pixels)


# ---------------------------------------------------------------------------------------------------------
# The unpickler: what it resolves, and that numpy never sees the archive's data.


def test_the_allowed_globals_are_exactly_numpys_array_parts_and_codecs_encode():
    assert ALLOWED_GLOBALS == {
        ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
        ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
        ("numpy", "ndarray"): "ndarray",
        ("numpy", "dtype"): "dtype",
        ("_codecs", "encode"): "encode",
    }


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("builtins", "getattr"),  # issue 12 planted this one in the allow-list
        ("builtins", "eval"),
        ("__builtin__", "bytes"),
        ("os", "system"),
        ("posix", "system"),
        ("_codecs", "decode"),
        ("copyreg", "_reconstructor"),
        ("numpy", "frombuffer"),
        ("numpy", "load"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # what pickle protocol 5 writes for an array
    ],
)
def test_any_other_global_is_refused_whichever_opcode_names_it(module: str, name: str):
    message = f"data_batch_1 is not a CIFAR batch pickle: refused to load {module}.{name}"
    with pytest.raises(DataError) as by_global:
        safe_unpickle(pickled({b"data": call(module, name, 1)}), "data_batch_1")
    assert str(by_global.value) == message
    stack_global = b"\x80\x04" + opcodes(module) + opcodes(name) + b"\x93" + opcodes((1,)) + b"R."
    with pytest.raises(DataError) as by_stack_global:
        safe_unpickle(stack_global, "data_batch_1")
    assert str(by_stack_global.value) == message


@pytest.mark.parametrize(
    ("module", "name", "shown"),
    [
        ("evil\tmod", "x", "evil\\tmod.x"),  # a control character: escaped, the message stays one line
        # The reason after "pickle: " is at most 200 characters: "refused to load os." and 181 more, whole;
        ("os", "n" * 181, "os." + "n" * 181),
        ("os", "n" * 182, "os." + "n" * 178 + "..."),  # one more: cut to 197 and "..."
    ],
    ids=["control_character", "reason_of_200", "reason_of_201"],
)
def test_a_refused_global_is_named_escaped_and_cut(module: str, name: str, shown: str):
    # The GLOBAL opcode: module and name are lines of the pickle, whatever the pickle's author wrote there.
    with pytest.raises(DataError) as info:
        safe_unpickle(b"c" + module.encode() + b"\n" + name.encode() + b"\n.", "data_batch_1")
    assert str(info.value) == f"data_batch_1 is not a CIFAR batch pickle: refused to load {shown}"


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_numpys_own_pickles_are_read_without_calling_numpy(protocol: int, monkeypatch):
    import numpy._core.multiarray

    def must_not_run(*args: object) -> None:
        raise AssertionError("numpy's _reconstruct ran on archive data")

    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 3072), dtype=np.uint8)
    payload = pickle.dumps({b"data": pixels, b"labels": [1, 2, 3, 4, 5]}, protocol=protocol)
    monkeypatch.setattr(numpy._core.multiarray, "_reconstruct", must_not_run)
    batch = safe_unpickle(payload, "b")
    assert batch[b"data"].dtype == np.uint8 and np.array_equal(batch[b"data"], pixels)
    assert not batch[b"data"].flags.writeable  # np.frombuffer over the pickle's (immutable) pixel bytes
    assert batch[b"labels"] == [1, 2, 3, 4, 5]


def test_a_python_2_pickle_of_the_official_2009_layout_is_read(tmp_path: Path):
    # What cPickle wrote in 2009 (numpy 1.x, Python 2): str where Python 3 has bytes, so SHORT_BINSTRING and
    # BINSTRING, `numpy.core.multiarray`, and dtype('u1', 0, 1) with ints for the flags.
    def py2_str(text: bytes) -> Opcodes:
        return Opcodes((b"U" + bytes([len(text)]) if len(text) < 256 else b"T" + struct.pack("<i", len(text))) + text)

    source = synthetic_batches()["data_batch_1"]
    dtype = build(call("numpy", "dtype", py2_str(b"u1"), 0, 1), (3, py2_str(b"|"), None, None, None, -1, -1, 0))
    empty = call("numpy.core.multiarray", "_reconstruct", global_("numpy", "ndarray"), (0,), py2_str(b"b"))
    array = build(empty, (1, (PER_BATCH, 3072), dtype, False, py2_str(source[b"data"].tobytes())))
    batch = {py2_str(b"data"): array, py2_str(b"labels"): source[b"labels"], py2_str(b"batch_label"): py2_str(b"x")}
    path = archive_with(tmp_path / "py2.tar.gz", "data_batch_1", pickled(batch))
    images = read_archive(path, ("data_batch_1",))["data_batch_1"].images
    assert np.array_equal(images, source[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# The three pickles of issue 8 that the old unpickler handed to numpy, and what each did there.
MEMORY_UNSAFE = {
    # A V8 dtype rebuilt, after the array that uses it, with an object field: the array's 8 bytes become a
    # PyObject pointer, 0x4141414141414140. Freeing the array dereferences it: SIGSEGV.
    "object_field_over_raw_pointer": (
        batch_pickle(
            numpy_array(
                (PER_BATCH,),
                build(memo_put(call("numpy", "dtype", "V8", False, True), 9), (3, "|", None, None, None, 8, 1, 0)),
                struct.pack("<Q", 0x4141414141414140) * PER_BATCH,
            ),
            after={b"x": build(memo_get(9), OBJECT_FIELD_STATE)},
        ),
        "data_batch_1 is not a CIFAR batch pickle: refused a second BUILD of numpy.dtype",
    ),
    # numpy.ndarray((n,), <V1 with a (3072,) uint8 subarray>, 1-byte buffer): uint8 (n, 3072) over 1 byte,
    # so every check passes and n * 3072 bytes of process memory become images.
    "subarray_over_one_byte": (
        batch_pickle(call("numpy", "ndarray", (PER_BATCH,), SUBARRAY_V1, b"\x01")),
        "data_batch_1: data must be a uint8 array of shape (N, 3072), got numpy.ndarray((20,), numpy.dtype(...), "
        "b'\\x01') instead of a pickled array",
    ),
    # numpy.ndarray((n, 3072), 'u1') with no buffer: uninitialised memory as images.
    "no_buffer": (
        batch_pickle(call("numpy", "ndarray", (PER_BATCH, 3072), "u1")),
        "data_batch_1: data must be a uint8 array of shape (N, 3072), got numpy.ndarray((20, 3072), 'u1') "
        "instead of a pickled array",
    ),
}
PLAIN_UNPICKLE = """
import pickle, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
data = pickle.loads(Path(sys.argv[1]).read_bytes(), encoding="bytes")[b"data"]
print(data.dtype, data.shape, "buffer", None if data.base is None else len(data.base), flush=True)
"""
READ_ARCHIVE = """
import atexit, sys
from pathlib import Path
# VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would count the forking pytest process's memory.
peak = lambda: next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
atexit.register(lambda: print("peak_rss_kib", peak()))
from cifar10.archive import read_archive
from cifar10.errors import run_stage
run_stage(lambda: read_archive(Path(sys.argv[1])))
"""


def refusal_in_subprocess(path: Path) -> tuple[str, int]:
    """Read the archive at `path` in a Python limited to 1 GiB; return its one stderr line and peak RSS in KiB.

    Asserts what a user must see: exit status 1 (not a signal, not a crash), one `error:` line, no traceback.
    """
    result = run_limited([sys.executable, "-c", READ_ARCHIVE, str(path)], cwd=ROOT, memory_mb=1024)
    stderr = result.stderr.decode()
    assert result.returncode == 1, (result.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0], int(result.stdout.split()[-1])


@functools.cache
def reader_start_kib() -> int:
    """Peak RSS in KiB of the same reader process refusing a 9-byte file: what its imports cost here (28 MiB
    in this project's environment; more under `make mutation`, whose mutated modules import mutmut)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.tar.gz"
        path.write_bytes(gzip.compress(b"not a tar"))
        return refusal_in_subprocess(path)[1]


def test_memory_unsafe_pickle_payloads_are_live_under_a_plain_unpickler(tmp_path: Path):
    """The control for the test below: each payload does its harm when numpy gets to see it."""
    outcomes = {}
    for name, (payload, _) in MEMORY_UNSAFE.items():
        (tmp_path / name).write_bytes(payload)
        result = run_limited([sys.executable, "-c", PLAIN_UNPICKLE, str(tmp_path / name)], cwd=tmp_path)
        outcomes[name] = (result.returncode, result.stdout.decode().strip())
    assert outcomes["object_field_over_raw_pointer"][0] == -signal.SIGSEGV
    assert outcomes["subarray_over_one_byte"] == (0, "uint8 (20, 3072) buffer 1")
    assert outcomes["no_buffer"] == (0, "uint8 (20, 3072) buffer None")


@pytest.mark.parametrize("name", sorted(MEMORY_UNSAFE))
def test_memory_unsafe_pickles_are_refused_before_numpy_sees_them(tmp_path: Path, name: str):
    payload, message = MEMORY_UNSAFE[name]
    line, _ = refusal_in_subprocess(archive_with(tmp_path / "a.tar.gz", "data_batch_1", payload))
    assert line == f"error: {message}"


RECONSTRUCT = global_("numpy._core.multiarray", "_reconstruct")
PIXELS_OF_20 = bytes(PER_BATCH * 3072)


def reconstruct(*args: object) -> Opcodes:
    """Opcodes for numpy's `_reconstruct(*args)`, the first step of an array's pickle."""
    return Opcodes(RECONSTRUCT + opcodes(args) + b"R")


def array_state(state: object) -> Opcodes:
    """An array record as numpy starts one, then BUILD with `state` (numpy writes (1, shape, dtype, False, pixels))."""
    return build(reconstruct(global_("numpy", "ndarray"), (0,), b"b"), state)


# Each record, and what the refusal says after "got ": the whole of it, so a changed check or message shows.
ARRAY_RECORDS = {
    "fortran_order": (numpy_array((PER_BATCH, 3072), UINT8, PIXELS_OF_20, True), "a Fortran-order array"),
    "fortran_order_1": (numpy_array((PER_BATCH, 3072), UINT8, PIXELS_OF_20, 1), "a Fortran-order array"),  # Py 2
    "short_buffer": (
        numpy_array((PER_BATCH, 3072), UINT8, bytes(100)),
        "100 bytes of pixels for 20 rows (61440 expected)",
    ),
    "no_buffer": (numpy_array((PER_BATCH, 3072), UINT8, None), "pixels as NoneType instead of bytes"),
    "list_buffer": (numpy_array((PER_BATCH, 3072), UINT8, [0] * 3), "pixels as list instead of bytes"),
    "float32": (
        numpy_array((PER_BATCH, 3072), numpy_dtype("f4", (3, "<", None, None, None, -1, -1, 0)), bytes(4)),
        "dtype 'f4'",
    ),
    "dtype_as_str": (numpy_array((PER_BATCH, 3072), "u1", PIXELS_OF_20), "a dtype given as str"),
    "subarray_dtype": (numpy_array((PER_BATCH, 1), SUBARRAY_V1, bytes(PER_BATCH)), "a dtype with a subarray"),
    # A dtype state of 5 items is checked for a subarray and fields too (numpy writes 8, older numpy fewer).
    "subarray_in_a_state_of_5": (
        numpy_array((PER_BATCH, 1), numpy_dtype("V1", (3, "|", (UINT8, (3072,)), None, None)), bytes(PER_BATCH)),
        "a dtype with a subarray",
    ),
    "object_field_dtype": (
        numpy_array((PER_BATCH,), numpy_dtype("V8", OBJECT_FIELD_STATE), bytes(8 * PER_BATCH)),
        "a dtype with fields (a structured or object dtype)",
    ),
    "field_names_alone": (  # names without the fields dict: still a structured dtype
        numpy_array((PER_BATCH, 3072), numpy_dtype("u1", (3, "|", None, ("f",), None, -1, -1, 0)), PIXELS_OF_20),
        "a dtype with fields (a structured or object dtype)",
    ),
    "uint8_with_odd_state": (
        numpy_array((PER_BATCH, 3072), numpy_dtype("u1", (3, "|", None, None, None, 1, 1, 16)), PIXELS_OF_20),
        "a dtype pickled as numpy never writes uint8: numpy.dtype('u1', False, True), "
        "state (3, '|', None, None, None, 1, ...)",
    ),
    "dtype_without_build": (
        numpy_array((PER_BATCH, 3072), call("numpy", "dtype", "u1", False, True), PIXELS_OF_20),
        "a dtype pickled as numpy never writes uint8: numpy.dtype('u1', False, True), state none (no BUILD)",
    ),
    "3000_columns": (numpy_array((PER_BATCH, 3000), UINT8, bytes(PER_BATCH * 3000)), "shape (20, 3000)"),
    "3_dims": (numpy_array((PER_BATCH, 3072, 1), UINT8, PIXELS_OF_20), "shape (20, 3072, 1)"),
    "bool_rows": (numpy_array((True, 3072), UINT8, bytes(3072)), "shape (True, 3072)"),
    "negative_rows": (numpy_array((-1, 3072), UINT8, bytes(3072)), "shape (-1, 3072)"),
    "reconstruct_with_shape": (
        reconstruct(global_("numpy", "ndarray"), (PER_BATCH,), SUBARRAY_V1),
        "numpy._reconstruct(ndarray, (20,), numpy.dtype(...)) instead of (ndarray, (0,), b'b')",
    ),
    "reconstruct_with_one_row": (  # the right typecode, the wrong shape
        reconstruct(global_("numpy", "ndarray"), (1,), b"b"),
        "numpy._reconstruct(ndarray, (1,), b'b') instead of (ndarray, (0,), b'b')",
    ),
    "reconstruct_with_false_rows": (  # False == 0 to Python, not to the check
        reconstruct(global_("numpy", "ndarray"), (False,), b"b"),
        "numpy._reconstruct(ndarray, (False,), b'b') instead of (ndarray, (0,), b'b')",
    ),
    "reconstruct_of_dtype": (
        reconstruct(global_("numpy", "dtype"), (0,), b"b"),
        "numpy._reconstruct of something other than numpy.ndarray",
    ),
    "reconstruct_without_build": (
        reconstruct(global_("numpy", "ndarray"), (0,), b"b"),
        "an array with no state (no shape, dtype or pixel bytes)",
    ),
    "state_version_2": (
        array_state((2, (PER_BATCH, 3072), UINT8, False, bytes(2))),
        "an array state numpy never writes: (2, (20, 3072), numpy.dtype(...), False, b'\\x00\\x00')",
    ),
    "state_as_a_list": (  # unpacks like the tuple numpy writes, so its type must be checked
        array_state([1, (1, 3072), UINT8, False, bytes(2)]),
        "an array state numpy never writes: [1, (1, 3072), numpy.dtype(...), False, b'\\x00\\x00']",
    ),
    "state_of_4": (
        array_state((1, (PER_BATCH, 3072), UINT8, False)),
        "an array state numpy never writes: (1, (20, 3072), numpy.dtype(...), False)",
    ),
    "bare_dtype": (UINT8, "numpy.dtype('u1', False, True) instead of a pickled array"),
}


@pytest.mark.parametrize("name", ARRAY_RECORDS)
def test_array_records_other_than_numpys_uint8_rows_are_refused(name: str):
    data, message = ARRAY_RECORDS[name]
    with pytest.raises(DataError) as info:
        safe_unpickle(batch_pickle(data), "data_batch_1")
    assert str(info.value) == f"data_batch_1: data must be a uint8 array of shape (N, 3072), got {message}"


def test_python_2s_integer_flags_are_read_like_booleans():
    # Python 2 wrote 0 for False in the array's fortran_order flag, as in the dtype's (see the 2009 layout test).
    pixels = np.arange(PER_BATCH * 3072).astype(np.uint8)
    batch = safe_unpickle(batch_pickle(numpy_array((PER_BATCH, 3072), UINT8, pixels.tobytes(), 0)), "data_batch_1")
    assert np.array_equal(batch[b"data"], pixels.reshape(PER_BATCH, 3072))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (pickled({b"data": global_("numpy", "ndarray")}), "numpy objects may only be top-level arrays"),
        (pickled({b"x": [numpy_array((1, 3072), UINT8, bytes(3072))]}), "numpy objects may only be top-level arrays"),
        (pickled({b"x": build(b"x", {"a": 1})}), "refused BUILD on a bytes"),
        (pickled({b"x": Opcodes(opcodes(b"y") + opcodes((1,)) + b"R")}), "refused a call of a bytes"),
        (
            pickled({b"x": call("_codecs", "encode", "data", "utf-16")}),
            "refused _codecs.encode('data', 'utf-16'): only (str, 'latin1') makes bytes",
        ),
        (
            pickled({b"x": Opcodes(global_("numpy", "dtype") + opcodes(("u1",)) + b"\x81")}),
            "refused pickle opcode NEWOBJ",
        ),
        (pickled({b"x": Opcodes(b"(" + opcodes("u1") + b"inumpy\ndtype\n")}), "refused pickle opcode INST"),
        (b"\x80\x05\x96" + struct.pack("<Q", 64 * GiB) + b".", "refused pickle opcode BYTEARRAY8"),
        (b"\x80\x02]" + b"]a" * 600_000 + b".", "more than 1,000,000 pickle operations"),
        (b"\x80\x02}", "it ends before its STOP opcode"),
        (b"\x80\x02\xfe.", "refused pickle opcode 0xfe"),  # no opcode at all: named by its byte
        (
            pickled({b"x": call("_codecs", "encode", "a", "latin1", "strict")}),
            "refused _codecs.encode('a', 'latin1', 'strict'): only (str, 'latin1') makes bytes",
        ),
        (
            pickled({b"x": call("_codecs", "encode", 1, "latin1")}),
            "refused _codecs.encode(1, 'latin1'): only (str, 'latin1') makes bytes",
        ),
        (
            pickled({b"x": call("_codecs", "encode", "\u0100", "latin1")}),
            "refused _codecs.encode of text that is not latin-1",
        ),
        (pickled({b"x": {b"y": global_("numpy", "ndarray")}}), "numpy objects may only be top-level arrays"),
    ],
    ids=[
        "bare_global",
        "array_in_a_list",
        "build_on_bytes",
        "call_of_bytes",
        "encode_utf16",
        "newobj",
        "inst",
        "bytearray8_of_64_gib",
        "1_200_000_opcodes",
        "no_stop",
        "unknown_opcode",
        "encode_of_3_arguments",
        "encode_of_an_int",
        "encode_beyond_latin_1",
        "array_in_a_nested_dict",
    ],
)
def test_other_unpickling_tricks_are_refused(payload: bytes, message: str):
    with pytest.raises(DataError) as info:
        safe_unpickle(payload, "data_batch_1")
    assert str(info.value) == f"data_batch_1 is not a CIFAR batch pickle: {message}"


def test_codecs_encode_makes_latin_1_bytes():
    # Python 2's pickles of bytes keys: _codecs.encode(text, 'latin1'), 'latin-1' spelled either way.
    keys = {call("_codecs", "encode", "caf\u00e9", "latin-1"): 1, call("_codecs", "encode", "x", "latin1"): 2}
    assert safe_unpickle(pickled(keys), "data_batch_1") == {b"caf\xe9": 1, b"x": 2}


def test_a_list_that_holds_itself_is_searched_once():
    # {b"x": a list appended to itself through the memo}: the search for numpy objects inside containers must
    # visit it once and end (a regression would loop, growing its list of containers to visit: hence the limit).
    looped = b"\x80\x02}(C\x01x]q\x00h\x00au."
    check = "import sys; from cifar10.archive import safe_unpickle; v = safe_unpickle(sys.stdin.buffer.read(), 'b')"
    result = run_limited([sys.executable, "-c", check + "[b'x']; print(v[0] is v)"], ROOT, timeout_s=30, stdin=looped)
    assert (result.returncode, result.stdout.decode()) == (0, "True\n"), result.stderr.decode()[-2000:]


def test_labels_must_be_plain_ints_in_range(tmp_path: Path):
    for labels, message in [
        ([True] * PER_BATCH, "data_batch_1: labels must be a list of integers"),
        ([1.0] * PER_BATCH, "data_batch_1: labels must be a list of integers"),
        ([2**70] * PER_BATCH, "data_batch_1: labels must be in 0..9, got 1180591620717411303424"),
        ([10**5000] * PER_BATCH, "data_batch_1: labels must be in 0..9, got a number too large to print"),
        ([-1] * PER_BATCH, "data_batch_1: labels must be in 0..9, got -1"),
    ]:
        members = synthetic_batches()
        members["data_batch_1"] = {**members["data_batch_1"], b"labels": labels}
        write_archive(tmp_path / "a.tar.gz", members)
        with pytest.raises(DataError) as info:
            read_archive(tmp_path / "a.tar.gz")
        assert str(info.value) == message


def test_pickle_memory_bombs_cost_nothing(tmp_path: Path):
    # LONG_BINPUT 2**31 - 1: CPython's C unpickler sizes its memo array by the index and zeroes it (16 GiB
    # here; 3 GB for 200,000,000). The reader's memo is a dict, so the pickle loads, and is refused for
    # what it lacks.
    memo_bomb = b"\x80\x02}r" + struct.pack("<I", 2**31 - 1) + b"."
    line, peak_kib = refusal_in_subprocess(archive_with(tmp_path / "memo.tar.gz", "data_batch_1", memo_bomb))
    assert line == "error: data_batch_1 has no b'data' entry"
    assert peak_kib < reader_start_kib() + 224 * 1024
    # A million opcodes that each make an object (a list, 56 bytes, from 1 byte of pickle) are refused.
    lists = b"\x80\x02" + b"]" * 1_500_000 + b"."
    line, peak_kib = refusal_in_subprocess(archive_with(tmp_path / "lists.tar.gz", "data_batch_1", lists))
    assert line == "error: data_batch_1 is not a CIFAR batch pickle: more than 1,000,000 pickle operations"
    assert peak_kib < reader_start_kib() + 480 * 1024


# ---------------------------------------------------------------------------------------------------------
# Tar and gzip, built by hand where tarfile would not write the payload.


def tar_header(name: str, size: int, kind: bytes = b"0", patch: dict[int, bytes] | None = None) -> bytes:
    """Return a 512-byte GNU tar header with these fields and bytes patched in at offsets, checksum fixed."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT)[-512:])
    for offset, value in (patch or {}).items():
        block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def plain_tar(
    skip: tuple[str, ...] = (), entries: list[tuple[tarfile.TarInfo, bytes]] = (), tar_format: int = tarfile.PAX_FORMAT
) -> bytes:
    """Return the uncompressed tar of the synthetic archive, without the members in `skip`, then `entries`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name, obj in synthetic_batches().items():
            if f"cifar-10-batches-py/{name}" not in skip:
                payload = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        for info, payload in entries:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def gzip_of(segments: list[tuple[bytes, int]]) -> bytes:
    """Return a gzip file of each segment's bytes repeated its count of times, with a valid CRC and length.

    After Z_FULL_FLUSH deflate starts afresh, so one compressed copy of a segment serves for all its
    repeats: 3 GiB of zeros, 1 MiB at a time, makes a 3 MB file without compressing 3 GiB.
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body, crc, size = [], 0, 0
    for data, times in segments:
        compressed = deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH)
        if times > 1:
            assert deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH) == compressed  # the same every time
        body.append(compressed * times)
        for _ in range(times):
            crc = zlib.crc32(data, crc)
        size += len(data) * times
    body.append(deflate.flush())
    header = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x02\xff"  # deflate, no flags, mtime 0, level 9, any OS
    return header + b"".join(body) + struct.pack("<II", crc, size % 2**32)


def test_the_gzip_builder_writes_what_gzip_reads():
    segments = [(b"head", 1), (b"\x00\x01" * 1000, 5), (b"tail", 1)]
    assert gzip.decompress(gzip_of(segments)) == b"head" + b"\x00\x01" * 5000 + b"tail"


def test_a_gzip_bomb_is_refused_at_the_member_header(tmp_path: Path):
    # A 3 MB file whose data_batch_1 expands to 3 GiB of zeros (the old reader held it all: 3.2 GB resident).
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip_of([(tar_header(BATCH_1, 3 * GiB), 1), (bytes(MiB), 3 * 1024), (plain_tar((BATCH_1,)), 1)]))
    assert bomb.stat().st_size < 4 * MiB
    line, peak_kib = refusal_in_subprocess(bomb)
    assert line == (
        f"error: archive member '{BATCH_1}' is 3221225472 bytes, more than the 128 MiB a member may have; "
        "refusing the archive"
    )
    assert peak_kib < reader_start_kib() + 96 * 1024  # streamed: never a member whole


def test_members_that_together_expand_too_far_are_refused_while_streaming(tmp_path: Path):
    # Five extra members of 120 MiB of zeros: each under the member cap, 600 MiB together. They are not
    # batches, so the reader reads and discards them, 1 MiB at a time, until the total cap.
    segments = []
    for i in range(5):
        segments += [(tar_header(f"cifar-10-batches-py/padding_{i}", 120 * MiB), 1), (bytes(MiB), 120)]
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip_of([*segments, (plain_tar(), 1)]))
    line, peak_kib = refusal_in_subprocess(bomb)
    assert line == (
        f"error: {bomb} decompresses to more than 512 MiB, far more than CIFAR-10 or CIFAR-100 needs; refusing it"
    )
    assert peak_kib < reader_start_kib() + 96 * 1024  # streamed: never a member whole


def pax_tar(entries: list[tuple[str, dict[str, str], bytes]]) -> bytes:
    """Return the synthetic archive's tar with entries (name, pax records, data) added, in pax format."""
    infos = []
    for name, records, payload in entries:
        info = tarfile.TarInfo(name)
        info.pax_headers = records
        infos.append((info, payload))
    return plain_tar(entries=infos)


def test_zeros_after_the_end_of_the_archive_count_against_the_cap(tmp_path: Path):
    # 2 GiB of zeros after the end-of-archive blocks (a 2 MB file): tar's padding, read 1 MiB at a time to
    # the gzip CRC, and refused at 512 MiB like any other decompressed bytes.
    bomb = tmp_path / "padded.tar.gz"
    bomb.write_bytes(gzip_of([(plain_tar(), 1), (bytes(MiB), 2048)]))
    line, peak_kib = refusal_in_subprocess(bomb)
    assert line == (
        f"error: {bomb} decompresses to more than 512 MiB, far more than CIFAR-10 or CIFAR-100 needs; refusing it"
    )
    assert peak_kib < reader_start_kib() + 96 * 1024  # streamed: never the padding whole


def _end_of_members(tar: bytes) -> int:
    """The offset of the end-of-archive blocks in an uncompressed tar: after the last member's padded data."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        last = reader.getmembers()[-1]
    return last.offset_data + -last.size % 512 + last.size


def test_a_tar_stream_that_ends_early_says_where(tmp_path: Path):
    tar = plain_tar()
    second_header = tar.index(b"cifar-10-batches-py/data_batch_2")  # the first member's data ends before it
    path = tmp_path / "short.tar.gz"
    no_header = f"{path} is not a readable gzip-compressed tar archive (it holds no tar header)"
    in_member = f"{path} is truncated or corrupt (the tar data ends inside a member)"
    for data, batches, message in [
        (b"", None, no_header),
        (tar[:100], None, no_header),
        (tar[: 512 + 100], None, in_member),  # data_batch_1's data, which is read
        (tar[: 512 + 100], ("test_batch",), in_member),  # the same, skipped
        (tar[: second_header + 100], None, f"{path} is truncated or corrupt (the tar data ends inside a header)"),
    ]:
        path.write_bytes(gzip.compress(data))
        with pytest.raises(DataError) as info:
            read_archive(path, batches)
        assert str(info.value) == message
    # Ending cleanly after a member, without the end-of-archive blocks, is read as tarfile reads it.
    path.write_bytes(gzip.compress(tar[: _end_of_members(tar)]))
    assert read_archive(path, ("test_batch",))["test_batch"].images.shape == (TEST_IMAGES, 32, 32, 3)


@pytest.mark.parametrize(
    "size_field",
    [
        b"\x80" + (3).to_bytes(11, "big"),  # GNU base-256, which tar writes for members of 8 GiB and more
        b"3\0\0\0\0\0\0\0\0\0\0\0",  # octal ended by NULs
        b"  3 \0       ",  # octal padded with spaces
    ],
    ids=["base_256", "octal_and_nuls", "octal_and_spaces"],
)
def test_member_sizes_in_each_form_tar_writes_are_read(tmp_path: Path, size_field: bytes):
    # A 3-byte member ahead of the archive's own: misread, its size would misalign every header after it.
    extra = tar_header("cifar-10-batches-py/notes.txt", 3, patch={124: size_field}) + b"abc" + bytes(509)
    path = tmp_path / "sizes.tar.gz"
    path.write_bytes(gzip.compress(extra + plain_tar()))
    assert read_archive(path, ("data_batch_1",))["data_batch_1"].images.shape == (PER_BATCH, 32, 32, 3)


def with_checksum(block: bytes, form: bytes, signed: bool = False) -> bytes:
    """Return a header block with its checksum field rewritten as `form` % the sum of its bytes (the field read
    as spaces), bytes of 128 and more counted as negative where `signed`, as some old tars summed them."""
    block = bytearray(block)
    block[148:156] = b" " * 8
    block[148:156] = form % sum(b - 256 if signed and b >= 128 else b for b in block)
    return bytes(block)


# Bytes of 128 and more on both sides of the checksum field, 0x80 among them: in the name (ahead of the field)
# and in the link name (after it, unused by a regular file), so that any other count of them sums differently.
_FEW_HIGH = {20: b"\x80\xc3\xa9", 157: b"\x80\xff"}
_MANY_HIGH = {20: b"\x80" * 40 + b"\xff" * 40, 157: b"\xff" * 100}  # a sum of 6 octal digits, the first not 0


@pytest.mark.parametrize(
    ("high_bytes", "signed", "form"),
    [
        (_FEW_HIGH, False, b"%06o\0 "),  # what tar and tarfile write
        (_FEW_HIGH, True, b"%06o\0 "),  # the signed sum, which tarfile accepts too
        (_FEW_HIGH, False, b"%07o\0"),  # 7 digits and a NUL
        (_FEW_HIGH, False, b"%08o"),  # 8 digits and no NUL: the byte after the field is the type
        (_MANY_HIGH, False, b"%06o\0 "),
    ],
    ids=["unsigned", "signed", "7_digits", "8_digits", "6_significant_digits"],
)
def test_header_checksums_in_each_form_tar_writes_are_read(tmp_path: Path, high_bytes, signed: bool, form: bytes):
    # A 3-byte member ahead of the archive's own, its name bytes not UTF-8: were its checksum refused, the whole
    # archive would be.
    header = with_checksum(tar_header("cifar-10-batches-py/notes.txt", 3, patch=high_bytes), form, signed)
    assert header[148:149] == (b"1" if high_bytes is _MANY_HIGH else b"0")
    path = tmp_path / "sums.tar.gz"
    path.write_bytes(gzip.compress(header + b"abc" + bytes(509) + plain_tar()))
    assert list(readable_by_tarfile(path.read_bytes()).values())[0] == b"abc"  # tarfile reads it too
    assert read_archive(path, ("data_batch_1",))["data_batch_1"].images.shape == (PER_BATCH, 32, 32, 3)


def test_a_member_whose_type_is_a_high_byte_is_refused_for_its_type(tmp_path: Path):
    # Its checksum is the signed sum, which counts the type byte (just after the checksum field) as negative.
    header = with_checksum(tar_header(BATCH_1, 0, kind=b"\xff"), b"%06o\0 ", signed=True)
    path = tmp_path / "odd.tar.gz"
    path.write_bytes(gzip.compress(header + plain_tar((BATCH_1,))))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == (
        f"archive member '{BATCH_1}' is of unknown type b'\\xff'; only regular files and folders are read, "
        "refusing the archive"
    )


def ustar_tar(prefix: str, names: dict[str, str]) -> bytes:
    """Return the synthetic archive's tar in POSIX ustar headers, each member's path split by hand into the
    prefix field (bytes 345-499) and the name field: `names` maps a member's own name to its name field."""
    tar = bytearray()
    for member, obj in synthetic_batches().items():
        payload = pickle.dumps(obj, protocol=2)
        info = tarfile.TarInfo("placeholder")
        info.size = len(payload)
        block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
        assert block[257:265] == b"ustar\x0000"
        block[0:100] = names.get(member, member).encode().ljust(100, b"\0")
        block[345:500] = prefix.encode().ljust(155, b"\0")
        tar += with_checksum(bytes(block), b"%06o\0 ") + payload + bytes(-len(payload) % 512)
    return bytes(tar + bytes(1024))


def test_ustar_prefixes_are_part_of_member_names(tmp_path: Path, archive):
    path = tmp_path / "ustar.tar.gz"
    plain = read_archive(archive[0])
    # What tarfile's ustar format writes for a path over 100 bytes: the folder in the prefix. The name field
    # can be 100 bytes, with no NUL: "./" repeated reads as nothing.
    hundred = "./" * 44 + "data_batch_1"
    assert len(hundred) == 100
    for prefix, names in [("cifar-10-batches-py", {}), ("cifar-10-batches-py", {"data_batch_1": hundred})]:
        path.write_bytes(gzip.compress(ustar_tar(prefix, names)))
        assert f"{prefix}/{names.get('data_batch_1', 'data_batch_1')}" in readable_by_tarfile(path.read_bytes())
        read = read_archive(path)
        for name in ("data_batch_1", "data_batch_5", "test_batch"):
            assert np.array_equal(read[name].images, plain[name].images)
    # A prefix of one letter puts every member in a folder that is not the archive's.
    path.write_bytes(gzip.compress(ustar_tar("a", {m: f"cifar-10-batches-py/{m}" for m in synthetic_batches()})))
    assert "a/" + BATCH_1 in readable_by_tarfile(path.read_bytes())
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == (
        f"{path} has no member cifar-10-batches-py/batches.meta (dataset.name cifar10 expects the "
        "cifar-10-batches-py/ layout)"
    )


def test_sparse_members_are_refused(tmp_path: Path):
    # Old GNU sparse: a 512-byte member whose map puts its one block at 3 GiB - 512, so it claims 3 GiB
    # (the old reader expanded it: 6.3 GB).
    sparse_map = {
        386: b"%011o\x00" % (3 * GiB - 512),  # the first map entry: offset, then length
        398: b"%011o\x00" % 512,
        483: b"%011o\x00" % (3 * GiB),  # the size once expanded
    }
    sparse_member = tar_header(BATCH_1, 512, b"S", sparse_map) + b"\x01" * 512
    assert len(gzip.compress(sparse_member)) < 512
    old_gnu = tmp_path / "old_gnu.tar.gz"
    old_gnu.write_bytes(gzip.compress(sparse_member + plain_tar((BATCH_1,))))
    # GNU tar's pax sparse format 1.0: a regular member whose pax records say it is sparse.
    records = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": BATCH_1,
        "GNU.sparse.realsize": str(3 * GiB),
    }
    pax = tmp_path / "pax.tar.gz"
    pax.write_bytes(gzip.compress(pax_tar([("cifar-10-batches-py/GNUSparseFile.0/data_batch_1", records, b"1\n")])))
    for path in (old_gnu, pax):
        line, _ = refusal_in_subprocess(path)
        assert line == (
            f"error: archive member '{BATCH_1}' is a GNU sparse file; only regular files and folders are read, "
            "refusing the archive"
        )


@pytest.mark.parametrize(("kind", "what"), [(b"L", "a GNU long name"), (b"x", "a pax header")])
def test_a_1_gib_name_header_is_refused_before_it_is_read(tmp_path: Path, kind: bytes, what: str):
    # 1 GiB of name for the next member (the old reader held it: 2.1 GB, and then exited 0).
    path = tmp_path / "long.tar.gz"
    name = [(b"a" * MiB, 1023), (b"a" * (MiB - 1) + b"\n", 1)]  # 1 GiB of text, the header's data
    path.write_bytes(gzip_of([(tar_header("././@LongLink", GiB, kind), 1), *name, (plain_tar(), 1)]))
    assert path.stat().st_size < 2 * MiB
    line, peak_kib = refusal_in_subprocess(path)
    assert line == f"error: {path} has {what} of 1073741824 bytes, more than the 8 KiB allowed; refusing the archive"
    assert peak_kib < reader_start_kib() + 96 * 1024  # streamed: never a member whole


def _archive_with_long_name(path: Path, header_bytes: int) -> Path:
    """Write the synthetic archive plus a member whose GNU long-name header holds `header_bytes` (name and NUL)."""
    name = "cifar-10-batches-py/" + "n" * (header_bytes - 1 - len("cifar-10-batches-py/"))
    entry = (tarfile.TarInfo(name), b"abc")
    path.write_bytes(gzip.compress(plain_tar(entries=[entry], tar_format=tarfile.GNU_FORMAT)))
    assert name in readable_by_tarfile(path.read_bytes())
    return path


def test_a_name_header_of_8_kib_is_read(tmp_path: Path):
    path = _archive_with_long_name(tmp_path / "long.tar.gz", 8 * 1024)
    assert read_archive(path, ("data_batch_1",))["data_batch_1"].images.shape == (PER_BATCH, 32, 32, 3)


def test_a_name_header_of_8_kib_and_a_byte_is_refused(tmp_path: Path):
    path = _archive_with_long_name(tmp_path / "long.tar.gz", 8 * 1024 + 1)
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == (
        f"{path} has a GNU long name of 8193 bytes, more than the 8 KiB allowed; refusing the archive"
    )


def test_long_names_of_a_normal_size_are_read_and_checked(tmp_path: Path):
    long_name = "cifar-10-batches-py/" + "notes-" * 40 + "ünïcode.txt"
    for tar_format in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):  # a GNU long name; a pax `path` record
        path = tmp_path / "long.tar.gz"
        path.write_bytes(
            gzip.compress(plain_tar(entries=[(tarfile.TarInfo(long_name), b"abc")], tar_format=tar_format))
        )
        assert long_name in readable_by_tarfile(path.read_bytes())
        assert read_archive(path, ("data_batch_1",))["data_batch_1"].images.shape == (PER_BATCH, 32, 32, 3)
    escaping = tmp_path / "escaping.tar.gz"
    escaping.write_bytes(gzip.compress(pax_tar([("harmless", {"path": "../../evil.sh"}, b"rm -rf /")])))
    with pytest.raises(DataError) as info:
        read_archive(escaping)
    assert str(info.value) == "archive member '../../evil.sh' points outside the archive folder; refusing the archive"


def readable_by_tarfile(data: bytes) -> dict[str, bytes]:
    """Return what Python's tarfile reads from a gzip tar: the old reader's view (the control)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_a_byte_flipped_mid_stream_is_refused(tmp_path: Path):
    # Stored deflate blocks hold the tar verbatim, so a byte of data_batch_1's pixels can be flipped without
    # breaking deflate: only the CRC at the end of the stream can tell.
    tar = plain_tar()
    target = tar.index(BATCH_1.encode()) + 512 + 30_000
    stored = bytearray(gzip.compress(tar, compresslevel=0, mtime=0))
    at = stored.index(tar[target - 8 : target]) + 8
    stored[at] ^= 0x01
    assert readable_by_tarfile(bytes(stored))[BATCH_1] != readable_by_tarfile(gzip.compress(tar))[BATCH_1]
    path = tmp_path / "flipped.tar.gz"
    path.write_bytes(stored)
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value).startswith(f"{path} is truncated or corrupt (CRC check failed 0x")

    compressed = bytearray(gzip.compress(tar, mtime=0))
    compressed[len(compressed) // 2] ^= 0x55
    path.write_bytes(compressed)
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value).startswith(f"{path} is truncated or corrupt (")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda gz: gz[:-8] + struct.pack("<I", zlib.crc32(gz[-8:-4])) + gz[-4:], "CRC check failed 0x"),
        (lambda gz: gz[:-4] + struct.pack("<I", len(gz)), "Incorrect length of data produced"),
        (lambda gz: gz[:-8], "Compressed file ended before the end-of-stream marker was reached"),
        (lambda gz: gz[:-3], "Compressed file ended before the end-of-stream marker was reached"),
    ],
    ids=["bad_crc", "bad_length", "trailer_cut", "trailer_cut_short"],
)
def test_a_damaged_or_missing_gzip_trailer_is_refused(tmp_path: Path, archive, damage, message: str):
    damaged = damage(archive[0].read_bytes())
    assert set(readable_by_tarfile(damaged)) == set(readable_by_tarfile(archive[0].read_bytes()))  # tarfile: fine
    path = tmp_path / "damaged.tar.gz"
    path.write_bytes(damaged)
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value).startswith(f"{path} is truncated or corrupt ({message}")


@pytest.mark.parametrize("second_name", [BATCH_1, "./" + BATCH_1, "cifar-10-batches-py//data_batch_1"])
def test_duplicate_members_are_refused(tmp_path: Path, second_name: str):
    second = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
    data = gzip.compress(plain_tar(entries=[(tarfile.TarInfo(second_name), second)]))
    assert readable_by_tarfile(data)[second_name] == second  # to tarfile, the later copy wins
    path = tmp_path / "twice.tar.gz"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == f"{path} has two members named '{BATCH_1}'; refusing the archive"


def test_dot_slash_names_are_read_like_plain_ones(tmp_path: Path, archive):
    # What `tar czf x.tar.gz ./cifar-10-batches-py` writes: './' before every name, and the folder itself.
    folder = tmp_path / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, obj in synthetic_batches().items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    dotted = tmp_path / "dotted.tar.gz"
    subprocess.run(["tar", "-czf", str(dotted), "./cifar-10-batches-py"], cwd=folder.parent, check=True)
    assert "./" + BATCH_1 in readable_by_tarfile(dotted.read_bytes())
    read_dotted, read_plain = read_archive(dotted), read_archive(archive[0])
    for name in ("data_batch_1", "data_batch_5", "test_batch"):
        assert np.array_equal(read_dotted[name].images, read_plain[name].images)
        assert np.array_equal(read_dotted[name].labels, read_plain[name].labels)


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.SYMTYPE, "a symbolic link"),
        (tarfile.LNKTYPE, "a hard link"),
        (tarfile.FIFOTYPE, "a FIFO"),
        (tarfile.CHRTYPE, "a character device"),
        (tarfile.CONTTYPE, "a contiguous file"),
        (b"Z", "of unknown type b'Z'"),
    ],
)
def test_members_other_than_files_and_folders_are_refused(tmp_path: Path, kind: bytes, what: str):
    info = tarfile.TarInfo(BATCH_1)
    info.type, info.linkname = kind, "cifar-10-batches-py/test_batch"
    path = tmp_path / "odd.tar.gz"
    path.write_bytes(gzip.compress(plain_tar((BATCH_1,), entries=[(info, b"")])))
    with pytest.raises(DataError) as info_:
        read_archive(path)
    assert str(info_.value) == (
        f"archive member '{BATCH_1}' is {what}; only regular files and folders are read, refusing the archive"
    )


def test_folders_with_data_and_files_with_folder_names_are_refused(tmp_path: Path):
    folder = tarfile.TarInfo("cifar-10-batches-py/extra")
    folder.type = tarfile.DIRTYPE
    path = tmp_path / "odd.tar.gz"
    path.write_bytes(gzip.compress(plain_tar(entries=[(folder, bytes(512))])))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert (
        str(info.value) == "archive folder 'cifar-10-batches-py/extra/' claims 512 bytes of data; refusing the archive"
    )

    path.write_bytes(gzip.compress(plain_tar((BATCH_1,), entries=[(tarfile.TarInfo(BATCH_1 + "/"), b"x")])))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert (
        str(info.value) == f"archive member '{BATCH_1}/' is a regular file with a folder's name; refusing the archive"
    )


def test_damaged_headers_and_data_after_the_end_are_refused(tmp_path: Path):
    path = tmp_path / "damaged.tar.gz"
    tar = bytearray(plain_tar())
    second_header = tar.index(b"cifar-10-batches-py/data_batch_2")
    tar[second_header + 3] ^= 0x01
    path.write_bytes(gzip.compress(bytes(tar)))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert (
        str(info.value)
        == f"{path} is truncated or corrupt (byte {second_header} of the tar data): tar header checksum mismatch"
    )

    path.write_bytes(gzip.compress(tar_header(BATCH_1, 0, patch={124: b"-0000001234\x00"}) + plain_tar((BATCH_1,))))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == (
        f"{path} is not a readable gzip-compressed tar archive (no tar header at its start): "
        "a tar header holds b'-0000001234\\x00' where a number belongs"
    )

    malformed = b"9 pathab\n"  # a record without `=`, in a pax header ahead of the archive's members
    path.write_bytes(gzip.compress(pax_block(malformed) + plain_tar()))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == f"{path} is truncated or corrupt (a malformed pax header)"

    # A member after the end-of-archive blocks: `tar --ignore-zeros` reads it, a plain reader does not.
    hidden = plain_tar() + plain_tar()
    path.write_bytes(gzip.compress(hidden))
    with tarfile.open(path, ignore_zeros=True) as tar_:
        assert len(tar_.getmembers()) == 14
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == f"{path} is truncated or corrupt (data after the tar end-of-archive block)"

    path.write_bytes(gzip.compress(b"<html>" + b"404 Not Found " * 100 + b"</html>"))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value).startswith(
        f"{path} is not a readable gzip-compressed tar archive (no tar header at its start)"
    )


def test_too_many_members_are_refused(tmp_path: Path):
    extra = [(tarfile.TarInfo(f"cifar-10-batches-py/extra/{i}"), b"") for i in range(MAX_MEMBERS)]
    path = tmp_path / "many.tar.gz"
    path.write_bytes(gzip.compress(plain_tar(entries=extra)))
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert str(info.value) == f"{path} has more than 1000 members; refusing it (the official archives have 8 and 5)"


def test_an_archive_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "archive.tar.gz"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for path, kind in ((fifo, "is a named pipe (FIFO), not a regular file"), (tmp_path, "is a folder")):
        with pytest.raises(DataError, match=re.escape(f"archive {path} {kind}")):
            read_archive(path)
    with pytest.raises(DataError, match="is a character device, not a regular file"):
        read_archive(Path("/dev/zero"))


@pytest.mark.parametrize("container", ["dict key by SETITEM", "dict key by DICT", "frozenset"])
def test_a_deeply_nested_key_is_refused_instead_of_crashing_the_hash(tmp_path: Path, container: str):
    # A tuple nested 900,000 deep costs one opcode per level; hashing it as a key recursed in C into SIGSEGV.
    deep = b"N" + b"\x85" * 900_000  # NONE, then TUPLE1 around it 900,000 times
    payload = {
        "dict key by SETITEM": b"\x80\x02}" + deep + b"Ns.",  # EMPTY_DICT, key, value, SETITEM
        "dict key by DICT": b"\x80\x02(" + deep + b"Nd.",  # MARK, key, value, DICT
        "frozenset": b"\x80\x02(" + deep + b"\x91.",  # MARK, item, FROZENSET
    }[container]
    line, _ = refusal_in_subprocess(archive_with(tmp_path / "deep.tar.gz", "data_batch_1", payload))
    expected = "refused a dict key of type tuple" if container != "frozenset" else "refused pickle opcode FROZENSET"
    assert line == f"error: data_batch_1 is not a CIFAR batch pickle: {expected}"


@pytest.mark.parametrize("size", ["²", "9" * 5000])
def test_a_pax_size_that_is_not_a_plain_number_is_one_line(tmp_path: Path, size: str):
    # "²" passes str.isdigit() and int() refuses it; 5,000 digits pass both checks and int() refuses them too.
    path = tmp_path / "pax-size.tar.gz"
    path.write_bytes(gzip.compress(pax_tar([("cifar-10-batches-py/notes.txt", {"size": size}, b"abc")])))
    with pytest.raises(DataError, match=r"is truncated or corrupt \(a pax size of"):
        read_archive(path)


def _pax(key: bytes, value: bytes) -> bytes:
    """One pax record, `<length> <key>=<value>\\n`, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode() + body) != length:
        length += 1
    return str(length).encode() + body


def pax_block(records: bytes, kind: bytes = b"x") -> bytes:
    """A pax header member (`x`: for the next member; `g`: global) holding these records, padded to blocks."""
    return tar_header("././@PaxHeader", len(records), kind) + records + bytes(-len(records) % 512)


def test_a_pax_size_record_overrides_the_header_size(tmp_path: Path):
    # The member's header says 0 bytes; its pax record says 3: read as 0, "abc" would be taken for a header.
    notes = pax_block(_pax(b"size", b"3")) + tar_header("cifar-10-batches-py/notes.txt", 0) + b"abc" + bytes(509)
    path = tmp_path / "pax-size.tar.gz"
    path.write_bytes(gzip.compress(notes + plain_tar()))
    assert list(readable_by_tarfile(path.read_bytes()).values())[0] == b"abc"
    assert read_archive(path, ("data_batch_1",))["data_batch_1"].images.shape == (PER_BATCH, 32, 32, 3)


def test_global_pax_headers_are_read_past_unless_they_rename_or_resize(tmp_path: Path):
    # `git archive` starts its tars with a global header holding the commit: harmless, read past.
    path = tmp_path / "global.tar.gz"
    path.write_bytes(gzip.compress(pax_block(_pax(b"comment", b"0123abcd"), b"g") + plain_tar()))
    assert read_archive(path, ("test_batch",))["test_batch"].images.shape == (TEST_IMAGES, 32, 32, 3)
    # One that names or sizes members would apply to every member after it.
    for records in (_pax(b"path", b"x"), _pax(b"size", b"0"), _pax(b"path", b"x") + _pax(b"size", b"0")):
        path.write_bytes(gzip.compress(pax_block(_pax(b"comment", b"0123abcd") + records, b"g") + plain_tar()))
        with pytest.raises(DataError) as info:
            read_archive(path)
        assert str(info.value) == f"{path} has a global pax header that renames or resizes members"


def test_a_sparse_member_is_named_by_its_pax_path_or_else_its_header(tmp_path: Path):
    # GNU tar's pax sparse formats 0.0 and 0.1 keep the name in a `path` record, not in GNU.sparse.name.
    path = tmp_path / "sparse.tar.gz"
    for records, shown in [
        (_pax(b"GNU.sparse.size", b"3221225472") + _pax(b"path", BATCH_1.encode()), BATCH_1),
        (_pax(b"GNU.sparse.size", b"3221225472"), "././@PaxHeader"),  # no name at all: the pax header's own
    ]:
        path.write_bytes(gzip.compress(pax_block(records) + tar_header("x", 0) + plain_tar()))
        with pytest.raises(DataError) as info:
            read_archive(path)
        assert str(info.value) == (
            f"archive member '{shown}' is a GNU sparse file; only regular files and folders are read, "
            "refusing the archive"
        )


def test_a_gnu_long_name_names_a_member_that_is_read(tmp_path: Path, archive):
    # 120 bytes, written by tarfile's GNU format as a long-name header: the name field holds its first 100.
    long_batch_1 = "cifar-10-batches-py/" + "./" * 44 + "data_batch_1"
    payload = pickle.dumps(synthetic_batches()["data_batch_1"], protocol=2)
    entry = (tarfile.TarInfo(long_batch_1), payload)
    tar = plain_tar((BATCH_1,), entries=[entry], tar_format=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in tar
    path = tmp_path / "long.tar.gz"
    path.write_bytes(gzip.compress(tar))
    read = read_archive(path, ("data_batch_1",))["data_batch_1"]
    assert np.array_equal(read.images, read_archive(archive[0], ("data_batch_1",))["data_batch_1"].images)


def test_pax_records_split_at_the_first_equals_and_keep_any_bytes():
    from types import SimpleNamespace

    from cifar10.archive import _pax_records

    stream = SimpleNamespace(path="a.tar.gz")
    data = _pax(b"comment", b"a=b") + _pax(b"path\xff", b"caf\xe9") + b"\0" * 7
    assert _pax_records(data, stream) == {"comment": "a=b", "path\udcff": "caf\udce9"}
    for malformed in (b"x5 path=a\n", _pax(b"path", b"a")[:-1] + b"x", b"9 pathab\n"):
        with pytest.raises(DataError) as info:
            _pax_records(malformed, stream)
        assert str(info.value) == "a.tar.gz is truncated or corrupt (a malformed pax header)"


# ---------------------------------------------------------------------------------------------------------
# CIFAR-100: the same reader, the cifar-100-python/ layout, class names from its meta member.

CIFAR100_META = "cifar-100-python/meta"
TRAIN_N, TEST_N = CIFAR100_TRAIN, CIFAR100_TEST


def cifar100_with(path: Path, changes: dict[str, dict], drop: tuple[str, ...] = ()) -> Path:
    """Write the synthetic CIFAR-100 archive with entries of its members replaced and some members left out."""
    members = synthetic_cifar100()
    for name, entries in changes.items():
        members[name] = {**members[name], **entries}
    write_archive(path, {k: v for k, v in members.items() if k not in drop}, folder="cifar-100-python")
    return path


@pytest.mark.parametrize(
    ("labels", "changes", "drop", "message"),
    [
        ("fine", {"train": {b"fine_labels": [100] * TRAIN_N}}, (), "train: fine_labels must be in 0..99, got 100"),
        ("coarse", {"test": {b"coarse_labels": [20] * TEST_N}}, (), "test: coarse_labels must be in 0..19, got 20"),
        ("fine", {"train": {b"fine_labels": [-1] * TRAIN_N}}, (), "train: fine_labels must be in 0..99, got -1"),
        ("coarse", {"train": {b"coarse_labels": [True] * TRAIN_N}}, (), "train: labels must be a list of integers"),
        ("fine", {"train": {b"fine_labels": [0] * 3}}, (), f"train: 3 labels for {TRAIN_N} images"),
        ("fine", {"test": {b"fine_labels": None}}, (), "test: labels must be a list of integers"),
        (
            "fine",
            {"meta": {b"fine_label_names": [n.encode() for n in FINE_NAMES[:99]]}},
            (),
            "meta: fine_label_names must list 100 class names, got 99",
        ),
        (
            "coarse",
            {"meta": {b"coarse_label_names": [n.encode() for n in FINE_NAMES[:21]]}},
            (),
            "meta: coarse_label_names must list 20 class names, got 21",
        ),
        (
            "fine",
            {"meta": {b"fine_label_names": list(range(100))}},
            (),
            "meta: fine_label_names class names must be strings, got int 0",
        ),
        (
            "fine",
            {"meta": {b"fine_label_names": [b"x" * 100_000, *FINE_NAMES[1:]]}},
            (),
            "meta: fine_label_names class names must be at most 64 characters, got one of 100,000",
        ),
        (
            "fine",
            {"meta": {b"fine_label_names": [b"$\\frac$", *FINE_NAMES[1:]]}},
            (),
            "meta: fine_label_names class names must be letters or digits, then also space and _ - . , ' ( ) & +, "
            "got '$\\\\frac$'",
        ),
        (
            "fine",
            {"meta": {b"fine_label_names": ["", *FINE_NAMES[1:]]}},
            (),
            "meta: fine_label_names class names must be letters or digits",
        ),
        (
            "coarse",
            {"meta": {b"coarse_label_names": [b"same"] * 20}},
            (),
            "meta: coarse_label_names class names must be distinct, got 'same' twice",
        ),
        (
            "fine",
            {"meta": {b"fine_label_names": [b"\xff\xfe", *FINE_NAMES[1:]]}},
            (),
            "meta: fine_label_names: class names must be UTF-8 text",
        ),
        ("coarse", {"meta": {b"coarse_label_names": "not a list"}}, (), "must be a list of class names, got str"),
        ("fine", {}, ("meta",), "has no member cifar-100-python/meta (dataset.name cifar100 expects"),
        ("fine", {}, ("test",), "has no member cifar-100-python/test (dataset.name cifar100 expects"),
        ("coarse", {"meta": {b"fine_label_names": []}}, (), None),  # only the names of the labels in use count
    ],
)
def test_hostile_cifar100_labels_names_and_members_are_refused_in_one_line(tmp_path, labels, changes, drop, message):
    path = cifar100_with(tmp_path / "a.tar.gz", changes, drop)
    layout = layout_of("cifar100", labels)
    if message is None:
        assert len(read_archive(path, None, layout)["label_names"]) == 20
        return
    with pytest.raises(DataError) as info:
        read_archive(path, None, layout)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_cifar10_archive_read_as_cifar100_names_the_layout_it_expected(archive):
    with pytest.raises(DataError) as info:
        read_archive(archive[0], None, layout_of("cifar100", "fine"))
    assert str(info.value) == (
        f"{archive[0]} has no member cifar-100-python/meta (dataset.name cifar100 expects the cifar-100-python/ layout)"
    )


READ_CIFAR100 = READ_ARCHIVE.replace(
    "run_stage(lambda: read_archive(Path(sys.argv[1])))",
    "from cifar10.archive import layout_of\n"
    "run_stage(lambda: read_archive(Path(sys.argv[1]), None, layout_of('cifar100', sys.argv[2])))",
)


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_a_cifar100_meta_claiming_gigabytes_is_refused_at_its_header(tmp_path: Path, labels: str):
    # A 3 MB file whose meta member expands to 3 GiB of zeros: refused before one byte of it is kept.
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip_of([(tar_header(CIFAR100_META, 3 * GiB), 1), (bytes(MiB), 3 * 1024), (bytes(1024), 1)]))
    result = run_limited([sys.executable, "-c", READ_CIFAR100, str(bomb), labels], cwd=ROOT, memory_mb=1024)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.splitlines() == [
        f"error: archive member '{CIFAR100_META}' is 3221225472 bytes, more than the 1 MiB a meta member may have; "
        "refusing the archive"
    ]
    assert int(result.stdout.split()[-1]) < reader_start_kib() + 96 * 1024  # peak RSS in KiB: nothing held


def test_a_cifar100_train_member_past_its_320_mib_cap_is_refused_at_its_header(tmp_path: Path):
    # The one member that may exceed CIFAR-10's 128 MiB (50,000 images in one pickle) stops at 320 MiB.
    bomb = tmp_path / "big.tar.gz"
    size = 320 * MiB + 1
    bomb.write_bytes(gzip_of([(tar_header("cifar-100-python/train", size), 1), (bytes(MiB), 2), (bytes(1024), 1)]))
    result = run_limited([sys.executable, "-c", READ_CIFAR100, str(bomb), "fine"], cwd=ROOT, memory_mb=1024)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.splitlines() == [
        f"error: archive member 'cifar-100-python/train' is {size} bytes, more than the 320 MiB a member may have; "
        "refusing the archive"
    ]


def test_a_cifar100_meta_of_many_names_is_refused_under_the_memory_limit(tmp_path: Path):
    # 100,000 names (str, as Python 3 pickles them) in a meta under its 1 MiB cap: refused by count, cheaply.
    path = cifar100_with(tmp_path / "many.tar.gz", {"meta": {b"fine_label_names": ["a"] * 100_000}})
    result = run_limited([sys.executable, "-c", READ_CIFAR100, str(path), "fine"], cwd=ROOT, memory_mb=1024)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.splitlines() == ["error: meta: fine_label_names must list 100 class names, got 100000"]
