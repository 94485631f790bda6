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
           and stage)             source order into `joined.tar` + `joined.index.json` in the
                                  parts folder; `commit.json` there is the one commit point;
                                  then both move to `{out}/{stage}/{shard}.tar` (+ index), the
                                  stats are written last and the parts removed (a retry
                                  finishes a committed join, redoes an uncommitted one)

Tar headers do not depend on where a member lands, so a sidecar joined from parts is byte
for byte the tar one writer would have written, whatever the block size, the batch sizes,
the number of workers or nodes. Parts are written atomically (tar first, its JSON last) and
a part without its JSON is ignored; parts left by a killed run are swept when the shard is
leased again. The driver only sees part ids: no sample crosses the network to it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict

import numpy as np

from annotators.base import FAILED, OK, SKIPPED
from graph200k import storage
from graph200k.dataset import ShardSet, annotation_member, index_bytes, stats_bytes
from graph200k.shards import (DATA, HEADER, KEY, SIZE, ShardError, ShardWriter, TarMembers,
                              check_key, read_json)
from graph200k.tarindex import BadIndexError, MemberMismatchError, ShardIndex, writer_members
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
    return ShardIndex.load_or_build(part.url, write=False, writer_index=part.index_url,
                                     stats_url=part.stats_url)


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
        spans = [self.index.span(key, f)
                 for key, by_field in self.index.members.items() if keys is None or key in keys
                 for f in by_field if fields is None or f in fields]
        if not spans:
            return 0, b""
        lo, hi = min(a for a, _ in spans), max(a + n for a, n in spans)
        return lo, storage.read_range(self.part.url, lo, hi - lo)

    def get(self, key: str, field: str) -> bytes | None:
        span = self.index.span(key, field)
        if span is None:
            return None
        offset, size = span
        if self._remote:
            if self._span is None:
                self._span = self._fetch()
            lo, fetched = self._span
            if lo <= offset and offset + size <= lo + len(fetched):
                data = fetched[offset - lo:offset - lo + size]
            else:  # outside the announced range (or the object is cut short)
                data = storage.read_range(self.part.url, offset, size)
        else:
            self._file.seek(offset)
            data = self._file.read(size)
        try:  # the member's own header and digest: a wrong record is refused, not annotated
            return self.index.checked(storage.name(self.part.url), key, field, data)
        except MemberMismatchError as e:
            raise _CorruptMember(str(e)) from None

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
            repair = (f"rebuild the index from the tar with `python -m graph200k.verify "
                      f"--shards {wave['root']} --rebuild-indexes`"
                      if isinstance(e, BadIndexError) else  # the tar itself may be intact
                      f"re-create the source shard with `python -m pipelines.ingest --shards "
                      f"{shard} --force`")
            message = f"shard {shard:06d}: {e}; {repair}, then rerun"
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


# -- resume --------------------------------------------------------------------------------
def verify_sidecar(part, stats: dict) -> tuple[str, dict, str]:
    """annotate --verify on a complete-looking sidecar: ("done" | "todo", stats, why). The
    tar must match the sha256 its stats record (else it is recomputed); its index must be
    the one the writer would have written for that tar, else it is rebuilt from the tar
    (checked against the stats: size, sha256, member count, index digest)."""
    from graph200k.verify import rebuild_index

    try:  # one read of the tar: its sha256 first, then its headers for the index
        if rebuild_index(part):
            print(f"annotate: {part.index_url} was missing or wrong: rebuilt from its tar")
    except ShardError as e:
        return "todo", stats, str(e)
    return "done", stats, "complete"


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
JOINED_TAR, JOINED_INDEX, COMMIT = "joined.tar", "joined.index.json", "commit.json"


