"""WebDataset shards: naming, atomic byte-reproducible writing, reading, per-shard stats.

A sample is a webdataset dict: `{"__key__": "0000042", "target.jpg": b"...", "meta.json": b"..."}`.
Field values are raw bytes here; decoding is the caller's business.

Why our own writer rather than Ray's `write_webdataset`: that one writes one tar per
block and invents uuid keys; we need one tar per shard with the source's keys in the
source's order, byte-identical on rerun. Members are standard tar members (GNU headers,
fixed mtime, owner and mode, fields in sorted order) that any tar reader and webdataset
read; a header does not depend on where the member lands, so members serialised by
different workers and concatenated are the very tar one writer would have written. The
writer records every member's offset, size and digest (the shard's index) and the
file's sha256, for readers that seek and for `verify`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from graph200k import storage

SHARD_PATTERN = "{shard:06d}.tar"
STATS_SUFFIX = ".stats.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
# Fixed so a shard's bytes depend only on its content (reruns are byte-identical).
FIXED_MTIME = 0  # an int: a float mtime makes tarfile add a PAX header (~1 KiB) per member


class ShardError(RuntimeError):
    """A shard that cannot be read or written; the message names the shard and what to do."""


def shard_path(folder, shard: int):
    """`folder/NNNNNN.tar`: a Path for a local folder, a str for a URL."""
    return _as_path(storage.join(folder, SHARD_PATTERN.format(shard=shard)))


def stats_path(folder, shard: int):
    return _as_path(storage.join(folder, f"{shard:06d}{STATS_SUFFIX}"))


def _as_path(p: str):
    return p if storage.is_url(p) else Path(p)


def shard_index(path) -> int:
    name = storage.name(path)
    m = re.fullmatch(r"(\d{6})\.tar", name)
    if not m:
        raise ShardError(f"{path}: not a shard name (expected NNNNNN.tar)")
    return int(m.group(1))


def list_shards(folder) -> list:
    """Complete shards of a folder, in shard order (temporary files are never listed)."""
    return [_as_path(storage.join(folder, n)) for n in storage.listdir(folder)
            if re.fullmatch(r"\d{6}\.tar", n)]


def check_key(key: str) -> str:
    # webdataset splits a member name at the first dot of its base name: keys carry none.
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            f"sample key {key!r} is invalid: keys may hold only letters, digits, '_' and '-' "
            "(no dots or slashes)"
        )
    return key


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` so that `path` is either absent, the old file, or the complete new file."""
    storage.atomic_write(path, data)


def write_json_atomic(path, obj) -> None:
    storage.atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


# -- tar members with their record ---------------------------------------------------------
# One member of a shard in a record: [key, field, header offset, data offset, size, digest]
# (digest: the first 16 hex digits of the data's sha256). Offsets let a reader fetch any
# member with one ranged read and no header walk; digests let `verify` name the member.
KEY, FIELD, HEADER, DATA, SIZE, DIGEST = range(6)
_BLOCK = 512
_RECORD_BYTES = 20 * _BLOCK  # tar pads its end to whole records, as tarfile does


def member_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def member_header(key: str, field: str, size: int) -> bytes:
    info = tarfile.TarInfo(f"{key}.{field}")
    info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


def _padding(n: int) -> bytes:
    return b"\0" * (-n % _BLOCK)


def sample_fields(sample: dict, where: str = "") -> list[tuple[str, bytes]]:
    """A sample's (field, bytes) in the order they are written: sorted by field name."""
    key = check_key(sample.get("__key__"))
    fields = []
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        if not name or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
            raise ValueError(f"{where}key {key}: bad field name {name!r}")
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{where}key {key}: field {name!r} must be bytes")
        fields.append((name, bytes(value)))
    return sorted(fields)


class TarMembers:
    """Samples -> tar member bytes (no end-of-archive) and their records.

    Headers do not depend on where a member lands, so members serialised in pieces and
    concatenated are byte for byte the tar written in one go: block parts written by
    different workers join into one shard by concatenation.
    """

    def __init__(self, start: int = 0):
        self.offset = start
        self.records: list[list] = []

    def sample(self, sample: dict, where: str = "") -> list[bytes]:
        key = sample["__key__"]
        chunks = []
        for name, data in sample_fields(sample, where):
            header = member_header(key, name, len(data))
            self.records.append([key, name, self.offset, self.offset + len(header), len(data),
                                 member_digest(data)])
            chunks += [header, data, _padding(len(data))]
            self.offset += len(header) + len(data) + len(chunks[-1])
        return chunks


def end_of_archive(offset: int) -> bytes:
    end = offset + 2 * _BLOCK
    return b"\0" * (2 * _BLOCK + (-end % _RECORD_BYTES))


