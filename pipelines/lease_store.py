"""The four file operations a lease needs, each atomic where the storage allows it.

    create(path, data)        the whole file appears (its tag), or None if `path` exists
    read(path)                (bytes, tag) or None; the tag changes whenever the file does
    replace(path, data, tag)  overwrite only the version `tag` names (the new tag, or None)
    delete(path, tag)         remove only the version `tag` names

Local disk (and NFS): `create` writes a temporary file and hard-links it to its name, which
fails when the name exists — never an empty file that a reader could catch before its
bytes are in. `replace` is a rename over the old file (readers see old or new, never a
half). The tag is (inode, mtime, size); `replace` and `delete` compare it right before they
act, a window of microseconds that the lease protocol keeps free of competitors by time
(an owner renews only well before its expiry, others act only after it).

S3 (s3fs): `create` is a PUT with `If-None-Match: *`, `replace` a PUT with `If-Match:
<ETag>`, `delete` a DELETE with `If-Match: <ETag>`: the store itself refuses a stale writer.
Listing goes to the store directly (s3fs caches listings). Other fsspec URLs get the best
their filesystem offers: an exclusive open where it has one, else check-then-write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid

from graph200k import storage

S3 = {"s3", "s3a"}


def _s3(path: str):
    """(s3fs filesystem, bucket, key) for an s3:// URL, else None."""
    if not storage.is_url(path):
        return None
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & S3:
        return None
    bucket, key, _ = fs.split_path(p)
    return fs, bucket, key


def _local_tag(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def _precondition_failed(e: OSError) -> bool:
    return e.errno == errno.EINVAL or "Precondition" in str(e)


def listdir(folder: str) -> list[str]:
    """Names (files and subfolders) in `folder`, fresh from the store (no cached
    listing); [] if none."""
    s3 = _s3(folder)
    if s3 is None:
        if storage.is_url(folder):
            return storage.listdir(folder)
        try:
            return sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):  # none yet, or removed as we looked
            return []
    fs, bucket, key = s3
    prefix, names, token = key.rstrip("/") + "/", [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        out = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **kw)
        names += [o["Key"][len(prefix):] for o in out.get("Contents", [])]
        names += [c["Prefix"][len(prefix):].rstrip("/") for c in out.get("CommonPrefixes", [])]
        token = out.get("NextContinuationToken")
        if not token:
            return sorted(names)


def read(path: str) -> tuple[bytes, str] | None:
    s3 = _s3(path)
    if s3 is not None:
        from fsspec.asyn import sync

        fs, bucket, key = s3

        async def get():
            out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with out["Body"] as body:
                return await body.read(), out["ETag"]

        try:
            return sync(fs.loop, get)
        except FileNotFoundError:
            return None
    if storage.is_url(path):
        try:
            data = storage.read_bytes(path)
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()
    try:
        with open(path, "rb") as f:
            return f.read(), _local_tag(os.fstat(f.fileno()))
    except FileNotFoundError:
        return None


def create(path: str, data: bytes) -> str | None:
    s3 = _s3(path)
    if s3 is not None:
        fs, bucket, key = s3
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except FileExistsError:
            return None
        finally:
            fs.invalidate_cache(path)
        return out["ETag"]
    if storage.is_url(path):
        return hashlib.sha256(data).hexdigest() if storage.create_exclusive(path, data) else None
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}{storage.TMP_MARK}{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}")
    for attempt in range(3):
        os.makedirs(folder, exist_ok=True)
        try:
            f = open(tmp, "wb")
            break
        except FileNotFoundError:  # a release removed the empty folder as it was made
            if attempt == 2:
                raise
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if the name exists: the first complete file wins
        except FileExistsError:
            return None
        return _local_tag(os.stat(tmp))  # the same inode as `path`
    finally:
        os.unlink(tmp)


def replace(path: str, data: bytes, tag: str) -> str | None:
    s3 = _s3(path)
    if s3 is not None:
        fs, bucket, key = s3
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=tag)
        except FileNotFoundError:
            return None
        except OSError as e:
            if _precondition_failed(e):
                return None
            raise
        finally:
            fs.invalidate_cache(path)
        return out["ETag"]
    current = read(path)
    if current is None or current[1] != tag:
        return None
    storage.atomic_write(path, data)
    if storage.is_url(path):
        return hashlib.sha256(data).hexdigest()
    return _local_tag(os.stat(path))


def delete(path: str, tag: str) -> bool:
    s3 = _s3(path)
    if s3 is not None:
        fs, bucket, key = s3
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
        except FileNotFoundError:
            return False
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        finally:
            fs.invalidate_cache(path)
        return True
    current = read(path)
    if current is None or current[1] != tag:
        return False
    storage.remove(path)
    return True


def remove_empty_folder(folder: str) -> None:
    """A local folder left empty (object stores have no folders to remove)."""
    if not storage.is_url(folder):
        try:
            os.rmdir(folder)
        except OSError:
            pass
