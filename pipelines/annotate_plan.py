"""Annotate's planning, on the driver: which (stage, shard)s are done, to do or to retry,
whether a stage's inputs exist, and the leftovers of a killed run on a shard to redo."""

from __future__ import annotations

from dataclasses import dataclass, field

from annotators.base import members_of
from graph200k import storage
from graph200k.dataset import ShardSet, part_fingerprint
from graph200k.shards import read_json
from pipelines import annotate_io
from pipelines.annotate_config import Stage

SOURCE_NODES = ("target", "reference")  # what ingest writes into every source shard


def stage_state(shard_set: ShardSet, stage: str, shard: int, verify: bool = False
                ) -> tuple[str, dict | None, str]:
    """("done" | "todo", stats, why) of one stage's sidecar of one shard."""
    part = shard_set.stage_part(stage, shard)
    stats = read_json(part.stats_url)
    if stats is None:
        return "todo", None, "not annotated yet"
    recorded = stats.get("file") or {}
    try:
        size = storage.size(part.url)
    except FileNotFoundError:
        return "todo", stats, f"{part.url} is missing"
    if size != recorded.get("size"):
        return "todo", stats, (f"{part.url} holds {size} bytes, its stats say "
                               f"{recorded.get('size')} (truncated or replaced)")
    source = part_fingerprint(shard_set.source_part(shard))
    was = stats.get("source") or {}
    if was.get("sha256") and source.get("sha256") and was["sha256"] != source["sha256"]:
        return "todo", stats, "its source shard changed since it was annotated"
    if verify:
        from graph200k.verify import file_sha256

        if file_sha256(part.url) != recorded.get("sha256"):
            return "todo", stats, f"{part.url} does not match its recorded sha256 (corrupt)"
    return "done", stats, "complete"


@dataclass
class Plan:
    todo: dict = field(default_factory=dict)  # (stage, shard) -> "all" | [keys to retry]
    count: dict = field(default_factory=dict)  # shard -> samples (from the source stats)


def plan(shard_set, stages, shards, force, retry_failed, verify, report, log) -> Plan:
    p = Plan()
    for shard in shards:
        source = read_json(shard_set.source_part(shard).stats_url) or {}
        p.count[shard] = int(source.get("written", 0) or (source.get("file") or {}).get(
            "samples", 0) or 0)
        for s in stages:
            if force:
                p.todo[(s.name, shard)] = "all"
                continue
            state, stats, why = stage_state(shard_set, s.name, shard, verify)
            if state == "todo":
                if stats is not None:
                    log(f"shard {shard:06d} {s.name}: {why}; annotating it again")
                p.todo[(s.name, shard)] = "all"
            elif retry_failed and stats.get("failed", 0):
                p.todo[(s.name, shard)] = [f["key"] for f in stats.get("failed_keys", [])]
            else:
                report.skipped.append((s.name, shard))
    return p


def missing_inputs(shard_set, stage: Stage, shard: int, producer: dict[str, str],
                   input_members=None) -> str | None:
    """Why `stage` cannot run on `shard` now (an input no sidecar holds), or None.
    `input_members`: what the configured instance reads (an option may drop a need)."""
    for node in stage.cls.needs + stage.cls.optional:
        if node in SOURCE_NODES:
            continue
        if input_members is not None and not set(members_of([node])) & set(input_members):
            continue
        owner = producer.get(node)
        if owner is None and node in stage.cls.optional:
            continue  # read when there, and no configured stage makes it
        if owner is None:
            return (f"needs node {node!r}, which no stage of the config produces: add the "
                    "stage that makes it")
        if stage_state(shard_set, owner, shard)[0] != "done":
            return (f"needs {node!r} from stage {owner!r}, which shard {shard:06d} lacks: run "
                    f"`--stages {owner}` first (or together)")
    for other in stage.cls.reads_annotations_of():
        if stage_state(shard_set, other, shard)[0] != "done":
            return f"reads the meta entry of stage {other!r}, which shard {shard:06d} lacks"
    return None



def sweep(shard_set: ShardSet, stage: str, shard: int) -> None:
    """Leftovers of a killed run on a (stage, shard) this run now holds: its parts and the
    temporary files of its sidecar. Never listed, never published; removed here."""
    storage.remove(annotate_io.parts_folder(shard_set.root, stage, shard))
    folder = storage.join(shard_set.root, stage)
    for name in storage.listdir(folder):
        if storage.is_tmp(name) and name[1:7] == f"{shard:06d}":
            storage.remove(storage.join(folder, name))

