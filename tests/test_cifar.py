"""The archive reader: exact layout, NHWC conversion, and refusal of anything unexpected."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cifar10.archive import (
    CIFAR10,
    MAX_META_BYTES,
    layout_of,
    load_test,
    load_test_sets,
    load_train,
    parse_batch,
    read_archive,
    safe_unpickle,
)
from cifar10.dataset import CLASS_NAMES
from cifar10.errors import DataError
from tests.conftest import PER_BATCH, TEST_IMAGES, synthetic_batches, synthetic_cifar100, write_archive


def test_reads_all_batches_as_nhwc_uint8(archive):
    path, _ = archive
    train, test = load_train(path), load_test(path)
    assert train.images.shape == (5 * PER_BATCH, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (TEST_IMAGES, 32, 32, 3)
    assert train.labels.dtype == np.uint8 and set(train.labels) == set(range(10))
    source = synthetic_batches()
    # Row layout is R plane, G plane, B plane, each 32x32 row-major: pixel (row 3, col 5) of image 7.
    row = source["data_batch_2"][b"data"][7]
    expected = [row[0 * 1024 + 3 * 32 + 5], row[1 * 1024 + 3 * 32 + 5], row[2 * 1024 + 3 * 32 + 5]]
    assert train.images[PER_BATCH + 7, 3, 5].tolist() == [int(v) for v in expected]
    assert train.labels[PER_BATCH + 7] == source["data_batch_2"][b"labels"][7]


def test_a_batch_larger_than_one_read_comes_back_byte_for_byte(tmp_path: Path):
    # 400 images: 1.2 MB of pixels, more than the 1 MiB the reader asks of gzip at a time (archive.READ_CHUNK_BYTES).
    source = synthetic_batches(per_batch=400, test_images=10)
    path = tmp_path / "big.tar.gz"
    write_archive(path, source)
    read = read_archive(path, ("data_batch_3",))
    assert sorted(read) == ["data_batch_3", "label_names"]  # the batches asked for, and no others
    batch = read["data_batch_3"]
    planes = source["data_batch_3"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(batch.images, planes) and batch.labels.tolist() == source["data_batch_3"][b"labels"]


def test_label_names_come_from_the_archive(archive):
    assert read_archive(archive[0])["label_names"] == tuple(CLASS_NAMES)


class _CreatesFile:
    """Unpickling this runs `open(path, 'w')`: a stand-in for any code a crafted pickle could run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path: Path):
    # First show the payload is live: a plain unpickler creates the file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(str(control)), protocol=2)).close()
    assert control.exists()

    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _CreatesFile(str(marker)), b"labels": []}, protocol=2)
    with pytest.raises(DataError, match=r"refused to load (io|builtins)\.open"):
        safe_unpickle(payload, "data_batch_1")
    assert not marker.exists()
    # The same through the whole archive reader.
    members = synthetic_batches()
    members["data_batch_3"] = {b"data": _CreatesFile(str(marker)), b"labels": []}
    bad = tmp_path / "bad.tar.gz"
    write_archive(bad, members)
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR batch pickle"):
        read_archive(bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ([1, 2, 3], "list"),
        ([b"data", b"labels"], "list"),  # iterable of bytes, like a dict's keys, and still no dict
        ({"data": 1}, "dict"),  # str keys: what Python 3 pickles, never the real archive
        (np.zeros((2, 3072), np.uint8), "a numpy object"),  # an array at the top, never called into being
    ],
    ids=["list", "list_of_bytes", "str_keys", "array"],
)
def test_a_pickle_of_another_type_is_refused(value, kind):
    with pytest.raises(DataError) as info:
        safe_unpickle(pickle.dumps(value, protocol=2), "test_batch")
    assert str(info.value) == f"test_batch must hold a dict with bytes keys, got {kind}"


def test_another_type_inside_is_refused():
    with pytest.raises(DataError, match="refused to load"):
        safe_unpickle(pickle.dumps({b"x": np.float64(1.0)}, protocol=2), "test_batch")


