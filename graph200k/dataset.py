"""A Graph200K dataset on disk: which tar files make up each shard.

Two layouts, told apart by a `graph200k.json` file at the root:

- **plain** (what ingest writes, what `publish` releases, what WebDataset users expect):
  `NNNNNN.tar` (+ `NNNNNN.stats.json`, `NNNNNN.index.json`) in one folder; one tar per shard.
- **stages** (what `pipelines.annotate` writes): the source shards stay where ingest put
  them, and every annotator stage writes a *sidecar* per shard holding only its own
  members, `{root}/{stage}/NNNNNN.tar`. `graph200k.json` names the source folder. A shard
  is the join by key of its source tar and its sidecars, so adding a stage writes that
  stage's bytes and nothing else, and a rerun never copies what earlier stages made.
  A sidecar counts only once its stats file exists (written last, after the tar and its
  index). `publish` assembles one tar per shard from the parts.

Stage meta entries live in the sidecars as `annotations.<stage>.json` members; `meta.json`
of the joined sample is the source `meta.json` with `annotations` and `nodes` brought up to
date (`joined_meta`), exactly what `publish` writes into the released shard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from graph200k import storage
from graph200k.nodes import META_MEMBER, available_nodes
from graph200k.shards import SHARD_PATTERN, ShardError, json_bytes, read_json

LAYOUT_FILE = "graph200k.json"
LAYOUT_VERSION = 1
INDEX_SUFFIX = ".index.json"
ANNOTATION_PREFIX = "annotations."  # sidecar member `annotations.<stage>.json`
RESERVED = ("_", ".")  # root entries that are never stages (_parts, _report, .index, ...)


def annotation_member(stage: str) -> str:
    return f"{ANNOTATION_PREFIX}{stage}.json"


def is_annotation_member(field: str) -> bool:
    return field.startswith(ANNOTATION_PREFIX) and field.endswith(".json")


@dataclass(frozen=True)
class Part:
    """One tar of a shard: the source (stage None) or a stage's sidecar."""

    stage: str | None
    url: str
    stats_url: str
    index_url: str


def _file(folder: str, shard: int, suffix: str) -> str:
    return storage.join(folder, f"{shard:06d}{suffix}")


def part_in(folder: str, shard: int, stage: str | None = None) -> Part:
    return Part(stage, storage.join(folder, SHARD_PATTERN.format(shard=shard)),
                _file(folder, shard, ".stats.json"), _file(folder, shard, INDEX_SUFFIX))


class ShardSet:
    def __init__(self, root):
        self.root = storage.normalize(root)
        layout = read_json(storage.join(self.root, LAYOUT_FILE))
        if layout is not None:
            if layout.get("version") != LAYOUT_VERSION or not layout.get("source"):
                raise ShardError(f"{self.root}/{LAYOUT_FILE}: not a Graph200K layout file of "
                                 f"version {LAYOUT_VERSION}")
            self.layout = "stages"
            self.source = storage.normalize(layout["source"])
        else:
            self.layout = "plain"
            self.source = self.root
        self._stages: list[str] | None = None

    def __repr__(self) -> str:
        return f"ShardSet({self.root!r}, layout={self.layout})"

    @staticmethod
    def create(root, source) -> "ShardSet":
        """Make `root` a stages-layout dataset over the source shards at `source`."""
        root, source = storage.normalize(root), storage.normalize(source)
        path = storage.join(root, LAYOUT_FILE)
        want = {"version": LAYOUT_VERSION, "source": source}
        have = read_json(path)
        if have is not None and storage.normalize(have.get("source", "")) != source:
            raise ShardError(f"{root} annotates the source shards at {have.get('source')}, not "
                             f"{source}: use another --out, or pass --src {have.get('source')}")
        if have is None:
            storage.makedirs(root)
            storage.atomic_write(path, (json.dumps(want, indent=1) + "\n").encode())
        return ShardSet(root)

    # -- what is there -----------------------------------------------------------------
    @property
    def stages(self) -> list[str]:
        if self._stages is None:
            self._stages = [] if self.layout == "plain" else [
                n for n in storage.listdir(self.root)
                if not n.startswith(RESERVED) and storage.isdir(storage.join(self.root, n))]
        return self._stages

    def shards(self) -> list[int]:
        """Shard numbers: those of the source (plain: of the folder)."""
        return [int(n[:6]) for n in storage.listdir(self.source)
                if len(n) == 10 and n.endswith(".tar") and n[:6].isdigit()]

    def source_part(self, shard: int) -> Part:
        return part_in(self.source, shard)

    def stage_part(self, stage: str, shard: int) -> Part:
        return part_in(storage.join(self.root, stage), shard, stage)

    def parts(self, shard: int) -> list[Part]:
        """The source tar and every complete sidecar of `shard` (stats file present)."""
        parts = [self.source_part(shard)]
        for stage in self.stages:
            p = self.stage_part(stage, shard)
            if storage.exists(p.stats_url) and storage.exists(p.url):
                parts.append(p)
        return parts

    def refresh(self) -> None:
        self._stages = None


def joined_meta(source_meta: bytes | None, annotations: dict[str, bytes], members) -> bytes | None:
    """The `meta.json` of a joined sample: source meta + stage entries + current nodes.

    Unchanged source meta keeps its bytes exactly (a sample no stage touched is byte for
    byte its source); otherwise the canonical JSON of the merged dict.
    """
    if source_meta is None:
        return None
    meta = json.loads(source_meta)
    nodes = available_nodes(m for m in members if m != META_MEMBER)
    changed = meta.get("nodes") != nodes
    meta["nodes"] = nodes
    if annotations:
        entries = dict(meta.get("annotations") or {})
        for stage, raw in sorted(annotations.items()):
            entries[stage] = json.loads(raw)
        changed = changed or entries != meta.get("annotations")
        meta["annotations"] = entries
    return json_bytes(meta) if changed else source_meta


def part_name(part: Part) -> str:
    return f"{part.stage or 'source'}/{storage.name(part.url)}"


def part_fingerprint(part: Part) -> dict:
    """What identifies a part's bytes cheaply: its size now, and the sha256 its writer
    recorded in its stats file (the modification stamp for a tar written elsewhere)."""
    fingerprint = {"part": part_name(part)}
    try:
        st = storage.stamp(part.url)
    except FileNotFoundError:
        return {**fingerprint, "size": -1}
    fingerprint["size"] = st[0]
    recorded = (read_json(part.stats_url) or {}).get("file") or {}
    if recorded.get("sha256"):
        fingerprint["sha256"] = recorded["sha256"]
    else:
        fingerprint["stamp"] = str(st[1])
    return fingerprint


def write_part(part: Part, record, stats: dict) -> None:
    """A part's index and stats, after its tar is in place: the stats file, written last,
    marks the part complete, and records the tar's size and sha256 and the index's own
    sha256 (an index is never trusted alone: graph200k.tarindex)."""
    index = index_bytes(record)
    storage.atomic_write(part.index_url, index)
    storage.atomic_write(part.stats_url, stats_bytes(stats, record, index))


def index_bytes(record) -> bytes:
    """A writer's index file: the same records always give the same bytes."""
    return json.dumps(record.to_json(), separators=(",", ":")).encode()


def stats_bytes(stats: dict, record, index: bytes) -> bytes:
    """A part's stats file, its `file` entry describing the tar and its index."""
    stats = dict(stats)
    stats["file"] = {k: v for k, v in record.to_json().items() if k != "members"}
    stats["file"]["index_sha256"] = hashlib.sha256(index).hexdigest()
    return (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode()
