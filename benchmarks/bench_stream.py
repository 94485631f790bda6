"""Training-stream throughput: grids/s on one core, indexed reads vs scanning the tar.

    .venv/bin/python benchmarks/bench_stream.py [--samples 1000] [--per-shard 1000] [--grids 150]

Builds a shard folder of real photos (scikit-image) at 512² with the annotated members
(target, reference, canny, depth, rmbg matte, style pair), then composes 3-row x 3-column
grids at res 384 from the same task sequence two ways, side by side in one run:

- stream: graph200k.stream.GridStream (per-shard member index, one pread per member);
- scan:   the same reader, except each member is found by walking the tar's headers
          from the start (what reading a sample by key costs without an index).

One core: the process is pinned to one CPU and OpenCV runs single-threaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the annotated-shard writer shared with the tests

from annotated_shards import write_annotated_shards  # noqa: E402

from graph200k.manifest import Manifest  # noqa: E402
from graph200k.reader import SampleReader  # noqa: E402
from graph200k.shards import list_shards, shard_path  # noqa: E402
from graph200k.stream import GridStream  # noqa: E402
from graph200k.tasks import TaskConfig  # noqa: E402

# 3 columns: reference, a condition (stored, matte-derived or an online degradation), target.
CONFIG = {
    "families": {
        "conditional_generation_with_reference": {"variants": [
            ["reference", "canny", "target"], ["reference", "depth", "target"],
            ["reference", "background", "target"]]},
        "restoration_with_reference": {"variants": [
            ["reference", d, "target"] for d in (
                "blur", "compression", "pixelate", "oversharpen", "contrast_strengthen",
                "contrast_weaken", "quantization", "brighten", "darken",
                "saturate_strengthen", "saturate_weaken", "SRx2", "SRx4", "GaussianBlur",
                "GaussianNoise", "PoissonNoise", "SPNoise", "mosaic", "JPEG", "LowLight",
                "gray", "ColorDistortion", "Inpainting", "Rain", "Defocus", "Barrel",
                "Pincushion", "Elastic", "Frost", "rotate90", "rotate180", "rotate270")]},
    },
    "rows": {"counts": [3], "probs": [1.0]},
}


class ScanReader(SampleReader):
    """The naive baseline: find every member by walking the tar headers from the start."""

    def member_bytes(self, key, member, node=None):
        path = shard_path(self.folder, self.shard_of(key, node))
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if base == f"{key}.{member}":
                    return tar.extractfile(info).read()
        raise KeyError(f"{path}: {key}.{member} not found")


def timed_grids(stream: GridStream, reader: SampleReader, n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for n grids. CPU time is the per-core figure: the
    process is single-threaded, and wall time also counts other jobs on a shared machine."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        task = stream.task(i)
        grid = reader.grid(task, stream.res)
        assert grid.num_rows == 3 and grid.num_cols == 3
    return time.process_time() - c0, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--per-shard", type=int, default=1000,
                    help="samples per shard (ingest's default is 1000)")
    ap.add_argument("--grids", type=int, default=150)
    ap.add_argument("--scan-grids", type=int, default=20)
    ap.add_argument("--res", type=int, default=384)
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        t0 = time.perf_counter()
        write_annotated_shards(folder, num_samples=args.samples, per_shard=args.per_shard,
                               size=512)
        write_s = time.perf_counter() - t0
        manifest = Manifest.from_shards(folder)
        shards = list_shards(folder)
        mb = sum(p.stat().st_size for p in shards) / 2 ** 20
        stream = GridStream(folder, manifest, res=args.res, seed=0,
                            tasks_config=TaskConfig.from_dict(CONFIG))

        # Indexing is paid once per shard, then cached on disk: time it apart.
        t0 = time.perf_counter()
        indexed = SampleReader(folder, manifest)
        for p in shards:
            indexed.member_bytes(manifest.key(int((manifest.shards == int(p.stem)).argmax())),
                                 "meta.json")
        index_ms = (time.perf_counter() - t0) * 1e3 / len(shards)

        keys = [manifest.key(i) for i in range(0, len(manifest), max(1, len(manifest) // 50))]
        t0 = time.perf_counter()
        for k in keys:
            indexed.member_bytes(k, "target.jpg")
        fetch_us = (time.perf_counter() - t0) * 1e6 / len(keys)
        scan = ScanReader(folder, manifest)
        t0 = time.perf_counter()
        for k in keys:
            scan.member_bytes(k, "target.jpg")
        scan_fetch_us = (time.perf_counter() - t0) * 1e6 / len(keys)

        timed_grids(stream, indexed, 5)  # warm-up: imports, caches
        stream_s, stream_wall = timed_grids(stream, indexed, args.grids)
        scan_s, scan_wall = timed_grids(stream, scan, args.scan_grids)

    stream_rate = args.grids / stream_s
    scan_rate = args.scan_grids / scan_s
    lines = {
        "samples": args.samples,
        "shards": len(shards),
        "samples_per_shard": args.per_shard,
        "shard_mb": f"{mb / len(shards):.1f}",
        "fixture_write_s": f"{write_s:.1f}",
        "res": args.res,
        "grid": "3 rows x 3 columns",
        "index_build_ms_per_shard": f"{index_ms:.1f}",
        "fetch_us_per_member_indexed": f"{fetch_us:.1f}",
        "fetch_us_per_member_scan": f"{scan_fetch_us:.1f}",
        "fetch_ratio": f"{scan_fetch_us / fetch_us:.0f}x",
        "stream_cpu_ms_per_grid": f"{stream_s * 1e3 / args.grids:.1f}",
        "stream_wall_ms_per_grid": f"{stream_wall * 1e3 / args.grids:.1f}",
        "scan_cpu_ms_per_grid": f"{scan_s * 1e3 / args.scan_grids:.1f}",
        "scan_wall_ms_per_grid": f"{scan_wall * 1e3 / args.scan_grids:.1f}",
        "load_average_1min": f"{os.getloadavg()[0]:.1f}",
        "stream_grids_per_s_per_core": f"{stream_rate:.1f}",
        "scan_grids_per_s_per_core": f"{scan_rate:.1f}",
        "ratio_stream_over_scan": f"{stream_rate / scan_rate:.1f}x",
    }
    for k, v in lines.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
