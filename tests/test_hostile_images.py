"""Hostile inputs to cifar10-predict and evaluate: each gets one `error: <input>: <reason>` line, the rest still run.

Every payload is built here: decompression bombs (a valid 1-bit PNG declaring 200 Mpx is 24 KB), a FIFO,
/dev/zero, a socket, a folder, a sparse file over the size cap, a PostScript file, 16-bit and float images,
an empty test batch, a model whose output is NaN. Image files are first read one by one in a subprocess
without TensorFlow, under a 1 GB address-space limit and a deadline, so a regression fails the test (a bomb
decoded allocates about 1 GB; a FIFO opened blocks forever) instead of filling or hanging the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar10 import predict
from cifar10.errors import StageError
from cifar10.framework import keras
from cifar10.predict import MAX_FILE_BYTES, load_image
from cifar10.predict import main as predict_main
from tests.conftest import ROOT, run_limited, synthetic_batches, write_archive

NO_TF_MEMORY_MB = 1024  # numpy + Pillow need about 100 MB; decoding the 200 Mpx bomb would need about 1 GB
# TensorFlow reserves far more address space than it uses: on 2 cores, 1.5 GB fails at import and 2 GB runs;
# its thread stacks and malloc arenas grow with the core count, so the limit only catches a runaway.
TF_MEMORY_MB = 16384
TIMEOUT_S = 120  # a TensorFlow start is 5-10 s on 2 cores; the deadline only catches a hang


# --- Payloads --------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: Iterable[bytes]) -> bytes:
    """Return a valid PNG: IHDR as given, `rows` (unfiltered scanlines) streamed through zlib, IEND."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG: 200 Mpx fit in 24 KB (zlib's ratio is about 1000:1)."""
    row = bytes((width + 7) // 8)
    return png_bytes(width, height, 1, 0, (row for _ in range(height)))


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_socket(path: Path) -> Path:
    # AF_UNIX paths are limited to 108 bytes and pytest's tmp_path can be longer: bind a name relative to its folder.
    cwd = Path.cwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)  # the socket file stays after the socket closes
    finally:
        os.chdir(cwd)
    return path


