"""Import the released Graph200K (hub columns, graph200k.export_columns) as our shards.

    python -m pipelines.ingest --source VisualCloze/Graph200K --out shards/source
    python -m pipelines.ingest --source build/graph200k-hf --out shards/source      (save_to_disk)
    python -m pipelines.ingest --source data/graph200k-parquet/ --out shards/source (parquet)

Writes our source shards (`target.jpg`, `reference.jpg`, `meta.json`) to `--out` and, in a
stages-layout dataset at `--annotated` (default `<out>/../graph200k`), one sidecar per
annotate stage whose column the release has (`canny/NNNNNN.tar`, `mask/...`, ...), each with
stats as `pipelines.annotate` writes them: `sample_tasks`, the stream and both trainers read
it as an annotated dataset, and `annotate` treats those stages as done. `qwen_2_5_meta`
becomes the mask stage's entry (objects, subject), `FillEdit_meta` the filledit stage's.

Rows are keyed by their position: train rows first (`0000000`, ...), then test rows; every
`meta.json` carries its released `split`, which the manifest keeps (graph200k.manifest).
Image bytes are stored as they are when their format is the member's (JPEG for `.jpg`, PNG
for `.png`), otherwise re-encoded once (counted in the stats as `transcoded`).
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from graph200k import storage
from graph200k.dataset import ShardSet, annotation_member, part_in, write_part
from graph200k.export_columns import (FILLEDIT_META, QUALITY_FIELDS,
                                      QWEN_META, SINGLE, SOURCE_NODES, STAGE_OF_NODE, VARIANT)
from graph200k.shards import ShardWriter, json_bytes
from graph200k.splits import SPLITS
from graph200k.subjects200k import image_bytes

REQUIRED = ("target", "ref", "description")
HUB_NAME = "Graph200K"
FORMAT_OF_EXT = {"jpg": "JPEG", "png": "PNG"}
RUN_ID = "import"


class ReleaseImportError(ValueError):
    """A release that cannot be imported; the message names the split, row and column."""


# -- loading ---------------------------------------------------------------------------------

def _parquet_columns(files: list[str]) -> set[str]:
    """The first file's column names; none when it is not a readable parquet file (ingest's
    own reader then names what is wrong with it: empty, truncated, not parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        return set()
    try:
        return set(pq.read_schema(files[0]).names)
    except (pa.ArrowException, OSError):
        return set()


def looks_like_graph200k(source: str) -> bool:
    """True for a hub id ending in Graph200K, or a save_to_disk folder / parquet files whose
    columns are the hub's (`target` and `ref`)."""
    source = str(source)
    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return True  # a DatasetDict: Subjects200K is read from parquet or the hub
    if path.is_dir() or (path.is_file() and source.endswith(".parquet")):
        files = sorted(str(p) for p in path.glob("**/*.parquet")) if path.is_dir() else [source]
        return {"target", "ref"} <= _parquet_columns(files)
    return not path.exists() and source.rstrip("/").lower().endswith(HUB_NAME.lower())


def load_release(source: str) -> dict:
    """{split: datasets.Dataset} of a hub id, save_to_disk folder or parquet files/folder
    (read with `rows`: images stay bytes)."""
    import datasets

    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(path))
    elif path.is_dir():
        dd = datasets.load_dataset("parquet", data_dir=str(path))
    elif path.exists():
        dd = datasets.load_dataset("parquet", data_files={"train": str(path)})
    else:
        dd = datasets.load_dataset(source)
    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict({"train": dd})
    unknown = set(dd) - set(SPLITS)
    if unknown:
        raise ReleaseImportError(f"{source}: splits {sorted(unknown)} are not Graph200K's "
                           f"({', '.join(SPLITS)})")
    out = {}
    for split, ds in dd.items():
        missing = [c for c in REQUIRED if c not in ds.column_names]
        if missing:
            raise ReleaseImportError(f"{source} split {split}: column {missing[0]!r} is missing "
                               f"(a Graph200K release has {', '.join(REQUIRED)} and the "
                               "annotation columns; see docs/formats.md)")
        for c in VARIANT:
            partner = next(p for p in VARIANT if p.node == c.node and p is not c) \
                if c.node != "filledit" else None
            if partner is not None:
                for i in range(c.variants):
                    a, b = c.hub.format(i=i), partner.hub.format(i=i)
                    if (a in ds.column_names) != (b in ds.column_names):
                        lack = b if a in ds.column_names else a
                        raise ReleaseImportError(f"{source} split {split}: column {lack!r} is "
                                           f"missing while its pair {a if lack == b else b!r} "
                                           "is there")
        out[split] = ds
    return out


