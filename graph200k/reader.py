"""Node images of annotated samples by key: O(1) reads from shards, online nodes derived.

    reader = SampleReader("shards/graph200k")            # manifest built from the shards
    reader.member_bytes("0000042", "canny.png")          # raw bytes of one member
    reader.fetch("0000042", "foreground")                # uint8 H x W x 3, derived online
    reader.grid(task, res=384)                           # a graph200k.grid.Grid

Each key is looked up in the manifest (key -> shard), then in the shard's member index
(graph200k.tarindex) and read with one `pread`. Open shard files are kept in a small LRU
per process. Every failure is a FetchError naming the shard, the key and the node, with a
`reason` the training stream counts: unknown_key, shard_unreadable, stale_index,
missing_member, undecodable.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from graph200k import tarindex
from graph200k.grid import TRAIN, Grid, centre_square, compose, resize, to_rgb, train_cell_size
from graph200k.manifest import Manifest
from graph200k.nodes import DEGRADATION, NODE_TYPES, SLOT_NODE, SLOTS
from graph200k.pair import TwoFramePair
from graph200k.shards import GREY, NATIVE, RGB, ShardError, decode_image, shard_path

REASONS = ("unknown_key", "shard_unreadable", "stale_index", "missing_member", "undecodable")
MATTE_MEMBER = "rmbg.png"
# foreground / background keep the pixels on their side of the RMBG matte at 0.5.
MATTE_THRESHOLD = 128
# What fills the removed part: white behind the cut-out subject (the plain product-photo
# backdrop the `foreground` phrases describe), black in the hole the subject leaves in
# `background`; the two fills differ so the two node types never look alike.
FOREGROUND_FILL = 255
BACKGROUND_FILL = 0


class FetchError(ShardError):
    """A node image of one sample that cannot be read; names shard, key, node and why."""

    def __init__(self, reason: str, shard, key: str, node: str | None, detail: str, hint: str):
        self.reason, self.shard, self.key, self.node = reason, shard, key, node
        self._args = (reason, shard, key, node, detail, hint)
        where = f"shard {shard}: sample {key!r}" + (f", node {node!r}" if node else "")
        super().__init__(f"{where}: {detail}; {hint}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return self.__class__, self._args


class StaleIndexError(FetchError, tarindex.StaleIndexError):
    """The shard changed after this process indexed it (also a tarindex.StaleIndexError)."""


def load_manifest(manifest, shards) -> Manifest:
    """A Manifest, a parquet path, or None (then scanned from the shard folder)."""
    if isinstance(manifest, Manifest):
        return manifest
    if manifest is None:
        return Manifest.from_shards(shards)
    return Manifest.load(manifest)


def foreground_background(target: np.ndarray, matte: np.ndarray, node: str) -> np.ndarray:
    """`foreground` or `background` of `target` from an 8-bit RMBG matte (any size)."""
    h, w = target.shape[:2]
    if matte.shape[:2] != (h, w):
        matte = cv2.resize(matte, (w, h), interpolation=cv2.INTER_LINEAR)
    inside = (matte >= MATTE_THRESHOLD)[..., None]
    if node == "foreground":
        return np.where(inside, target, np.uint8(FOREGROUND_FILL))
    if node == "background":
        return np.where(inside, np.uint8(BACKGROUND_FILL), target)
    raise ValueError(f"node {node!r} is not derived from the matte (foreground, background)")


def row_seed(task_seed: int, row: int) -> int:
    """The degradation seed of one row: rows of a task are degraded independently."""
    return int(np.random.SeedSequence([int(task_seed), row]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def pair_task_name(family: str, nodes, family_pairs: int) -> str:
    """RealGeneral's task name of a 2-image variant: the condition node when the target is
    the photo (canny -> target is "canny"), the family when it has one pair variant
    ("subject_extraction"), else the variant itself ("target->depth")."""
    cond, target = nodes
    if target == "target":
        return cond
    if family_pairs == 1:
        return family
    return f"{cond}->{target}"


def pair_prompt(columns, description: str, subject: str, seed: int) -> str:
    """Frame 1 / frame 2 phrases, then the sample's description; the subject keyword is
    appended when the description lacks it (UCE looks it up in the prompt)."""
    rng = random.Random(seed)
    cond, target = columns
    text = (f"Frame 1 is {rng.choice(SLOTS[cond].phrases)}; frame 2 is "
            f"{rng.choice(SLOTS[target].phrases)}. {(description or '').strip()}").strip()
    if subject and subject.lower() not in text.lower():
        text += f" The subject is {subject}."
    return text


class SampleReader:
    def __init__(self, shards, manifest=None, index_dir=None, max_open: int = 16,
                 write_index: bool = True):
        self.folder = Path(shards)
        self.manifest = load_manifest(manifest, self.folder)
        self.index_dir = index_dir
        self.max_open = max(1, int(max_open))
        self.write_index = write_index
        self._indexes: dict[int, tarindex.ShardIndex] = {}
        self._handles: OrderedDict[int, int] = OrderedDict()  # shard -> fd, LRU order

    # ---- raw members -----------------------------------------------------------------
    def shard_of(self, key: str, node: str | None = None) -> int:
        try:
            return int(self.manifest.shards[self.manifest.index_of(key)])
        except KeyError:
            raise FetchError("unknown_key", self.folder, key, node, "the key is not in the "
                             "manifest", "rebuild the manifest (python -m graph200k.manifest) "
                             "or check the task's keys") from None

    def _index(self, shard: int, key: str, node: str | None) -> tarindex.ShardIndex:
        index = self._indexes.get(shard)
        path = shard_path(self.folder, shard)
        if index is None:
            try:
                index = tarindex.ShardIndex.load_or_build(path, self.index_dir, self.write_index)
            except (OSError, ShardError) as e:
                raise FetchError("shard_unreadable", path, key, node, f"cannot index the shard "
                                 f"({e})", "check the shard exists and is complete, or "
                                 "re-create it") from e
            self._indexes[shard] = index
        elif not index.is_fresh():
            self.forget(shard)  # the next read re-indexes the new file
            raise StaleIndexError("stale_index", path, key, node, "the shard changed on disk "
                                  "after it was indexed (size or mtime differ)",
                                  "it was re-annotated or copied while training; its index "
                                  "is rebuilt at the next read")
        return index

    def _fd(self, shard: int) -> int:
        fd = self._handles.get(shard)
        if fd is not None:
            self._handles.move_to_end(shard)
            return fd
        fd = os.open(shard_path(self.folder, shard), os.O_RDONLY)
        self._handles[shard] = fd
        while len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            os.close(old)
        return fd

    def member_bytes(self, key: str, member: str, node: str | None = None) -> bytes:
        shard = self.shard_of(key, node)
        index = self._index(shard, key, node)
        path = shard_path(self.folder, shard)
        loc = index.locate(key, member)
        if loc is None:
            have = index.fields(key)
            detail = (f"member {member!r} is missing (the sample holds {', '.join(have)})"
                      if have else "the sample is not in this shard")
            raise FetchError("missing_member", path, key, node, detail,
                             "re-annotate the shard or rebuild the manifest from it")
        offset, size = loc
        try:
            data = os.pread(self._fd(shard), size, offset)
        except OSError as e:
            raise FetchError("shard_unreadable", path, key, node, f"reading {member!r} failed "
                             f"({e})", "check the file system") from e
        if len(data) != size:
            raise FetchError("shard_unreadable", path, key, node, f"member {member!r} is cut "
                             f"short ({len(data)} of {size} bytes)", "re-create the shard")
        return data

    def image(self, key: str, member: str, node: str | None = None, mode: str = RGB,
              min_side: int | None = None) -> np.ndarray:
        data = self.member_bytes(key, member, node)
        try:
            return decode_image(data, mode, min_side)
        except Exception as e:  # a decoder may raise several types for bad bytes
            raise FetchError("undecodable", shard_path(self.folder, self.shard_of(key)), key,
                             node, f"member {member!r} is not a readable image "
                             f"({type(e).__name__}: {e})", "re-annotate the shard") from e

    # ---- node images -----------------------------------------------------------------
    def fetch(self, key: str, slot: str, seed: int = 0, min_side: int | None = None,
              cache: dict | None = None, rgb: bool = True) -> np.ndarray:
        """The uint8 H x W x 3 image of one slot (a cell) of sample `key`.

        Degradations are computed from `target` with `seed`; foreground / background from
        the RMBG matte. `cache` (a dict) shares decoded members between calls of one task.
        `rgb=False` leaves a stored grey map H x W (the composer expands it after resizing).
        """
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}; slots are node types plus "
                             "'<style>_ref' (e.g. 'instantstyle_ref')")
        node = SLOT_NODE[slot]
        cache = {} if cache is None else cache

        def member(name: str, mode: str = RGB) -> np.ndarray:
            k = (key, name, mode)
            if k not in cache:
                cache[k] = self.image(key, name, node, mode, min_side)
            return cache[k]

        kind = NODE_TYPES[node].kind
        if node in ("foreground", "background"):
            return foreground_background(member("target.jpg"), member(MATTE_MEMBER, GREY), node)
        if kind == DEGRADATION:
            from graph200k import degradations  # numpy/opencv only; loaded on first use

            return degradations.apply(node, member("target.jpg"), seed)
        return member(SLOTS[slot].member, RGB if rgb else NATIVE)

    def task_images(self, task, min_side: int | None = None) -> list[list[np.ndarray]]:
        """images[r][c] for `task.rows[r][c]`; degradations seeded from (task.seed, row)."""
        cache: dict = {}
        return [[self.fetch(cell["key"], cell["slot"], row_seed(task.seed, r), min_side, cache,
                            rgb=False)
                 for cell in row] for r, row in enumerate(task.rows)]

    def grid(self, task, res: int = 384, mode: str = TRAIN) -> Grid:
        images = self.task_images(task, min_side=res if mode == TRAIN else None)
        return compose(task, images, res, mode)

    def pair(self, task, res: int = 384, task_name: str | None = None) -> TwoFramePair:
        """RealGeneral's (condition, target) from a one-row, two-column task."""
        if len(task.rows) != 1 or len(task.columns) != 2:
            raise ValueError(f"task {task.task_id} ({task.variant}) has {len(task.rows)} rows "
                             f"x {len(task.columns)} columns; a two-frame pair needs 1 x 2")
        (condition, target), = self.task_images(task, min_side=res)
        size = train_cell_size(res)
        key = task.rows[0][0]["key"]
        i = self.manifest.index_of(key)
        subject = self.manifest.item(i)
        return TwoFramePair(
            condition=to_rgb(resize(centre_square(condition), size)),
            target=to_rgb(resize(centre_square(target), size)),
            prompt=pair_prompt(task.columns, self.manifest.description(i), subject, task.seed),
            subject=subject, task=task_name or task.variant, key=key)

    # ---- housekeeping ----------------------------------------------------------------
    @property
    def open_files(self) -> list[int]:
        return list(self._handles)

    def forget(self, shard: int) -> None:
        self._indexes.pop(shard, None)
        fd = self._handles.pop(shard, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for shard in list(self._handles):
            self.forget(shard)
        self._indexes.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
