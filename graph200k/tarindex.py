"""Random access into one tar: where each member's bytes lie, key -> field -> (offset, size).

Shards we write carry their index: the writer records every member's offset, size and
digest and saves it beside the tar (`NNNNNN.index.json`), so a reader (local or over an
object store) finds any member with no header walk. A tar without one (written elsewhere)
is indexed once from its headers (no member data read) and the result cached as JSON in
`<folder>/.index/NNNNNN.json` where the folder is writable. An index is never trusted alone. A part whose stats file records its writer's sha256 (every
part ingest, annotate and publish write) must have its writer's index, and that index
must hash to the digest the stats record (`index_sha256`) and describe that very tar (size,
sha256, member count): otherwise BadIndexError names what is wrong; there is no quiet
fall-back to a header walk without digests. Only a tar with no stats record (written
elsewhere) is header-walked. Readers also check each member's own tar header against the
record's key and field (`check_member`): a record that points at another sample's bytes is
refused. An index in memory whose tar changed raises StaleIndexError at the next read.
Member names are only split into (key, field): never used as file-system paths.
"""

from __future__ import annotations

import gc
import hashlib
import json
import tarfile
from dataclasses import dataclass

from graph200k import storage
from graph200k.shards import (DATA, DIGEST, FIELD, HEADER, KEY, SIZE, ShardError, iter_members,
                              member_digest, read_json)

INDEX_VERSION = 3  # 3: records carry the header offset (readers check the member's name)
INDEX_DIR = ".index"
_BLOCK = 512


class StaleIndexError(ShardError):
    """The shard changed on disk after it was indexed."""


class BadIndexError(ShardError):
    """A part's index is absent, unreadable, or not the one its writer recorded."""


class MemberMismatchError(ShardError):
    """An index record whose bytes are not the member it names (wrong key, size or digest)."""


def index_sha256(data: bytes) -> str:
    """The index's own digest, as the stats file records it (`file.index_sha256`)."""
    return hashlib.sha256(data).hexdigest()