@dataclass
class ShardRecord:
    """What a shard's writer knew: size, sha256 and every member's place and digest."""

    size: int
    sha256: str
    members: list  # [key, field, header offset, data offset, size, digest]

    def to_json(self) -> dict:
        keys = dict.fromkeys(m[KEY] for m in self.members)
        return {"size": self.size, "sha256": self.sha256, "samples": len(keys),
                "member_count": len(self.members), "members": self.members}

    @classmethod
    def from_json(cls, d) -> "ShardRecord | None":
        try:
            return cls(int(d["size"]), str(d["sha256"]), [list(m) for m in d["members"]])
        except (TypeError, KeyError, ValueError):
            return None


class ShardWriter:
    """Writes one shard under a temporary name; `close()` puts it in place, whole.

    Use as a context manager: an exception inside the block removes the temporary file, so
    a half-written shard never appears under its final name. `record` (after `close`) is
    the shard's ShardRecord: keep it in the shard's stats. Local folders get a temporary
    sibling and a rename; URLs a local temporary file and one atomic upload.
    """

    def __init__(self, path):
        self.path = path if storage.is_url(path) else Path(path)
        self.url = storage.normalize(path)
        if storage.is_url(self.url):
            self._staging = tempfile.NamedTemporaryFile(prefix="graph200k-", suffix=".tar",
                                                        delete=False)
            self.tmp = Path(self._staging.name)
            self._file = self._staging
        else:
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(storage.tmp_name(self.url))
            self._file = open(self.tmp, "wb")
        self._members = TarMembers()
        self._sha = hashlib.sha256()
        self._keys: set[str] = set()
        self.count = 0
        self.record: ShardRecord | None = None

    def _put(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha.update(chunk)

    def write(self, sample: dict) -> None:
        key = check_key(sample.get("__key__"))
        if key in self._keys:
            raise ValueError(f"{self.url}: sample key {key!r} written twice")
        for chunk in self._members.sample(sample, f"{self.url}: "):
            self._put(chunk)
        self._keys.add(key)
        self.count += 1

    def write_raw(self, data: bytes, records: list[list], samples: int) -> None:
        """Append serialised members whose records start at this writer's offset."""
        self._put(data)
        self._members.records.extend(records)
        self._members.offset += len(data)
        self.count += samples

    @property
    def offset(self) -> int:
        return self._members.offset

    def close(self):
        self._put(end_of_archive(self._members.offset))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.record = ShardRecord(self._members.offset + len(end_of_archive(self._members.offset)),
                                  self._sha.hexdigest(), self._members.records)
        if storage.is_url(self.url):
            try:
                storage.put_file(str(self.tmp), self.url)
            finally:
                self.tmp.unlink(missing_ok=True)
        else:
            os.replace(self.tmp, self.url)
        return self.path

    def abort(self) -> None:
        try:
            self._file.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_shard(path, samples: Iterable[dict]) -> int:
    with ShardWriter(path) as w:
        for s in samples:
            w.write(s)
        return w.count


def read_shard(path) -> Iterator[dict]:
    """Yield the samples of one shard as dicts of raw bytes, in file order.

    A truncated or corrupt tar raises ShardError naming the shard. Member names are only
    split into (key, field); they are never used as file-system paths.
    """
    import webdataset as wds  # lazy: webdataset imports torch when it is installed

    url = storage.normalize(path)
    try:
        with storage.open_read(url) as f:
            check_archive_end(f, url)
            f.seek(0)
            stream = [{"url": url, "stream": f}]
            for sample in wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(
                    stream, handler=wds.reraise_exception)):
                yield {k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")}
    except (tarfile.TarError, OSError, ValueError, EOFError) as e:
        raise ShardError(
            f"shard {url} is truncated or corrupt ({type(e).__name__}: {e}); "
            "re-create it from its source (rerun ingest/annotate with --force for that shard)"
        ) from e


def iter_members(path):
    """Walk a shard's tar headers: yield (key, field, TarInfo, open TarFile) per member.

    Only regular members named `KEY.FIELD` are yielded; the name is split, never used as
    a path. Data is not read unless the caller extracts it from the TarFile. The walk fails
    loudly (tarfile.ReadError) when the archive ends early or a header is corrupt: tarfile
    alone stops quietly at a bad header after the first member.
    """
    url = storage.normalize(path)
    with storage.open_read(url, block_size=1 << 20) as f:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                # Split at the first dot of the whole name: a directory part stays in the
                # key, where check_key refuses it (a member is never a path).
                key, dot, field = info.name.partition(".")
                if dot:
                    yield key, field, info, tar
            check_archive_end(f, url, tar.offset)


def check_archive_end(f, url: str, offset: int | None = None) -> None:
    """Raise tarfile.ReadError unless everything after the last member is zero blocks.

    With `offset` None the members are walked here from their headers' sizes."""
    if offset is None:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for _ in tar:
                pass
            offset = tar.offset
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if offset > end:
        raise tarfile.ReadError(f"archive ends early: the last member runs to byte {offset} "
                                f"of a {end}-byte file (truncated)")
    f.seek(offset)
    tail = f.read(min(end - offset, 64 * _BLOCK))
    if len(tail) < 2 * _BLOCK or tail.strip(b"\0"):
        what = ("no end-of-archive blocks (truncated at a member boundary?)"
                if len(tail) < 2 * _BLOCK else f"a corrupt header at byte {offset}")
        raise tarfile.ReadError(f"{what}; the walk stopped after byte {offset} of {end}")


def read_json_member(sample: dict, name: str = "meta.json") -> dict:
    raw = sample.get(name)
    if raw is None:
        raise KeyError(f"sample {sample.get('__key__')!r} has no member {name!r}")
    return json.loads(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class ShardStats:
    """Per-shard accounting. A stats file that exists marks its shard complete."""

    shard: int
    samples: int = 0
    written: int = 0
    filtered: list[dict] = field(default_factory=list)  # [{"key", "reason"}]: not an error
    failed: list[dict] = field(default_factory=list)  # [{"key", "reason"}]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def fail(self, key: str, reason: str) -> None:
        self.failed.append({"key": key, "reason": reason})

    def to_json(self) -> dict:
        d = {
            "shard": self.shard,
            "samples": self.samples,
            "written": self.written,
            "filtered_count": len(self.filtered),
            "filtered": self.filtered,
            "failed_count": len(self.failed),
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }
        d.update(self.extra)
        return d


def read_json(path) -> dict | None:
    """A JSON file, or None when it is absent or unreadable (it then marks nothing done)."""
    try:
        return json.loads(storage.read_bytes(path))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, json.JSONDecodeError,
            UnicodeDecodeError):
        return None


def read_stats(folder, shard: int) -> dict | None:
    return read_json(stats_path(folder, shard))


def encode_image(array, ext: str, quality: int = 95) -> bytes:
    """Encode an HxWx3 RGB (or HxW) uint8 array; deterministic for a given input.

    PNG goes through OpenCV: 1.3 ms for a 512^2 edge map against 7.3 ms with PIL
    (measured in benchmarks/bench_annotate.py), and annotation writes mostly PNGs.
    PNG also takes uint16 (a depth map's precision); `decode_image` reads such a PNG
    as 8 bit (the high byte), so readers that want 8 bit need nothing special.
    """
    array = np.ascontiguousarray(array)
    if ext in ("jpg", "jpeg"):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(array).convert("RGB").save(buf, format="JPEG", quality=quality,
                                                   subsampling=0)
        return buf.getvalue()
    if ext == "png":
        if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3):
            raise ValueError(f"PNG encoding needs a uint8/uint16 HxW or HxWx3 array, got "
                             f"{array.dtype} {array.shape}")
        bgr = array[..., ::-1] if array.ndim == 3 else array  # OpenCV stores BGR
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise ValueError(f"OpenCV could not encode a {array.shape} image as PNG")
        return buf.tobytes()
    raise ValueError(f"unsupported image extension {ext!r}")


_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION  # 8-bit, grey stays grey
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
GREY, RGB, NATIVE = "L", "RGB", "native"


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(h, w) from a JPEG's SOF header without decoding; None if it is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return (int.from_bytes(data[i + 5:i + 7], "big"),
                    int.from_bytes(data[i + 7:i + 9], "big"))
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def decode_image(data: bytes, mode: str = RGB, min_side: int | None = None):
    """Decode to uint8: mode "RGB" H x W x 3, "L" H x W, "native" whichever the file holds
    (grey maps stay H x W: resizing one channel is a third of the work). The one decoder
    of the project: annotators and the training reader see the same pixels.

    With `min_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    both sides >= min_side: a 1024² panel used at 384² costs a quarter of the decode.
    OpenCV rather than PIL: it decodes straight into numpy, ~15% faster per image here.
    """
    flags = _FLAGS
    if min_side:
        size = jpeg_size(data)
        if size:
            factor = max([f for f in (2, 4, 8) if min(size) // f >= min_side], default=1)
            flags = _REDUCED.get(factor, flags)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ValueError("OpenCV cannot decode these bytes as an image")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2) if mode == RGB else img
    if mode == GREY:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
