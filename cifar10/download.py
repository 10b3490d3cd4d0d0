"""Fetch the CIFAR-10 or CIFAR-100 archive from `download.url` and verify its md5 (the download stage's core).

http(s) downloads retry what may pass (connection errors, timeouts, 408, 429, 5xx) with exponential backoff or
the server's Retry-After, resume with a Range request where the server allows it, and fail at once on what no
retry fixes (other 4xx, a malformed URL, an unknown host, a body over `download.max_bytes`, a redirect to
anything but http(s)). Every attempt and wait together end by `download.deadline`. Credentials in the URL
(`https://user:token@host/...`) are sent as HTTP Basic auth and shown as `***` in every message. `file://` URLs
on this machine and plain paths are copied. The archive reaches its output path only once its checksum matches.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import hashlib
import http.client
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from cifar10.atomic import atomic_file
from cifar10.errors import DataError, StageError
from cifar10.params import DownloadParams, redact_credentials

CHUNK = 1 << 20  # bytes per read, at most: a network read returns what one recv() gives
BACKOFF_S = 1.0  # first wait after a failed attempt, doubled each time
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0  # the longest wait a server's Retry-After gets; never past download.deadline either
FETCHED_SCHEMES = ("http", "https")  # for download.url and for every redirect
TRANSIENT_STATUSES = (408, 429)  # Request Timeout, Too Many Requests; every 5xx is transient too
RETRY_AFTER_STATUSES = (429, 503)  # the answers whose Retry-After header is honoured
MESSAGE_MAX_CHARS = 200  # of text from a server (a reason phrase, a header) quoted in a message


def md5_of(path: Path) -> str:
    """Return the hex md5 of the file at `path`."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _printable(text: str, limit: int | None = MESSAGE_MAX_CHARS) -> str:
    """Return `text` fit for a one-line message: control characters (newlines, terminal escapes) as spaces,
    cut to `limit` characters (None: no cut). Servers choose reason phrases, headers and redirect targets."""
    line = "".join(c if c.isprintable() else " " for c in text).strip()
    return line if limit is None or len(line) <= limit else line[:limit] + "..."


def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    # disable=None: a bar on a terminal, nothing in logs and CI.
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None)


def copy_local(source: Path, dest: Path, max_bytes: int) -> None:
    """Copy the local file `source` to `dest` with a progress bar; refuse one larger than `max_bytes`."""
    if not source.is_file():
        raise StageError(f"download.url points to {source}, which is not a file")
    size = source.stat().st_size
    if size > max_bytes:
        raise StageError(f"{source} holds {size} bytes, more than download.max_bytes ({max_bytes})")
    copied = 0
    with source.open("rb") as src, dest.open("wb") as out, _progress(size, 0, source.name) as bar:
        for block in iter(lambda: src.read(CHUNK), b""):
            copied += len(block)
            if copied > max_bytes:  # a file still growing (a log, a pipe-like mount) past its stat() size
                raise StageError(f"{source} grew past download.max_bytes ({max_bytes}) while being copied")
            out.write(block)
            bar.update(len(block))


# ---------------------------------------------------------------- failures of one attempt


class _Permanent(Exception):
    """A failure no retry can fix; the message completes `download of URL failed: `."""


