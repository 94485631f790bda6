"""Shards <-> Ray rows: the read step that turns one shard into column batches, and the
assembly of a shard's rows back into samples for our own writer.

Bookkeeping columns carried with every row: `__shard__`, `__index__` (position in the
shard, so the written shard keeps the source order), `__count__` (samples in the shard,
so the driver knows when a shard is complete). A shard that cannot be read becomes one
placeholder row with `__error__` set and `__count__` 1: the failure travels through the
stages untouched and reaches the driver as that shard's error, while the other shards
go on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from annotators.base import ERROR_COLUMN
from graph200k.nodes import META_MEMBER, available_nodes
from graph200k.shards import STATS_SUFFIX, ShardError, check_key, json_bytes, read_shard

SHARD, INDEX, COUNT = "__shard__", "__index__", "__count__"


def _check_member_name(key: str, name: str) -> None:
    # Member names come from the tar; they only ever become dict keys, never paths, but a
    # name that could not be written back as a member of this key is refused outright.
    if not name or "/" in name or "\\" in name or name.startswith((".", "_")) or ".." in name:
        raise ShardError(f"sample {key!r} has a member with a bad name {name!r}")


def expected_count(path: str) -> int | None:
    """Samples the stats file beside a shard says it holds (None when there is none)."""
    stats = Path(path).with_name(Path(path).name[: -len(".tar")] + STATS_SUFFIX)
    try:
        return int(json.loads(stats.read_text())["written"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_samples(paths: list[str]) -> tuple[list[dict], str]:
    """Samples of the first readable shard in `paths` (the preferred input first), and its path.

    Raises ShardError naming every shard tried when none can be read.
    """
    errors = []
    for path in paths:
        try:
            samples = list(read_shard(path))
            seen: set[str] = set()
            for s in samples:
                key = s["__key__"]
                try:
                    check_key(key)
                except ValueError as e:
                    raise ShardError(str(e)) from None
                if key in seen:
                    raise ShardError(f"sample key {key!r} appears twice (members not contiguous?)")
                seen.add(key)
                for name in s:
                    if name != "__key__":
                        _check_member_name(key, name)
            expected = expected_count(path)
            # A tar cut exactly at a member boundary reads as a valid, shorter tar: only
            # the count its writer recorded can tell.
            if expected is not None and expected != len(samples):
                raise ShardError(f"holds {len(samples)} samples but its stats file says "
                                 f"{expected}: truncated?")
            return samples, path
        except ShardError as e:
            errors.append(f"{path}: {e}")
    raise ShardError("; ".join(errors))


def to_columns(shard: int, samples: list[dict], start: int, total: int) -> dict[str, np.ndarray]:
    n = len(samples)
    names = sorted({m for s in samples for m in s if m != "__key__"})
    cols: dict[str, np.ndarray] = {
        SHARD: np.full(n, shard, dtype=np.int64),
        INDEX: np.arange(start, start + n, dtype=np.int64),
        COUNT: np.full(n, total, dtype=np.int64),
        "__key__": np.array([s["__key__"] for s in samples], dtype=object),
    }
    for m in names:
        col = np.full(n, None, dtype=object)
        col[:] = [s.get(m) for s in samples]
        cols[m] = col
    return cols


def error_columns(shard: int, message: str) -> dict[str, np.ndarray]:
    return {
        SHARD: np.array([shard], dtype=np.int64),
        INDEX: np.array([0], dtype=np.int64),
        COUNT: np.array([1], dtype=np.int64),
        "__key__": np.array([""], dtype=object),
        ERROR_COLUMN: np.array([message], dtype=object),
    }


def read_shards_udf(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Ray `map_batches` UDF: rows describing shards -> the shards' samples, in chunks.

    Input columns: `shard`, `paths` (JSON list, preferred input first), `drop` (JSON list of
    members to discard, for --force), `rows_per_block`, `advice` (what to do on failure).
    """
    for i in range(len(batch["shard"])):
        shard = int(batch["shard"][i])
        drop = set(json.loads(batch["drop"][i]))
        try:
            samples, _ = load_samples(json.loads(batch["paths"][i]))
        except ShardError as e:
            yield error_columns(shard, f"shard {shard:06d}: {e}; {batch['advice'][i]}")
            continue
        if not samples:
            yield error_columns(shard, f"shard {shard:06d}: no samples; {batch['advice'][i]}")
            continue
        samples = [{k: v for k, v in s.items() if k not in drop} for s in samples]
        step = max(1, int(batch["rows_per_block"][i]))
        for start in range(0, len(samples), step):
            yield to_columns(shard, samples[start:start + step], start, len(samples))


def row_to_sample(row: dict) -> dict:
    """A result row -> the sample to write: members present, `meta.json` nodes brought up to date."""
    sample = {"__key__": row["__key__"]}
    for name, value in row.items():
        if not name.startswith("__") and value is not None:
            sample[name] = value
    meta_raw = sample.get(META_MEMBER)
    if meta_raw is not None:
        meta = json.loads(meta_raw)
        nodes = available_nodes(m for m in sample if m != "__key__")
        if meta.get("nodes") != nodes:  # unchanged meta keeps its source bytes exactly
            meta["nodes"] = nodes
            sample[META_MEMBER] = json_bytes(meta)
    return sample
