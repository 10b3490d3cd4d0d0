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
