"""Files on a local disk or behind any fsspec URL (s3://, gs://, file://, memory://, ...).

Every path the toolkit reads or writes goes through here, so a shard folder can be a
local folder on one machine or a bucket a whole Ray cluster shares. Local paths use the
OS directly (`pread`, `rename`); URLs use fsspec, with credentials from the backend's usual
environment or config (never passed or logged by us).

Writes are atomic: a reader sees the old file, no file, or the whole new one. Locally
that is a temporary name in the same folder and `os.replace`; on an object store a single
PUT (an object appears whole or not at all); elsewhere a temporary name and a move.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Iterable

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "r2", "memory"}
TMP_MARK = ".tmp-"  # in the name of every temporary file: never listed, never published


def is_url(path) -> bool:
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


def normalize(path) -> str:
    """A local path as an absolute str (file:// stripped), a URL unchanged."""
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if is_url(path):
        return path.rstrip("/")
    return str(Path(path).expanduser().absolute())


def join(base, *parts: str) -> str:
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(normalize(base), *parts))


def name(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[0]


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def filesystem(url: str):
    """The fsspec filesystem of `url`: ValueError for an unknown protocol, ImportError when
    its backend package is not installed (check a user's URL with it once, at the edge)."""
    return _fs(url)[0]


def exists(path) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(normalize(path))


def isdir(path) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.isdir(p)
    return os.path.isdir(normalize(path))


def size(path) -> int:
    if is_url(path):
        fs, p = _fs(path)
        return int(fs.size(p))
    return os.stat(normalize(path)).st_size


def stamp(path) -> tuple:
    """What changes when a file is rewritten: (size, mtime) locally, (size, ETag) remotely."""
    if is_url(path):
        fs, p = _fs(path)
        info = fs.info(p)
        return (int(info.get("size", -1)), str(info.get("ETag") or info.get("mtime") or
                                                info.get("LastModified") or ""))
    st = os.stat(normalize(path))
    return (st.st_size, st.st_mtime_ns)


def listdir(path) -> list[str]:
    """Names (not paths) in a folder, sorted; [] for a folder that does not exist."""
    if is_url(path):
        fs, p = _fs(path)
        try:
            return sorted(name(e) for e in fs.ls(p, detail=False) if name(e))
        except FileNotFoundError:
            return []
    try:
        return sorted(os.listdir(normalize(path)))
    except (FileNotFoundError, NotADirectoryError):
        return []


def makedirs(path) -> None:
    if is_url(path):
        fs, p = _fs(path)
        fs.makedirs(p, exist_ok=True)
    else:
        os.makedirs(normalize(path), exist_ok=True)


def read_bytes(path) -> bytes:
    if is_url(path):
        fs, p = _fs(path)
        return fs.cat_file(p)
    with open(normalize(path), "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode()


def read_range(path, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` (a ranged GET on object stores)."""
    if is_url(path):
        fs, p = _fs(path)
        return fs.cat_file(p, start=offset, end=offset + length)
    fd = os.open(normalize(path), os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def open_read(path, block_size: int = 8 << 20):
    """A binary file object for sequential reads (buffered on object stores)."""
    if is_url(path):
        fs, p = _fs(path)
        return fs.open(p, "rb", block_size=block_size)
    return open(normalize(path), "rb")


def remove(path, missing_ok: bool = True) -> None:
    try:
        if is_url(path):
            fs, p = _fs(path)
            fs.rm(p, recursive=fs.isdir(p))
        elif os.path.isdir(normalize(path)):
            import shutil

            shutil.rmtree(normalize(path))
        else:
            os.unlink(normalize(path))
    except FileNotFoundError:
        if not missing_ok:
            raise


def tmp_name(final) -> str:
    """A temporary sibling of `final`: hidden, marked, unique per writer."""
    return join(parent(final), f".{name(final)}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_tmp(filename: str) -> bool:
    return filename.startswith(".") and TMP_MARK in filename


_TMP_WRITER = re.compile(re.escape(TMP_MARK) + r"(\d+)-[0-9a-f]+$")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host. A zombie has finished writing: not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def sweep_stale_tmp(folder) -> list[str]:
    """Remove the temporary files (`tmp_name`) in a local `folder` whose writer process is
    dead, the leftovers of killed runs; never one of a live process. Returns their names.

    The pid in the name is only meaningful on the host that wrote it, so a folder shared
    between hosts (NFS) must not have concurrent writers on other hosts when this runs.
    URLs are left alone: on object stores a write is one PUT and leaves no such file.
    """
    if is_url(folder):
        return []
    removed = []
    for n in listdir(folder):
        m = _TMP_WRITER.search(n) if is_tmp(n) else None
        if m and not pid_alive(int(m.group(1))):
            remove(join(folder, n))
            removed.append(n)
    return removed


def _protocols(fs) -> set:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def unwritable(path) -> str | None:
    """Why a file cannot be written at `path` (None when it can), checked before the work
    that produces it: its folder is created if needed and must take a file; a URL needs a
    known fsspec backend. One line, for a CLI's error."""
    if is_url(path):
        try:
            filesystem(path)
        except (ValueError, ImportError) as e:
            return f"{path}: no storage backend for this URL ({e})"
        return None
    final = normalize(path)
    if os.path.isdir(final):
        return f"{path} is a folder: name a file"
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        probe = tmp_name(final)
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        return f"cannot write {path} ({type(e).__name__}: {e.strerror or e})"
    return None


def atomic_write(path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes or chunks) so that `path` is absent, old, or complete and new."""
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    if not is_url(path):
        final = normalize(path)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tmp_name(final)
        try:
            with open(tmp, "wb") as f:
                for c in chunks:
                    f.write(c)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return
    fs, p = _fs(path)
    if _protocols(fs) & OBJECT_STORES:
        # One PUT (multipart for big objects): the object appears only when it is complete.
        with fs.open(p, "wb") as f:
            for c in chunks:
                f.write(c)
        return
    tmp = tmp_name(p)
    try:
        with fs.open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
        fs.mv(tmp, p)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def rename(src, dest) -> None:
    """Move a file into its final name: `os.replace` locally (atomic); on an object store a
    copy then a delete, so a caller that may be interrupted must be able to redo it."""
    if not is_url(src):
        os.makedirs(os.path.dirname(normalize(dest)), exist_ok=True)
        os.replace(normalize(src), normalize(dest))
        return
    fs, p = _fs(src)
    fs.mv(p, _fs(dest)[1])


def put_file(local: str, dest) -> None:
    """Copy a local file to `dest` atomically."""
    if not is_url(dest):
        def chunks():
            with open(local, "rb") as f:
                while block := f.read(8 << 20):
                    yield block

        atomic_write(dest, chunks())
        return
    fs, p = _fs(dest)
    if _protocols(fs) & OBJECT_STORES:
        fs.put_file(local, p)
        return
    tmp = tmp_name(p)
    try:
        fs.put_file(local, tmp)
        fs.mv(tmp, p)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def copy_file(src, dest, block: int = 8 << 20) -> None:
    """Copy one file between any two locations (local or URL), atomically at `dest`."""
    if not is_url(src):
        put_file(normalize(src), dest)
        return

    def chunks():
        with open_read(src, block_size=block) as f:
            while data := f.read(block):
                yield data

    atomic_write(dest, chunks())


def create_exclusive(path, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist; False if it already did.

    Locally O_EXCL; on object stores a conditional PUT where the backend has one
    (s3fs: `If-None-Match: *`), else a check-then-put (a small race, documented).
    """
    if not is_url(path):
        final = normalize(path)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    fs, p = _fs(path)
    try:
        with fs.open(p, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError, TypeError):
        if fs.exists(p):
            return False
        with fs.open(p, "wb") as f:
            f.write(data)
        return True