def rows(ds, batch_size: int = 64):
    """The rows of a split as dicts, image cells as `{"bytes", "path"}`: Arrow batches turned
    into Python, nothing decoded (casting 40 image columns to `decode=False` rewrites the
    table, and `cast_column` one by one copied it each time: minutes for 8 rows, measured)."""
    for batch in ds.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


# -- one row ---------------------------------------------------------------------------------

@dataclass
class ImportStats:
    rows: Counter = field(default_factory=Counter)        # split -> rows
    members: Counter = field(default_factory=Counter)     # member kind -> members written
    transcoded: Counter = field(default_factory=Counter)  # member kind -> re-encoded

    def line(self) -> str:
        rows = ", ".join(f"{s} {self.rows[s]}" for s in SPLITS)
        t = ", ".join(f"{k} {v}" for k, v in sorted(self.transcoded.items()))
        return f"{rows} rows" + (f"; re-encoded to the member's format: {t}" if t else "")


def _bytes_of(value, where: str, column: str) -> bytes | None:
    try:
        return image_bytes(value)
    except TypeError as e:
        raise ReleaseImportError(f"{where}: column {column!r} holds a {e}, not an image") from None


def sniff(data: bytes) -> str | None:
    """JPEG or PNG from the first bytes (no parsing: an import touches ~30 images a row)."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    return None


def _undecodable(where: str, column: str, e: Exception) -> ReleaseImportError:
    return ReleaseImportError(f"{where}: column {column!r} does not decode as an image "
                        f"({type(e).__name__}); fix or drop that row")


def member_bytes(value, member: str, where: str, column: str, stats: ImportStats) -> bytes | None:
    """The stored bytes of one image cell, in the member's format: kept when they already are
    (told by their signature), else decoded and re-encoded once (WebP, TIFF, PNG photos...)."""
    data = _bytes_of(value, where, column)
    if data is None:
        return None
    want = FORMAT_OF_EXT[member.rsplit(".", 1)[-1]]
    if sniff(data) == want:
        return data
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several types for bad bytes
        raise _undecodable(where, column, e) from None
    if want == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=want, **({"quality": 95, "subsampling": 0} if want == "JPEG" else {}))
    stats.transcoded[_kind(member)] += 1
    return buf.getvalue()


def _kind(member: str) -> str:
    head, _, rest = member.partition(".")
    index, _, ext = rest.partition(".")
    return f"{head}.N.{ext}" if index.isdigit() and ext else member


def _variant_count(row: dict, node: str, columns: set[str], where: str) -> int:
    """How many variants 0, 1, ... of a variant node the row holds; a hole is an error."""
    groups = [c for c in VARIANT if c.node == node]
    present = []
    for i in range(groups[0].variants):
        cells = [row.get(c.hub.format(i=i)) if c.hub.format(i=i) in columns else None
                 for c in groups]
        if all(v is not None for v in cells):
            present.append(i)
        elif any(v is not None for v in cells):
            lack = next(c.hub.format(i=i) for c, v in zip(groups, cells) if v is None)
            raise ReleaseImportError(f"{where}: column {lack!r} is empty while its pair is not")
    count = len(present)
    if present != list(range(count)):
        hole = next(i for i in range(count + 1) if i not in present)
        raise ReleaseImportError(f"{where}: {node} variants have a hole: column "
                           f"{groups[0].hub.format(i=hole)!r} is empty but "
                           f"{groups[0].hub.format(i=present[-1])!r} is not")
    return count


def _objects(value, where: str) -> list[dict]:
    """qwen_2_5_meta as our mask entry's objects: [{"name", "box", "colour"}]."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ReleaseImportError(f"{where}: column {QWEN_META!r} is not JSON") from None
    if isinstance(value, dict):  # a struct of lists: one list per field
        keys = list(value)
        value = [dict(zip(keys, vals)) for vals in zip(*(value[k] or [] for k in keys))]
    objects = []
    for o in value or []:
        if not isinstance(o, dict):
            raise ReleaseImportError(f"{where}: column {QWEN_META!r} holds {type(o).__name__} "
                               "entries, not objects")
        box = o.get("bbox", o.get("box", o.get("bbox_2d", o.get("coordinate"))))
        objects.append({"name": o.get("name", o.get("label", o.get("object"))),
                        "box": [int(round(float(v))) for v in (box or [])],
                        "colour": o.get("color", o.get("colour"))})
    return objects


