"""placeholder: filled below"""
import hashlib

from graph200k import storage


def file_sha256(url, block: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with storage.open_read(url) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
