"""One seed, independent streams: each random stream of the pipeline folds its own name into the key."""

from __future__ import annotations

import hashlib

# The named streams, so a typo cannot silently create a new one. Each draws from its own key.
STREAMS = ("split", "init", "dropout", "shuffle", "flip", "rotation", "shift_x", "shift_y", "preview")


def stream_seed(seed: int, stream: str, index: int | None = None) -> int:
    """Return the key of the random stream `stream` (its `index`-th member, e.g. a network's k-th dropout layer)
    under the top-level `seed`: 63 bits of sha256(stream, index, seed).

    No two streams, and no two seeds, share a key (up to hash collisions), unlike `seed + offset`, where
    seed 43's first stream was seed 42's second.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {STREAMS}")
    name = stream if index is None else f"{stream}[{index}]"
    digest = hashlib.sha256(f"cifar10/{name}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # non-negative int64, as TensorFlow's stateless ops take