def _subject(objects: list[dict], item: str | None) -> int | None:
    """The object that is the sample's item: the same name, else one containing it, else the
    largest box (the usual subject of a Subjects200K photo)."""
    if not objects:
        return None
    item = (item or "").strip().lower()
    for i, o in enumerate(objects):
        if item and (o["name"] or "").strip().lower() == item:
            return i
    for i, o in enumerate(objects):
        if item and item in (o["name"] or "").lower():
            return i

    def area(o):
        b = o["box"]
        return (b[2] - b[0]) * (b[3] - b[1]) if len(b) == 4 else 0

    return max(range(len(objects)), key=lambda i: area(objects[i]))


def convert_row(row: dict, key: str, split: str, columns: set[str], where: str,
                stats: ImportStats, source: str) -> tuple[dict, dict[str, dict]]:
    """(source sample, {stage: sidecar sample}) of one release row."""
    desc = row.get("description") or {}
    if isinstance(desc, str):
        desc = {"description_0": desc}
    if not isinstance(desc, dict):
        raise ReleaseImportError(f"{where}: column 'description' holds {type(desc).__name__}")
    quality = row.get("quality_assessment") or {}
    by_stage: dict[str, dict] = {}
    target = None
    source_sample = {"__key__": key}
    for c in SINGLE:
        if c.hub not in columns:
            continue
        data = member_bytes(row.get(c.hub), c.member, where, c.hub, stats)
        if data is None:
            if c.node in SOURCE_NODES:
                raise ReleaseImportError(f"{where}: column {c.hub!r} is empty; every row needs "
                                   "its target and reference")
            continue
        if c.node in SOURCE_NODES:
            source_sample[c.member] = data
            target = data if c.node == "target" else target
        else:
            by_stage.setdefault(STAGE_OF_NODE[c.node], {"__key__": key})[c.member] = data
        stats.members[c.member] += 1
    for node in ("instantstyle", "reduxstyle", "filledit"):
        for i in range(_variant_count(row, node, columns, where)):
            for c in (c for c in VARIANT if c.node == node):
                member = c.member.format(i=i)
                data = member_bytes(row[c.hub.format(i=i)], member, where,
                                    c.hub.format(i=i), stats)
                by_stage.setdefault(STAGE_OF_NODE[node], {"__key__": key})[member] = data
                stats.members[_kind(member)] += 1
    if "mask" in by_stage:
        objects = _objects(row.get(QWEN_META), where) if QWEN_META in columns else []
        entry = {"objects": objects, "subject": _subject(objects, desc.get("item")),
                 "subject_match": "imported", "imported_from": source}
        by_stage["mask"][annotation_member("mask")] = json_bytes(entry)
    if "filledit" in by_stage:
        meta = row.get(FILLEDIT_META) or {}
        n = sum(1 for m in by_stage["filledit"] if m.startswith("filledit."))
        entry = {"rewrite": "imported", "imported_from": source,
                 "variants": [{"subject": meta.get("name"), "caption": meta.get("description")}
                              for _ in range(n)]}
        by_stage["filledit"][annotation_member("filledit")] = json_bytes(entry)
    try:
        with Image.open(io.BytesIO(target)) as img:
            size = list(img.size)
    except Exception as e:
        raise _undecodable(where, "target", e) from None
    meta = {"key": key, "row": int(key), "panel": 0, "split": split, "imported_from": source,
            "collection": row.get("collection"),
            "item": desc.get("item"), "category": desc.get("category"),
            "description": (desc.get("description_0") or "").strip(),
            "reference_description": desc.get("description_1"),
            "description_valid": desc.get("description_valid"),
            "quality": {q: quality.get(q) for q in QUALITY_FIELDS},
            "size": size, "nodes": ["target", "reference"]}
    source_sample["meta.json"] = json_bytes(meta)
    return source_sample, by_stage


