"""The columnar manifest: one row per sample — key, shard, node availability bitmask,
item, description, quality scores, the `quality` stage's scores of every generated
variant (`quality_scores`: its meta entry as JSON text, '' where unscored), how many
variants of each generated node (`variants_instantstyle`, ...) the sample holds, and its
split (`train` / `test`, graph200k.splits).

It is what the task sampler reads instead of one giant networkx graph: 200K samples
cost a few tens of MB here (benchmarks/bench_sampler.py).

    python -m graph200k.manifest --shards shards/graph200k --out shards/graph200k/manifest.parquet \
        [--test-fraction 0.01]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph200k import storage
from graph200k.dataset import ShardSet, annotation_member, is_annotation_member, part_fingerprint
from graph200k.nodes import (DEGRADATIONS, NODE_BIT, NODE_NAMES, VARIANT_NODES, available_nodes,
                             mask_of, variant_count)
from graph200k.shards import ShardError, iter_members, shard_index
from graph200k.splits import DEFAULT_TEST_FRACTION, SPLITS, split_column

QUALITY_FIELDS = ("compositeStructure", "objectConsistency", "imageQuality")
VARIANT_FIELDS = tuple(f"variants_{n}" for n in VARIANT_NODES)
QUALITY_SCORES = "quality_scores"  # annotations.quality of the sample, JSON text
QUALITY_STAGE = "quality"
MANIFEST_VERSION = 2
META_KEY = "graph200k"  # parquet schema metadata: registry order, root, part fingerprints
_TARGET_BIT = 1 << NODE_BIT["target"]
# Degradations are computed online from `target`: available wherever target is.
_DEGRADATION_MASK = mask_of(DEGRADATIONS)


def with_online(mask: int) -> int:
    return mask | _DEGRADATION_MASK if mask & _TARGET_BIT else mask


class Manifest:
    """Columns as numpy / Arrow arrays; row i is one sample."""

    def __init__(self, keys, shards, masks, items, descriptions, quality, variants=None,
                 root: str | None = None, parts: dict | None = None, splits=None,
                 test_fraction: float = DEFAULT_TEST_FRACTION, quality_scores=None):
        self.keys = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys
        self.shards = np.asarray(shards, dtype=np.int32)
        self.masks = np.asarray(masks, dtype=np.uint64)
        self.items = pa.array(items, pa.string()) if not isinstance(items, pa.Array) else items
        self.descriptions = (pa.array(descriptions, pa.string())
                             if not isinstance(descriptions, pa.Array) else descriptions)
        self.quality = np.asarray(quality, dtype=np.int8).reshape(-1, len(QUALITY_FIELDS))
        n = len(self.shards)
        if variants is None:  # a manifest from before variants: one where the node is
            variants = np.stack([(self.masks >> np.uint64(NODE_BIT[v])) & np.uint64(1)
                                 for v in VARIANT_NODES], axis=1) if n else np.zeros((0, 0))
        self.variants = np.asarray(variants, dtype=np.uint8).reshape(n, len(VARIANT_NODES))
        # A manifest written before splits existed gets them from its keys: the same labels.
        self.splits = (split_column(self.keys.to_pylist(), test_fraction) if splits is None
                       else np.asarray(splits, dtype=object))
        unknown = set(self.splits.tolist()) - set(SPLITS)
        if unknown:
            raise ValueError(f"manifest split values {sorted(unknown)}; known: {SPLITS}")
        if not (len(self.keys) == len(self.masks) == len(self.items) == len(self.descriptions)
                == len(self.quality) == len(self.splits) == n):
            raise ValueError("manifest columns differ in length")
        if quality_scores is None:  # a manifest from before the quality stage: unscored
            quality_scores = [""] * n
        self.quality_scores = (quality_scores if isinstance(quality_scores, pa.Array)
                               else pa.array(quality_scores, pa.string()))
        if len(self.quality_scores) != n:
            raise ValueError("manifest columns differ in length")
        self._key_index: dict[str, int] | None = None
        # Which dataset and which bytes the manifest was built from: shard -> part
        # fingerprints (graph200k.dataset.part_fingerprint); checked by `check`.
        self.root = root
        self.parts: dict[int, list[dict]] = {int(k): v for k, v in (parts or {}).items()}

    def __len__(self) -> int:
        return len(self.shards)

    # ---- building -------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[dict],
                     test_fraction: float = DEFAULT_TEST_FRACTION) -> "Manifest":
        """Records: {"key", "shard", "nodes": [...], "item", "description", "quality": {...},
        "variants": {node: count}} (variants: default 1 for each generated node present)."""
        keys, shards, masks, items, descs, qual, var, scores = [], [], [], [], [], [], [], []
        released: dict[int, str] = {}  # an imported release keeps its own split (meta.json)
        cache: dict[tuple, int] = {}  # many samples share one node set
        for r in records:
            nodes = tuple(r["nodes"])
            m = cache.get(nodes)
            if m is None:
                m = cache[nodes] = with_online(mask_of(nodes))
            if r.get("split") in SPLITS:
                released[len(keys)] = r["split"]
            keys.append(r["key"])
            shards.append(r["shard"])
            masks.append(m)
            items.append(r.get("item") or "")
            descs.append(r.get("description") or "")
            q = r.get("quality") or {}
            qual.append([int(q.get(f, -1)) for f in QUALITY_FIELDS])
            scores.append(r.get("quality_scores") or "")
            v = r.get("variants") or {}
            var.append([min(255, int(v.get(n, n in nodes))) if n in nodes else 0
                        for n in VARIANT_NODES])
        splits = None
        if released:
            splits = split_column(keys, test_fraction)
            for i, split in released.items():
                splits[i] = split
        return cls(keys, shards, masks, items, descs, np.array(qual, dtype=np.int8).reshape(-1, 3),
                   np.array(var, dtype=np.uint8).reshape(-1, len(VARIANT_NODES)),
                   splits=splits, test_fraction=test_fraction, quality_scores=scores)

    @classmethod
    def from_shards(cls, shards, test_fraction: float = DEFAULT_TEST_FRACTION) -> "Manifest":
        """Scan every shard of a dataset (a folder, URL or ShardSet): member names give
        availability, the source meta.json gives item / description / quality. Only indexes
        (or tar headers) and meta.json members are read."""
        shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        records, parts = [], {}
        for n in shard_set.shards():
            recs, fingerprints = scan_parts(shard_set, n)
            records += recs
            parts[n] = fingerprints
        m = cls.from_records(records, test_fraction)
        m.root, m.parts = shard_set.root, parts
        return m

    # ---- persistence ----------------------------------------------------------------
    def to_table(self) -> pa.Table:
        return pa.table({
            "key": self.keys, "shard": self.shards, "nodes": self.masks,
            "item": self.items, "description": self.descriptions,
            **{f: self.quality[:, i] for i, f in enumerate(QUALITY_FIELDS)},
            **{f: self.variants[:, i] for i, f in enumerate(VARIANT_FIELDS)},
            "split": pa.array(self.splits.tolist(), pa.string()).dictionary_encode(),
            QUALITY_SCORES: self.quality_scores,
        })

    def save(self, path):
        table = self.to_table()
        meta = {"version": MANIFEST_VERSION, "node_names": list(NODE_NAMES), "root": self.root,
                "parts": {str(k): v for k, v in sorted(self.parts.items())}}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.atomic_write(path, sink.getvalue().to_pybytes())
        return Path(path) if not storage.is_url(path) else path

    @classmethod
    def load(cls, path) -> "Manifest":
        try:
            # ParquetFile, not read_table: read_table imports pyarrow.dataset and with it
            # pandas (1-2 s of a cold start, measured) to read one file.
            t = pq.ParquetFile(pa.BufferReader(storage.read_bytes(path))).read()
        except FileNotFoundError:
            raise FileNotFoundError(f"manifest {path} does not exist: build it with "
                                    "`python -m graph200k.manifest --shards <folder>`") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise ShardError(f"manifest {path} is not a readable parquet file ({e}); rebuild it "
                             "with `python -m graph200k.manifest --shards <folder>`") from None
        meta = json.loads((t.schema.metadata or {}).get(META_KEY.encode(), b"{}"))
        masks = remap_masks(t["nodes"].to_numpy(), meta.get("node_names"), path)
        variants = (np.stack([t[f].to_numpy() for f in VARIANT_FIELDS], axis=1)
                    if all(f in t.column_names for f in VARIANT_FIELDS) else None)
        return cls(t["key"].combine_chunks(), t["shard"].to_numpy(), masks,
                   t["item"].combine_chunks(), t["description"].combine_chunks(),
                   np.stack([t[f].to_numpy() for f in QUALITY_FIELDS], axis=1), variants,
                   root=meta.get("root"), parts=meta.get("parts"),
                   splits=(t["split"].cast(pa.string()).to_numpy(zero_copy_only=False)
                           if "split" in t.column_names else None),
                   quality_scores=(t[QUALITY_SCORES].combine_chunks()
                                   if QUALITY_SCORES in t.column_names else None))

    # ---- does it still describe the shards? -----------------------------------------
    def check(self, shards=None) -> list[str]:
        """What changed in the dataset since this manifest was built ([] = nothing).

        Compares every shard's parts (source tar, stage sidecars) by size and sha256 from
        their stats files: an added or removed shard, a new or removed sidecar, a rewritten
        part. Costs a listing and one small JSON read per part."""
        shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards or self.root)
        problems = []
        now = {n: [part_fingerprint(p) for p in shard_set.parts(n)] for n in shard_set.shards()}
        for n in sorted(set(now) - set(self.parts)):
            problems.append(f"shard {n:06d}: not in the manifest (written after it was built)")
        for n in sorted(set(self.parts) - set(now)):
            problems.append(f"shard {n:06d}: in the manifest but no longer in {shard_set.root}")
        for n in sorted(set(now) & set(self.parts)):
            old = {f["part"]: f for f in self.parts[n]}
            new = {f["part"]: f for f in now[n]}
            for part in sorted(set(old) | set(new)):
                if part not in old:
                    problems.append(f"shard {n:06d}: {part} is new since the manifest was built")
                elif part not in new:
                    problems.append(f"shard {n:06d}: {part} is gone")
                elif old[part] != new[part]:
                    problems.append(f"shard {n:06d}: {part} changed since the manifest was built")
        return problems

    # ---- queries --------------------------------------------------------------------
    def key(self, i: int) -> str:
        return self.keys[i].as_py()

    def description(self, i: int) -> str:
        return self.descriptions[i].as_py()

    def item(self, i: int) -> str:
        return self.items[i].as_py()

    def scores(self, i: int) -> str:
        """The quality stage's entry of row i as JSON text ('' where unscored)."""
        return self.quality_scores[i].as_py() or ""

    def variant_count(self, i: int, node: str) -> int:
        """Variants of generated node `node` sample i holds (1 for any other node it has)."""
        if node in VARIANT_NODES:
            return int(self.variants[i, VARIANT_NODES.index(node)])
        return int(self.masks[i] >> np.uint64(NODE_BIT[node]) & np.uint64(1))

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