def header_name(head: bytes) -> tuple[str, int] | None:
    """(member name, data size) from the header block(s) in front of a member's data, None
    when they are not a valid tar header. GNU long names and PAX `path` records included."""
    if len(head) == _BLOCK and head[156:157] in (b"0", b"\0") and head[124] < 0x80 \
            and head[257:262] in (b"ustar", b"\0\0\0\0\0"):
        # the common case, read straight from the name and size fields: tarfile's full
        # parse (checksum, every field) costs about as much as hashing a 30 kB member;
        # name and size are what tell a record's member apart, the digest covers the data
        try:
            size = int(head[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            return None
        return head[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), size
    try:
        info = tarfile.TarInfo.frombuf(head[:_BLOCK], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError):
        return None
    if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
        body = head[_BLOCK:_BLOCK + info.size]
        rest = head[_BLOCK + info.size + (-info.size % _BLOCK):]
        real = header_name(rest)
        if real is None:
            return None
        if info.type == tarfile.GNUTYPE_LONGNAME:
            return body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), real[1]
        for line in body.split(b"\n"):  # PAX records: "<len> key=value"
            _, _, kv = line.partition(b" ")
            if kv.startswith(b"path="):
                return kv[5:].decode("utf-8", "surrogateescape"), real[1]
        return real
    return info.name, info.size


def check_member(where: str, key: str, field: str, head: bytes, data: bytes,
                 digest: str | None) -> bytes:
    """`data` if the header in front of it names `key.field` with this size and its digest
    matches the record; else MemberMismatchError (a swapped, edited or stale record)."""
    named = header_name(head) if head else None
    if head and (named is None or named != (f"{key}.{field}", len(data))):
        found = "no tar header" if named is None else f"member {named[0]!r} ({named[1]} bytes)"
        raise MemberMismatchError(f"{where}: the index record of {key}.{field} points at "
                                  f"{found}: the index is wrong (swapped or edited records)")
    if digest is not None and member_digest(data) != digest:
        raise MemberMismatchError(f"{where}: {key}.{field} does not match the digest its "
                                  "writer recorded (corrupt bytes)")
    return data


def recorded_file(stats_url) -> dict:
    """The `file` entry of a part's stats (size, sha256, member_count, index_sha256), or {}."""
    if stats_url is None:
        return {}
    stats = read_json(stats_url)
    return (stats or {}).get("file") or {} if isinstance(stats, dict) else {}


def writer_members(raw: bytes, recorded: dict, where: str) -> list[list]:
    """The member records of a writer's index `raw`, checked against its stats' `recorded`
    file entry; BadIndexError says what does not match."""
    want = recorded.get("index_sha256")
    if want and index_sha256(raw) != want:
        raise BadIndexError(f"{where} does not match the digest its stats record (edited, "
                            "swapped records or replaced)")
    try:
        index = json.loads(raw)
    except ValueError:
        raise BadIndexError(f"{where} is not JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("members"), list):
        raise BadIndexError(f"{where} holds no member records")
    if index.get("sha256") != recorded.get("sha256") or index.get("size") != recorded.get("size"):
        raise BadIndexError(f"{where} describes another tar than its stats record (size "
                            f"{index.get('size')} vs {recorded.get('size')})")
    members = index["members"]
    count = recorded.get("member_count")
    if count is not None and len(members) != count:
        raise BadIndexError(f"{where} lists {len(members)} members, its stats {count}")
    seen = set()
    for r in members:
        if not (isinstance(r, list) and len(r) == 6 and all(isinstance(x, int) for x in r[2:5])
                and r[HEADER] < r[DATA]):
            raise BadIndexError(f"{where}: a malformed member record {r!r}")
        if (r[KEY], r[FIELD]) in seen:
            raise BadIndexError(f"{where} lists {r[KEY]}.{r[FIELD]} twice")
        seen.add((r[KEY], r[FIELD]))
    return members


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
                fields[field] = (info.offset_data, info.size, None, info.offset)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ShardError(f"shard {path} cannot be indexed ({type(e).__name__}: {e}); "
                             "it is truncated or corrupt: re-create it") from e
        return members

    @staticmethod
    def from_records(records) -> dict[str, dict[str, tuple]]:
        members: dict[str, dict[str, tuple]] = {}
        for r in records:
            members.setdefault(r[KEY], {})[r[FIELD]] = (int(r[DATA]), int(r[SIZE]), r[DIGEST],
                                                        int(r[HEADER]))
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
                      writer_index: str | None = None, stats_url=None) -> "ShardIndex":
        """The writer's index, checked against the part's stats (`stats_url`) when they
        record the tar: then nothing else is accepted (BadIndexError). A tar without a
        record: the writer's index when it matches the tar's size, else a cached
        header-walk index matching its size and mtime, else a fresh walk (cached where
        writable)."""
        path = storage.normalize(path)
        stamp = storage.stamp(path)
        recorded = recorded_file(stats_url)
        if recorded.get("sha256"):
            if stamp[0] != recorded.get("size"):
                raise ShardError(f"{path} holds {stamp[0]} bytes, its writer wrote "
                                 f"{recorded.get('size')} (truncated or replaced); re-create it")
            if writer_index is None:
                raise BadIndexError(f"{path}: no index given for a tar its stats record")
            try:
                raw = storage.read_bytes(writer_index)
            except FileNotFoundError:
                raise BadIndexError(f"its index {writer_index} is missing") from None
            return cls(path, stamp, cls.from_records(writer_members(raw, recorded, writer_index)))
        if writer_index is not None:
            raw = _read(writer_index)
            if raw is not None and raw.get("size") == stamp[0] and "members" in raw:
                try:
                    return cls(path, stamp, cls.from_records(raw["members"]))
                except (TypeError, IndexError, ValueError):
                    pass  # a foreign or damaged index of an unrecorded tar: walk the headers
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

    def span(self, key: str, field: str) -> tuple[int, int] | None:
        """(offset, length) of the member's tar header and data: one read gets both, and
        `checked` then tells whether they are the member the record names."""
        loc = self.members.get(key, {}).get(field)
        if loc is None:
            return None
        start = loc[3] if len(loc) > 3 and loc[3] is not None else loc[0]
        return start, loc[0] + loc[1] - start

    def checked(self, where: str, key: str, field: str, raw: bytes) -> bytes:
        """The member's data out of the bytes `span` names, once its header names
        `key.field` and its digest matches (MemberMismatchError otherwise)."""
        start, length = self.span(key, field)
        head = self.members[key][field][0] - start
        if len(raw) != length:
            raise MemberMismatchError(f"{where}: {key}.{field} is cut short "
                                      f"({max(0, len(raw) - head)} of {length - head} bytes)")
        return check_member(where, key, field, raw[:head], raw[head:], self.digest(key, field))

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
