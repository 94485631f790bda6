"""What checking costs, measured side by side in one run.

    .venv/bin/python benchmarks/bench_verify.py [--mb 300] [--workers 2] [--rounds 3]

(1) `graph200k.verify` over a few hundred MB of shards (a stages-layout dataset: source
    shards of real photos at 512² plus a canny-sized sidecar per shard) against
    `sha256sum` of the same files: checking should cost about one read of the data
    (`ratio_verify_vs_sha256sum`, target >= 0.8; > 1 means faster than sha256sum).
    Both read from the page cache (each is run once before timing).
(2) the training stream's grids/s with the manifest checked against the shards at start
    (the default) vs not (`manifest_check="ignore"`), stream start included (target: <= 2 %
    slower).
Prints `name: value`, ratios last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from annotate_helpers import make_samples  # noqa: E402
from graph200k.dataset import ShardSet, part_in, write_part  # noqa: E402
from graph200k.manifest import Manifest  # noqa: E402
from graph200k.shards import ShardWriter, encode_image, shard_path  # noqa: E402
from graph200k.stream import GridStream  # noqa: E402
from graph200k.verify import verify  # noqa: E402

PER_SHARD = 200


def build(root: Path, mb: int, size: int) -> list[Path]:
    """Source shards + one sidecar each until about `mb` MB; returns every tar written."""
    src, out = root / "source", root / "out"
    ShardSet.create(out, src)
    files, total, shard = [], 0, 0
    edges = encode_image(np.zeros((size, size), np.uint8), "png")
    while total < mb * 2 ** 20:
        samples = list(make_samples(shard, PER_SHARD, size))
        with ShardWriter(shard_path(src, shard)) as w:
            for s in samples:
                w.write(s)
        write_part(part_in(str(src), shard), w.record, {"shard": shard, "written": PER_SHARD})
        side = part_in(str(out / "canny"), shard, "canny")
        with ShardWriter(side.url) as w:
            for s in samples:
                w.write({"__key__": s["__key__"], "canny.png": edges})
        write_part(side, w.record, {"shard": shard, "stage": "canny", "ok": PER_SHARD,
                                    "source": {"sha256": _sha(src, shard)}})
        files += [shard_path(src, shard), Path(side.url)]
        total += sum(f.stat().st_size for f in files[-2:])
        shard += 1
    return files


def _sha(src: Path, shard: int) -> str:
    import json

    return json.loads((src / f"{shard:06d}.stats.json").read_text())["file"]["sha256"]


def time_verify(out: Path, workers: int) -> float:
    start = time.perf_counter()
    problems = verify(str(out), [], workers)
    assert not problems, problems[:3]
    return time.perf_counter() - start


def time_sha256sum(files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def grids_per_s(out: Path, manifest: Path, check: str, grids: int) -> float:
    start = time.perf_counter()
    stream = GridStream(out, manifest, res=384, seed=0, max_tasks=grids,
                        families=["subject_extraction", "image_generation_with_reference",
                                  "conditional_generation"], manifest_check=check)
    n = sum(1 for _ in stream)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--grids", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build(root, args.mb, args.size)
        mb = sum(f.stat().st_size for f in files) / 2 ** 20
        out = root / "out"
        manifest = Manifest.from_shards(out).save(root / "manifest.parquet")
        time_verify(out, args.workers), time_sha256sum(files)  # into the page cache
        v = s = 1e9
        on, off = [], []
        for _ in range(args.rounds):
            v = min(v, time_verify(out, args.workers))
            s = min(s, time_sha256sum(files))
        for k in range(2 * args.rounds):  # interleaved, alternating which goes first
            order = ("error", "ignore") if k % 2 else ("ignore", "error")
            for check in order:
                (on if check == "error" else off).append(grids_per_s(out, manifest, check,
                                                                     args.grids))
        on, off = statistics.median(on), statistics.median(off)
        start = time.perf_counter()
        Manifest.load(manifest).check(out)
        check_ms = 1000 * (time.perf_counter() - start)
    print(f"data_mb: {mb:.0f}")
    print(f"files: {len(files)}")
    print(f"workers: {args.workers}")
    print(f"load_1min_before: {load_before:.2f}")
    print(f"load_1min_after: {os.getloadavg()[0]:.2f}")
    print(f"verify_mb_per_s: {mb / v:.0f}")
    print(f"sha256sum_mb_per_s: {mb / s:.0f}")
    print(f"manifest_check_ms_per_stream_start: {check_ms:.1f}")
    print(f"stream_grids_per_s_manifest_checked: {on:.1f}")
    print(f"stream_grids_per_s_unchecked: {off:.1f}")
    print(f"ratio_stream_checked_vs_unchecked: {on / off:.3f}  (target >= 0.98)")
    print(f"ratio_verify_vs_sha256sum: {s / v:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
