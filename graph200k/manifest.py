"""The columnar manifest: one row per sample — key, shard, node availability bitmask,
item, description, quality scores, split (`train` / `test`, graph200k.splits).

It is what the task sampler reads instead of one giant networkx graph: 200K samples
cost a few tens of MB here (benchmarks/bench_sampler.py).

    python -m graph200k.manifest --shards shards/graph200k --out shards/graph200k/manifest.parquet \
        [--test-fraction 0.01]
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph200k.nodes import DEGRADATIONS, NODE_BIT, available_nodes, mask_of
from graph200k.shards import ShardError, iter_members, list_shards, shard_index
from graph200k.splits import DEFAULT_TEST_FRACTION, SPLITS, split_column

QUALITY_FIELDS = ("compositeStructure", "objectConsistency", "imageQuality")
_TARGET_BIT = 1 << NODE_BIT["target"]
# Degradations are computed online from `target`: available wherever target is.
_DEGRADATION_MASK = mask_of(DEGRADATIONS)


def with_online(mask: int) -> int:
    return mask | _DEGRADATION_MASK if mask & _TARGET_BIT else mask


class Manifest:
    """Columns as numpy / Arrow arrays; row i is one sample."""

    def __init__(self, keys, shards, masks, items, descriptions, quality, splits=None,
                 test_fraction: float = DEFAULT_TEST_FRACTION):
        self.keys = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys
        self.shards = np.asarray(shards, dtype=np.int32)
        self.masks = np.asarray(masks, dtype=np.uint64)
        self.items = pa.array(items, pa.string()) if not isinstance(items, pa.Array) else items
        self.descriptions = (pa.array(descriptions, pa.string())
                             if not isinstance(descriptions, pa.Array) else descriptions)
        self.quality = np.asarray(quality, dtype=np.int8).reshape(-1, len(QUALITY_FIELDS))
        n = len(self.shards)
        # A manifest written before splits existed gets them from its keys: the same labels.
        self.splits = (split_column(self.keys.to_pylist(), test_fraction) if splits is None
                       else np.asarray(splits, dtype=object))
        unknown = set(self.splits.tolist()) - set(SPLITS)
        if unknown:
            raise ValueError(f"manifest split values {sorted(unknown)}; known: {SPLITS}")
        if not (len(self.keys) == len(self.masks) == len(self.items) == len(self.descriptions)
                == len(self.quality) == len(self.splits) == n):
            raise ValueError("manifest columns differ in length")
        self._key_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.shards)

    # ---- building -------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[dict],
                     test_fraction: float = DEFAULT_TEST_FRACTION) -> "Manifest":
        """Records: {"key", "shard", "nodes": [...], "item", "description", "quality": {...}}."""
        keys, shards, masks, items, descs, qual = [], [], [], [], [], []
        cache: dict[tuple, int] = {}  # many samples share one node set
        for r in records:
            nodes = tuple(r["nodes"])
            m = cache.get(nodes)
            if m is None:
                m = cache[nodes] = with_online(mask_of(nodes))
            keys.append(r["key"])
            shards.append(r["shard"])
            masks.append(m)
            items.append(r.get("item") or "")
            descs.append(r.get("description") or "")
            q = r.get("quality") or {}
            qual.append([int(q.get(f, -1)) for f in QUALITY_FIELDS])
        return cls(keys, shards, masks, items, descs, np.array(qual, dtype=np.int8).reshape(-1, 3),
                   test_fraction=test_fraction)

    @classmethod
    def from_shards(cls, folder, test_fraction: float = DEFAULT_TEST_FRACTION) -> "Manifest":
        """Scan every complete shard of `folder`: member names give availability, meta.json
        gives item / description / quality. Only tar headers and meta.json are read."""
        return cls.from_records((r for p in list_shards(folder) for r in scan_shard(p)),
                                test_fraction)

    # ---- persistence ----------------------------------------------------------------
    def to_table(self) -> pa.Table:
        return pa.table({
            "key": self.keys, "shard": self.shards, "nodes": self.masks,
            "item": self.items, "description": self.descriptions,
            **{f: self.quality[:, i] for i, f in enumerate(QUALITY_FIELDS)},
            "split": pa.array(self.splits.tolist(), pa.string()).dictionary_encode(),
        })

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(self.to_table(), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Manifest":
        t = pq.read_table(path)
        return cls(t["key"].combine_chunks(), t["shard"].to_numpy(), t["nodes"].to_numpy(),
                   t["item"].combine_chunks(), t["description"].combine_chunks(),
                   np.stack([t[f].to_numpy() for f in QUALITY_FIELDS], axis=1),
                   splits=(t["split"].cast(pa.string()).to_numpy(zero_copy_only=False)
                           if "split" in t.column_names else None))

    # ---- queries --------------------------------------------------------------------
    def key(self, i: int) -> str:
        return self.keys[i].as_py()

    def description(self, i: int) -> str:
        return self.descriptions[i].as_py()

    def item(self, i: int) -> str:
        return self.items[i].as_py()

    def index_of(self, key: str) -> int:
        if self._key_index is None:
            self._key_index = {k: i for i, k in enumerate(self.keys.to_pylist())}
        try:
            return self._key_index[key]
        except KeyError:
            raise KeyError(f"sample key {key!r} is not in the manifest") from None

    def having(self, required_mask: int, split: str | None = None) -> np.ndarray:
        """Indices of the samples that have every node type of `required_mask` (and are
        in `split`, when given)."""
        m = np.uint64(required_mask)
        ok = (self.masks & m) == m
        if split is not None:
            ok &= self.splits == split
        return np.flatnonzero(ok)

    def node_counts(self) -> dict[str, int]:
        return {n: int(((self.masks >> np.uint64(b)) & np.uint64(1)).sum())
                for n, b in NODE_BIT.items()}


def scan_shard(path) -> list[dict]:
    """Manifest records of one shard. Tar member names are split into (key, field) only."""
    shard = shard_index(path)
    members: dict[str, set[str]] = {}
    metas: dict[str, dict] = {}
    try:
        for key, field, info, tar in iter_members(path):
            members.setdefault(key, set()).add(field)
            if field == "meta.json":
                metas[key] = json.loads(tar.extractfile(info).read())
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as e:
        raise ShardError(f"shard {path}: cannot scan for the manifest ({e}); "
                         "re-create the shard") from e
    records = []
    for key, fields in members.items():
        meta = metas.get(key, {})
        records.append({"key": key, "shard": shard, "nodes": available_nodes(fields),
                        "item": meta.get("item"), "description": meta.get("description"),
                        "quality": meta.get("quality")})
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.manifest",
                                 description="Build the columnar manifest of a shard folder.")
    ap.add_argument("--shards", required=True, help="folder of NNNNNN.tar shards")
    ap.add_argument("--out", help="parquet path (default: <shards>/manifest.parquet)")
    ap.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                    help="share of keys held out as split `test` (by a hash of the key; "
                         f"default {DEFAULT_TEST_FRACTION})")
    args = ap.parse_args(argv)
    out = args.out or str(Path(args.shards) / "manifest.parquet")
    m = Manifest.from_shards(args.shards, args.test_fraction)
    m.save(out)
    counts = m.node_counts()
    print(f"manifest: {len(m)} samples from {len(list_shards(args.shards))} shards -> {out} "
          f"({int((m.splits == 'test').sum())} in split test)")
    print("node types with samples: " + ", ".join(f"{n}={c}" for n, c in counts.items()
                                                   if c and n not in DEGRADATIONS)
          + f" (+{len(DEGRADATIONS)} online degradations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
