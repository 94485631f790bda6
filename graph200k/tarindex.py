"""Random access into a shard: where each member's bytes lie, key -> field -> (offset, size).

Built once from the tar headers (no member data is read) and cached as JSON, by default
in `<shards>/.index/NNNNNN.json` next to the shard. The cache records the shard's size
and mtime; a cache that no longer matches its shard is rebuilt, and an index already in
memory whose shard changed raises StaleIndexError at the next read (the caller decides
whether to skip or re-index). Member names are only split into (key, field): they are
never used as file-system paths.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from graph200k.shards import ShardError, atomic_write_bytes, iter_members

INDEX_VERSION = 1
INDEX_DIR = ".index"


class StaleIndexError(ShardError):
    """The shard changed on disk after it was indexed."""


def index_file(shard, index_dir=None) -> Path:
    shard = Path(shard)
    folder = Path(index_dir) if index_dir is not None else shard.parent / INDEX_DIR
    return folder / (shard.name.removesuffix(".tar") + ".json")


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@dataclass
class ShardIndex:
    path: Path
    size: int
    mtime_ns: int
    members: dict[str, dict[str, tuple[int, int]]]  # key -> field -> (data offset, size)

    # ---- building --------------------------------------------------------------------
    @staticmethod
    def scan(path) -> dict[str, dict[str, tuple[int, int]]]:
        """Offsets of every regular member, read from the tar headers only."""
        members: dict[str, dict[str, tuple[int, int]]] = {}
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

    @classmethod
    def build(cls, path) -> "ShardIndex":
        path = Path(path)
        before = _stamp(path)
        members = cls.scan(path)
        if _stamp(path) != before:
            raise StaleIndexError(f"shard {path} changed while it was being indexed; retry "
                                  "once the writer has finished")
        return cls(path, before[0], before[1], members)

    @classmethod
    def load_or_build(cls, path, index_dir=None, write: bool = True) -> "ShardIndex":
        """The cached index if it matches the shard's size and mtime, else a fresh one
        (saved back when the folder is writable; an unwritable cache is not an error)."""
        path = Path(path)
        cache = index_file(path, index_dir)
        stamp = _stamp(path)
        try:
            raw = json.loads(cache.read_text())
            if (raw.get("version") == INDEX_VERSION and raw.get("shard") == path.name
                    and (raw.get("size"), raw.get("mtime_ns")) == stamp):
                members = {k: {f: tuple(v) for f, v in fs.items()}
                           for k, fs in raw["members"].items()}
                return cls(path, stamp[0], stamp[1], members)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # absent, unreadable or foreign cache: rebuild it
        index = cls.build(path)
        if write:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(cache, json.dumps(index.to_json(),
                                                     separators=(",", ":")).encode())
            except OSError:
                pass  # read-only shard folder: keep the index in memory only
        return index

    def to_json(self) -> dict:
        return {"version": INDEX_VERSION, "shard": self.path.name, "size": self.size,
                "mtime_ns": self.mtime_ns,
                "members": {k: {f: list(v) for f, v in fs.items()}
                            for k, fs in self.members.items()}}

    # ---- queries ---------------------------------------------------------------------
    def is_fresh(self) -> bool:
        try:
            return _stamp(self.path) == (self.size, self.mtime_ns)
        except OSError:
            return False

    def locate(self, key: str, field: str) -> tuple[int, int] | None:
        fields = self.members.get(key)
        return None if fields is None else fields.get(field)

    def fields(self, key: str) -> list[str]:
        return sorted(self.members.get(key, ()))
