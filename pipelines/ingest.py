"""Subjects200K -> source WebDataset shards (`target.jpg`, `reference.jpg`, `meta.json`).

Shard n holds the Subjects200K rows [n*N, (n+1)*N): the shard count depends only on the
row count, so a rerun (resume) or a different filter never renumbers shards. A shard is
written under a temporary name and renamed when complete; its stats JSON, written
after, marks it done. Bad rows (undecodable image, no panel layout, missing
description) are counted and listed with their reason; rows below the quality
threshold are listed as filtered.

    python -m pipelines.ingest --source Yuanshi/Subjects200K --out shards/source
    python -m pipelines.ingest --source build/subjects200k-mini.parquet --out shards/source --shard-size 4
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from graph200k.dataset import part_in, write_part
from graph200k.shards import (ShardStats, ShardWriter, encode_image, json_bytes, read_stats,
                              shard_path)
from graph200k.subjects200k import (HUB_ID, RowError, load_subjects200k, passes_quality,
                                    resolve_quality, row_key, row_to_samples)

JPEG_QUALITY = 95


def parse_shards(spec: str | None, total: int) -> list[int]:
    """'all' / None, '3', '0-9', '1,4,7-8' -> shard indices (validated against total)."""
    if spec in (None, "", "all"):
        return list(range(total))
    out = []
    for part in str(spec).split(","):
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b) if b else int(a)
        out.extend(range(lo, hi + 1))
    bad = [s for s in out if not 0 <= s < total]
    if bad:
        raise SystemExit(f"shard(s) {bad} out of range: this source has {total} shards (0-{total - 1})")
    return out


def ingest_shard(ds, shard: int, out: Path, shard_size: int, thresholds: dict,
                 panels: str = "left") -> dict:
    t0 = time.perf_counter()
    stats = ShardStats(shard, extra={"quality_thresholds": thresholds, "panels": panels})
    lo, hi = shard * shard_size, min((shard + 1) * shard_size, len(ds))
    with ShardWriter(shard_path(out, shard)) as writer:
        for row_id in range(lo, hi):
            stats.samples += 1
            key = row_key(row_id)
            try:
                row = ds[row_id]
            except Exception as e:  # a row the reader itself cannot materialise
                stats.fail(key, f"row unreadable ({type(e).__name__}: {e})")
                continue
            if not passes_quality(row.get("quality_assessment"), thresholds):
                stats.filtered.append({"key": key, "reason": f"quality {row.get('quality_assessment')}"
                                       f" below {thresholds}"})
                continue
            try:
                samples = row_to_samples(row, row_id, panels)
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
    stats.seconds = time.perf_counter() - t0
    result = stats.to_json()
    write_part(part_in(out, shard), writer.record, result)  # index, then stats: marks it done
    return read_stats(out, shard)


def _run_one(args) -> dict:
    source, shard, out, shard_size, thresholds, panels = args
    return ingest_shard(load_subjects200k(source), shard, Path(out), shard_size, thresholds, panels)


def summary_line(r: dict) -> str:
    line = (f"shard {r['shard']:06d}: {r['samples']} rows -> {r['written']} samples, "
            f"{r['filtered_count']} filtered, {r['failed_count']} failed ({r['seconds']:.1f}s)")
    for f in r["failed"]:
        line += f"\n    failed {f['key']}: {f['reason']}"
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=HUB_ID,
                    help="hub id, parquet file/folder, or saved Arrow folder")
    ap.add_argument("--out", default="shards/source")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--shards", default="all", help="'all', 'N', 'A-B' or a comma list")
    ap.add_argument("--quality", default="visualcloze",
                    help="preset (visualcloze, ominicontrol, none) or thresholds "
                         "'objectConsistency=3,imageQuality=4'")
    ap.add_argument("--panels", choices=("left", "right", "both"), default="left",
                    help="left: one sample per row keyed by row id (target = left panel); "
                         "both: every image becomes a target, keys ROW_0 / ROW_1")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--force", action="store_true", help="redo shards that are already complete")
    args = ap.parse_args(argv)

    thresholds = resolve_quality(args.quality)
    ds = load_subjects200k(args.source)
    total = (len(ds) + args.shard_size - 1) // args.shard_size
    todo, skipped = [], []
    for s in parse_shards(args.shards, total):
        done = read_stats(args.out, s) is not None and shard_path(args.out, s).exists()
        (skipped if done and not args.force else todo).append(s)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"ingest: {len(ds)} rows from {args.source} -> {total} shards of {args.shard_size}; "
          f"{len(todo)} to write, {len(skipped)} already complete (skipped)")
    results = []
    if args.workers > 1 and len(todo) > 1:
        jobs = [(args.source, s, args.out, args.shard_size, thresholds, args.panels) for s in todo]
        with ProcessPoolExecutor(args.workers) as pool:
            for r in pool.map(_run_one, jobs):
                results.append(r)
                print(summary_line(r))
    else:
        for s in todo:
            r = ingest_shard(ds, s, Path(args.out), args.shard_size, thresholds, args.panels)
            results.append(r)
            print(summary_line(r))
    written = sum(r["written"] for r in results)
    failed = sum(r["failed_count"] for r in results)
    filtered = sum(r["filtered_count"] for r in results)
    print(f"ingest: wrote {written} samples in {len(results)} shards; {filtered} filtered by "
          f"quality, {failed} failed (listed in the shards' stats JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
