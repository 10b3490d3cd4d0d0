"""The download stage against hostile or broken servers and URLs: every failure is one line, bounded in bytes,
time and attempts, and never shows the credentials in the URL.

Each server here listens on 127.0.0.1 only and stops on its own: it sends at most ten times the byte cap, drips
for at most a few dozen seconds, and quits at once when the test ends.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import hashlib
import http.client
import http.server
import io
import ipaddress
import re
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cifar10.download import _network_failure, _redirect_problem, _url_problem, download_archive, md5_of
from cifar10.errors import StageError
from tests.conftest import ROOT, download_params, stage_env

CAP = 512 * 1024  # download.max_bytes in these tests, bytes: above the synthetic archive (about 430 KiB)
DEADLINE_S = 2.0  # download.deadline in the tests that reach it
SLACK_S = 5.0  # loose bound on how long past the deadline a failure may take (a loaded 2-core machine)
TOKEN = "s3cret-t0ken"  # the password in URLs that carry credentials
BASIC_AUTH = "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()

Respond = Callable[["_ScriptedHandler"], None]


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's `respond` function and records (path, Authorization) per request.

    HTTP/1.0 (the base class's default): a body without Content-Length ends when the connection closes.
    """

    respond: Respond
    requests: list[tuple[str, str | None]]
    stop: threading.Event  # set when the test ends: every slow answer returns

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # https: the handshake here, not in the accepting thread
            self.request.settimeout(10.0)  # a client silent in the handshake cannot hold this thread for long
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self.requests.append((self.path, self.headers.get("Authorization")))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up, as it may
            self.respond(self)

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Send a whole answer; Content-Length is the body's unless `headers` give one."""
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


class _TLSServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that refuses the certificate ends the handshake: expected, not worth a traceback


@pytest.fixture()
def serve() -> Iterator[Callable[[Respond], tuple[str, list[tuple[str, str | None]]]]]:
    """Yield start(respond) -> (base URL, the list of requests it receives), for servers on 127.0.0.1."""
    stop = threading.Event()
    servers = []

    def start(respond: Respond, tls: ssl.SSLContext | None = None) -> tuple[str, list[tuple[str, str | None]]]:
        requests: list[tuple[str, str | None]] = []
        handler = type(
            "Handler", (_ScriptedHandler,), {"respond": staticmethod(respond), "requests": requests, "stop": stop}
        )
        server = (_TLSServer if tls else http.server.ThreadingHTTPServer)(("127.0.0.1", 0), handler)
        if tls is not None:  # https: each connection's handler does the TLS handshake first (see setup)
            server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", requests

    yield start
    stop.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _serve_archive(path: Path) -> Respond:
    """Answer every request with the file at `path`, whole."""
    return lambda handler: handler.send(200, path.read_bytes())


def _endless_body(handler: _ScriptedHandler) -> None:
    """200 without Content-Length, then zeros until ten times the cap (a stand-in for a body that never ends)."""
    handler.send_response(200)
    handler.end_headers()
    block = bytes(64 * 1024)
    for _ in range(10 * CAP // len(block)):
        if handler.stop.is_set():
            return
        handler.wfile.write(block)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _fail(url: str, tmp_path: Path, backoff_s: float = 0.01, **overrides) -> str:
    """Run a download into tmp_path/raw that must fail with StageError; return its message, checked to be one line.

    Nothing may be left in raw/ but a partial download within max_bytes, kept for the next run to resume.
    """
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    params = download_params(url=url, **{"md5": "0" * 32, "max_bytes": CAP, "retries": 3, **overrides})
    with pytest.raises(StageError) as info:
        download_archive(params, dest, backoff_s=backoff_s)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for name in _leftovers(dest.parent):
        assert name.endswith(".part") and (dest.parent / name).stat().st_size <= params.max_bytes, name
    return message


# ---------------------------------------------------------------- bytes


def test_endless_body_stops_at_max_bytes_and_leaves_nothing(serve, tmp_path: Path):
    base, requests = serve(_endless_body)
    message = _fail(f"{base}/c.tar.gz", tmp_path)
    assert message.endswith(f"failed: the body runs past download.max_bytes ({CAP} bytes); nothing was kept")
    assert _leftovers(tmp_path / "raw") == []  # the partial file is gone too
    assert len(requests) == 1  # a body over the cap is not retried


def test_content_length_over_max_bytes_is_refused_before_reading(serve, tmp_path: Path):
    def announce_too_much(handler: _ScriptedHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10 * CAP))
        handler.end_headers()
        handler.stop.wait(10)  # no body: a client that read one would wait until the deadline

    base, requests = serve(announce_too_much)
    message = _fail(f"{base}/c.tar.gz", tmp_path, deadline=3.0)
    assert f"announces {10 * CAP} bytes (Content-Length), more than download.max_bytes ({CAP}); nothing was read" in (
        message
    )
    assert _leftovers(tmp_path / "raw") == []
    assert len(requests) == 1