def _with(batch: str, changes: dict) -> dict:
    members = synthetic_batches()
    members[batch] = {**members[batch], **changes}
    return members


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            {k: v for k, v in synthetic_batches().items() if k != "data_batch_4"},
            "has no member cifar-10-batches-py/data_batch_4",
        ),
        (
            _with("data_batch_1", {b"data": np.zeros((20, 3000), np.uint8)}),
            "data_batch_1: data must be a uint8 array of shape (N, 3072), got shape (20, 3000)",
        ),
        (
            _with("data_batch_1", {b"data": np.zeros((20, 3072), np.float32)}),
            "data_batch_1: data must be a uint8 array of shape (N, 3072), got dtype 'f4'",
        ),
        (
            _with("data_batch_1", {b"data": [0] * 3072}),  # not an array at all: its type, and no shape
            "data_batch_1: data must be a uint8 array of shape (N, 3072), got list None",
        ),
        (_with("test_batch", {b"labels": [12] * TEST_IMAGES}), "test_batch: labels must be in 0..9, got 12"),
        (_with("data_batch_2", {b"labels": [1, 2]}), "data_batch_2: 2 labels for 20 images"),
        (_with("batches.meta", {b"label_names": [b"a", b"b"]}), "label_names must be the 10 CIFAR-10 classes"),
    ],
)
def test_bad_batches_are_refused(tmp_path: Path, members, message):
    path = tmp_path / "a.tar.gz"
    write_archive(path, members)
    with pytest.raises(DataError) as info:
        read_archive(path)
    assert message in str(info.value)


@pytest.mark.parametrize("first_name_chars", [16, 17], ids=["shown_whole", "cut"])
def test_a_refused_value_is_shown_whole_up_to_120_characters_and_cut_past_them(tmp_path: Path, first_name_chars):
    # Wrong class names, shown as the first six in a list: 1 + (16 + 2) + 5 * (15 + 2) + 5 * 2 + len(", ...]")
    # = 120 characters with a 16-character first name; a 17-character one makes 121, cut to 117 and "...".
    names = ["a" * first_name_chars] + ["b" * 15] * 9
    path = tmp_path / "a.tar.gz"
    write_archive(path, _with("batches.meta", {b"label_names": [n.encode() for n in names]}))
    with pytest.raises(DataError) as info:
        read_archive(path)
    shown = str(info.value).split(" must be the 10 CIFAR-10 classes in order, got ", 1)[1]
    whole = "[" + ", ".join(repr(n) for n in names[:6]) + ", ...]"
    assert shown == (whole if len(whole) <= 120 else whole[:117] + "...")
    assert len(whole) == 119 + first_name_chars - 15


