"""cifar10-predict (or cifar-predict): classify image files (any size, PNG/JPEG/...) or test-set samples.

    cifar10-predict cat.png truck.jpg            # top-3 classes, one line per image
    cifar10-predict --test-samples 16 --json     # the first 16 test images, as JSON lines
    cifar10-predict --rev v1 cat.png             # with the model of git revision v1 (from DVC's cache or remote)

Default paths are those of the repository this runs in, from any folder inside it (the nearest folder
above holding dvc.yaml). --rev and --repo fetch models/model.keras with `dvc.api` from a git revision of
this repository or of another one (a URL or path), through the DVC cache or remote.

The model (models/model.keras) takes raw uint8 RGB images and normalizes them itself, and carries its class
names (CIFAR-10's 10, or CIFAR-100's 100 fine or 20 coarse ones); --test-samples reads the test batch of either
archive layout, with the labels whose names are the model's. Every input that
cannot be used (a missing or broken file, a FIFO or a device, a decompression bomb, an image file over
64 MiB or 50 Mpx, a test batch with no images) gets one `error: <input>: <reason>` line on stderr; the
others are still classified, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from cifar10.archive import Batch, load_test_sets
from cifar10.atomic import NO_SUCH_FILE, non_regular_file_reason
from cifar10.dataset import CLASS_NAMES, IMAGE_SHAPE
from cifar10.errors import StageError
from cifar10.params import redact_credentials

MAX_FILE_BYTES = 64 * 2**20  # larger image files are refused unread; a 50 Mpx camera JPEG is tens of MB at most
# width x height. A few hundred bytes of PNG can declare 200 Mpx, and Pillow's own check only warns from 89 Mpx.
# Measured peak memory of load_image at 49 Mpx: 0.42 GB (RGBA PNG), 0.46 GB (16-bit PNG), 0.85 GB (float TIFF).
MAX_PIXELS = 50_000_000
# Formats Pillow decodes by itself. Others are refused as unreadable: Pillow hands EPS to Ghostscript, and the
# rarer decoders are attack surface that photos never need.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # unsigned 16-bit greyscale, either byte order


@dataclass(frozen=True)
class Prediction:
    name: str  # the file, or test:<index>
    top: list[tuple[str, float]]  # (class, probability), most likely first
    truth: str | None = None  # the true class, for test samples

    def as_line(self) -> str:
        ranked = "  ".join(f"{cls} {p:.3f}" for cls, p in self.top)
        return f"{self.name}: {ranked}" + (f"  (true: {self.truth})" if self.truth else "")

    def as_json(self) -> str:
        record: dict = {"image": self.name, "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}
        if self.truth:
            record["true"] = self.truth
        return json.dumps(record)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Return `image` as 8-bit RGB; StageError for pixel values whose scale is unknown.

    High-bit-depth greyscale is rescaled by the range of its type, never clipped (a plain `convert("RGB")`
    clips, turning a 16-bit photo white and a [0, 1] float image black):
      I;16 (16-bit unsigned, either byte order): value >> 8, as Pillow itself reads 16-bit RGB(A) PNGs;
      I (32-bit signed; Pillow's mode for 16-bit PGM/PPM, which it scales to 0..65535, and for 32-bit TIFF):
        read as 16-bit, value >> 8, if every value is in 0..65535; otherwise refused;
      F (32-bit float): round(255 * value) if every value is in [0, 1]; otherwise (NaN, infinity, or
        any other range, whose meaning a file does not state) refused.
    A 0..255 image stored as I is therefore read as a dark 16-bit one: the scale comes from the type, not
    from guessing at the values. Every other mode goes through Pillow's `convert("RGB")` (alpha dropped).
    """
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image) >> 8
    elif image.mode == "I":
        low, high = image.getextrema()
        if low < 0 or high > 0xFFFF:
            raise StageError(f"32-bit integer pixels from {low} to {high}; only 0..65535 (16 bits) has a known scale")
        grey = np.asarray(image) >> 8
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise StageError("float pixels include NaN or infinity")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise StageError(f"float pixels from {low:g} to {high:g}; only [0, 1] has a known scale")
        grey = pixels * 255  # in place from here: a 50 Mpx float image is 200 MB a copy
        grey += 0.5
        np.floor(grey, out=grey)  # round half up, to the nearer 8-bit value
    else:
        return image.convert("RGB")
    return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")


def _decode(file: BinaryIO) -> np.ndarray:
    """Return the image in `file` as RGB uint8 (32, 32, 3); StageError with the reason if it is refused."""
    over_limit = f"over the limit of {MAX_PIXELS:,} pixels (a possible decompression bomb)"
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 Mpx and raises from 179 Mpx; a warning here is a refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=IMAGE_FORMATS) as image:  # reads the header only
                if image.width * image.height > MAX_PIXELS:
                    raise StageError(f"{image.width} x {image.height} pixels, {over_limit}")
                rgb = to_rgb8(image)
                if rgb.size != IMAGE_SHAPE[:2][::-1]:
                    rgb = rgb.resize(IMAGE_SHAPE[:2][::-1], Image.Resampling.LANCZOS)
                return np.asarray(rgb, dtype=np.uint8)
    except StageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise StageError(over_limit) from None
    except Exception as exc:  # crafted files make Pillow's decoders raise almost any type
        raise StageError(f"not a readable image ({type(exc).__name__})") from None