def make_sparse(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        file.truncate(size)  # no data blocks: instant, and takes no disk
    return path


def make_symlink(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def good_png(path: Path, colour: tuple[int, int, int] = (200, 30, 40)) -> Path:
    Image.new("RGB", (40, 30), colour).save(path)
    return path


OVER_LIMIT = "over the limit of 50,000,000 pixels (a possible decompression bomb)"
# name -> (build the payload in a folder, the reason after "error: <path>: ")
PAYLOADS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # Pillow raises DecompressionBombError from 2 x 89 Mpx on.
    "bomb-200Mpx": (lambda d: write(d / "bomb.png", bomb(20_000, 10_000)), OVER_LIMIT),
    # Pillow only warns from 89 Mpx: the warning must refuse the file too.
    "bomb-100Mpx": (lambda d: write(d / "bomb.png", bomb(10_000, 10_000)), OVER_LIMIT),
    # Under Pillow's limits, over ours.
    "bomb-60Mpx": (lambda d: write(d / "bomb.png", bomb(10_000, 6_000)), f"10000 x 6000 pixels, {OVER_LIMIT}"),
    "fifo": (lambda d: make_fifo(d / "pipe.png"), "is a named pipe (FIFO), not a regular file"),
    "dev-zero": (lambda d: Path("/dev/zero"), "is a character device, not a regular file"),
    "symlink-to-dev-zero": (
        lambda d: make_symlink(d / "zero.png", "/dev/zero"),
        "is a character device, not a regular file",
    ),
    "folder": (lambda d: d, "is a folder, not a regular file"),
    "socket": (lambda d: make_socket(d / "s.png"), "is a socket, not a regular file"),
    "missing": (lambda d: d / "missing.png", "no such file"),
    "over-64MiB": (
        lambda d: make_sparse(d / "huge.png", MAX_FILE_BYTES + 1),
        "67,108,865 bytes, over the 64 MiB limit for image files",
    ),
    # Pillow would hand EPS to Ghostscript: it is not among the formats read.
    "postscript": (
        lambda d: write(d / "page.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"),
        "not a readable image (UnidentifiedImageError)",
    ),
    "truncated-png": (
        lambda d: write(d / "cut.png", png_bytes(64, 64, 8, 2, (bytes(range(192)) for _ in range(64)))[:-80]),
        "not a readable image (",  # Pillow's type for a cut stream varies between versions
    ),
}


def _load_image_in_subprocess(path: Path) -> tuple[int, str, str]:
    """Run load_image(path) without TensorFlow, limited; return (exit status, stdout, stderr)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cifar10.errors import StageError\n"
        "from cifar10.predict import load_image\n"
        "try:\n"
        "    print(load_image(Path(sys.argv[1])).shape)\n"
        "except StageError as exc:\n"
        "    print(f'error: {exc}', file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    result = run_limited([sys.executable, "-c", code, str(path)], ROOT, NO_TF_MEMORY_MB, timeout_s=60)
    return result.returncode, result.stdout.decode(), result.stderr.decode(errors="replace")


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_each_hostile_file_is_refused_in_one_line_without_blocking_or_decoding(name: str, tmp_path: Path):
    build, reason = PAYLOADS[name]
    path = build(tmp_path)
    status, out, err = _load_image_in_subprocess(path)
    assert status == 1, (status, out, err[-2000:])
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: {reason}"), err[-2000:]


def test_the_bomb_is_a_small_valid_png_declaring_200_megapixels():
    data = bomb(20_000, 10_000)
    assert len(data) < 30_000  # measured: 24,376 bytes
    width, height, bit_depth = struct.unpack(">IIB", data[16:25])  # IHDR's fields, after the signature
    assert (width, height, bit_depth) == (20_000, 10_000, 1)
    idat_length = struct.unpack(">I", data[33:37])[0]
    assert len(zlib.decompress(data[41 : 41 + idat_length])) == 10_000 * (1 + 2_500)  # every row is there


def test_whatever_pillow_raises_is_one_line(tmp_path: Path, monkeypatch):
    def open_that_breaks(*args, **kwargs):
        raise ZeroDivisionError("a crafted file found a bug in a decoder")

    monkeypatch.setattr(predict.Image, "open", open_that_breaks)
    with pytest.raises(StageError) as info:
        load_image(good_png(tmp_path / "fine.png"))
    assert str(info.value) == f"{tmp_path / 'fine.png'}: not a readable image (ZeroDivisionError)"


# --- High bit depth: rescaled by the type's range, never clipped --------------------------------------------------

INDEX = np.arange(32 * 32).reshape(32, 32)
EIGHT_BIT = (INDEX % 256).astype(np.uint8)  # the expected 8-bit values
LOW_BYTE = (INDEX * 37 % 256).astype(np.uint16)  # noise under the top 8 bits, which >> 8 must drop
SIXTEEN_BIT = EIGHT_BIT.astype(np.uint16) * 256 + LOW_BYTE


def _grey_as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def high_bit_depth_files(folder: Path) -> dict[str, tuple[Path, str, np.ndarray]]:
    """Return {case: (file, the mode Pillow opens it in, the expected RGB uint8 pixels)}; all are 32x32 (no resize)."""
    cases = {}
    Image.fromarray(SIXTEEN_BIT).save(folder / "grey16.png")
    cases["16-bit PNG"] = (folder / "grey16.png", "I;16", _grey_as_rgb(EIGHT_BIT))
    Image.fromarray(SIXTEEN_BIT.astype(">u2")).save(folder / "grey16b.tif")
    cases["16-bit big-endian TIFF"] = (folder / "grey16b.tif", "I;16B", _grey_as_rgb(EIGHT_BIT))
    # PGM with maxval 65535: Pillow opens it as mode I, 32-bit.
    write(folder / "grey16.pgm", b"P5\n32 32\n65535\n" + SIXTEEN_BIT.astype(">u2").tobytes())
    cases["16-bit PGM"] = (folder / "grey16.pgm", "I", _grey_as_rgb(EIGHT_BIT))
    rgb16 = np.stack([SIXTEEN_BIT, SIXTEEN_BIT[::-1], SIXTEEN_BIT.T], axis=-1)
    write(folder / "rgb16.png", png_bytes(32, 32, 16, 2, (row.astype(">u2").tobytes() for row in rgb16)))
    cases["16-bit RGB PNG"] = (folder / "rgb16.png", "RGB", (rgb16 >> 8).astype(np.uint8))  # Pillow keeps the top byte
    Image.fromarray((EIGHT_BIT / np.float32(255)).astype(np.float32)).save(folder / "float.tif")
    cases["float TIFF in [0, 1]"] = (folder / "float.tif", "F", _grey_as_rgb(EIGHT_BIT))
    return cases


def test_high_bit_depth_images_are_rescaled_by_their_type_not_saturated(tmp_path: Path):
    for case, (path, mode, expected) in high_bit_depth_files(tmp_path).items():
        with Image.open(path) as image:
            assert image.mode == mode, case
            saturated = np.asarray(image.convert("RGB"))
        assert np.array_equal(load_image(path), expected), case
        if mode in ("I;16", "I;16B", "I", "F"):
            assert not np.array_equal(saturated, expected), case  # what a plain convert("RGB") gave: clipped


def out_of_scale_files(folder: Path) -> dict[Path, str]:
    """Return {file: its reason}: high-bit-depth images whose values have no known 8-bit scale."""
    ramp = INDEX.astype(np.float32) / 1023
    Image.fromarray(ramp * 2).save(folder / "float-to-2.tif")
    with_nan = ramp.copy()
    with_nan[3, 5] = np.nan
    Image.fromarray(with_nan).save(folder / "float-nan.tif")
    Image.fromarray(INDEX.astype(np.int32) * 100 - 5).save(folder / "int32.tif")  # mode I, -5..102295
    return {
        folder / "float-to-2.tif": "float pixels from 0 to 2; only [0, 1] has a known scale",
        folder / "float-nan.tif": "float pixels include NaN or infinity",
        folder / "int32.tif": "32-bit integer pixels from -5 to 102295; only 0..65535 (16 bits) has a known scale",
    }


# --- Through cifar10-predict: one line per bad input, the good ones classified ------------------------------------


def _save_model(path: Path, kernel: np.ndarray | None = None) -> Path:
    """Save a tiny uint8-image classifier: mean colour in [0, 1] -> Dense(10) -> softmax; `kernel` (3, 10) if given."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255, dtype="float32")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(10)
    outputs = keras.layers.Activation("softmax")(dense(x))
    model = keras.Model(inputs, outputs)
    if kernel is not None:
        dense.set_weights([kernel.astype(np.float32), np.zeros(10, np.float32)])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model") / "model.keras")


def _records(out: str) -> list[str]:
    return [json.loads(line)["image"] for line in out.splitlines()]


@pytest.mark.integration
def test_cli_refuses_each_hostile_file_in_one_line_and_classifies_the_rest(tmp_path: Path, model_file: Path):
    """The command as a user runs it, in a subprocess with a memory limit and a deadline: one TensorFlow start."""
    first, last = good_png(tmp_path / "first.png"), good_png(tmp_path / "last.png", (10, 90, 220))
    bad = []
    for name in ("bomb-200Mpx", "bomb-60Mpx", "fifo", "dev-zero", "socket", "over-64MiB", "postscript"):
        folder = tmp_path / name
        folder.mkdir()
        build, reason = PAYLOADS[name]
        bad.append((build(folder), reason))
    args = [str(first), *(str(path) for path, _ in bad), str(tmp_path), str(last)]
    result = run_limited(
        [sys.executable, "-m", "cifar10.predict", *args, "--model", str(model_file), "--json"],
        ROOT,
        TF_MEMORY_MB,
        TIMEOUT_S,
    )
    out, err = result.stdout.decode(), result.stderr.decode(errors="replace")
    assert result.returncode == 1, err[-3000:]
    expected = [f"error: {path}: {reason}" for path, reason in bad] + [
        f"error: {tmp_path}: is a folder, not a regular file"
    ]
    assert err.splitlines() == expected
    assert _records(out) == [str(first), str(last)]


def test_predict_rescales_high_bit_depth_refuses_unknown_scales_and_classifies_the_rest(
    tmp_path: Path, model_file: Path, capsys
):
    good = high_bit_depth_files(tmp_path)
    refused = out_of_scale_files(tmp_path)
    paths = [str(p) for p, _, _ in good.values()] + [str(p) for p in refused]
    assert predict_main([*paths, "--model", str(model_file), "--json"]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {path}: {reason}" for path, reason in refused.items()]
    assert _records(out) == [str(p) for p, _, _ in good.values()]


def _archive_with_test_images(path: Path, count: int) -> Path:
    """Write the synthetic archive with a test batch of `count` grey images; return its path.

    The test batch is pickled with protocol 4: protocol 2 (the official files') writes the empty bytes of a
    0-image array as a call to `bytes`, which the archive reader refuses before any stage sees the batch.
    """
    test_batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [i % 10 for i in range(count)],
        b"data": np.full((count, 3072), 128, np.uint8),
        b"filenames": [f"t{i}.png".encode() for i in range(count)],
    }
    write_archive(path, synthetic_batches(), {"cifar-10-batches-py/test_batch": pickle.dumps(test_batch, protocol=4)})
    return path


def test_predict_refuses_an_empty_test_batch_in_one_line_and_classifies_the_files(tmp_path: Path, model_file, capsys):
    archive = _archive_with_test_images(tmp_path / "empty.tar.gz", 0)
    image = good_png(tmp_path / "cat.png")
    assert predict_main([str(image), "--test-samples", "5", "--archive", str(archive), "--model", str(model_file)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: {archive}: the test batch holds no images"]
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(image)]


@pytest.mark.parametrize("kind", ["dev-zero", "folder"])
def test_predict_refuses_an_archive_that_is_not_a_regular_file(kind: str, tmp_path: Path, model_file, capsys):
    archive = Path("/dev/zero") if kind == "dev-zero" else tmp_path
    image = good_png(tmp_path / "cat.png")
    assert predict_main([str(image), "--test-samples", "5", "--archive", str(archive), "--model", str(model_file)]) == 1
    out, err = capsys.readouterr()
    reason = "is a character device" if kind == "dev-zero" else "is a folder"
    assert err.splitlines() == [f"error: {archive}: {reason}, not a regular file"]
    assert len(out.splitlines()) == 1


@contextlib.contextmanager
def unblocking(fifo: Path, after_s: float = 20) -> Iterator[None]:
    """Within the block, every `after_s` seconds, open and close `fifo`'s write end: a reader stuck opening it
    (a regression) then reads end-of-file and fails the test, instead of hanging it."""
    done = threading.Event()

    def unblock() -> None:
        while not done.wait(after_s):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading, as it should be
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("kind", ["dev-zero", "symlink-to-dev-zero", "folder", "fifo"])
def test_predict_says_a_model_that_is_not_a_regular_file_is_not_one(kind: str, tmp_path: Path, capsys):
    models = {
        "dev-zero": (lambda: Path("/dev/zero"), "a character device"),
        "symlink-to-dev-zero": (lambda: make_symlink(tmp_path / "z.keras", "/dev/zero"), "a character device"),
        "folder": (lambda: tmp_path / "models", "a folder"),
        "fifo": (lambda: make_fifo(tmp_path / "model.keras"), "a named pipe (FIFO)"),
    }
    build, what = models[kind]
    (tmp_path / "models").mkdir()
    model = build()
    image = good_png(tmp_path / "cat.png")
    with unblocking(tmp_path / "model.keras"):
        assert predict_main([str(image), "--model", str(model)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: model {model} is {what}, not a regular file"]
    assert out == ""


def test_predict_refuses_a_model_with_nan_output_in_one_line(tmp_path: Path, capsys):
    model = _save_model(tmp_path / "nan.keras", np.full((3, 10), np.nan))
    assert predict_main([str(good_png(tmp_path / "cat.png")), "--model", str(model)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "error: the model's output holds NaN or infinity; its weights are damaged or it diverged"
    ]
    assert out == ""


def test_ctrl_c_in_predict_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "main", interrupted)
    with pytest.raises(SystemExit) as info:
        predict.cli()
    assert info.value.code == 130
    assert capsys.readouterr().err == "error: interrupted\n"


# --- The evaluate stage, as DVC runs it ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("case", ["empty test batch", "NaN model output"])
def test_evaluate_refuses_in_one_line_and_writes_nothing(case: str, tmp_path: Path, model_file: Path):
    if case == "empty test batch":
        archive, model = _archive_with_test_images(tmp_path / "a.tar.gz", 0), model_file
        line = f"error: {archive}: the test batch holds no images; nothing to evaluate"
    else:
        archive = _archive_with_test_images(tmp_path / "a.tar.gz", 3)
        model = _save_model(tmp_path / "nan.keras", np.full((3, 10), np.nan))
        line = "error: the model's output holds NaN or infinity; its weights are damaged or it diverged"
    outputs = [
        tmp_path / "metrics.json",
        tmp_path / "predictions.csv",
        tmp_path / "per_class.csv",
        tmp_path / "figures",
    ]
    result = run_limited(
        [sys.executable, "-m", "stages.evaluate", str(model), str(archive), *map(str, outputs)]
        + ["--params", str(ROOT / "params.yaml")],
        ROOT,
        TF_MEMORY_MB,
        TIMEOUT_S,
    )
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, err[-3000:]
    assert err.splitlines() == [line]
    assert not any(path.exists() for path in outputs)
