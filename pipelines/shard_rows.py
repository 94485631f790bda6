"""Shards <-> Ray rows: the read step that turns one shard into lean column batches, and
the merge of a shard's result rows back into its samples for our own writer.

Only what the stages read travels through Ray: the read step emits, per sample, the key,
the bookkeeping columns and the bytes of the members some stage will actually read for
that sample (`target.jpg` for canny; nothing for a sample whose stages all skip). Every
other member stays in the shard file: the driver re-reads the same file when it writes
the annotated shard and copies those members byte for byte (`merge_sample`).

Bookkeeping columns carried with every row: `__shard__`, `__index__` (position in the
shard, so the written shard keeps the source order), `__count__` (samples in the shard,
so the driver knows when a shard is complete), `__input__` (the shard file that was read:
the driver re-reads that one) and `__present__` (the names of the sample's members, as a
JSON list, whether or not their bytes travel: a stage skips a sample that already holds
its outputs). A shard that cannot be read becomes one placeholder row with `__error__`
set and `__count__` 1: the failure travels through the stages untouched and reaches the
driver as that shard's error, while the other shards go on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from annotators.base import ERROR_COLUMN, PRESENT_COLUMN
from graph200k.nodes import META_MEMBER, available_nodes
from graph200k.shards import STATS_SUFFIX, ShardError, check_key, json_bytes, read_shard

SHARD, INDEX, COUNT, INPUT = "__shard__", "__index__", "__count__", "__input__"


def _check_member_name(key: str, name: str) -> None:
    # Member names come from the tar; they only ever become dict keys, never paths, but a
    # name that could not be written back as a member of this key is refused outright.
    if not name or "/" in name or "\\" in name or name.startswith((".", "_")) or ".." in name:
        raise ShardError(f"sample {key!r} has a member with a bad name {name!r}")


def check_sample(sample: dict, seen: set[str]) -> None:
    """Raise ShardError for a bad key, a repeated key or a bad member name."""
    key = sample["__key__"]
    try:
        check_key(key)
    except ValueError as e:
        raise ShardError(str(e)) from None
    if key in seen:
        raise ShardError(f"sample key {key!r} appears twice (members not contiguous?)")
    seen.add(key)
    for name in sample:
        if name != "__key__":
            _check_member_name(key, name)


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
                check_sample(s, seen)
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


def members_to_ship(present: set[str], plan: list[tuple[list[str], list[str]]]) -> set[str]:
    """Members whose bytes a sample must send through Ray: those read by a stage that will
    compute for it. `plan` is the stages' (input members, output members) in run order; a
    stage whose outputs the sample already holds skips it. A member an earlier stage of
    the same run produces reaches a later stage through the batch, not from the file."""
    ship: set[str] = set()
    for inputs, outputs in plan:
        if not all(m in present for m in outputs):
            ship.update(m for m in inputs if m in present)
    return ship


def lean_columns(shard: int, path: str, samples: list[dict], start: int, total: int,
                 plan, columns: list[str]) -> dict[str, np.ndarray]:
    n = len(samples)
    cols: dict[str, np.ndarray] = {
        SHARD: np.full(n, shard, dtype=np.int64),
        INDEX: np.arange(start, start + n, dtype=np.int64),
        COUNT: np.full(n, total, dtype=np.int64),
        INPUT: np.full(n, path, dtype=object),
        "__key__": np.array([s["__key__"] for s in samples], dtype=object),
        PRESENT_COLUMN: np.full(n, None, dtype=object),
    }
    member_cols = {m: np.full(n, None, dtype=object) for m in columns}  # fixed schema
    for i, s in enumerate(samples):
        present = {m for m in s if m != "__key__"}
        cols[PRESENT_COLUMN][i] = json.dumps(sorted(present))
        for m in members_to_ship(present, plan):
            member_cols[m][i] = s[m]
    cols.update(member_cols)
    return cols


def error_columns(shard: int, message: str) -> dict[str, np.ndarray]:
    return {
        SHARD: np.array([shard], dtype=np.int64),
        INDEX: np.array([0], dtype=np.int64),
        COUNT: np.array([1], dtype=np.int64),
        "__key__": np.array([""], dtype=object),
        ERROR_COLUMN: np.array([message], dtype=object),
    }


def read_shards_udf(batch: dict[str, np.ndarray], plan: list, rows_per_block: int
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Ray `map_batches` UDF: rows describing shards -> the shards' lean rows, in chunks.

    Input columns: `shard`, `paths` (JSON list, preferred input first), `drop` (JSON list of
    members to discard, for --force), `advice` (what to do on failure). `plan`: the stages'
    (input members, output members) in run order (see `members_to_ship`).
    """
    columns = sorted({m for inputs, _ in plan for m in inputs})
    for i in range(len(batch["shard"])):
        shard = int(batch["shard"][i])
        drop = set(json.loads(batch["drop"][i]))
        try:
            samples, path = load_samples(json.loads(batch["paths"][i]))
        except ShardError as e:
            yield error_columns(shard, f"shard {shard:06d}: {e}; {batch['advice'][i]}")
            continue
        if not samples:
            yield error_columns(shard, f"shard {shard:06d}: no samples; {batch['advice'][i]}")
            continue
        samples = [{k: v for k, v in s.items() if k not in drop} for s in samples]
        step = max(1, int(rows_per_block))
        for start in range(0, len(samples), step):
            yield lean_columns(shard, path, samples[start:start + step], start, len(samples),
                               plan, columns)


class Reread:
    """The samples of a shard file again, one at a time, checked against the keys the read
    step saw in the same order: the driver copies the members that did not travel from here.

    `next` and `finish` raise ShardError when the file no longer matches (changed or cut
    since it was read).
    """

    def __init__(self, path: str):
        self.path = path
        self._samples = read_shard(path)
        self._seen: set[str] = set()
        self.count = 0

    def _changed(self, what: str) -> ShardError:
        return ShardError(f"{self.path} changed while it was annotated ({what}); rerun")

    def next(self, key: str) -> dict:
        sample = next(self._samples, None)
        if sample is None or sample["__key__"] != key:
            found = "nothing" if sample is None else repr(sample["__key__"])
            raise self._changed(f"sample {self.count} is {found}, expected {key!r}")
        check_sample(sample, self._seen)
        self.count += 1
        return sample

    def finish(self) -> None:
        if next(self._samples, None) is not None:
            raise self._changed(f"it holds more than {self.count} samples")
        self.close()

    def close(self) -> None:
        self._samples.close()


def merge_sample(sample: dict, row: dict, drop: Iterable[str] = ()) -> dict:
    """A sample re-read from its shard + its result row -> the sample to write.

    Members of the file are kept byte for byte (less `drop`, for --force); the row adds the
    members the stages produced; `meta.json` nodes are brought up to date.
    """
    drop = set(drop)
    merged = {k: v for k, v in sample.items() if k not in drop}
    for name, value in row.items():
        if not name.startswith("__") and value is not None and name not in merged:
            merged[name] = value
    meta_raw = merged.get(META_MEMBER)
    if meta_raw is not None:
        meta = json.loads(meta_raw)
        nodes = available_nodes(m for m in merged if m != "__key__")
        if meta.get("nodes") != nodes:  # unchanged meta keeps its source bytes exactly
            meta["nodes"] = nodes
            merged[META_MEMBER] = json_bytes(meta)
    return merged
