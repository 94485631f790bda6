"""Image bytes for the browser: stored members as they are, derived nodes encoded, thumbnails
cached on disk, task grids rendered as the trainer composes them.

A thumbnail's cache file is named by a hash of (shard set, the shard's part fingerprints
from the manifest, key, slot, variant, seed, side): a re-annotated shard gets new names,
and no request text ever becomes a file-system path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
from PIL import Image

from graph200k import storage
from graph200k.browse.catalog import Catalog
from graph200k.grid import TRAIN
from graph200k.nodes import DEGRADATION, NODE_TYPES, SLOT_NODE, variant_member
from graph200k.preview import render_grid

THUMB_SIDES = (160, 320)
THUMB_QUALITY = 85
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}


def is_stored(slot: str) -> bool:
    """Read as a member (True) or computed online from other members (False)."""
    node = NODE_TYPES[SLOT_NODE[slot]]
    return not node.online and node.kind != DEGRADATION


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG", compress_level=1)
    return out.getvalue()


def member_image(catalog: Catalog, key: str, slot: str, variant: int = 0,
                 seed: int = 0) -> tuple[bytes, str]:
    """(bytes, content type) of one node image at full size: a stored member's own bytes,
    a derived node (foreground, background, degradations) as PNG."""
    with catalog.lock:
        if is_stored(slot):
            member = variant_member(slot, variant)
            return (catalog.reader.member_bytes(key, member, SLOT_NODE[slot]),
                    CONTENT_TYPES[member.rsplit(".", 1)[-1]])
        return png_bytes(catalog.reader.fetch(key, slot, seed=seed)), "image/png"


class Thumbnails:
    def __init__(self, catalog: Catalog, folder):
        self.catalog = catalog
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.root = catalog.shard_set.root
        self.hits = self.misses = 0
        # shard -> the hash of (shard set, the shard's part fingerprints): the part of every
        # name that one shard's thumbnails share, hashed once (a sample page names ~15)
        self._shard_hash: dict[int, "hashlib._Hash"] = {}

    def path(self, key: str, slot: str, variant: int, seed: int, side: int) -> str:
        m = self.catalog.manifest
        shard = int(m.shards[m.index_of(key)])
        # Degradations depend on the seed; nothing else does (one cache file for any seed).
        seed = seed if NODE_TYPES[SLOT_NODE[slot]].kind == DEGRADATION else 0
        base = self._shard_hash.get(shard)
        if base is None:
            ident = json.dumps([self.root, m.parts.get(shard)])
            base = self._shard_hash[shard] = hashlib.sha1(ident.encode())
        digest = base.copy()
        # the key's length first: no two (key, slot, ...) give the same text
        digest.update(f"{len(key)}:{key}/{slot}/{int(variant)}/{int(seed)}/{int(side)}".encode())
        name = digest.hexdigest()
        return os.path.join(self.folder, name[:2], name + ".jpg")

    def cached(self, key: str, slot: str, variant: int = 0, seed: int = 0,
               side: int = THUMB_SIDES[0]) -> bytes | None:
        """The thumbnail's bytes when it is on disk already, else None."""
        try:
            fd = os.open(self.path(key, slot, variant, seed, side), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:  # one read of a small file, without a buffered file object around it
            chunks = []
            while chunk := os.read(fd, 1 << 18):
                chunks.append(chunk)
        finally:
            os.close(fd)
        self.hits += 1
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def get(self, key: str, slot: str, variant: int = 0, seed: int = 0,
            side: int = THUMB_SIDES[0]) -> bytes:
        if side not in THUMB_SIDES:
            raise ValueError(f"thumbnail side must be one of {THUMB_SIDES}, not {side}")
        data = self.cached(key, slot, variant, seed, side)
        if data is not None:
            return data
        path = self.path(key, slot, variant, seed, side)
        self.misses += 1
        with self.catalog.lock:
            # min_side: JPEG members decode at a reduced scale (2x-8x less work)
            image = self.catalog.reader.fetch(key, slot, seed=seed, min_side=side,
                                              variant=variant)
        data = thumbnail_bytes(image, side)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        storage.atomic_write(path, data)
        return data


def thumbnail_bytes(image: np.ndarray, side: int) -> bytes:
    im = Image.fromarray(image)
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.convert("RGB").save(out, "JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def task_grid(catalog: Catalog, task, res: int):
    """The task's Grid exactly as training composes it (reader.grid, square cells)."""
    with catalog.lock:
        return catalog.reader.grid(task, res, TRAIN)


def grid_png(grid) -> bytes:
    """The grid with `[IMAGEk] slot` labels and the masked cell outlined (graph200k.preview)."""
    return png_bytes(np.asarray(render_grid(grid)))