@pytest.mark.parametrize("announced", [True, False], ids=["content_length", "until_close"])
def test_a_body_of_exactly_max_bytes_is_accepted_and_one_byte_less_is_not(
    serve, archive, tmp_path: Path, announced: bool
):
    path, md5 = archive
    payload = path.read_bytes()

    def serve_archive(handler: _ScriptedHandler) -> None:
        if announced:
            handler.send(200, payload)
        else:
            handler.send_response(200)
            handler.end_headers()
            handler.wfile.write(payload)

    base, _ = serve(serve_archive)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    exact = download_params(url=f"{base}/c.tar.gz", md5=md5, max_bytes=len(payload))
    assert download_archive(exact, dest) == md5
    dest.unlink()
    message = _fail(f"{base}/c.tar.gz", tmp_path, max_bytes=len(payload) - 1, md5=md5)
    refusal = "announces" if announced else "the body runs past"  # before reading, or at the byte past the cap
    assert refusal in message and f"download.max_bytes ({len(payload) - 1}" in message
    assert _leftovers(tmp_path / "raw") == []


def test_local_file_over_max_bytes_is_refused(archive, tmp_path: Path):
    path, md5 = archive
    message = _fail(str(path), tmp_path, max_bytes=path.stat().st_size - 1, md5=md5)
    assert (
        message == f"{path} holds {path.stat().st_size} bytes, more than download.max_bytes ({path.stat().st_size - 1})"
    )


def test_malformed_content_length_is_one_error_line(serve, tmp_path: Path):
    base, requests = serve(lambda handler: handler.send(200, b"x" * 100, {"Content-Length": "abc"}))
    message = _fail(f"{base}/c.tar.gz", tmp_path)
    assert message == f"download of {base}/c.tar.gz failed: the server sent a malformed Content-Length header 'abc'"
    assert len(requests) == 1


# ---------------------------------------------------------------- time


