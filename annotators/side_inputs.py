"""Shared read-only inputs a stage draws from, e.g. the pool of style-reference images.

Declared once in the annotate config and named by the stages that use them:

    side_inputs:
      style_pool: {kind: folder, path: s3://bucket/wikiart}          # images under a folder/URL
      # style_pool: {kind: shards, path: shards/styles, member: target.jpg}
      # style_pool: {kind: hub, path: huggan/wikiart, split: train, column: image}
      subject_pool: {kind: records, path: shards/source}   # (item, category, description)

The driver builds a pool's *index* (its sorted ids) once; the pipeline puts the pool in
Ray's object store once and every task and actor gets the same read-only copy. Images
are read lazily by id and a few are kept per process (an LRU), never copied per sample.
`choose(seed)` draws an id from a seed (a stage passes `sample.seed_for(variant)`), so a
sample's style reference does not depend on which worker annotates it.

A `records` pool serves text instead of images: the (item, category, description) of
every sample of a shard folder (its meta.json) or of a parquet file with those columns,
by id, and the ids of a category (filledit's same-category subject swap).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from graph200k.config import ConfigError, build

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class SideInputSpec:
    kind: str = "folder"  # folder | shards | hub | records
    path: str = ""  # folder or fsspec URL; shard folder; hub dataset id or local data files
    member: str = "target.jpg"  # shards: which member of each sample
    split: str = "train"  # hub
    column: str = "image"  # hub: the image column
    limit: int | None = None  # use the first N ids only (sorted): smaller pools for tests


class SideInput:
    """A pool of images by id. Subclasses set `ids` and implement `_read(id) -> bytes`."""

    kind = ""

    def __init__(self, name: str, spec: SideInputSpec, ids: list[str]):
        self.name, self.spec = name, spec
        self.ids = sorted(ids)[: spec.limit] if spec.limit else sorted(ids)
        if not self.ids:
            raise ConfigError(f"side input {name!r}: {spec.kind} {spec.path!r} holds nothing "
                              f"to draw from")
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):  # what travels to the workers: the index, not the cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def choose(self, seed: int) -> str:
        return self.ids[int(np.random.default_rng(int(seed)).integers(len(self.ids)))]

    def read(self, item_id: str, keep: int = 64) -> bytes:
        data = self._cache.get(item_id)
        if data is None:
            data = self._read(item_id)
            self._cache[item_id] = data
            while len(self._cache) > keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(item_id)
        return data

    def _read(self, item_id: str) -> bytes:
        raise NotImplementedError


class FolderPool(SideInput):
    kind = "folder"

    def __init__(self, name: str, spec: SideInputSpec):
        import fsspec

        self._fs, root = fsspec.core.url_to_fs(spec.path)
        self._root = root.rstrip("/")
        if not self._fs.isdir(self._root):
            raise ConfigError(f"side input {name!r}: folder {spec.path!r} does not exist")
        files = [p for p in self._fs.find(self._root) if p.lower().endswith(IMAGE_SUFFIXES)]
        super().__init__(name, spec, [p[len(self._root) + 1:] for p in files])

    def _read(self, item_id: str) -> bytes:
        return self._fs.cat_file(f"{self._root}/{item_id}")


class ShardPool(SideInput):
    kind = "shards"

    def __init__(self, name: str, spec: SideInputSpec):
        from graph200k.reader import SampleReader

        self._reader = SampleReader(spec.path, write_index=False)
        m = self._reader.manifest
        super().__init__(name, spec, [m.key(i) for i in range(len(m))])

    def __getstate__(self):
        state = super().__getstate__()
        state["_reader"] = None  # open files do not travel; reopened by the worker
        return state

    def _read(self, item_id: str) -> bytes:
        if self._reader is None:
            from graph200k.reader import SampleReader

            self._reader = SampleReader(self.spec.path, write_index=False)
        return self._reader.member_bytes(item_id, self.spec.member)


class HubPool(SideInput):
    kind = "hub"

    def __init__(self, name: str, spec: SideInputSpec):
        self._dataset = None
        n = len(self._load())
        super().__init__(name, spec, [f"{i:09d}" for i in range(n)])

    def __getstate__(self):
        state = super().__getstate__()
        state["_dataset"] = None
        return state

    def _load(self):
        if self._dataset is None:
            from datasets import Image, load_dataset

            spec = self.spec
            local = spec.path.endswith((".parquet", ".arrow", ".json", ".jsonl"))
            ds = (load_dataset("parquet" if spec.path.endswith(".parquet") else "json",
                               data_files=spec.path, split=spec.split) if local
                  else load_dataset(spec.path, split=spec.split))
            if spec.column not in ds.column_names:
                raise ConfigError(f"side input {self.name!r}: {spec.path} has no column "
                                  f"{spec.column!r} (columns: {ds.column_names})")
            self._dataset = ds.cast_column(spec.column, Image(decode=False))
        return self._dataset

    def _read(self, item_id: str) -> bytes:
        cell = self._load()[int(item_id)][self.spec.column]
        if cell.get("bytes"):
            return cell["bytes"]
        with open(cell["path"], "rb") as f:
            return f.read()


RECORD_FIELDS = ("item", "category", "description")


class RecordPool(SideInput):
    """(item, category, description) by id: sample keys of a shard folder, or the `key`
    column (else the row number) of a parquet file."""

    kind = "records"

    def __init__(self, name: str, spec: SideInputSpec):
        self.records = self._load(name, spec)
        super().__init__(name, spec, list(self.records))
        self.records = {i: self.records[i] for i in self.ids}  # `limit` applies here too
        self._by_category: dict[str, list[str]] | None = None

    @staticmethod
    def _load(name: str, spec: SideInputSpec) -> dict[str, dict]:
        if spec.path.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(spec.path)
            missing = [c for c in RECORD_FIELDS if c not in table.column_names]
            if missing:
                raise ConfigError(f"side input {name!r}: {spec.path} lacks column(s) {missing} "
                                  f"(columns: {table.column_names})")
            rows = table.to_pylist()
            return {str(r.get("key", i)): {f: r.get(f) or "" for f in RECORD_FIELDS}
                    for i, r in enumerate(rows)}
        from graph200k.shards import iter_members, list_shards

        records = {}
        for path in list_shards(spec.path):
            for key, member, info, tar in iter_members(path):
                if member == "meta.json":
                    meta = json.loads(tar.extractfile(info).read())
                    records[key] = {f: meta.get(f) or "" for f in RECORD_FIELDS}
        return records

    def record(self, item_id: str) -> dict:
        return self.records[item_id]

    def of_category(self, category: str) -> list[str]:
        """Sorted ids of the records of `category` (an index built on first use)."""
        if self._by_category is None:
            index: dict[str, list[str]] = {}
            for i in self.ids:
                index.setdefault(self.records[i]["category"], []).append(i)
            self._by_category = index
        return self._by_category.get(category, [])

    def _read(self, item_id: str) -> bytes:
        return json.dumps(self.records[item_id], sort_keys=True).encode()


KINDS = {c.kind: c for c in (FolderPool, ShardPool, HubPool, RecordPool)}


def load_side_input(name: str, raw: dict) -> SideInput:
    spec = build(SideInputSpec, dict(raw or {}), f"side input {name!r}")
    if spec.kind not in KINDS:
        raise ConfigError(f"side input {name!r}: kind {spec.kind!r} is not one of {sorted(KINDS)}")
    if not spec.path:
        raise ConfigError(f"side input {name!r}: needs a `path:`")
    return KINDS[spec.kind](name, spec)


def decode_rgb(data: bytes) -> np.ndarray:
    """A side-input image as uint8 RGB (any format PIL reads: pools are not our shards)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


__all__ = ["SideInput", "SideInputSpec", "RecordPool", "load_side_input", "decode_rgb"]
