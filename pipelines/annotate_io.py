"""Where annotate's samples come from and where its results go, all inside Ray workers.

    read  (one task per slice     source tar + the sidecars holding the members the wave's
           of a shard)            stages need -> a lean column block of `rows_per_block` rows,
                                  fused by Ray into the first stage's task (no copy between)
    stage operators               pipelines.stage_ops
    write (after each stage)      each contiguous run of a shard's rows in a batch -> a *part*:
                                  `{out}/_parts/{stage}/{shard}/{start}-{end}.tar` (the members,
                                  serialised as tar members) + `.json` (every row's status)
    collect (last)                the part ids -> a few rows for the driver
    join  (one task per shard     when a shard's parts cover all its rows, they are joined in
           and stage)             source order into `{out}/{stage}/{shard}.tar` (+ index, stats);
                                  the parts are then removed

Tar headers do not depend on where a member lands, so a sidecar joined from parts is byte
for byte the tar one writer would have written, whatever the block size, the batch sizes,
the number of workers or nodes. Parts are written atomically (tar first, its JSON last) and
a part without its JSON is ignored; parts left by a killed run are swept when the shard is
leased again. The driver only sees part ids: no sample crosses the network to it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np

from annotators.base import FAILED, OK, SKIPPED
from graph200k import storage
from graph200k.dataset import ShardSet, annotation_member, write_part
from graph200k.shards import (DATA, HEADER, KEY, SIZE, ShardError, ShardWriter, TarMembers,
                              check_key, member_digest, read_json)
from graph200k.tarindex import ShardIndex
from pipelines.stage_ops import (KEEP, KEY as KEY_COL, META, RUN, annot_column, cell_bytes,
                                 cell_str, do_column, object_column, seconds_column,
                                 status_column)

SHARD, INDEX, COUNT, ERROR = "__shard__", "__index__", "__count__", "__error__"
PARTS_DIR = "_parts"
EMPTY_INDEX = -1  # the one placeholder row of a shard with no samples


def part_column(stage: str) -> str:
    return f"__part__:{stage}"


def parts_folder(root: str, stage: str, shard: int) -> str:
    return storage.join(root, PARTS_DIR, stage, f"{shard:06d}")


# -- read ---------------------------------------------------------------------------------
def _index(part) -> ShardIndex:
    return ShardIndex.load_or_build(part.url, write=False, writer_index=part.index_url)


class _PartReader:
    """Member bytes of one part: seeks in a local file; from object storage, one ranged
    read spanning the members a slice needs (a slice's samples are contiguous in the tar),
    fetched on the first `get`, never the whole object per slice."""

    def __init__(self, part):
        self.part, self.index = part, _index(part)
        self._remote = storage.is_url(part.url)
        self._file = None if self._remote else open(part.url, "rb")
        self._span: tuple[int, bytes] | None = None  # (offset, bytes) of the fetched range
        self._wanted: tuple[set, set] | None = None

    def want(self, keys, fields) -> None:
        """The keys and fields the next `get`s ask for: bounds the remote range."""
        self._wanted = (set(keys), set(fields))

    def _fetch(self) -> tuple[int, bytes]:
        keys, fields = self._wanted if self._wanted is not None else (None, None)
        spans = [(loc[0], loc[0] + loc[1])
                 for key, by_field in self.index.members.items() if keys is None or key in keys
                 for f, loc in by_field.items() if fields is None or f in fields]
        if not spans:
            return 0, b""
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        return lo, storage.read_range(self.part.url, lo, hi - lo)

    def get(self, key: str, field: str) -> bytes | None:
        loc = self.index.members.get(key, {}).get(field)
        if loc is None:
            return None
        offset, size = loc[0], loc[1]
        if self._remote:
            if self._span is None:
                self._span = self._fetch()
            lo, span = self._span
            if lo <= offset and offset + size <= lo + len(span):
                data = span[offset - lo:offset - lo + size]
            else:  # outside the announced range (or the object is cut short)
                data = storage.read_range(self.part.url, offset, size)
        else:
            self._file.seek(offset)
            data = self._file.read(size)
        if len(data) != size:
            raise _CorruptMember(f"{field} of {storage.name(self.part.url)} is cut short")
        if len(loc) > 2 and loc[2] and member_digest(data) != loc[2]:
            raise _CorruptMember(f"{field} in {self.part.url} does not match the digest its "
                                 "writer recorded (corrupt bytes)")
        return data

    def close(self):
        if self._file is not None:
            self._file.close()


class _CorruptMember(ValueError):
    pass


def _columns(rows: list[dict], members: list[str], stages: list[str]) -> dict:
    n = len(rows)
    batch = {
        KEY_COL: object_column(r["key"] for r in rows),
        SHARD: np.array([r["shard"] for r in rows], dtype=np.int64),
        INDEX: np.array([r["index"] for r in rows], dtype=np.int64),
        COUNT: np.array([r["count"] for r in rows], dtype=np.int64),
        META: object_column(r.get("meta", "{}") for r in rows),
        ERROR: object_column(r.get("error", "") for r in rows),
    }
    for m in members:
        batch[m] = object_column(r.get("members", {}).get(m) for r in rows)
    for stage in stages:
        batch[do_column(stage)] = object_column(r.get("do", {}).get(stage, "") for r in rows)
        # A status set here (a corrupt input) is final for that stage and row.
        batch[status_column(stage)] = object_column(r.get("status", {}).get(stage, "")
                                                    for r in rows)
    assert all(len(v) == n for v in batch.values())
    return batch


def read_shards(batch: dict, wave: dict, rows_per_block: int):
    """Ray `map_batches` UDF: rows describing shard jobs -> the shards' lean rows, in blocks.

    A job (JSON) names the shard, per stage of the wave "all" or the keys to retry, and
    optionally `rows` [start, end): the planned slice of the shard this task reads (the
    driver cuts each shard into slices of `rows_per_block` from its recorded sample count).
    Without `rows` the whole shard is read and cut into blocks of `rows_per_block`.
    `wave`: {"root", "stages", "members" (read from storage), "reads" (meta fields),
    "inputs" (the stages whose sidecars hold those members and meta entries)}.
    """
    stages, members = wave["stages"], wave["members"]
    for raw in batch["job"]:
        job = json.loads(raw)
        shard = int(job["shard"])
        try:
            rows = _shard_rows(job, wave)
        except (ShardError, OSError, ValueError, EOFError) as e:
            message = (f"shard {shard:06d}: {e}; re-create the source shard with "
                       f"`python -m pipelines.ingest --shards {shard} --force`, then rerun")
            yield _columns([{"key": "", "shard": shard, "index": 0, "count": 1,
                             "error": message}], members, stages)
            continue
        if not rows:  # an empty shard is a valid shard: its sidecars are empty too
            do = {s: RUN for s in job["stages"]}
            yield _columns([{"key": "", "shard": shard, "index": EMPTY_INDEX, "count": 0,
                             "do": do}], members, stages)
            continue
        step = max(1, int(rows_per_block))
        for start in range(0, len(rows), step):
            yield _columns(rows[start:start + step], members, stages)


def check_names(key: str, fields, where: str) -> None:
    """Keys and member names come from tar headers; they only become dict keys, never paths,
    but a name that could not be written back as a member of its key is refused outright."""
    try:
        check_key(key)
    except ValueError as e:
        raise ShardError(f"{where}: {e}") from None
    for f in fields:
        if not f or "/" in f or "\\" in f or f.startswith((".", "_")) or ".." in f:
            raise ShardError(f"{where}: sample {key!r} has a member with a bad name {f!r}")


def _shard_rows(job: dict, wave: dict) -> list[dict]:
    """The lean rows of a job's shard, or of its [start, end) rows only (the job's `rows`);
    the whole shard is checked either way (names, size, count)."""
    shard_set = ShardSet(wave["root"])
    shard = int(job["shard"])
    # the source and the sidecars of the stages this wave reads from; never the sidecar of
    # a stage being recomputed (it may be the broken file that is being replaced)
    parts = [p for p in shard_set.parts(shard) if p.stage is None or p.stage in wave["inputs"]]
    readers = [_PartReader(p) for p in parts]
    try:
        source = readers[0]
        keys = source.index.keys()
        for key in keys:
            check_names(key, source.index.fields(key), source.part.url)
        source_stats = read_json(source.part.stats_url) or {}
        recorded = (source_stats.get("file") or {}).get("size")
        if recorded is not None and recorded != storage.size(source.part.url):
            raise ShardError(f"{source.part.url} holds {storage.size(source.part.url)} bytes but "
                             f"its writer wrote {recorded}: truncated or replaced")
        expected = source_stats.get("written")
        if expected is not None and int(expected) != len(keys):
            # A tar cut exactly at a member boundary reads as a valid, shorter tar: only the
            # count its writer recorded can tell.
            raise ShardError(f"{source.part.url} holds {len(keys)} samples but its stats file "
                             f"says {expected}: truncated?")
        meta_fields = [f for f in wave["reads"] if not f.startswith("annotations.")]
        annotation_reads = [f[len("annotations."):] for f in wave["reads"]
                            if f.startswith("annotations.")]
        by_stage = {r.part.stage: r for r in readers[1:]}
        span = job.get("rows")
        first, last = (0, len(keys)) if span is None else (int(span[0]), int(span[1]))
        if not 0 <= first <= last <= len(keys):
            raise ShardError(f"{source.part.url} holds {len(keys)} samples, not rows "
                             f"{first}-{last} as planned: changed during the run?")
        fields = set(wave["members"]) | {"meta.json"} | {annotation_member(st)
                                                          for st in annotation_reads}
        for r in readers:
            r.want(keys[first:last], fields)
        rows = []
        for i in range(first, last):
            key = keys[i]
            row = {"key": key, "shard": shard, "index": i, "count": len(keys), "members": {},
                   "do": {}, "status": {}}
            problems = []
            for m in wave["members"]:
                for r in readers:
                    try:
                        data = r.get(key, m)
                    except _CorruptMember as e:
                        problems.append(str(e))
                        break
                    if data is not None:
                        row["members"][m] = data
                        break
            meta = {}
            if meta_fields:
                raw = source.get(key, "meta.json")
                stored = json.loads(raw) if raw else {}
                meta.update({f: stored[f] for f in meta_fields if f in stored})
            for stage in annotation_reads:
                r = by_stage.get(stage)
                raw = r.get(key, annotation_member(stage)) if r is not None else None
                if raw:
                    meta[f"annotations.{stage}"] = json.loads(raw)
            row["meta"] = json.dumps(meta, sort_keys=True)
            for stage, todo in job["stages"].items():
                run = todo == "all" or key in set(todo)
                row["do"][stage] = RUN if run else KEEP
                if run and problems:
                    row["status"][stage] = f"{FAILED}: {'; '.join(problems)}"
            rows.append(row)
        return rows
    finally:
        for r in readers:
            r.close()


# -- write parts ------------------------------------------------------------------------
def write_parts(batch: dict, stage: str, root: str, output_members: list[str],
                drop: list[str]) -> dict:
    """Ray `map_batches` UDF after a stage: write its results as parts; pass on the rest."""
    n = len(batch[KEY_COL])
    runs: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        if cell_str(batch, do_column(stage), i) in (RUN, KEEP):
            runs[int(batch[SHARD][i])].append(i)
    part_ids = np.full(n, "", dtype=object)
    for shard, rows in runs.items():
        rows.sort(key=lambda i: int(batch[INDEX][i]))
        run: list[int] = []
        for i in rows:
            if run and int(batch[INDEX][i]) != int(batch[INDEX][run[-1]]) + 1:
                _write_part(batch, stage, root, shard, run, output_members, part_ids)
                run = []
            run.append(i)
        if run:
            _write_part(batch, stage, root, shard, run, output_members, part_ids)
    out = {k: v for k, v in batch.items() if k not in drop}
    out[part_column(stage)] = part_ids
    return out


def _write_part(batch, stage, root, shard, rows, output_members, part_ids):
    first = int(batch[INDEX][rows[0]])
    start = 0 if first == EMPTY_INDEX else first
    end = 0 if first == EMPTY_INDEX else int(batch[INDEX][rows[-1]]) + 1
    count = int(batch[COUNT][rows[0]])
    members = TarMembers()
    chunks, row_info = [], []
    for i in rows:
        if int(batch[INDEX][i]) == EMPTY_INDEX:
            continue
        key = str(batch[KEY_COL][i])
        do = cell_str(batch, do_column(stage), i)
        status = cell_str(batch, status_column(stage), i)
        seconds = float(np.nan_to_num(batch[seconds_column(stage)][i])) \
            if seconds_column(stage) in batch else 0.0
        first_record = len(members.records)
        if do == RUN and status == OK:
            sample = {"__key__": key}
            for m in output_members:
                value = cell_bytes(batch, m, i)
                if value is not None:
                    sample[m] = value
            annot = cell_str(batch, annot_column(stage), i)
            if annot:
                sample[annotation_member(stage)] = annot.encode()
            chunks += members.sample(sample)
        elif do == RUN and not status:
            status = f"{FAILED}: the stage returned no status for this sample"
        row_info.append([int(batch[INDEX][i]), key, do, status, round(seconds, 6),
                         first_record, len(members.records)])
    folder = parts_folder(root, stage, shard)
    name = f"{start:06d}-{end:06d}"
    storage.atomic_write(storage.join(folder, f"{name}.tar"), b"".join(chunks))
    storage.atomic_write(storage.join(folder, f"{name}.json"), json.dumps({
        "stage": stage, "shard": shard, "start": start, "end": end, "count": count,
        "rows": row_info, "records": members.records}, separators=(",", ":")).encode())
    for i in rows:
        part_ids[i] = f"{shard}/{start}/{end}/{count}"


def collect(batch: dict, stages: list[str]) -> dict:
    """The last operator: distinct part ids and shard errors, a few rows per batch."""
    seen = set()
    out = {"kind": [], "stage": [], "shard": [], "start": [], "end": [], "count": [],
           "message": []}
    n = len(batch[KEY_COL])
    for i in range(n):
        error = cell_str(batch, ERROR, i)
        if error:
            rec = ("error", "", int(batch[SHARD][i]), 0, 0, 0, error)
            if rec not in seen:
                seen.add(rec)
        for stage in stages:
            pid = cell_str(batch, part_column(stage), i)
            if pid:
                shard, start, end, count = (int(x) for x in pid.split("/"))
                seen.add(("part", stage, shard, start, end, count, ""))
    for rec in sorted(seen):
        for k, v in zip(out, rec):
            out[k].append(v)
    return {"kind": object_column(out["kind"]), "stage": object_column(out["stage"]),
            "shard": np.array(out["shard"], dtype=np.int64),
            "start": np.array(out["start"], dtype=np.int64),
            "end": np.array(out["end"], dtype=np.int64),
            "count": np.array(out["count"], dtype=np.int64),
            "message": object_column(out["message"])}


# -- join -------------------------------------------------------------------------------
def join_parts(root: str, stage: str, shard: int, count: int, ranges: list[tuple[int, int]],
               config: dict, run_id: str, lease=None) -> dict:
    """Parts of (stage, shard) -> its sidecar, index and stats. Returns the stats.
    `lease` (pipelines.leases.Lease): checked before the old sidecar is touched and again
    right before the new one is committed; a lease taken over raises LeaseLost."""
    start_time = time.perf_counter()
    shard_set = ShardSet(root)
    target = shard_set.stage_part(stage, shard)
    folder = parts_folder(root, stage, shard)
    parts = []
    covered = 0
    for start, end in sorted(ranges):
        if start != covered:
            raise ShardError(f"stage {stage} shard {shard:06d}: parts cover up to row {covered} "
                             f"then start at {start}; rerun")
        meta = read_json(storage.join(folder, f"{start:06d}-{end:06d}.json"))
        if meta is None:
            raise ShardError(f"stage {stage} shard {shard:06d}: part {start}-{end} is missing; "
                             "rerun")
        parts.append(meta)
        covered = end
    if covered != count:
        raise ShardError(f"stage {stage} shard {shard:06d}: parts cover {covered} of {count} rows")
    old_stats = read_json(target.stats_url)
    old = _OldSidecar(target) if any(r[2] == KEEP for p in parts for r in p["rows"]) else None
    if lease is not None:
        lease.assert_held()
    if old_stats is not None:
        storage.remove(target.stats_url)  # the old sidecar stops counting before it is replaced
    previous_status = _statuses(old_stats)
    counts = {OK: 0, SKIPPED: 0, FAILED: 0}
    failed, skipped, seconds = [], [], 0.0
    writer = ShardWriter(target.url)
    try:
        for p in parts:
            data = storage.read_bytes(storage.join(folder, f"{p['start']:06d}-{p['end']:06d}.tar"))
            records = p["records"]
            none_kept = not any(r[2] == KEEP for r in p["rows"])
            if none_kept and records:  # nothing kept: the part is appended whole
                shift = writer.offset
                writer.write_raw(data, [_shifted(r, shift) for r in records],
                                 len({r[KEY] for r in records}))
            for index, key, do, status, secs, lo, hi in p["rows"]:
                if do == KEEP:
                    status = previous_status.get(key, OK)
                    if old is not None:
                        old.copy(key, writer)
                elif not none_kept and hi > lo:
                    _copy_records(data, records[lo:hi], writer)
                seconds += secs
                kind = status.split(":", 1)[0]
                counts[kind if kind in counts else FAILED] += 1
                if kind == FAILED:
                    failed.append({"key": key, "reason": status.split(": ", 1)[-1]})
                elif kind == SKIPPED and ": " in status:
                    skipped.append({"key": key, "reason": status.split(": ", 1)[-1]})
        if lease is not None:
            lease.assert_held()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if old is not None:
            old.close()
    source = shard_set.source_part(shard)
    source_stats = read_json(source.stats_url) or {}
    stats = {
        "shard": shard, "stage": stage, "samples": count, **counts,
        "failed_keys": failed, "skipped_keys": skipped,
        "seconds": round(seconds, 3),
        "images_per_s": round(counts[OK] / seconds, 1) if seconds > 0 and counts[OK] else 0.0,
        "config": config, "run": run_id,
        "source": {"url": source.url, **{k: v for k, v in (source_stats.get("file") or {}).items()
                                         if k in ("size", "sha256")}},
    }
    if old_stats is not None:
        stats["previous"] = {k: old_stats.get(k) for k in ("ok", "skipped", "failed", "run")}
    write_part(target, writer.record, stats)
    storage.remove(folder)
    stats["join_seconds"] = round(time.perf_counter() - start_time, 3)
    return stats


def _shifted(r: list, shift: int) -> list:
    r = list(r)
    r[HEADER] += shift
    r[DATA] += shift
    return r


def _block(r) -> tuple[int, int]:
    """The byte range of a member's header + data + padding."""
    end = r[DATA] + r[SIZE]
    return r[HEADER], end + (-end % 512)


def _copy_records(data: bytes, records: list, writer: ShardWriter) -> None:
    lo, hi = _block(records[0])[0], _block(records[-1])[1]
    shift = writer.offset - lo
    writer.write_raw(data[lo:hi], [_shifted(r, shift) for r in records], 1)


def _statuses(stats: dict | None) -> dict[str, str]:
    out = {}
    for f in (stats or {}).get("failed_keys", []):
        out[f["key"]] = f"{FAILED}: {f['reason']}"
    for f in (stats or {}).get("skipped_keys", []):
        out[f["key"]] = f"{SKIPPED}: {f['reason']}"
    return out


class _OldSidecar:
    """The sidecar a --retry-failed run replaces: kept rows are copied from it verbatim."""

    def __init__(self, part):
        raw = read_json(part.index_url) or {}
        self.by_key: dict[str, list] = defaultdict(list)
        for r in raw.get("members", []):
            self.by_key[r[KEY]].append(r)
        self.data = storage.read_bytes(part.url) if self.by_key else b""

    def copy(self, key: str, writer: ShardWriter) -> None:
        records = sorted(self.by_key.get(key, []), key=lambda r: r[HEADER])
        if records:
            _copy_records(self.data, records, writer)

    def close(self):
        self.data = b""