def _read_image(path: Path) -> np.ndarray:
    reason = non_regular_file_reason(path)
    if reason:
        raise StageError(reason)
    # Stat, then open without blocking and check again what was opened: the path may have changed in between.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise StageError("is not a regular file")
        if opened.st_size > MAX_FILE_BYTES:
            raise StageError(f"{opened.st_size:,} bytes, over the {MAX_FILE_BYTES // 2**20} MiB limit for image files")
        return _decode(file)


def load_image(path: Path) -> np.ndarray:
    """Return the image at `path` as RGB uint8 (32, 32, 3), resized with antialiasing.

    Raises StageError "<path>: <reason>" for anything else: a missing file, a folder, a FIFO, a device or a
    socket (none of them opened), a file over MAX_FILE_BYTES, more than MAX_PIXELS pixels, a format outside
    IMAGE_FORMATS, pixel values of unknown scale (see `to_rgb8`), or whatever a damaged file makes Pillow raise.
    """
    try:
        return _read_image(path)
    except StageError as exc:
        raise StageError(f"{path}: {exc}") from None
    except OSError as exc:  # from opening: permission denied, a file that vanished after the check
        raise StageError(f"{path}: cannot be opened ({exc.strerror})") from None


def load_test_samples(archive: Path, count: int) -> list[Batch]:
    """Return the first `count` images of the archive's test batch (fewer if it holds fewer), once per kind of
    labels the archive has (CIFAR-10: one; CIFAR-100: fine, then coarse), each with its class names.

    StageError if the archive is missing (saying how to get it), is not a regular file, or its test batch
    holds no images.
    """
    reason = non_regular_file_reason(archive)
    if reason == NO_SUCH_FILE:  # e.g. after `dvc pull models` alone
        raise StageError(
            f"{archive} not found; --test-samples reads the archive's test batch: fetch it with "
            "`dvc pull download` (or `dvc repro download`), or pass --archive PATH"
        )
    if reason:
        raise StageError(f"{archive}: {reason}")
    sets = load_test_sets(archive)
    if not len(sets[0].labels):
        raise StageError(f"{archive}: the test batch holds no images")
    return [Batch(s.images[:count], s.labels[:count], s.class_names) for s in sets]


def samples_for(sets: list[Batch], class_names: tuple[str, ...], archive: Path) -> Batch:
    """Return the test samples whose labels name the model's classes; StageError if none do."""
    for batch in sets:
        if batch.class_names == class_names:
            return batch
    found = " or ".join(str(len(s.class_names)) for s in sets)
    raise StageError(
        f"{archive}: its test labels name {found} classes, none of them the model's {len(class_names)} "
        f"({', '.join(class_names[:3])}, ...); pass the archive the model was trained on with --archive"
    )


MODEL_PATH = Path("models/model.keras")  # relative to the repository's root
ARCHIVE_PATH = Path("data/raw/archive.tar.gz")
MAX_MODEL_BYTES = 2**31  # a fetched model larger than 2 GiB is refused; the tutorial's model is 5 MB


def repository_root(start: Path) -> Path | None:
    """Return the nearest folder at or above `start` holding dvc.yaml, or None."""
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return None


FETCH_DEADLINE_S = 600.0  # for cloning and pulling the model with DVC; a 5 MB model takes seconds
# Runs in a child process, so the fetch has a deadline (dvc.api has none) and nothing of DVC stays loaded.
_FETCH = """
import sys
import dvc.api
path, repo, rev, target, cap = sys.argv[1], sys.argv[2] or None, sys.argv[3] or None, sys.argv[4], int(sys.argv[5])
try:
    with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as source, open(target, "wb") as sink:
        copied = 0
        while chunk := source.read(2**20):
            copied += len(chunk)
            if copied > cap:
                sys.exit(3)
            sink.write(chunk)
except Exception as exc:  # dvc raises many types: unknown revision, no remote, missing from the cache
    print(type(exc).__name__ + ": " + " ".join(str(exc).split())[:200], file=sys.stderr)
    sys.exit(2)
"""


def fetch_model(rev: str | None, repo: str | None, into: Path, root: Path | None) -> Path:
    """Copy models/model.keras of git revision `rev` of `repo` (default: the repository at `root`) to `into`.

    StageError in one line, with any credentials in `repo` hidden, when DVC cannot find it there (an unknown
    revision, a model never pushed), when it is over MAX_MODEL_BYTES, or after FETCH_DEADLINE_S.
    """
    target = into / "model.keras"
    where = f"{redact_credentials(repo) if repo else 'this repository'} at {rev or 'HEAD'}"
    # Git and ssh must fail rather than wait for a password nobody will type.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
    args = [MODEL_PATH.as_posix(), repo or "", rev or "", str(target), str(MAX_MODEL_BYTES)]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _FETCH, *args],
            cwd=root if repo is None else into,  # the path is the repository root's, wherever this runs
            env=env,
            capture_output=True,
            text=True,
            timeout=FETCH_DEADLINE_S,
        )
    except subprocess.TimeoutExpired:
        raise StageError(f"cannot fetch {MODEL_PATH} from {where}: no answer within {FETCH_DEADLINE_S:g} s") from None
    if result.returncode == 3:
        raise StageError(f"{MODEL_PATH} at {where} is over {MAX_MODEL_BYTES // 2**30} GiB")
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exited {result.returncode}"]
        raise StageError(f"cannot fetch {MODEL_PATH} from {where} ({redact_credentials(lines[-1])})")
    return target