class _Transient(Exception):
    """A failure another attempt may get past; `retry_after_s` is the wait the server asked for, if it did."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


def _retry_after_s(headers: Message) -> float | None:
    """Return the seconds a Retry-After header asks to wait (its delay-seconds or HTTP-date form), or None."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)  # float(): a 5,000-digit value is inf, where int() would raise
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # absent or malformed: the usual backoff applies
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; a date without a zone is not one
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _network_failure(exc: Exception) -> _Permanent | _Transient:
    """Return what urllib or http.client raised as a failure that another attempt may fix, or not."""
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {_printable(str(exc.reason))}"
        if exc.code in TRANSIENT_STATUSES or 500 <= exc.code <= 599:
            wait = _retry_after_s(exc.headers) if exc.code in RETRY_AFTER_STATUSES and exc.headers is not None else None
            return _Transient(reason, wait)
        return _Permanent(reason)
    if isinstance(exc, urllib.error.URLError):
        cause = exc.reason
        # EAI_AGAIN is a resolver that did not answer; any other lookup failure means no such host.
        if isinstance(cause, socket.gaierror) and cause.errno != socket.EAI_AGAIN:
            return _Permanent(f"the host name does not resolve ({cause.strerror})")
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _Permanent(f"the server's TLS certificate is not valid ({cause.verify_message})")
        if isinstance(cause, OSError):
            return _Transient(_printable(str(cause)) or type(cause).__name__)
        return _Permanent(_printable(str(cause)))  # urllib's own refusals, e.g. 'no host given'
    if isinstance(exc, http.client.InvalidURL):
        return _Permanent(f"malformed URL ({_printable(str(exc))})")
    return _Transient(_printable(str(exc)) or type(exc).__name__)  # a dropped connection, a timeout, a bad status


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


# ---------------------------------------------------------------- URLs, redirects, the deadline


def _url_problem(url: str) -> str | None:
    """Return why `url` is not an http(s) URL this module fetches, or None if it is."""
    if not all("!" <= c <= "~" for c in url):  # printable ASCII; http.client would send a space as is
        return "it holds a space, a control character or a non-ASCII character (percent-encode it: %20)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in 0-65535)
    except ValueError as exc:
        # The exception may quote the URL's pieces (a port "ab" that is half a token): keep only its kind.
        reason = "an invalid port" if "Port" in str(exc) else "Invalid IPv6 URL" if "IPv6" in str(exc) else "bad syntax"
        return f"it is malformed ({reason})"
    if parts.scheme not in FETCHED_SCHEMES:
        return "only http:// and https:// are fetched"
    if not parts.hostname:
        return "it names no host"
    return None


def _split_credentials(url: str) -> tuple[str, str | None]:
    """Return (`url` without `user:password@`, the Basic Authorization header those give, or None)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    user_pass = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    host = parts.netloc.rpartition("@")[2]
    token = base64.b64encode(user_pass.encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def _redirect_problem(from_url: str, location: str) -> str | None:
    """Return why a redirect from `from_url` to `location` is refused, or None to follow it."""
    try:
        target = urllib.parse.urljoin(from_url, location)
        parts = urllib.parse.urlsplit(target)
    except ValueError:
        return f"the server redirected to a malformed URL {_printable(redact_credentials(location))}"
    shown = _printable(redact_credentials(target))
    if parts.scheme not in FETCHED_SCHEMES:
        return f"the server redirected to {shown}; only redirects to http:// and https:// are followed"
    if "@" in parts.netloc:
        return f"the server redirected to {shown}, a URL with credentials; refusing it"
    # A download asked for over https stays encrypted: the md5 still guards the archive, but the user chose
    # https and an eavesdropper on the http leg could watch or (within max_bytes and the deadline) stall it.
    if urllib.parse.urlsplit(from_url).scheme == "https" and parts.scheme == "http":
        return f"the server redirected from https to {shown}; set download.url to that http:// URL to accept it"
    return None


class _CheckedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http(s) URL without credentials, never from https to http, and never reads
    the redirect's body (urllib reads it whole, so an endless one would fill memory)."""

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Message) -> Any:
        fp.close()
        location = headers.get("Location") or headers.get("URI")
        problem = _redirect_problem(req.full_url, location) if location is not None else None
        if problem:
            raise _Permanent(problem)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _shut_down(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for an SSLSocket: SSLSocket.shutdown would drop its SSL object from
    # under the reading thread. Shutting the descriptor wakes a blocked read with end-of-file.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlineWatch:
    """The whole download's deadline: the seconds left, and a timer that shuts the open connection down when it
    passes. Checking the clock between reads is not enough: http.client reads the status line and headers with
    blocking readline()s, which a server dripping a byte every few seconds keeps going for days. The TLS
    handshake, before the socket is handed over, needs no watch: CPython bounds the whole handshake by the
    socket timeout, which is at most the time left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _DeadlineWatch:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def left_s(self) -> float:
        """Return the seconds left before the deadline; zero or less once it passed."""
        return self.end - time.monotonic()

    def passed(self) -> bool:
        """Return whether the deadline has passed (the timer fires at that moment, never before it)."""
        return self.left_s() <= 0

    def watch(self, sock: socket.socket) -> None:
        """Make `sock` the connection to shut down at the deadline (at once if it already passed)."""
        with self._lock:
            self._sock = sock
            if self.passed():
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._sock is not None:
                _shut_down(self._sock)


class _Watched:
    """Mixin for http.client connections: hands the socket to the download's deadline watch once connected."""

    def __init__(self, *args: Any, watch: _DeadlineWatch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch = watch

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watch.watch(self.sock)  # type: ignore[attr-defined]


class _WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _DeadlineWatch) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPConnection, watch=self._watch), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _DeadlineWatch) -> None:
        super().__init__()
        self._watch = watch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPSConnection, watch=self._watch), req, context=self._context)