# -- shards ----------------------------------------------------------------------------------

def _stages_present(columns: set[str]) -> list[str]:
    stages = {STAGE_OF_NODE[c.node] for c in SINGLE if c.node not in SOURCE_NODES and c.hub in columns}
    stages |= {STAGE_OF_NODE[c.node] for c in VARIANT if c.hub.format(i=0) in columns}
    return sorted(stages)


class _ShardOut:
    """The source tar and the stage sidecars of one shard, written together."""

    def __init__(self, out: str, shard_set: ShardSet, shard: int, stages: list[str]):
        self.shard, self.t0 = shard, time.perf_counter()
        self.source = part_in(out, shard)
        self.parts = {s: shard_set.stage_part(s, shard) for s in stages}
        for p in self.parts.values():  # an old sidecar stops counting before it is replaced
            if storage.exists(p.stats_url):
                storage.remove(p.stats_url)
        self.writers = {None: ShardWriter(self.source.url)}
        self.writers.update({s: ShardWriter(p.url) for s, p in self.parts.items()})
        self.ok = Counter()
        self.keys: list[str] = []

    def write(self, source_sample: dict, by_stage: dict[str, dict]) -> None:
        self.writers[None].write(source_sample)
        self.keys.append(source_sample["__key__"])
        for stage, sample in by_stage.items():
            self.writers[stage].write(sample)
            self.ok[stage] += 1

    def close(self, source: str) -> None:
        for w in self.writers.values():
            w.close()
        n = len(self.keys)
        seconds = round(time.perf_counter() - self.t0, 3)
        write_part(self.source, self.writers[None].record,
                   {"shard": self.shard, "samples": n, "written": n, "filtered_count": 0,
                    "failed_count": 0, "failed": [], "filtered": [], "seconds": seconds,
                    "imported_from": source})
        src_file = json.loads(storage.read_bytes(self.source.stats_url))["file"]
        for stage, part in self.parts.items():
            ok = self.ok[stage]
            write_part(part, self.writers[stage].record, {
                "shard": self.shard, "stage": stage, "samples": n, "ok": ok,
                "skipped": n - ok, "failed": 0, "failed_keys": [],
                "skipped_keys": [], "seconds": 0.0, "images_per_s": 0.0,
                "config": {"imported_from": source}, "run": RUN_ID,
                "source": {"url": self.source.url, "size": src_file.get("size"),
                           "sha256": src_file.get("sha256")}})

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def import_release(source: str, out: str, annotated: str | None = None,
                   shard_size: int = 1000, log=print) -> ImportStats:
    """Write source shards to `out` and the stage sidecars under `annotated`."""
    splits = load_release(source)
    out = storage.normalize(out)
    annotated = storage.normalize(annotated or storage.join(storage.parent(out), "graph200k"))
    storage.makedirs(out)
    shard_set = ShardSet.create(annotated, out)
    stats = ImportStats()
    columns_of = {s: set(ds.column_names) for s, ds in splits.items()}
    stages = sorted(set().union(*(_stages_present(c) for c in columns_of.values())))
    current: _ShardOut | None = None
    g = 0
    try:
        for split in SPLITS:
            if split not in splits:
                continue
            columns = columns_of[split]
            for i, row in enumerate(rows(splits[split])):
                shard = g // shard_size
                if current is None or current.shard != shard:
                    if current is not None:
                        current.close(source)
                        log(f"import: shard {current.shard:06d}: {len(current.keys)} samples")
                    current = _ShardOut(out, shard_set, shard, stages)
                key = f"{g:07d}"
                where = f"{source} split {split} row {i} (key {key})"
                sample, by_stage = convert_row(row, key, split, columns, where, stats, source)
                current.write(sample, by_stage)
                stats.rows[split] += 1
                g += 1
        if current is not None:
            current.close(source)
            log(f"import: shard {current.shard:06d}: {len(current.keys)} samples")
    except BaseException:
        if current is not None:
            current.abort()  # a half-written shard never appears under its final name
        raise
    log(f"import: {source} -> {out} (source) + {annotated} (stages: "
        f"{', '.join(stages) or 'none'}): {stats.line()}")
    return stats
