"""The download stage: http, file:// and plain paths; checksum refusal leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cifar10.download import download_archive, md5_of
from cifar10.errors import DataError, StageError
from tests.conftest import download_params


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_http_download_verifies_and_lands(archive, http_server, tmp_path: Path):
    path, md5 = archive
    base, root = http_server
    shutil.copy(path, root / "cifar.tar.gz")
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    assert download_archive(download_params(url=f"{base}/cifar.tar.gz", md5=md5), dest) == md5
    assert md5_of(dest) == md5
    assert _leftovers(dest.parent) == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("form", ["file_url", "plain_path"])
def test_local_sources(archive, tmp_path: Path, form: str):
    path, md5 = archive
    url = path.as_uri() if form == "file_url" else str(path)
    dest = tmp_path / "out.tar.gz"
    download_archive(download_params(url=url, md5=md5), dest)
    assert dest.read_bytes() == path.read_bytes()


def test_checksum_mismatch_gives_both_sums_and_leaves_nothing(archive, http_server, tmp_path: Path):
    path, md5 = archive
    base, root = http_server
    shutil.copy(path, root / "cifar.tar.gz")
    wrong = "0" * 32
    dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
    for url in (f"{base}/cifar.tar.gz", str(path)):
        with pytest.raises(DataError) as info:
            download_archive(download_params(url=url, md5=wrong), dest)
        assert f"expected {wrong}, got {md5}" in str(info.value)
        assert _leftovers(dest.parent) == []


def test_a_failed_run_keeps_the_previous_good_file(archive, tmp_path: Path):
    path, md5 = archive
    dest = tmp_path / "out.tar.gz"
    download_archive(download_params(url=str(path), md5=md5), dest)
    with pytest.raises(DataError):
        download_archive(download_params(url=str(path), md5="f" * 32), dest)
    assert md5_of(dest) == md5


def test_md5_in_upper_case_is_accepted_and_compared_without_case(archive, http_server, tmp_path: Path):
    path, md5 = archive
    base, root = http_server
    shutil.copy(path, root / "cifar.tar.gz")
    for url in (f"{base}/cifar.tar.gz", str(path)):
        dest = tmp_path / "raw" / "cifar-10-python.tar.gz"
        assert download_archive(download_params(url=url, md5=md5.upper()), dest) == md5
        assert _leftovers(dest.parent) == ["cifar-10-python.tar.gz"]
        dest.unlink()
    # One digit off, in upper case: still refused, and the message gives both sums in lower case.
    wrong = (md5[:-1] + ("0" if md5[-1] != "0" else "1")).upper()
    with pytest.raises(DataError, match=f"expected {wrong.lower()}, got {md5}"):
        download_archive(download_params(url=str(path), md5=wrong), tmp_path / "raw" / "cifar-10-python.tar.gz")
    assert _leftovers(tmp_path / "raw") == []


def test_missing_sources_and_unknown_schemes(http_server, tmp_path: Path, capsys):
    base, _ = http_server
    dest = tmp_path / "out.tar.gz"
    with pytest.raises(StageError, match=r"failed: HTTP 404 "):  # retries=3: a 404 is still not retried
        download_archive(download_params(url=f"{base}/nope.tar.gz", md5="0" * 32, retries=3), dest, backoff_s=0.01)
    assert "retrying" not in capsys.readouterr().out
    with pytest.raises(StageError, match="which is not a file"):
        download_archive(download_params(url=str(tmp_path / "nope.tar.gz"), md5="0" * 32), dest)
    with pytest.raises(StageError, match="unsupported scheme 'ftp'"):
        download_archive(download_params(url="ftp://example.org/c.tar.gz", md5="0" * 32), dest)
    assert _leftovers(tmp_path) == ["www"]


def test_a_local_file_of_exactly_max_bytes_is_copied_whole(tmp_path: Path, monkeypatch):
    import cifar10.download as download

    monkeypatch.setattr(download, "CHUNK", 7)  # several blocks, the last one short
    source = tmp_path / "a.tar.gz"
    source.write_bytes(bytes(range(50)))
    download.copy_local(source, tmp_path / "copy", max_bytes=50)
    assert (tmp_path / "copy").read_bytes() == bytes(range(50))
    with pytest.raises(StageError) as info:
        download.copy_local(source, tmp_path / "copy2", max_bytes=49)
    assert str(info.value) == f"{source} holds 50 bytes, more than download.max_bytes (49)"


def test_a_local_file_growing_past_max_bytes_while_copied_is_refused(tmp_path: Path, monkeypatch):
    """stat() said it fits; the bytes read say otherwise (a log still being written, a lying mount)."""
    import os

    import cifar10.download as download

    monkeypatch.setattr(download, "CHUNK", 4)
    source = tmp_path / "growing.tar.gz"
    source.write_bytes(b"x" * 40)
    real_stat = Path.stat

    def stat_before_growth(self, *args, **kwargs):
        result = real_stat(self, *args, **kwargs)
        if self == source:
            return os.stat_result((*result[:6], 10, *result[7:]))  # st_size, as it was a moment ago
        return result

    monkeypatch.setattr(Path, "stat", stat_before_growth)
    with pytest.raises(StageError) as info:
        download.copy_local(source, tmp_path / "copy", max_bytes=20)
    assert str(info.value) == f"{source} grew past download.max_bytes (20) while being copied"