# ---------------------------------------------------------------- http(s)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    """Return the body size the server announces, or None where it announces none or the body is chunked."""
    value = response.headers.get("Content-Length")
    if value is None or response.chunked:  # with chunked transfer coding, Content-Length does not apply
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 20):
        raise _Permanent(f"the server sent a malformed Content-Length header {_printable(value)!r}")
    return int(value)


def _write_body(
    response: http.client.HTTPResponse,
    part: Path,
    have: int,
    total: int | None,
    params: DownloadParams,
    watch: _DeadlineWatch,
) -> int:
    """Write the response body to `part`, after its first `have` bytes (0: from the start); return the file's size.

    The file never grows past `params.max_bytes`: a body that would is refused (_Permanent) and the file removed.
    """
    size = have
    over_cap = False
    desc = PurePosixPath(urllib.parse.urlsplit(params.url).path).name
    with part.open("ab" if have else "wb") as out, _progress(total, have, desc) as bar:
        while not over_cap:
            if watch.passed():  # the watch's timer also wakes a read that blocks past it
                raise _Transient("download.deadline passed")
            try:
                # read1: at most one recv() of at most `timeout` seconds, so the clock is checked that often;
                # read(n) waits for all n bytes, however slowly they drip. One byte past the cap shows an excess.
                block = response.read1(min(CHUNK, params.max_bytes - size + 1))
            except _NETWORK_ERRORS as exc:
                raise _network_failure(exc) from None
            if not block:
                if watch.passed():  # the timer shut the socket: a cut body, not the end of one without a length
                    raise _Transient("download.deadline passed")
                return size
            over_cap = size + len(block) > params.max_bytes
            if not over_cap:
                out.write(block)
                size += len(block)
                bar.update(len(block))
    part.unlink()
    raise _Permanent(f"the body runs past download.max_bytes ({params.max_bytes} bytes); nothing was kept")


def _fetch_once(
    opener: urllib.request.OpenerDirector,
    url: str,
    auth: str | None,
    part: Path,
    params: DownloadParams,
    watch: _DeadlineWatch,
) -> None:
    """Append the rest of `url` to `part` (or rewrite it if the server ignores Range); raise _Permanent or
    _Transient when that fails."""
    have = part.stat().st_size if part.exists() else 0
    if have > params.max_bytes:  # left by a run with a larger cap
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    if auth is not None:
        # Unredirected: the credentials go to the host the user named, never on to where it redirects.
        request.add_unredirected_header("Authorization", auth)
    try:
        response = opener.open(request, timeout=min(params.timeout, max(watch.left_s(), 0.01)))
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # nothing left to send: the part file is already whole
            return
        raise _network_failure(exc) from None
    except _NETWORK_ERRORS as exc:
        raise _network_failure(exc) from None
    with response:
        if response.status != 206:  # the server ignored Range (or none was sent): start over
            have = 0
        length = _content_length(response)
        total = have + length if length is not None else None
        if total is not None and total > params.max_bytes:
            raise _Permanent(
                f"the server announces {total} bytes (Content-Length), more than download.max_bytes "
                f"({params.max_bytes}); nothing was read"
            )
        size = _write_body(response, part, have, total, params, watch)
    if total is not None and size < total:
        raise _Transient(f"the connection closed after {size} of {total} bytes")