def join_parts(root: str, stage: str, shard: int, count: int, ranges: list[tuple[int, int]],
               config: dict, run_id: str, lease=None) -> dict:
    """Parts of (stage, shard) -> its sidecar, index and stats. Returns the stats.

    Idempotent under retry (Ray reruns a join whose worker died): the new tar and index are
    written inside the parts folder, then one file, `commit.json` (holding the stats), is
    the commit point; `apply_commit` moves tar and index into place and writes the stats. A
    retry that finds `commit.json` finishes that commit; one that finds none starts over
    from the parts, the old sidecar untouched; one that finds this run's stats is done.
    `lease` (pipelines.leases.Lease) is checked right before the commit point: a run whose
    lease was taken over raises LeaseLost there and commits nothing.
    """
    start_time = time.perf_counter()
    target = ShardSet(root).stage_part(stage, shard)
    folder = parts_folder(root, stage, shard)
    commit = storage.join(folder, COMMIT)
    pending = read_json(commit)
    if pending is None:
        done = read_json(target.stats_url)
        if done is not None and done.get("run") == run_id:
            return done  # committed and cleaned up by an earlier try of this very join
        stats_text = _join(root, stage, shard, count, ranges, config, run_id, folder, target)
        if lease is not None:
            lease.assert_held()  # fencing: a run that lost its lease commits nothing
        # -- the commit point: nothing at the sidecar's names has changed before this line --
        storage.atomic_write(commit, json.dumps({"stats": stats_text}).encode())
        pending = {"stats": stats_text}
    stats = apply_commit(folder, target, pending["stats"])
    stats["join_seconds"] = round(time.perf_counter() - start_time, 3)
    return stats


def apply_commit(folder: str, target, stats_text: str) -> dict:
    """Put a committed join in place; every step may be redone after an interruption."""
    stats = json.loads(stats_text)
    try:
        present = storage.read_text(target.stats_url)
    except FileNotFoundError:
        present = None
    if present is not None and present != stats_text:
        storage.remove(target.stats_url)  # the old sidecar stops counting before it is replaced
    for name, final in ((JOINED_TAR, target.url), (JOINED_INDEX, target.index_url)):
        staged = storage.join(folder, name)
        if storage.exists(staged):
            storage.rename(staged, final)
    size = storage.size(target.url) if storage.exists(target.url) else -1
    if size != stats["file"]["size"]:
        raise ShardError(f"{target.url}: a committed join finds {size} bytes there, not the "
                         f"{stats['file']['size']} it wrote; rerun with --force for this shard")
    if present != stats_text:
        storage.atomic_write(target.stats_url, stats_text.encode())  # last: marks it complete
    storage.remove(folder)
    return stats


def _join(root, stage, shard, count, ranges, config, run_id, folder, target) -> str:
    """Write the joined tar and index into the parts folder; the stats file's text."""
    shard_set = ShardSet(root)
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
    old = _OldSidecar(target, old_stats) if any(r[2] == KEEP for p in parts for r in p["rows"]) \
        else None
    previous_status = _statuses(old_stats)
    counts = {OK: 0, SKIPPED: 0, FAILED: 0}
    failed, skipped, seconds = [], [], 0.0
    writer = ShardWriter(storage.join(folder, JOINED_TAR))
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
    index = index_bytes(writer.record)
    storage.atomic_write(storage.join(folder, JOINED_INDEX), index)
    return stats_bytes(stats, writer.record, index).decode()


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
    """The sidecar a --retry-failed run replaces: kept rows are copied from it verbatim,
    once its tar and index are checked to be what its stats record (never a tar read
    through another tar's index)."""

    def __init__(self, part, stats: dict | None):
        recorded = (stats or {}).get("file") or {}
        self.data = storage.read_bytes(part.url)
        if hashlib.sha256(self.data).hexdigest() != recorded.get("sha256"):
            raise ShardError(f"{part.url} is not the sidecar its stats record, so the rows "
                             "this run keeps cannot be copied from it; rerun with --force")
        try:
            members = writer_members(storage.read_bytes(part.index_url), recorded,
                                     part.index_url)
        except (BadIndexError, FileNotFoundError) as e:
            raise ShardError(f"{part.url}: its index is not the one its stats record ({e}); "
                             "rerun with --verify (rebuilds it) or --force") from None
        self.by_key: dict[str, list] = defaultdict(list)
        for r in members:
            self.by_key[r[KEY]].append(r)

    def copy(self, key: str, writer: ShardWriter) -> None:
        records = sorted(self.by_key.get(key, []), key=lambda r: r[HEADER])
        if records:
            _copy_records(self.data, records, writer)

    def close(self):
        self.data = b""
