"""Fetch the CIFAR-10 archive from `download.url` and verify its md5 (the download stage's core).

http(s) downloads retry with exponential backoff on connection errors and 5xx answers and
resume with a Range request where the server allows it. `file://` URLs and plain paths are
copied. The archive reaches its output path only once its checksum matches.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cifar10.atomic import atomic_file
from cifar10.errors import DataError, StageError
from cifar10.params import DownloadParams

CHUNK = 1 << 20  # bytes per read
BACKOFF_S = 1.0  # first wait after a failed attempt, doubled each time
BACKOFF_MAX_S = 30.0


def md5_of(path: Path) -> str:
    """Return the hex md5 of the file at `path`."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    # disable=None: a bar on a terminal, nothing in logs and CI.
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None)


def copy_local(source: Path, dest: Path) -> None:
    """Copy a local file to `dest` with a progress bar."""
    if not source.is_file():
        raise StageError(f"download.url points to {source}, which is not a file")
    with source.open("rb") as src, dest.open("wb") as out, _progress(source.stat().st_size, 0, source.name) as bar:
        for block in iter(lambda: src.read(CHUNK), b""):
            out.write(block)
            bar.update(len(block))


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (or rewrite it if the server ignores Range)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is already whole
            return
        raise
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with part.open("ab" if resumed else "wb") as out, _progress(expected, have, Path(url).name) as bar:
            while block := response.read(CHUNK):
                out.write(block)
                bar.update(len(block))
    if expected is not None and part.stat().st_size < expected:
        raise http.client.IncompleteRead(b"", expected - part.stat().st_size)


def fetch_http(url: str, part: Path, timeout: float, retries: int, backoff_s: float = BACKOFF_S) -> None:
    """Download `url` into `part`, retrying transient failures `retries` times and resuming where possible."""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == retries:
                raise StageError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            if attempt == retries:
                raise StageError(
                    f"download of {url} failed after {retries + 1} attempts: {exc}; "
                    "for a mirror or a local copy, set download.url (see README)"
                ) from None
            reason = str(exc) or type(exc).__name__
        wait = min(backoff_s * 2**attempt, BACKOFF_MAX_S)
        print(f"download: attempt {attempt + 1} failed ({reason}); retrying in {wait:.1f} s")
        time.sleep(wait)


def download_archive(params: DownloadParams, dest: Path, backoff_s: float = BACKOFF_S) -> str:
    """Fetch `params.url` to `dest`, verify the md5 and return it; nothing lands at `dest` on failure."""
    parsed = urllib.parse.urlparse(params.url)
    expected = params.md5.lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A partial http download survives a failed run beside the output, keyed by the md5 it should reach.
    part = dest.parent / f".{dest.name}.{expected}.part"
    with atomic_file(dest) as tmp:
        if parsed.scheme in ("http", "https"):
            fetch_http(params.url, part, params.timeout, params.retries, backoff_s)
            shutil.move(part, tmp)
        elif parsed.scheme == "file":
            copy_local(Path(urllib.request.url2pathname(parsed.path)), tmp)
        elif parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
            copy_local(Path(params.url).expanduser(), tmp)
        else:
            raise StageError(
                f"download.url has unsupported scheme {parsed.scheme!r}: use http(s)://, file:// or a path"
            )
        actual = md5_of(tmp)
        if actual != expected:
            raise DataError(f"md5 mismatch for {params.url}: expected {expected}, got {actual}; nothing was written")
    return actual
