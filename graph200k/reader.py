"""Node images of annotated samples by key: O(1) reads from shards, online nodes derived.

    reader = SampleReader("shards/graph200k")            # manifest built from the shards
    reader.member_bytes("0000042", "canny.png")          # raw bytes of one member
    reader.fetch("0000042", "foreground")                # uint8 H x W x 3, derived online
    reader.fetch("0000042", "instantstyle", variant=3)   # variant 3 of a generated node
    reader.grid(task, res=384)                           # a graph200k.grid.Grid

Each key is looked up in the manifest (key -> shard), then in the member indexes of the
shard's parts (its source tar and stage sidecars, graph200k.dataset) and read with one
`pread` (local) or one ranged GET (object stores). Open shard files are kept in a small LRU
per process. Every failure is a FetchError naming the shard, the key and the node, with a
`reason` the training stream counts: unknown_key, shard_unreadable, bad_index,
stale_index, missing_member, corrupt (bytes or a record that are not what the writer
wrote: digest, or the member's own tar header names another key), undecodable.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict

import cv2
import numpy as np

from graph200k import storage, tarindex
from graph200k.dataset import Part, ShardSet, is_annotation_member, joined_meta
from graph200k.grid import TRAIN, Grid, centre_square, compose, resize, to_rgb, train_cell_size
from graph200k.manifest import Manifest
from graph200k.nodes import (DEGRADATION, META_MEMBER, NODE_TYPES, SLOT_NODE, SLOTS,
                             variant_member)
from graph200k.pair import TwoFramePair
from graph200k.shards import (GREY, NATIVE, RGB, ShardError, decode_image,
                              shard_index, shard_path)

REASONS = ("unknown_key", "shard_unreadable", "bad_index", "stale_index", "missing_member",
           "corrupt", "undecodable")
MATTE_MEMBER = "rmbg.png"
# foreground / background keep the pixels on their side of the RMBG matte at 0.5.
MATTE_THRESHOLD = 128
# What fills the removed part: black on both sides, as the reference trainer builds them
# (`target * (mask > 0.5)` in VisualCloze's data/data_reader.py), so a model trained here
# sees the foreground and background that Graph200K models were trained on.
FOREGROUND_FILL = 0
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


class StaleManifestError(ShardError):
    """The manifest no longer describes the shards (added, removed or rewritten parts)."""


CHECKS = ("error", "warn", "ignore")


def load_manifest(manifest, shards, check: str = "error") -> Manifest:
    """A Manifest, a parquet path or URL, or None (then scanned from the shard folder).

    A given manifest is checked against `shards` (Manifest.check): with check "error" a
    stale one raises StaleManifestError listing what changed and the command that rebuilds
    it; "warn" warns; "ignore" trusts it (YAML reads a bare off as false)."""
    if check not in CHECKS:
        raise ValueError(f"manifest check must be one of {CHECKS}, not {check!r}")
    if manifest is None:
        shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        if not shard_set.shards():
            raise ShardError(f"no shards (NNNNNN.tar) in {shard_set.source}: check the path, "
                             "or run `make annotate` first")
        return Manifest.from_shards(shard_set)
    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    # A manifest built from records (or by an older version) names no parts: nothing to check.
    if check != "ignore" and m.parts and (shards is not None or m.root):
        problems = m.check(shards if shards is not None else m.root)
        if problems:
            root = shards.root if isinstance(shards, ShardSet) else (shards or m.root)
            message = (f"the manifest no longer matches the shards in {root}: "
                       + "; ".join(problems[:5])
                       + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
                       + f". Rebuild it: python -m graph200k.manifest --shards {root}")
            if check == "error":
                raise StaleManifestError(message)
            import warnings

            warnings.warn(message, stacklevel=2)
    return m


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
                 write_index: bool = True, manifest_check: str = "error"):
        self.shard_set = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        self.folder = self.shard_set.root
        self.manifest = load_manifest(manifest, self.shard_set, manifest_check)
        self.index_dir = index_dir
        self.max_open = max(1, int(max_open))
        self.write_index = write_index
        self._views: dict[int, list[tuple[Part, tarindex.ShardIndex]]] = {}
        self._handles: OrderedDict[str, int] = OrderedDict()  # local part path -> fd, LRU

    # ---- raw members -----------------------------------------------------------------
    def shard_of(self, key: str, node: str | None = None) -> int:
        try:
            return int(self.manifest.shards[self.manifest.index_of(key)])
        except KeyError:
            raise FetchError("unknown_key", self.folder, key, node, "the key is not in the "
                             "manifest", "rebuild the manifest (python -m graph200k.manifest) "
                             "or check the task's keys") from None

    def _view(self, shard: int, key: str, node: str | None):
        view = self._views.get(shard)
        where = shard_path(self.shard_set.source, shard)
        if view is None:
            view = []
            try:
                for part in self.shard_set.parts(shard):
                    view.append((part, tarindex.ShardIndex.load_or_build(
                        part.url, self.index_dir, self.write_index, part.index_url,
                        part.stats_url)))
            except tarindex.BadIndexError as e:
                raise FetchError("bad_index", where, key, node, f"{type(e).__name__}: {e}",
                                 f"run `python -m graph200k.verify --shards {self.folder}` "
                                 "and the repair it prints") from e
            except (OSError, ShardError) as e:
                raise FetchError("shard_unreadable", where, key, node, f"cannot index the "
                                 f"shard ({e})", "check the shard exists and is complete, or "
                                 "re-create it") from e
            self._views[shard] = view
        elif not all(index.is_fresh() for _, index in view):
            self.forget(shard)  # the next read re-indexes the new files
            raise StaleIndexError("stale_index", where, key, node, "the shard changed on disk "
                                  "after it was indexed (size or mtime differ)",
                                  "it was re-annotated or copied while training; its index "
                                  "is rebuilt at the next read")
        return view

    def _read(self, part: Part, offset: int, size: int) -> bytes:
        if storage.is_url(part.url):
            return storage.read_range(part.url, offset, size)
        fd = self._handles.get(part.url)
        if fd is None:
            fd = self._handles[part.url] = os.open(part.url, os.O_RDONLY)
            while len(self._handles) > self.max_open:
                os.close(self._handles.popitem(last=False)[1])
        else:
            self._handles.move_to_end(part.url)
        return os.pread(fd, size, offset)

    def fields(self, key: str) -> list[str]:
        """Every member the joined sample holds (sidecar annotation members excluded)."""
        view = self._view(self.shard_of(key), key, None)
        return sorted({f for _, index in view for f in index.fields(key)
                       if not is_annotation_member(f)})

    def member_bytes(self, key: str, member: str, node: str | None = None) -> bytes:
        shard = self.shard_of(key, node)
        view = self._view(shard, key, node)
        if member == META_MEMBER:
            return self._joined_meta(key, view, node)
        for part, index in view:
            if index.locate(key, member) is not None:
                return self._member(part, index, key, member, node)
        have = sorted({f for _, index in view for f in index.fields(key)})
        detail = (f"member {member!r} is missing (the sample holds {', '.join(have)})"
                  if have else "the sample is not in this shard")
        raise FetchError("missing_member", shard_path(self.shard_set.source, shard), key,
                         node, detail, "re-annotate the shard or rebuild the manifest from it")

    def _member(self, part: Part, index: tarindex.ShardIndex, key: str, member: str,
                node) -> bytes:
        offset, size = index.span(key, member)
        try:
            data = self._read(part, offset, size)
        except OSError as e:
            raise FetchError("shard_unreadable", part.url, key, node, f"reading {member!r} "
                             f"failed ({e})", "check the file system") from e
        try:
            # The member's own tar header is read with it: a record that points at another
            # sample's bytes (swapped or edited index) is refused, not returned.
            return index.checked(part.url, key, member, data)
        except tarindex.MemberMismatchError as e:
            # Caught here, not by the decoder: flipped bytes in a JPEG still decode, to garbage.
            raise FetchError("corrupt", part.url, key, node, str(e), "run `python -m "
                             f"graph200k.verify --shards {self.folder}` and the repair it "
                             "prints") from None

    def _joined_meta(self, key: str, view, node) -> bytes:
        source_part, source_index = view[0]
        if source_index.locate(key, META_MEMBER) is None:
            raise FetchError("missing_member", source_part.url, key, node, "meta.json is "
                             "missing", "re-create the source shard")
        meta = self._member(source_part, source_index, key, META_MEMBER, node)
        if len(view) == 1:
            return meta  # one tar per shard: its meta.json is the sample's
        annotations, members = {}, set()
        for part, index in view:
            for f in index.fields(key):
                if is_annotation_member(f):
                    annotations[part.stage] = self._member(part, index, key, f, node)
                else:
                    members.add(f)
        return joined_meta(meta, annotations, members)

    def image(self, key: str, member: str, node: str | None = None, mode: str = RGB,
              min_side: int | None = None) -> np.ndarray:
        data = self.member_bytes(key, member, node)
        try:
            return decode_image(data, mode, min_side)
        except Exception as e:  # a decoder may raise several types for bad bytes
            raise FetchError("undecodable", shard_path(self.shard_set.source, self.shard_of(key)),
                             key, node, f"member {member!r} is not a readable image "
                             f"({type(e).__name__}: {e})", "re-annotate the shard") from e

    # ---- node images -----------------------------------------------------------------
    def fetch(self, key: str, slot: str, seed: int = 0, min_side: int | None = None,
              cache: dict | None = None, rgb: bool = True, variant: int = 0) -> np.ndarray:
        """The uint8 H x W x 3 image of one slot (a cell) of sample `key`.

        Degradations are computed from `target` with `seed`; foreground / background from
        the RMBG matte. `cache` (a dict) shares decoded members between calls of one task.
        `rgb=False` leaves a stored grey map H x W (the composer expands it after resizing).
        `variant` picks one stored variant of a style or edit node (a task's cell records
        which); every other node has variant 0 only.
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
        return member(variant_member(slot, variant), RGB if rgb else NATIVE)

    def task_images(self, task, min_side: int | None = None) -> list[list[np.ndarray]]:
        """images[r][c] for `task.rows[r][c]`; degradations seeded from (task.seed, row)."""
        cache: dict = {}
        return [[self.fetch(cell["key"], cell["slot"], row_seed(task.seed, r), min_side, cache,
                            rgb=False, variant=cell.get("variant", 0))
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
        """Shards with an open file (local parts)."""
        return sorted({shard_index(p) for p in self._handles})

    def forget(self, shard: int) -> None:
        for part, _ in self._views.pop(shard, []):
            fd = self._handles.pop(part.url, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        for shard in list(self._views):
            self.forget(shard)
        for fd in self._handles.values():
            os.close(fd)
        self._handles.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