def scan_parts(shard_set: ShardSet, shard: int) -> tuple[list[dict], list[dict]]:
    """Manifest records of one shard of a dataset, and its parts' fingerprints."""
    from graph200k.tarindex import ShardIndex

    parts = shard_set.parts(shard)
    fields: dict[str, set[str]] = {}
    source = parts[0]
    try:
        indexes = [ShardIndex.load_or_build(p.url, writer_index=p.index_url,
                                             stats_url=p.stats_url) for p in parts]
        for i, index in enumerate(indexes):
            for key in index.keys():
                if i and key not in fields:
                    continue  # a sidecar key the source lacks: stale, reported by verify
                fields.setdefault(key, set()).update(
                    f for f in index.fields(key) if not is_annotation_member(f))
        metas = {}
        with storage.open_read(source.url, block_size=1 << 20) as f:
            for key in fields:
                loc = indexes[0].locate(key, "meta.json")
                if loc is not None:
                    f.seek(loc[0])
                    metas[key] = json.loads(f.read(loc[1]))
        scores = {}
        for part, index in zip(parts, indexes):
            if part.stage != QUALITY_STAGE:
                continue
            with storage.open_read(part.url, block_size=1 << 20) as f:
                for key in fields:
                    loc = index.locate(key, annotation_member(QUALITY_STAGE))
                    if loc is not None:
                        f.seek(loc[0])
                        scores[key] = f.read(loc[1]).decode()
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError, ShardError) as e:
        raise ShardError(f"shard {shard:06d} of {shard_set.root}: cannot scan it for the "
                         f"manifest ({e}); run `python -m graph200k.verify --shards "
                         f"{shard_set.root}` to see what is wrong") from e
    records = []
    for key, names in fields.items():
        meta = metas.get(key, {})
        records.append({"key": key, "shard": shard, "nodes": available_nodes(names),
                        "item": meta.get("item"), "description": meta.get("description"),
                        "quality": meta.get("quality"), "split": meta.get("split"),
                        "quality_scores": scores.get(key, ""),
                        "variants": {n: variant_count(n, names) for n in VARIANT_NODES}})
    return records, [part_fingerprint(p) for p in parts]


