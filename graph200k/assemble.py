"""One tar per shard from a stages-layout dataset: the source tar joined with its sidecars.

    for sample in joined_samples(ShardSet("shards/graph200k"), 3): ...   # dicts of bytes
    assemble(ShardSet("shards/graph200k"), 3, "release/")                  # release/000003.tar

A joined sample holds the source members, every complete sidecar's members and the
`meta.json` of graph200k.dataset.joined_meta (stage meta entries under `annotations`,
`nodes` up to date). Sidecar members are copied byte for byte. The assembled shard's
stats record the sha256 of every part it was made from: an unchanged shard is not
assembled again, and a changed part (a repaired sidecar) makes it stale.
"""

from __future__ import annotations

from collections import Counter

from graph200k import storage
from graph200k.dataset import (ShardSet, is_annotation_member, joined_meta, part_fingerprint,
                               part_in, write_part)
from graph200k.nodes import META_MEMBER, available_nodes
from graph200k.shards import ShardError, ShardWriter, member_digest, read_json
from graph200k.tarindex import ShardIndex


def joined_samples(shard_set: ShardSet, shard: int):
    parts = shard_set.parts(shard)
    files = []
    try:
        indexes = [ShardIndex.load_or_build(p.url, write=False, writer_index=p.index_url)
                   for p in parts]
        files = [storage.open_read(p.url) for p in parts]
        for key in indexes[0].keys():
            sample, annotations = {"__key__": key}, {}
            for part, index, f in zip(parts, indexes, files):
                for field in index.fields(key):
                    offset, size = index.locate(key, field)
                    f.seek(offset)
                    data = f.read(size)
                    digest = index.digest(key, field)
                    if len(data) != size or (digest is not None and member_digest(data) != digest):
                        raise ShardError(f"{part.url}: {key}.{field} is cut short or corrupt; "
                                         f"run `python -m graph200k.verify --shards "
                                         f"{shard_set.root}` and the repair it prints")
                    if part.stage is not None and is_annotation_member(field):
                        annotations[part.stage] = data
                    elif field not in sample:
                        sample[field] = data
            if len(parts) > 1 and META_MEMBER in sample:
                sample[META_MEMBER] = joined_meta(sample[META_MEMBER], annotations,
                                                  [m for m in sample if m != "__key__"])
            yield sample
    finally:
        for f in files:
            f.close()


def sources_of(shard_set: ShardSet, shard: int) -> list[dict]:
    return [part_fingerprint(p) for p in shard_set.parts(shard)]


def assemble(shard_set: ShardSet, shard: int, dest, force: bool = False) -> bool:
    """Write `dest/NNNNNN.tar` (+ index, stats) from the shard's parts; False if the one
    there was made from the same parts (nothing to do)."""
    target = part_in(storage.normalize(dest), shard)
    made_from = sources_of(shard_set, shard)
    old = read_json(target.stats_url)
    if not force and old is not None and old.get("assembled_from") == made_from \
            and storage.exists(target.url) and storage.size(target.url) == (old.get("file") or {}).get("size"):
        return False
    source_stats = read_json(shard_set.source_part(shard).stats_url) or {}
    nodes: Counter = Counter()
    with ShardWriter(target.url) as writer:
        for sample in joined_samples(shard_set, shard):
            writer.write(sample)
            nodes.update(available_nodes(m for m in sample if m != "__key__"))
    stats = {"shard": shard, "samples": writer.count, "written": writer.count,
             "nodes": dict(sorted(nodes.items())),
             "assembled_from": made_from,
             "stages": {p.stage: {k: v for k, v in (read_json(p.stats_url) or {}).items()
                                  if k in ("ok", "skipped", "failed", "seconds", "samples",
                                           "config", "run", "failed_keys", "skipped_keys")}
                        for p in shard_set.parts(shard) if p.stage},
             "source": {k: source_stats.get(k) for k in ("filtered_count", "failed_count")
                        if k in source_stats}}
    write_part(target, writer.record, stats)
    return True