def test_not_gzip_truncated_and_escaping_members(tmp_path: Path, archive):
    not_gzip = tmp_path / "plain.tar.gz"
    not_gzip.write_text("<html>404 Not Found</html>")
    with pytest.raises(DataError, match="is not a readable gzip-compressed tar archive"):
        read_archive(not_gzip)

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive[0].read_bytes()[: archive[0].stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt|not a readable"):
        read_archive(truncated)

    escaping = tmp_path / "escaping.tar.gz"
    write_archive(escaping, synthetic_batches(), extra={"cifar-10-batches-py/../../evil.sh": b"rm -rf /"})
    with pytest.raises(DataError, match="points outside the archive folder"):
        read_archive(escaping)
    assert not (tmp_path.parent / "evil.sh").exists()


def test_members_are_never_extracted(tmp_path: Path, archive, monkeypatch):
    monkeypatch.chdir(tmp_path)
    read_archive(archive[0])
    assert list(tmp_path.iterdir()) == []
    with tarfile.open(archive[0]) as tar:  # the reader saw real files, not an empty archive
        assert len([m for m in tar if m.isfile()]) == 7


def test_test_batch_alone_matches_the_full_read(archive):
    full = read_archive(archive[0])["test_batch"]
    alone = load_test(archive[0])
    assert np.array_equal(alone.images, full.images) and np.array_equal(alone.labels, full.labels)


@pytest.mark.parametrize(
    ("data", "got"),
    [
        (np.zeros((PER_BATCH, 3072), np.float32), "float32 (20, 3072)"),
        (np.zeros(3072, np.uint8), "uint8 (3072,)"),  # one flat row: no second dimension to check
        (np.zeros((PER_BATCH, 3000), np.uint8), "uint8 (20, 3000)"),
        ([0] * 3072, "list None"),
    ],
    ids=["float32", "one_dimension", "3000_columns", "list"],
)
def test_parse_batch_names_the_data_it_refuses(data, got):
    # safe_unpickle only ever hands over uint8 (N, 3072) arrays; parse_batch checks again for any other caller.
    with pytest.raises(DataError) as info:
        parse_batch({b"data": data, b"labels": [0] * PER_BATCH}, "data_batch_1", CIFAR10, CLASS_NAMES)
    assert str(info.value) == f"data_batch_1: data must be a uint8 array of shape (N, 3072), got {got}"


def test_an_unknown_layout_is_named():
    with pytest.raises(DataError) as info:
        layout_of("cifar10", "coarse")
    assert str(info.value) == "no archive layout for dataset 'cifar10' with 'coarse' labels"


def test_the_training_and_test_readers_read_only_their_own_batches(tmp_path: Path):
    # Each reader unpickles only the batches it returns: a refused pickle in the other batches goes unread.
    source = synthetic_batches()
    bad = b"\x80\x02\xfe."  # an opcode that does not exist: safe_unpickle refuses it
    no_train, no_test = tmp_path / "no_train.tar.gz", tmp_path / "no_test.tar.gz"
    write_archive(no_train, source, extra={"cifar-10-batches-py/data_batch_1": bad})
    write_archive(no_test, source, extra={"cifar-10-batches-py/test_batch": bad})
    test = load_test(no_train)
    assert np.array_equal(test.images, source["test_batch"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert test.labels.tolist() == source["test_batch"][b"labels"]
    assert load_train(no_test).labels.tolist() == [v for i in range(1, 6) for v in source[f"data_batch_{i}"][b"labels"]]
    with pytest.raises(DataError, match=r"^data_batch_1 is not a CIFAR batch pickle: refused pickle opcode 0xfe$"):
        load_train(no_train)
    with pytest.raises(DataError, match=r"^test_batch is not a CIFAR batch pickle: refused pickle opcode 0xfe$"):
        load_test(no_test)


def test_load_test_sets_finds_the_data_set_by_its_test_batch(archive, archive100):
    # cifar10-predict's reader: CIFAR-10's test batch once; CIFAR-100's twice, with fine then coarse labels.
    (cifar10_set,) = load_test_sets(archive[0])
    alone = load_test(archive[0])
    assert np.array_equal(cifar10_set.images, alone.images) and np.array_equal(cifar10_set.labels, alone.labels)
    assert cifar10_set.class_names == CLASS_NAMES
    source = synthetic_cifar100()  # what the archive100 fixture wrote
    fine, coarse = load_test_sets(archive100[0])
    assert fine.labels.tolist() == source["test"][b"fine_labels"]
    assert coarse.labels.tolist() == source["test"][b"coarse_labels"]
    assert len(fine.class_names) == 100 and len(coarse.class_names) == 20
    assert np.array_equal(fine.images, coarse.images)


def _members_without(*names: str) -> dict:
    return {name: obj for name, obj in synthetic_batches().items() if name not in names}


@pytest.mark.parametrize(
    ("members", "extra", "message"),
    [
        (
            _members_without("test_batch"),
            {},
            "{path} must hold the test batch of exactly one data set (cifar-10-batches-py/test_batch or "
            "cifar-100-python/test), found 0",
        ),
        (
            synthetic_batches(),
            {"cifar-100-python/test": b""},
            "{path} must hold the test batch of exactly one data set (cifar-10-batches-py/test_batch or "
            "cifar-100-python/test), found 2",
        ),
        (_members_without("batches.meta"), {}, "{path} has no member cifar-10-batches-py/batches.meta"),
        (
            _members_without("batches.meta"),
            {"cifar-10-batches-py/batches.meta": b"\x80\x02}."},  # an empty dict: no label_names
            "batches.meta has no b'label_names' entry",
        ),
        (
            _members_without("batches.meta"),
            {"cifar-10-batches-py/batches.meta": b"\x80\x02]."},  # a list
            "batches.meta must hold a dict with bytes keys, got list",
        ),
        (
            _members_without("test_batch"),
            {"cifar-10-batches-py/test_batch": b"\x80\x02]."},
            "test_batch must hold a dict with bytes keys, got list",
        ),
        (
            _members_without("test_batch"),
            {"cifar-10-batches-py/test_batch": pickle.dumps({b"data": [0], b"labels": [0]}, protocol=2)},
            "test_batch: data must be a uint8 array of shape (N, 3072), got list None",
        ),
        (
            _members_without("batches.meta"),
            {"cifar-10-batches-py/batches.meta": bytes(MAX_META_BYTES + 1)},  # refused at its header, unread
            "archive member 'cifar-10-batches-py/batches.meta' is 1048577 bytes, more than the 1 MiB "
            "a meta member may have; refusing the archive",
        ),
    ],
    ids=[
        "no_test_batch",
        "two_test_batches",
        "no_meta",
        "meta_without_names",
        "meta_a_list",
        "test_a_list",
        "test_data_a_list",
        "meta_over_1_mib",
    ],
)
def test_load_test_sets_refusals_name_the_member(tmp_path: Path, members, extra, message):
    path = tmp_path / "a.tar.gz"
    write_archive(path, members, extra=extra)
    with pytest.raises(DataError) as info:
        load_test_sets(path)
    assert str(info.value) == message.format(path=path)