def top_k(
    probabilities: np.ndarray, k: int, class_names: tuple[str, ...] = CLASS_NAMES
) -> list[list[tuple[str, float]]]:
    """For each row of probabilities, the k most likely (class name, probability)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], float(row[j])) for j in idx] for row, idx in zip(probabilities, order)]


PROGRAMS = ("cifar10-predict", "cifar-predict")  # the console scripts, one entry point


def main(argv: list[str] | None = None) -> int:
    """Classify the inputs named in `argv`; print one line per image and one error line per failed input.

    Returns the exit status: 0 if every input was classified, else 1.
    """
    prog = Path(sys.argv[0]).name if Path(sys.argv[0]).name in PROGRAMS else PROGRAMS[0]
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "images",
        nargs="*",
        type=Path,
        help=f"image files ({', '.join(IMAGE_FORMATS)}; any size up to {MAX_PIXELS / 1e6:g} Mpx)",
    )
    parser.add_argument(
        "--test-samples",
        type=int,
        metavar="N",
        default=0,
        help="also classify the first N images of the archive's test batch",
    )
    parser.add_argument("--model", type=Path, help=f"a .keras model file (default: the repository's {MODEL_PATH})")
    parser.add_argument(
        "--rev", help=f"use {MODEL_PATH} of this git revision (branch, tag, commit, experiment), fetched by DVC"
    )
    parser.add_argument("--repo", help="with --rev or alone: a git repository URL or path to fetch the model from")
    parser.add_argument(
        "--archive",
        type=Path,
        help=f"the CIFAR-10 or CIFAR-100 archive, for --test-samples (default: the repository's {ARCHIVE_PATH})",
    )
    parser.add_argument(
        "--top", type=int, default=3, help="classes shown per image, at most the model's classes (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if args.test_samples < 0:
        parser.error("--test-samples must be 0 or more")
    if not args.images and args.test_samples == 0:
        parser.error("give image files or --test-samples N")
    if args.top < 1:
        parser.error("--top must be at least 1")
    if args.model and (args.rev or args.repo):
        parser.error("give --model or --rev/--repo, not both")
    root = repository_root(Path.cwd())
    if args.archive is None:
        args.archive = root / ARCHIVE_PATH if root else ARCHIVE_PATH
    if args.model is None and not (args.rev or args.repo):
        if root is None:
            print(
                f"error: no {MODEL_PATH}: {Path.cwd()} is not inside a DVC repository (no dvc.yaml here or above); "
                "pass --model PATH, or --repo URL [--rev REV]",
                file=sys.stderr,
            )
            return 1
        args.model = root / MODEL_PATH

    failures = 0
    names: list[str] = []
    images: list[np.ndarray] = []
    truths: list[str | None] = []
    for path in args.images:
        try:
            images.append(load_image(path))
            names.append(str(path))
            truths.append(None)
        except StageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
    sample_sets: list[Batch] = []
    if args.test_samples > 0:
        try:
            sample_sets = load_test_samples(args.archive, args.test_samples)
        except StageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
    if not images and not sample_sets:
        return 1  # every input failed, each with its line above
    try:
        # Keras (and TensorFlow) load only now, so `--help` and argument errors answer at once.
        from cifar10.classifier import class_names_of, load_classifier, predict_probabilities

        with tempfile.TemporaryDirectory(prefix="cifar10-predict-") as fetched:
            path = args.model or fetch_model(args.rev, args.repo, Path(fetched), root)
            model = load_classifier(path)
        class_names = class_names_of(model)
        if args.top > len(class_names):
            raise StageError(f"--top {args.top} is more than the model's {len(class_names)} classes")
        if sample_sets:
            try:
                samples = samples_for(sample_sets, class_names, args.archive)
            except StageError as exc:  # the files named are still classified
                print(f"error: {exc}", file=sys.stderr)
                failures += 1
            else:
                images.extend(samples.images)
                names.extend(f"test:{i}" for i in range(len(samples.images)))
                truths.extend(class_names[c] for c in samples.labels)
        if not images:
            return 1
        probabilities = predict_probabilities(model, np.stack(images), batch_size=256)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, top, truth in zip(names, top_k(probabilities, args.top, class_names), truths):
        prediction = Prediction(name, top, truth)
        print(prediction.as_json() if args.json else prediction.as_line())
    return 1 if failures else 0


def cli() -> None:
    """The console script: exit with main()'s status; Ctrl-C is one line and status 130, as in the stages."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    cli()
