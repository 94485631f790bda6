"""Subjects200K -> source WebDataset shards (`target.jpg`, `reference.jpg`, `meta.json`).

Shard n holds the Subjects200K rows [n*N, (n+1)*N): the shard count depends only on the
row count, so a rerun (resume) or a different filter never renumbers shards. A shard is
written under a temporary name and renamed when complete; its stats JSON, written
after, marks it done. Bad rows (undecodable image, no panel layout, missing
description) are counted and listed with their reason; rows below the quality
threshold, and rows whose description Subjects200K marks `description_valid: false`,
are listed as filtered. A shard whose rows were all filtered is a valid, empty shard.
Descriptions are cleaned of control characters and capped in length; `meta.json`
records what was changed. `--source` and `--out` may be local paths or fsspec URLs.

    python -m pipelines.ingest --source Yuanshi/Subjects200K --out shards/source
    python -m pipelines.ingest --source build/subjects200k-mini.parquet --out shards/source --shard-size 4
    python -m pipelines.ingest --source s3://bucket/subjects200k/ --out s3://bucket/shards/source

The released Graph200K (`--source VisualCloze/Graph200K`, a `save_to_disk` folder of it, or
parquet files with its columns) is imported instead: source shards plus one stage sidecar
per annotation it holds, its train/test split kept (pipelines.import_graph200k).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from graph200k import storage
from graph200k.dataset import part_in, write_part
from graph200k.shards import (ShardStats, ShardWriter, encode_image, json_bytes, read_stats,
                              shard_path)
from graph200k.subjects200k import (HUB_ID, MAX_DESCRIPTION_CHARS, RowError, description_invalid,
                                    load_subjects200k, passes_quality, resolve_quality, row_key,
                                    row_to_samples)

JPEG_QUALITY = 95
PROG = "python -m pipelines.ingest"


@dataclass(frozen=True)
class IngestOptions:
    shard_size: int = 1000
    thresholds: dict = field(default_factory=dict)
    panels: str = "left"
    invalid_descriptions: str = "drop"  # or "keep"
    max_description_chars: int = MAX_DESCRIPTION_CHARS

    def stats_extra(self) -> dict:
        return {"quality_thresholds": self.thresholds, "panels": self.panels,
                "invalid_descriptions": self.invalid_descriptions,
                "max_description_chars": self.max_description_chars}


# -- arguments -------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not allowed: it must be 1 or more")
    return n


_SHARD_PART = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def shard_spec(text: str) -> list[int] | None:
    """--shards: None for 'all', else the shard numbers of 'N', 'A-B' or a comma list."""
    if text.strip() in ("", "all"):
        return None
    out: set[int] = set()
    for part in text.split(","):
        m = _SHARD_PART.fullmatch(part)
        if not m:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a shard number or range: use 'all', N, A-B or a comma "
                "list such as 0,3,5-9 (shard numbers start at 0)")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise argparse.ArgumentTypeError(
                f"range {part.strip()!r} is empty: write the lower shard first ({hi}-{lo})")
        out.update(range(lo, hi + 1))
    return sorted(out)


def select_shards(spec: list[int] | None, total: int) -> list[int]:
    """The shards to consider; ValueError for shard numbers this source does not have."""
    if spec is None:
        return list(range(total))
    bad = [s for s in spec if s >= total]
    if bad:
        have = f"0-{total - 1}" if total else "none"
        raise ValueError(f"shard(s) {bad[:10]}{' ...' if len(bad) > 10 else ''} out of range: "
                         f"this source has {total} shards ({have})")
    return spec


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=HUB_ID,
                    help="hub id, or a parquet file/folder or saved Arrow folder (local path or "
                         "fsspec URL)")
    ap.add_argument("--out", default="shards/source", help="local folder or fsspec URL")
    ap.add_argument("--shard-size", type=positive_int, default=1000, help="rows per shard")
    ap.add_argument("--shards", type=shard_spec, default="all",
                    help="'all', 'N', 'A-B' or a comma list")
    ap.add_argument("--quality", default="visualcloze",
                    help="preset (visualcloze, ominicontrol, none) or thresholds "
                         "'objectConsistency=3,imageQuality=4'")
    ap.add_argument("--invalid-descriptions", choices=("drop", "keep"), default="drop",
                    help="rows marked description_valid: false: drop (listed as filtered) or "
                         "keep (the flag stays in meta.json either way)")
    ap.add_argument("--max-description-chars", type=positive_int, default=MAX_DESCRIPTION_CHARS,
                    help="longer descriptions are cut (at a word boundary) and the cut recorded")
    ap.add_argument("--panels", choices=("left", "right", "both"), default="left",
                    help="left: one sample per row keyed by row id (target = left panel); "
                         "both: every image becomes a target, keys ROW_0 / ROW_1")
    ap.add_argument("--workers", type=positive_int, default=1)
    ap.add_argument("--force", action="store_true", help="redo shards that are already complete")
    ap.add_argument("--annotated", default=None,
                    help="Graph200K import only: the annotated dataset folder its stage "
                         "sidecars go to (default: <out>/../graph200k)")
    return ap


# -- one shard -------------------------------------------------------------------------------

def ingest_shard(ds, shard: int, out, opts: IngestOptions) -> dict:
    t0 = time.perf_counter()
    stats = ShardStats(shard, extra=opts.stats_extra())
    cleaned = []
    lo, hi = shard * opts.shard_size, min((shard + 1) * opts.shard_size, len(ds))
    with ShardWriter(shard_path(out, shard)) as writer:
        for row_id in range(lo, hi):
            stats.samples += 1
            key = row_key(row_id)
            try:
                row = ds[row_id]
            except Exception as e:  # a row the reader itself cannot materialise
                stats.fail(key, f"row unreadable ({type(e).__name__}: {e})")
                continue
            if not passes_quality(row.get("quality_assessment"), opts.thresholds):
                stats.filtered.append({"key": key, "filter": "quality",
                                       "reason": f"quality {row.get('quality_assessment')} "
                                                 f"below {opts.thresholds}"})
                continue
            if opts.invalid_descriptions == "drop" and description_invalid(row):
                stats.filtered.append({"key": key, "filter": "description_valid",
                                       "reason": "description_valid is false "
                                                 "(--invalid-descriptions keep ingests it)"})
                continue
            try:
                samples = row_to_samples(row, row_id, opts.panels, opts.max_description_chars)
            except RowError as e:
                stats.fail(key, str(e))
                continue
            for s in samples:
                writer.write({
                    "__key__": s["__key__"],
                    "target.jpg": encode_image(s["target"], "jpg", JPEG_QUALITY),
                    "reference.jpg": encode_image(s["reference"], "jpg", JPEG_QUALITY),
                    "meta.json": json_bytes(s["meta"]),
                })
                stats.written += 1
                if "cleaned" in s["meta"]:
                    cleaned.append({"key": s["__key__"], "fields": s["meta"]["cleaned"]})
    stats.seconds = time.perf_counter() - t0
    stats.extra.update(cleaned_count=len(cleaned), cleaned=cleaned)
    write_part(part_in(out, shard), writer.record, stats.to_json())  # index, then stats: done
    return read_stats(out, shard)


def is_complete(out: str, shard: int) -> bool:
    """Stats written (they come last) and a tar of the size they recorded: a shard cut short
    after it was written is redone, not skipped."""
    stats = read_stats(out, shard)
    tar = shard_path(out, shard)
    if stats is None or not storage.exists(tar):
        return False
    recorded = (stats.get("file") or {}).get("size")
    return recorded is None or storage.size(tar) == recorded


# -- worker pool -----------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """Pool initializer. A worker whose parent was killed (SIGKILL: no cleanup runs) would
    go on with its shard and then wait on its queue forever; the kernel kills it instead
    (Linux), or a watcher thread notices the new parent pid (elsewhere)."""
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


@functools.lru_cache(maxsize=1)
def _dataset(source: str):
    return load_subjects200k(source)


def _run_one(job) -> dict:
    source, shard, out, opts = job
    return ingest_shard(_dataset(source), shard, out, opts)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent has datasets/pyarrow threads running, and a forked child
    # can inherit a lock one of them held and hang. Spawned workers are still direct
    # children of this process, which is what the death signal is tied to.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


# -- the command -----------------------------------------------------------------------------

def summary_line(r: dict) -> str:
    line = (f"shard {r['shard']:06d}: {r['samples']} rows -> {r['written']} samples, "
            f"{r['filtered_count']} filtered, {r['failed_count']} failed")
    if r.get("cleaned_count"):
        line += f", {r['cleaned_count']} with cleaned text"
    line += f" ({r['seconds']:.1f}s)"
    for f in r["failed"]:
        line += f"\n    failed {f['key']}: {f['reason']}"
    return line


def prepare_output(out: str) -> None:
    """Create --out and prove a file can be made there: an unwritable folder is one clear
    error before any work, not a traceback in the middle of a shard."""
    try:
        storage.makedirs(out)
        if not storage.is_url(out):
            with tempfile.TemporaryFile(dir=out):
                pass
    except OSError as e:
        raise SystemExit(f"{PROG}: error: cannot write to the output folder {out}: "
                         f"{e.strerror or e}; choose another --out or fix its permissions")


def _in_memory(path: str) -> bool:
    return str(path).startswith("memory://")


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        thresholds = resolve_quality(args.quality)
    except ValueError as e:
        ap.error(f"argument --quality: {e}")
    out = storage.normalize(args.out)
    from pipelines import import_graph200k

    if not storage.is_url(args.source) and import_graph200k.looks_like_graph200k(args.source):
        prepare_output(out)
        try:
            import_graph200k.import_release(args.source, out, args.annotated, args.shard_size)
        except import_graph200k.ReleaseImportError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        return 0
    if args.workers > 1 and (_in_memory(out) or _in_memory(args.source)):
        ap.error("memory:// lives inside one process, so workers cannot share it: use "
                 "--workers 1 with a memory:// --source or --out")
    try:
        ds = load_subjects200k(args.source)
    except FileNotFoundError as e:
        ap.error(f"argument --source: {e}")
    except Exception as e:  # bad bytes: pyarrow's ArrowInvalid (a ValueError), datasets' own
        from datasets.exceptions import DatasetsError

        if not isinstance(e, (ValueError, DatasetsError)):
            raise
        ap.error(f"argument --source: {args.source} is not a readable Subjects200K parquet "
                 f"or dataset folder ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    total = (len(ds) + args.shard_size - 1) // args.shard_size
    try:
        selected = select_shards(args.shards, total)
    except ValueError as e:
        ap.error(f"argument --shards: {e}")
    opts = IngestOptions(args.shard_size, thresholds, args.panels, args.invalid_descriptions,
                         args.max_description_chars)
    prepare_output(out)  # every argument checked first: a usage error writes nothing
    todo, skipped = [], []
    for s in selected:
        (skipped if is_complete(out, s) and not args.force else todo).append(s)
    swept = storage.sweep_stale_tmp(out)
    if swept:
        print(f"ingest: removed {len(swept)} temporary file(s) left by killed runs: "
              f"{', '.join(swept[:5])}{' ...' if len(swept) > 5 else ''}")
    print(f"ingest: {len(ds)} rows from {args.source} -> {total} shards of {args.shard_size}; "
          f"{len(todo)} to write, {len(skipped)} already complete (skipped)")
    results = []
    try:
        if args.workers > 1 and len(todo) > 1:
            jobs = [(args.source, s, out, opts) for s in todo]
            with worker_pool(min(args.workers, len(todo))) as pool:
                for r in pool.map(_run_one, jobs):
                    results.append(r)
                    print(summary_line(r), flush=True)
        else:
            for s in todo:
                r = ingest_shard(ds, s, out, opts)
                results.append(r)
                print(summary_line(r), flush=True)
    except PermissionError as e:
        raise SystemExit(f"{PROG}: error: cannot write to the output folder {out}: {e}") from None
    written = sum(r["written"] for r in results)
    failed = sum(r["failed_count"] for r in results)
    by_filter = Counter(f.get("filter", "quality") for r in results for f in r["filtered"])
    filtered = ", ".join(f"{name} {n}" for name, n in sorted(by_filter.items()))
    cleaned = sum(r.get("cleaned_count", 0) for r in results)
    print(f"ingest: wrote {written} samples in {len(results)} shards; "
          f"{sum(by_filter.values())} filtered{f' ({filtered})' if filtered else ''}, "
          f"{failed} failed, {cleaned} with cleaned text (listed in the shards' stats JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
