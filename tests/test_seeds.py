"""The random streams' keys: 63 bits of one hash, computed here by hand so that any change to them shows."""

from __future__ import annotations

import hashlib

import pytest

from cifar10.seeds import STREAMS, stream_seed


def by_hand(text: str) -> int:
    """The first 8 bytes of sha256(text), least significant first, less their lowest bit."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") // 2


@pytest.mark.parametrize("seed", [0, 42, 2**31 - 1])
def test_each_stream_key_is_63_bits_of_the_hash_of_its_name_and_seed(seed: int):
    keys = [stream_seed(seed, stream) for stream in STREAMS]
    assert keys == [by_hand(f"cifar10/{stream}/{seed}") for stream in STREAMS]
    assert all(0 <= key < 2**63 for key in keys)  # non-negative int64, as TensorFlow's stateless ops take
    assert len(set(keys)) == len(STREAMS)


def test_a_streams_members_have_keys_of_their_own():
    # Member 0 of a stream is not the stream itself: a network's first dropout layer draws apart from `dropout`.
    assert stream_seed(42, "dropout", 0) == by_hand("cifar10/dropout[0]/42")
    assert stream_seed(42, "dropout", 1) == by_hand("cifar10/dropout[1]/42")
    assert stream_seed(42, "dropout") == by_hand("cifar10/dropout/42") != stream_seed(42, "dropout", 0)


def test_an_unknown_stream_is_refused():
    with pytest.raises(ValueError, match=r"unknown random stream 'shufle'; known: \('split', "):
        stream_seed(42, "shufle")