def _fetch_http(params: DownloadParams, part: Path, backoff_s: float) -> None:
    """Download `params.url` into `part` within `params.deadline`, retrying transient failures `params.retries`
    times and resuming where possible; raise StageError with one line when that fails."""
    shown = _printable(redact_credentials(params.url), limit=None)
    problem = _url_problem(params.url)
    if problem is not None:
        raise StageError(f"download.url {shown} is not a valid http(s) URL: {problem}")
    url, auth = _split_credentials(params.url)
    with _DeadlineWatch(params.deadline) as watch:
        opener = urllib.request.build_opener(
            _CheckedRedirectHandler(), _WatchedHTTPHandler(watch), _WatchedHTTPSHandler(watch)
        )
        for attempt in range(1, params.retries + 2):
            try:
                _fetch_once(opener, url, auth, part, params, watch)
                return
            except (_Permanent, _Transient) as exc:
                failure = exc
            if watch.passed():
                raise StageError(
                    f"download of {shown} did not finish within download.deadline ({params.deadline:g} s, "
                    f"{attempt} attempt(s)); raise it for a slow connection"
                )
            if isinstance(failure, _Permanent):
                raise StageError(f"download of {shown} failed: {failure}")
            if attempt > params.retries:
                raise StageError(
                    f"download of {shown} failed after {attempt} attempts: {failure}; "
                    "for a mirror or a local copy, set download.url (see README)"
                )
            if failure.retry_after_s is not None:
                wait_s, why = min(failure.retry_after_s, RETRY_AFTER_MAX_S), " (the server's Retry-After)"
            else:
                wait_s, why = min(backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S), ""
            if wait_s >= watch.left_s():
                raise StageError(
                    f"download of {shown} failed: {failure}; waiting {wait_s:.1f} s to retry would pass "
                    f"download.deadline ({params.deadline:g} s)"
                )
            print(f"download: attempt {attempt} failed ({failure}); retrying in {wait_s:.1f} s{why}")
            time.sleep(wait_s)


def download_archive(params: DownloadParams, dest: Path, backoff_s: float = BACKOFF_S) -> str:
    """Fetch `params.url` to `dest`, verify the md5 (any case) and return it in lower case; nothing lands at
    `dest` on failure."""
    shown = _printable(redact_credentials(params.url), limit=None)
    try:
        parts = urllib.parse.urlsplit(params.url)
    except ValueError as exc:  # e.g. http://[::1/x
        raise StageError(f"download.url {shown} is not a valid URL: {exc}") from None
    expected = params.md5.lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A partial http download survives a failed run beside the output, keyed by the md5 it should reach.
    part = dest.parent / f".{dest.name}.{expected}.part"
    with atomic_file(dest) as tmp:
        if parts.scheme in FETCHED_SCHEMES:
            _fetch_http(params, part, backoff_s)
            shutil.move(part, tmp)
        elif parts.scheme == "file":
            # urllib would read file://otherhost/path from this machine's /path; a remote host is not reachable.
            if parts.netloc.lower() not in ("", "localhost"):
                raise StageError(
                    f"download.url {shown} names another host: file:// URLs are read on this machine only "
                    "(file:///path or file://localhost/path)"
                )
            copy_local(Path(urllib.request.url2pathname(parts.path)), tmp, params.max_bytes)
        elif parts.scheme == "" or len(parts.scheme) == 1:  # a plain path (or a Windows drive letter)
            copy_local(Path(params.url).expanduser(), tmp, params.max_bytes)
        else:
            raise StageError(f"download.url has unsupported scheme {parts.scheme!r}: use http(s)://, file:// or a path")
        actual = md5_of(tmp)
        if actual != expected:
            raise DataError(f"md5 mismatch for {shown}: expected {expected}, got {actual}; nothing was written")
    return actual