def test_a_body_dripping_one_byte_per_second_fails_at_the_deadline(serve, tmp_path: Path):
    def drip_body(handler: _ScriptedHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(30):  # 1 byte/s: each read succeeds well within download.timeout (60 s)
            if handler.stop.wait(1.0):
                return
            handler.wfile.write(b"x")

    base, requests = serve(drip_body)
    start = time.monotonic()
    message = _fail(f"{base}/c.tar.gz", tmp_path, deadline=DEADLINE_S)
    assert time.monotonic() - start < DEADLINE_S + SLACK_S
    assert f"did not finish within download.deadline ({DEADLINE_S:g} s, 1 attempt(s))" in message
    assert len(requests) == 1


def _drip_status_line(handler: _ScriptedHandler) -> None:
    """The status line and a header, 2 bytes a second: 85 bytes, 42.5 s."""
    # http.client reads the status line and headers with blocking readline()s: no check between reads helps.
    for byte in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"x" * 60:
        if handler.stop.wait(0.5):
            return
        handler.wfile.write(bytes([byte]))


def test_headers_dripping_one_byte_at_a_time_fail_at_the_deadline(serve, tmp_path: Path):
    base, requests = serve(_drip_status_line)
    start = time.monotonic()
    message = _fail(f"{base}/c.tar.gz", tmp_path, deadline=DEADLINE_S)
    assert time.monotonic() - start < DEADLINE_S + SLACK_S  # the drip alone lasts 42.5 s
    assert f"did not finish within download.deadline ({DEADLINE_S:g} s, 1 attempt(s))" in message
    assert len(requests) == 1


@pytest.fixture(scope="module")
def tls_server_context(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A TLS context for a server on 127.0.0.1 with a self-signed certificate, and that certificate's file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cifar10 test server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, folder / "cert.pem"


# The official URL is https: the same download over TLS, against a server on 127.0.0.1 whose certificate signs itself.


def test_an_untrusted_https_certificate_is_refused_in_one_line_without_retrying(
    serve, archive, tmp_path: Path, monkeypatch, capsys, tls_server_context
):
    base, requests = serve(_serve_archive(archive[0]), tls=tls_server_context[0])
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system's authorities: they never signed this one
    message = _fail(f"{base}/c.tar.gz", tmp_path)  # retries=3: a certificate is not retried
    assert message.startswith(f"download of {base}/c.tar.gz failed: the server's TLS certificate is not valid (")
    assert "self-signed certificate" in message
    assert "retrying" not in capsys.readouterr().out
    assert requests == []  # refused in the handshake: no request was sent


def test_a_trusted_https_certificate_downloads(serve, archive, tmp_path: Path, monkeypatch, tls_server_context):
    context, certificate = tls_server_context
    path, md5 = archive
    base, requests = serve(_serve_archive(path), tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # how a user trusts a proxy's or mirror's authority
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    assert download_archive(download_params(url=f"{base}/c.tar.gz", md5=md5), dest) == md5
    assert dest.read_bytes() == path.read_bytes()
    assert requests == [("/c.tar.gz", None)]


def test_https_headers_dripping_fail_at_the_deadline(serve, tmp_path: Path, monkeypatch, tls_server_context):
    context, certificate = tls_server_context
    base, requests = serve(_drip_status_line, tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    start = time.monotonic()
    message = _fail(f"{base}/c.tar.gz", tmp_path, deadline=DEADLINE_S)
    assert time.monotonic() - start < DEADLINE_S + SLACK_S  # the drip alone lasts 42.5 s
    assert f"did not finish within download.deadline ({DEADLINE_S:g} s, 1 attempt(s))" in message
    assert len(requests) == 1


@pytest.mark.parametrize("form", ["seconds", "http_date"])
def test_retry_after_is_honoured(serve, archive, tmp_path: Path, capsys, form: str):
    path, md5 = archive

    def busy_once(handler: _ScriptedHandler) -> None:
        if len(handler.requests) == 1:
            # The HTTP date has whole seconds: now + 2 s asks for a wait between 1 and 2 s.
            when = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
            handler.send(503, b"busy", {"Retry-After": when})
        else:
            handler.send(200, path.read_bytes())

    base, requests = serve(busy_once)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    start = time.monotonic()
    # backoff_s=0.01: only the server's Retry-After can make the wait last a second
    assert download_archive(download_params(url=f"{base}/c.tar.gz", md5=md5), dest, backoff_s=0.01) == md5
    assert time.monotonic() - start >= 0.9
    assert len(requests) == 2
    assert "(the server's Retry-After)" in capsys.readouterr().out


def test_a_retry_after_beyond_the_deadline_fails_at_once(serve, tmp_path: Path):
    base, requests = serve(lambda handler: handler.send(429, b"later", {"Retry-After": "3600"}))
    start = time.monotonic()
    message = _fail(f"{base}/c.tar.gz", tmp_path, deadline=30.0)
    assert time.monotonic() - start < SLACK_S  # not the 60 s that Retry-After is capped to, nor 30 s
    assert message.endswith("HTTP 429 Too Many Requests; waiting 60.0 s to retry would pass download.deadline (30 s)")
    assert len(requests) == 1


# ---------------------------------------------------------------- what is retried


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 600])  # 600: past the 5xx range
def test_client_errors_fail_after_one_request(serve, tmp_path: Path, capsys, status: int):
    base, requests = serve(lambda handler: handler.send(status, b"no"))
    message = _fail(f"{base}/c.tar.gz", tmp_path)
    assert message.startswith(f"download of {base}/c.tar.gz failed: HTTP {status} ")
    assert len(requests) == 1
    assert "retrying" not in capsys.readouterr().out


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_timeouts_throttling_and_server_errors_are_retried(serve, archive, tmp_path: Path, status: int):
    path, md5 = archive

    def fail_once(handler: _ScriptedHandler) -> None:
        if len(handler.requests) == 1:
            handler.send(status, b"later")
        else:
            handler.send(200, path.read_bytes())

    base, requests = serve(fail_once)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    assert download_archive(download_params(url=f"{base}/c.tar.gz", md5=md5), dest, backoff_s=0.01) == md5
    assert len(requests) == 2


def test_retry_after_is_ignored_on_other_server_errors(serve, archive, tmp_path: Path, capsys):
    # Only 429 and 503 carry a wait the server means; a 500's Retry-After of an hour gets the usual backoff.
    path, md5 = archive

    def error_once(handler: _ScriptedHandler) -> None:
        if len(handler.requests) == 1:
            handler.send(500, b"oops", {"Retry-After": "3600"})
        else:
            handler.send(200, path.read_bytes())

    base, requests = serve(error_once)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    params = download_params(url=f"{base}/c.tar.gz", md5=md5, deadline=30.0)
    assert download_archive(params, dest, backoff_s=0.01) == md5
    assert len(requests) == 2
    assert "retrying in 0.0 s\n" in capsys.readouterr().out  # the backoff, not the server's hour


def test_a_retry_after_date_already_past_retries_at_once(serve, archive, tmp_path: Path, capsys):
    path, md5 = archive

    def busy_once(handler: _ScriptedHandler) -> None:
        if len(handler.requests) == 1:
            handler.send(503, b"busy", {"Retry-After": email.utils.formatdate(time.time() - 3600, usegmt=True)})
        else:
            handler.send(200, path.read_bytes())

    base, _ = serve(busy_once)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    assert download_archive(download_params(url=f"{base}/c.tar.gz", md5=md5), dest, backoff_s=5.0) == md5
    assert "retrying in 0.0 s (the server's Retry-After)" in capsys.readouterr().out


def test_a_refused_connection_is_retried_and_named(tmp_path: Path, capsys):
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = _fail(f"http://127.0.0.1:{port}/c.tar.gz", tmp_path, retries=1)
    assert message.startswith(f"download of http://127.0.0.1:{port}/c.tar.gz failed after 2 attempts: ")
    assert "Connection refused" in message
    assert "attempt 1 failed" in capsys.readouterr().out


def test_a_connection_reset_in_the_body_is_retried_and_named(serve, tmp_path: Path):
    def reset_mid_body(handler: _ScriptedHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(b"x" * 1000)
        handler.wfile.flush()
        handler.stop.wait(0.2)  # the client has read the first bytes and waits in the body
        # SO_LINGER with a zero timeout: close() sends a reset instead of an orderly end of stream.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True

    base, requests = serve(reset_mid_body)
    message = _fail(f"{base}/c.tar.gz", tmp_path, retries=1)
    assert message.startswith(f"download of {base}/c.tar.gz failed after 2 attempts: ")
    assert "failed after 2 attempts: [Errno 104] Connection reset by peer; " in message, message
    assert len(requests) == 2


@pytest.mark.parametrize(
    ("digits", "refusal"),
    [(20, "announces 99999999999999999999 bytes (Content-Length)"), (21, "malformed Content-Length header")],
)
def test_a_content_length_of_twenty_digits_is_read_and_longer_ones_are_malformed(
    serve, tmp_path: Path, digits: int, refusal: str
):
    base, _ = serve(lambda handler: handler.send(200, b"x", {"Content-Length": "9" * digits}))
    assert refusal in _fail(f"{base}/c.tar.gz", tmp_path)


def _ranged_server(serve, payload: bytes) -> tuple[str, list[str | None]]:
    """Serve `payload` honouring `Range: bytes=N-` (416 where N is its end); return (URL, each request's Range)."""
    ranges: list[str | None] = []

    def ranged(handler: _ScriptedHandler) -> None:
        asked = handler.headers.get("Range")
        ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        if start >= len(payload):
            handler.send(416, b"", {"Content-Range": f"bytes */{len(payload)}"})
        elif start:
            handler.send(206, payload[start:], {"Content-Range": f"bytes {start}-{len(payload) - 1}/{len(payload)}"})
        else:
            handler.send(200, payload)

    base, _ = serve(ranged)
    return f"{base}/c.tar.gz", ranges


def _part_of(dest: Path, md5: str) -> Path:
    """Where download_archive keeps a partial http download of `dest` between runs."""
    return dest.parent / f".{dest.name}.{md5}.part"


# ---------------------------------------------------------------- what a terminal shows

PROGRESS_BYTES = 10_000_000  # in binary units 9.54 MiB (decimal ones would read 10.0 M)


class _Terminal(io.StringIO):
    """stderr as a terminal: the progress bar draws on a terminal only."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("source", ["http", "http_resumed", "file"])
def test_a_terminal_sees_a_progress_bar_in_binary_units_that_ends_at_the_whole_size(
    serve, tmp_path: Path, monkeypatch, source: str
):
    payload = (bytes(range(256)) * (PROGRESS_BYTES // 256 + 1))[:PROGRESS_BYTES]
    md5 = hashlib.md5(payload).hexdigest()
    url, ranges = _ranged_server(serve, payload)
    local = tmp_path / "local.tar.gz"
    local.write_bytes(payload)
    if source == "file":
        url = str(local)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    if source == "http_resumed":
        dest.parent.mkdir()
        _part_of(dest, md5).write_bytes(payload[:4_000_000])  # an earlier run stopped after 4 MB
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download_archive(download_params(url=url, md5=md5, max_bytes=2 * PROGRESS_BYTES, retries=0), dest)
    assert dest.read_bytes() == payload
    last = terminal.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    name = "local.tar.gz" if source == "file" else "c.tar.gz"
    # The file's name, 100% of a known size, bytes in binary units (M = MiB), a rate in bytes per second.
    assert re.fullmatch(rf"{re.escape(name)}: 100%\|[^|]*\| 9\.54M/9\.54M \[[^]]*B/s\]", last), last
    assert ranges == {"http": [None], "http_resumed": ["bytes=4000000-"], "file": []}[source]


@pytest.mark.parametrize("length", [200, 201])
def test_a_servers_reason_phrase_is_quoted_printable_and_cut_past_200_characters(serve, tmp_path: Path, length: int):
    reason = "Not\x1b[2JFound" + "r" * (length - 12)  # 12 + the r's: `length` characters, a terminal escape in them

    def answer(handler: _ScriptedHandler) -> None:
        handler.send_response(404, reason)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    base, _ = serve(answer)
    shown = reason.replace("\x1b", " ")
    shown = shown if length <= 200 else shown[:200] + "..."
    assert _fail(f"{base}/c.tar.gz", tmp_path) == f"download of {base}/c.tar.gz failed: HTTP 404 {shown}"


def test_the_backoff_doubles_and_the_attempts_are_retries_plus_one(serve, tmp_path: Path, capsys):
    base, requests = serve(lambda handler: handler.send(503, b"busy"))  # no Retry-After: the usual backoff
    message = _fail(f"{base}/c.tar.gz", tmp_path, backoff_s=0.1, retries=3)
    assert message.startswith(f"download of {base}/c.tar.gz failed after 4 attempts: HTTP 503 ")
    assert message.endswith("; for a mirror or a local copy, set download.url (see README)")
    assert re.findall(r"retrying in ([0-9.]+) s", capsys.readouterr().out) == ["0.1", "0.2", "0.4"]
    assert len(requests) == 4


def test_every_printable_ascii_character_may_stand_in_a_url(serve, archive, tmp_path: Path):
    path, md5 = archive
    base, requests = serve(_serve_archive(path))
    url = f"{base}/~mirror/cifar!10.tar.gz"  # "!" and "~": the two ends of printable ASCII
    assert download_archive(download_params(url=url, md5=md5), tmp_path / "raw" / "c.tar.gz") == md5
    assert [p for p, _ in requests] == ["/~mirror/cifar!10.tar.gz"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("{base}/a b.tar.gz", "it holds a space, a control character or a non-ASCII character"),
        ("{base}/caf\u00e9.tar.gz", "it holds a space, a control character or a non-ASCII character"),
        ("http://[::1/c.tar.gz", "Invalid IPv6 URL"),
        ("http://127.0.0.1:99999/c.tar.gz", "it is malformed (an invalid port)"),
        ("https://bob:ab/c+d==@mirror.org/x", "it is malformed (an invalid port)"),  # the token is not echoed
        ("http:///c.tar.gz", "it names no host"),
    ],
    ids=["space", "non_ascii", "unclosed_ipv6", "bad_port", "token_with_slash", "no_host"],
)
def test_malformed_urls_fail_before_any_request(serve, tmp_path: Path, capsys, url: str, why: str):
    base, requests = serve(lambda handler: handler.send(404))
    message = _fail(url.format(base=base), tmp_path)
    assert why in message and message.startswith("download.url ")
    if why.startswith("it holds"):  # the whole advice, which the message ends with
        assert message.endswith(f"{why} (percent-encode it: %20)")
    assert "ab/c+d" not in message  # a token holding "/" is redacted too, and not echoed by the URL parser
    assert requests == []
    assert "retrying" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://mirror.org/c.tar.gz", None),
        ("HTTP://[::1]:8080/c.tar.gz", None),  # the scheme in capitals, a bracketed IPv6 host and a port
        (
            "http://a b/c.tar.gz",
            "it holds a space, a control character or a non-ASCII character (percent-encode it: %20)",
        ),
        ("http://[::1/c.tar.gz", "it is malformed (Invalid IPv6 URL)"),
        ("http://[abc]/c.tar.gz", "it is malformed (Invalid IPv6 URL)"),
        ("http://h:ab/c.tar.gz", "it is malformed (an invalid port)"),
        ("ftp://mirror.org/c.tar.gz", "only http:// and https:// are fetched"),
        ("http:///c.tar.gz", "it names no host"),
    ],
)
def test_the_url_check_names_each_problem(url: str, problem: str | None):
    # The http(s) fetcher's own check, whole: download_archive refuses some of these earlier, in its own words.
    assert _url_problem(url) == problem


@pytest.mark.parametrize(
    ("exc", "kind", "shown"),
    [
        (urllib.error.URLError("no host given"), "_Permanent", "no host given"),  # urllib's own refusal
        (
            http.client.InvalidURL("URL can't contain control characters"),
            "_Permanent",
            "malformed URL (URL can't contain control characters)",
        ),
        (urllib.error.URLError(ConnectionRefusedError()), "_Transient", "ConnectionRefusedError"),  # no text: its type
        (http.client.RemoteDisconnected(), "_Transient", "RemoteDisconnected"),
        (TimeoutError("timed out"), "_Transient", "timed out"),
        (
            urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known")),
            "_Permanent",
            "the host name does not resolve (Name or service not known)",
        ),
    ],
    ids=["urllib_refusal", "invalid_url", "refused_without_text", "remote_disconnected", "timeout", "no_such_host"],
)
def test_each_network_failure_is_sorted_and_named(exc: Exception, kind: str, shown: str):
    # What the fetcher makes of an exception: retried (_Transient) or not (_Permanent), and the words it shows.
    failure = _network_failure(exc)
    assert type(failure).__name__ == kind
    assert str(failure) == shown


def test_an_unknown_host_fails_at_once(tmp_path: Path, capsys):
    host = "cifar-archive.invalid"  # RFC 2606: never resolves
    try:
        socket.getaddrinfo(host, 80)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # no resolver answers here: a lookup that may pass is retried
            pytest.skip("no DNS resolver answers on this machine")
    message = _fail(f"http://{host}/c.tar.gz", tmp_path, backoff_s=5.0)
    assert message.startswith(f"download of http://{host}/c.tar.gz failed: the host name does not resolve")
    assert "retrying" not in capsys.readouterr().out


# ---------------------------------------------------------------- where it goes


@pytest.mark.parametrize(
    "target",
    ["ftp://127.0.0.1/c.tar.gz", "file:///etc/passwd", "http://user:" + TOKEN + "@127.0.0.1/c.tar.gz"],
    ids=["ftp", "file", "credentials"],
)
@pytest.mark.parametrize("header", ["Location", "URI"])  # urllib also follows the legacy `URI:` header
def test_redirects_outside_http_are_refused(serve, tmp_path: Path, target: str, header: str):
    base, requests = serve(lambda handler: handler.send(302, b"", {header: target}))
    message = _fail(f"{base}/c.tar.gz", tmp_path)
    assert message.startswith(f"download of {base}/c.tar.gz failed: the server redirected to ")
    assert TOKEN not in message
    assert len(requests) == 1  # the target was never requested, nor the redirect retried


def test_a_redirect_without_a_target_is_a_plain_http_error(serve, tmp_path: Path):
    base, requests = serve(lambda handler: handler.send(302, b""))
    message = _fail(f"{base}/c.tar.gz", tmp_path)
    assert message == f"download of {base}/c.tar.gz failed: HTTP 302 Found"
    assert len(requests) == 1


def test_a_redirect_to_a_malformed_url_is_named_without_its_credentials():
    problem = _redirect_problem("http://example.org/c.tar.gz", f"http://user:{TOKEN}@[::1/c.tar.gz")
    assert problem == "the server redirected to a malformed URL http://***@[::1/c.tar.gz"


def test_https_to_http_redirects_are_refused_and_upgrades_followed():
    # The rule the redirect handler applies, checked directly: a redirect across schemes needs two servers.
    assert "from https to http://mirror.example/c.tar.gz" in _redirect_problem(
        "https://example.org/c.tar.gz", "http://mirror.example/c.tar.gz"
    )
    assert _redirect_problem("http://example.org/c.tar.gz", "https://mirror.example/c.tar.gz") is None
    assert _redirect_problem("https://example.org/a/c.tar.gz", "../b/c.tar.gz") is None


def test_a_redirect_body_is_never_read(serve, archive, tmp_path: Path):
    path, md5 = archive

    def redirect_with_endless_body(handler: _ScriptedHandler) -> None:
        if handler.path == "/c.tar.gz":
            handler.send(200, path.read_bytes())
            return
        handler.send_response(302)
        handler.send_header("Location", "/c.tar.gz")
        handler.end_headers()
        for _ in range(100):  # urllib would read this body whole before following: 10 s, past the deadline
            if handler.stop.wait(0.1):
                return
            handler.wfile.write(b"x")

    base, requests = serve(redirect_with_endless_body)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    params = download_params(url=f"{base}/moved", md5=md5, deadline=5.0)
    assert download_archive(params, dest, backoff_s=0.01) == md5
    assert [p for p, _ in requests] == ["/moved", "/c.tar.gz"]


def test_file_urls_naming_another_host_are_refused(archive, tmp_path: Path):
    path, md5 = archive
    message = _fail(f"file://otherhost{path}", tmp_path, md5=md5)
    assert message.startswith(f"download.url file://otherhost{path} names another host")
    dest = tmp_path / "out.tar.gz"
    assert download_archive(download_params(url=f"file://localhost{path}", md5=md5), dest) == md5


def test_credentials_go_to_the_named_host_only_and_never_into_a_message(serve, archive, tmp_path: Path, capsys):
    path, md5 = archive

    def guarded(handler: _ScriptedHandler) -> None:
        if handler.path == "/busy":
            handler.send(503, b"busy")
        elif handler.path == "/hop":
            handler.send(302, b"", {"Location": "/private"})
        elif handler.headers.get("Authorization") == BASIC_AUTH:
            handler.send(200, path.read_bytes())
        else:
            handler.send(401, b"who are you")

    base, requests = serve(guarded)
    host = base.removeprefix("http://")
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    # Sent as HTTP Basic auth:
    assert download_archive(download_params(url=f"http://user:{TOKEN}@{host}/private", md5=md5), dest) == md5
    assert requests[-1] == ("/private", BASIC_AUTH)
    dest.unlink()
    messages = [
        _fail(f"http://user:{TOKEN}@{host}/busy", tmp_path, retries=1),  # retried, then given up
        _fail(f"http://user:{TOKEN}@{host}/private", tmp_path),  # md5 mismatch
        _fail(f"http://user:{TOKEN}@{host}/hop", tmp_path),  # not forwarded through a redirect: 401
        _fail(f"http://user:{TOKEN}@[::1/c.tar.gz", tmp_path),  # malformed
        _fail(f"http://user:{TOKEN}@{host}/a b", tmp_path),  # malformed
    ]
    assert requests[-1] == ("/private", None)  # the hop's target got no credentials
    for message in messages:
        assert TOKEN not in message and "//***@" in message
    out, err = capsys.readouterr()
    assert "attempt 1 failed" in out
    assert TOKEN not in out + err


@pytest.mark.parametrize(
    ("userinfo", "sent"),
    [("user", "user:"), (f"user:p@ss{TOKEN}", f"user:p@ss{TOKEN}"), ("us%40er:p%3Ass", "us@er:p:ss")],
    ids=["no_password", "raw_at_in_password", "percent_encoded"],
)
def test_credentials_are_sent_as_written_to_the_host_after_the_last_at(
    serve, archive, tmp_path: Path, userinfo: str, sent: str
):
    path, md5 = archive
    expected = "Basic " + base64.b64encode(sent.encode()).decode()
    base, requests = serve(_serve_archive(path))
    url = f"http://{userinfo}@{base.removeprefix('http://')}/c.tar.gz"
    assert download_archive(download_params(url=url, md5=md5), tmp_path / "raw" / "c.tar.gz") == md5
    assert requests == [("/c.tar.gz", expected)]


@pytest.mark.parametrize(
    ("left", "ranges"),
    [
        (0, [None]),  # nothing left over: a plain request, no Range
        (1000, ["bytes=1000-"]),  # the rest only
        (-1, ["bytes={size}-"]),  # a part already whole (the run died before moving it): the server's 416 ends it
        (-2, [None]),  # larger than download.max_bytes (a run with a larger cap): dropped, fetched from the start
    ],
    ids=["fresh", "resumed", "already_whole", "over_the_cap"],
)
def test_a_part_left_by_an_earlier_run_is_resumed_or_dropped(serve, archive, tmp_path: Path, left: int, ranges):
    path, md5 = archive
    payload = path.read_bytes()
    url, seen = _ranged_server(serve, payload)
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    dest.parent.mkdir()
    part = _part_of(dest, md5)
    if left > 0:
        part.write_bytes(payload[:left])
    elif left == -1:
        part.write_bytes(payload)
    elif left == -2:
        part.write_bytes(payload + b"x")
    params = download_params(url=url, md5=md5, max_bytes=len(payload), retries=0)
    assert download_archive(params, dest) == md5
    assert seen == [r.format(size=len(payload)) if r else None for r in ranges]
    assert _leftovers(dest.parent) == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------- the real stage


def _run_download_stage(tmp_path: Path, **download: object) -> subprocess.CompletedProcess:
    """Run `python -m stages.download` with these download params, no file larger than CAP and 1 GiB of memory.

    The file-size limit makes a regression fail at its first byte past the cap instead of filling the disk
    (run_limited limits memory only).
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"].update({"md5": "0" * 32, "max_bytes": CAP, "retries": 1, "deadline": 20.0, **download})
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (CAP, CAP))
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    out = tmp_path / "raw" / "cifar-10-python.tar.gz"
    return subprocess.run(
        [sys.executable, "-m", "stages.download", str(out), "--params", str(params_path)],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )


@pytest.mark.parametrize(
    ("respond", "path", "expected"),
    [
        (_endless_body, "/c.tar.gz", "the body runs past download.max_bytes"),
        (lambda handler: handler.send(200, b"x", {"Content-Length": "abc"}), "/c.tar.gz", "malformed Content-Length"),
        (lambda handler: handler.send(503, b"busy"), "/busy", "failed after 2 attempts: HTTP 503"),
    ],
    ids=["endless_body", "bad_content_length", "credentials_and_503"],
)
def test_the_stage_prints_one_error_line_and_exits_1(serve, tmp_path: Path, respond: Respond, path: str, expected):
    base, requests = serve(respond)
    host = base.removeprefix("http://")
    result = _run_download_stage(tmp_path, url=f"http://user:{TOKEN}@{host}{path}")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: download of http://***@{host}{path} "), result.stderr
    assert expected in lines[0]
    assert TOKEN not in result.stdout + result.stderr
    assert _leftovers(tmp_path / "raw") == []
    assert len(requests) == (2 if path == "/busy" else 1)


def test_the_stage_copies_a_file_url_on_localhost(archive, tmp_path: Path):
    path, md5 = archive
    shutil.copy(path, tmp_path / "c.tar.gz")
    result = _run_download_stage(tmp_path, url=f"file://localhost{tmp_path / 'c.tar.gz'}", md5=md5.upper())
    assert result.returncode == 0, result.stderr
    assert md5_of(tmp_path / "raw" / "cifar-10-python.tar.gz") == md5


def test_a_tls_handshake_dripping_one_byte_at_a_time_fails_at_the_deadline(tmp_path: Path):
    # A TLS record header announcing 16 KiB of handshake, then one byte every 0.5 s: each read of the handshake
    # gets data well within download.timeout, so only the deadline watch on the TCP socket, set before the
    # handshake, ends it in time (the drip alone would last over two hours).
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"\x16\x03\x03\x40\x00")
                while not stop.wait(0.5):
                    conn.sendall(b"\x00")

    threading.Thread(target=drip, daemon=True).start()
    try:
        start = time.monotonic()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/c.tar.gz"
        message = _fail(url, tmp_path, deadline=DEADLINE_S, timeout=5.0, retries=0)
        assert time.monotonic() - start < DEADLINE_S + SLACK_S
        assert "did not finish within download.deadline" in message
    finally:
        stop.set()
        listener.close()
