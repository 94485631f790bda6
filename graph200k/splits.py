"""The held-out sample split: a stable `train` / `test` label per sample key.

A key's split is a pure function of the key and the test fraction (a BLAKE2b hash of the
key mapped to [0, 1)): it never depends on which shards exist, on their order or on a seed,
so adding shards later leaves every existing key where it was, and every tool that sees a
key (manifest, sampler, evaluation) agrees without a shared file.
"""

from __future__ import annotations

import hashlib

import numpy as np

TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)
DEFAULT_TEST_FRACTION = 0.01  # 1% of the keys: ~2,000 of Graph200K's samples


def check_fraction(test_fraction: float) -> float:
    f = float(test_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"test fraction must be in [0, 1], got {test_fraction!r}")
    return f


def key_position(key: str) -> float:
    """Where the key falls in [0, 1): the first 8 bytes of its BLAKE2b hash."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def split_of(key: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    return TEST if key_position(key) < check_fraction(test_fraction) else TRAIN


def split_column(keys, test_fraction: float = DEFAULT_TEST_FRACTION) -> np.ndarray:
    """The split of every key, as a numpy array of 'train' / 'test' strings."""
    f = check_fraction(test_fraction)
    return np.array([TEST if key_position(k) < f else TRAIN for k in keys], dtype=object)
