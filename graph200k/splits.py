"""The held-out sample split: a stable `train` / `test` label per Subjects200K row.

A key's split is a pure function of the row it comes from and the test fraction (a
BLAKE2b hash of the row's key mapped to [0, 1)): it never depends on which shards exist,
on their order or on a seed, so adding shards later leaves every existing key where it
was, and every tool that sees a key (manifest, sampler, evaluation) agrees without a
shared file.

The unit is the row, never the panel: with `--panels both` a row gives two samples,
`{row}_0` and `{row}_1`, each the other's `reference`. Hashed apart, one could land in
`test` and the other in `train`, and the test target would be trained on as a reference
(measured over 20,000 rows: 415 of the 417 rows with a test panel). Both panels hash as
the row's one-panel key `{row}`, so a one-panel dataset keeps its splits.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)
DEFAULT_TEST_FRACTION = 0.01  # 1% of the rows: ~2,000 of Graph200K's samples
_PANEL_KEY = re.compile(r"(\d+)_[01]")  # `{row:07d}_{panel}` (graph200k.subjects200k.row_key)


def check_fraction(test_fraction: float) -> float:
    f = float(test_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"test fraction must be in [0, 1], got {test_fraction!r}")
    return f


def split_unit(key: str) -> str:
    """The key the split hashes: a panel key's row (`0000042_1` -> `0000042`), any other
    key itself."""
    m = _PANEL_KEY.fullmatch(key)
    return m.group(1) if m else key


def key_position(key: str) -> float:
    """Where the key's row falls in [0, 1): the first 8 bytes of its BLAKE2b hash."""
    digest = hashlib.blake2b(split_unit(key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def split_of(key: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    return TEST if key_position(key) < check_fraction(test_fraction) else TRAIN


def split_column(keys, test_fraction: float = DEFAULT_TEST_FRACTION) -> np.ndarray:
    """The split of every key, as a numpy array of 'train' / 'test' strings."""
    f = check_fraction(test_fraction)
    return np.array([TEST if key_position(k) < f else TRAIN for k in keys], dtype=object)
