"""Random access into one tar: where each member's bytes lie, key -> field -> (offset, size).

Shards we write carry their index: the writer records every member's offset, size and
digest and saves it beside the tar (`NNNNNN.index.json`), so a reader (local or over an
object store) finds any member with no header walk. A tar without one (written elsewhere)
is indexed once from its headers (no member data read) and the result cached as JSON in
`<folder>/.index/NNNNNN.json` where the folder is writable. Either index records the tar's
size; one that no longer matches is not used, and an index in memory whose tar changed
raises StaleIndexError at the next read (the caller decides whether to skip or re-index).
Member names are only split into (key, field): never used as file-system paths.
"""

from __future__ import annotations

import gc
import json
import tarfile
from dataclasses import dataclass

from graph200k import storage
from graph200k.shards import DATA, DIGEST, FIELD, KEY, SIZE, ShardError, iter_members

INDEX_VERSION = 2
INDEX_DIR = ".index"


class StaleIndexError(ShardError):
    """The shard changed on disk after it was indexed."""


def index_file(shard, index_dir=None) -> str:
    """Where a header-walk index of `shard` is cached."""
    shard = str(shard)
    folder = str(index_dir) if index_dir is not None else storage.join(storage.parent(shard),
                                                                        INDEX_DIR)
    return storage.join(folder, storage.name(shard).removesuffix(".tar") + ".json")


@dataclass
class ShardIndex:
    path: str
    stamp: tuple
    members: dict[str, dict[str, tuple]]  # key -> field -> (data offset, size[, digest])

    # ---- building --------------------------------------------------------------------
    @staticmethod
    def scan(path) -> dict[str, dict[str, tuple]]:
        """Offsets of every regular member, read from the tar headers only."""
        members: dict[str, dict[str, tuple]] = {}
        try:
            for key, field, info, _ in iter_members(path):
                fields = members.setdefault(key, {})
                if field in fields:
                    raise ShardError(f"shard {path}: sample {key!r} holds {field!r} twice; "
                                     "re-create the shard")
                fields[field] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ShardError(f"shard {path} cannot be indexed ({type(e).__name__}: {e}); "
                             "it is truncated or corrupt: re-create it") from e
        return members

    @staticmethod
    def from_records(records) -> dict[str, dict[str, tuple]]:
        members: dict[str, dict[str, tuple]] = {}
        for r in records:
            members.setdefault(r[KEY], {})[r[FIELD]] = (int(r[DATA]), int(r[SIZE]), r[DIGEST])
        return members

    @classmethod
    def build(cls, path) -> "ShardIndex":
        path = storage.normalize(path)
        before = storage.stamp(path)
        members = cls.scan(path)
        if storage.stamp(path) != before:
            raise StaleIndexError(f"shard {path} changed while it was being indexed; retry "
                                  "once the writer has finished")
        return cls(path, before, members)

    @classmethod
    def load_or_build(cls, path, index_dir=None, write: bool = True,
                      writer_index: str | None = None) -> "ShardIndex":
        """The writer's index when it matches the tar's size, else a cached header-walk
        index matching its size and mtime, else a fresh walk (cached where writable)."""
        path = storage.normalize(path)
        stamp = storage.stamp(path)
        if writer_index is not None:
            raw = _read(writer_index)
            if raw is not None and raw.get("size") == stamp[0] and "members" in raw:
                try:
                    return cls(path, stamp, cls.from_records(raw["members"]))
                except (TypeError, IndexError, ValueError):
                    pass  # a foreign or damaged index: walk the headers instead
        cache = index_file(path, index_dir)
        raw = _read(cache)
        if (raw is not None and raw.get("version") == INDEX_VERSION
                and raw.get("shard") == storage.name(path) and raw.get("stamp") == list(stamp)):
            try:
                members = {k: {f: tuple(v) for f, v in fs.items()}
                           for k, fs in raw["members"].items()}
                return cls(path, stamp, members)
            except (AttributeError, TypeError, KeyError):
                pass
        index = cls.build(path)
        if write and not storage.is_url(path):
            try:
                storage.atomic_write(cache, json.dumps(index.to_json(),
                                                       separators=(",", ":")).encode())
            except OSError:
                pass  # read-only shard folder: keep the index in memory only
        return index

    def to_json(self) -> dict:
        return {"version": INDEX_VERSION, "shard": storage.name(self.path),
                "stamp": list(self.stamp),
                "members": {k: {f: list(v) for f, v in fs.items()}
                            for k, fs in self.members.items()}}

    # ---- queries ---------------------------------------------------------------------
    def is_fresh(self) -> bool:
        try:
            return tuple(storage.stamp(self.path)) == tuple(self.stamp)
        except OSError:
            return False

    def locate(self, key: str, field: str) -> tuple[int, int] | None:
        fields = self.members.get(key)
        loc = None if fields is None else fields.get(field)
        return None if loc is None else (loc[0], loc[1])

    def digest(self, key: str, field: str) -> str | None:
        """The member's digest as its writer recorded it (None from a header walk)."""
        loc = self.members.get(key, {}).get(field)
        return loc[2] if loc is not None and len(loc) > 2 else None

    def fields(self, key: str) -> list[str]:
        return sorted(self.members.get(key, ()))

    def keys(self) -> list[str]:
        return list(self.members)


def _read(url) -> dict | None:
    try:
        data = storage.read_bytes(url)
    except OSError:
        return None
    # An index is tens of thousands of small lists: parsed with the cyclic GC on, a Ray
    # worker (a large heap) spent more time collecting than parsing (py-spy: ~10 % of a
    # canny worker's time, every slice loading its shard's index). JSON holds no cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(data)
    except ValueError:
        return None
    finally:
        if enabled:
            gc.enable()