def remap_masks(masks: np.ndarray, names, path) -> np.ndarray:
    """Bitmasks saved under another node registry order -> this registry's bits."""
    if not names or list(names) == list(NODE_NAMES):
        return masks
    unknown = [n for n in names if n not in NODE_BIT]
    if unknown:
        raise ShardError(f"manifest {path} names node types this version does not know "
                         f"({unknown}); rebuild it with `python -m graph200k.manifest`")
    out = np.zeros_like(masks)
    for old_bit, name in enumerate(names):
        out |= ((masks >> np.uint64(old_bit)) & np.uint64(1)) << np.uint64(NODE_BIT[name])
    return out


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
                        "quality": meta.get("quality"), "split": meta.get("split"),
                        "variants": {n: variant_count(n, fields) for n in VARIANT_NODES}})
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.manifest",
                                 description="Build the columnar manifest of a shard folder.",
                                 epilog="Exit codes: 0 written; 1 no shards, a shard that "
                                        "cannot be scanned, or the write failed; 2 bad "
                                        "arguments (an --out that cannot be written).")
    ap.add_argument("--shards", required=True, help="folder of NNNNNN.tar shards")
    ap.add_argument("--out", help="parquet path (default: <shards>/manifest.parquet)")
    ap.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                    help="share of keys held out as split `test` (by a hash of the key; "
                         f"default {DEFAULT_TEST_FRACTION})")
    args = ap.parse_args(argv)
    out = args.out or storage.join(args.shards, "manifest.parquet")
    try:
        shard_set = ShardSet(args.shards)
    except ShardError as e:
        print(f"error: --shards: {e}", file=sys.stderr)
        return 2
    if not shard_set.shards():
        print(f"error: no shards (NNNNNN.tar) in {shard_set.source}", file=sys.stderr)
        return 1
    if why := storage.unwritable(out):
        print(f"error: --out {why}", file=sys.stderr)
        return 2
    try:
        m = Manifest.from_shards(shard_set, args.test_fraction)
    except (ShardError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        m.save(out)
    except OSError as e:
        print(f"error: cannot write {out} ({e})", file=sys.stderr)
        return 1
    counts = m.node_counts()
    print(f"manifest: {len(m)} samples from {len(m.parts)} shards -> {out} "
          f"({int((m.splits == 'test').sum())} in split test)")
    print("node types with samples: " + ", ".join(f"{n}={c}" for n, c in counts.items()
                                                   if c and n not in DEGRADATIONS)
          + f" (+{len(DEGRADATIONS)} online degradations)")
    held = {n: m.variants[:, j] for j, n in enumerate(VARIANT_NODES) if counts[n]}
    if held:
        print("variants per sample (min-max): " + ", ".join(
            f"{n}={int(v[v > 0].min())}-{int(v.max())}" for n, v in held.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
