"""What the reader's record checks cost, side by side in one run.

    .venv/bin/python benchmarks/bench_reader_checks.py [--shards 4] [--samples 100] [--rounds 3]

Every member of a few source shards (real photos at 128²) read through SampleReader by key,
twice per round: with the records as written (one read of the member's tar header and data;
the header must name the key and field, the data match its digest) and with the records
stripped of the header offset (digest only, what the reader did before). Prints the
microseconds per member read and `ratio_header_check_cost` (target <= 1.1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from annotate_helpers import make_source_shard  # noqa: E402
from graph200k.reader import SampleReader  # noqa: E402

MEMBERS = ("target.jpg", "reference.jpg", "meta.json")


def per_member_us(folder: Path, shards: int, keys: list[str], header: bool, reads: int = 5) -> float:
    reader = SampleReader(folder)
    for shard in range(shards):
        if not header:
            for _, index in reader._view(shard, "", None):
                index.members = {k: {f: loc[:3] for f, loc in fs.items()}
                                 for k, fs in index.members.items()}
    start, n = time.perf_counter(), 0
    for _ in range(reads):
        for key in keys:
            for member in MEMBERS:
                reader.member_bytes(key, member)
                n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-reader-"))
    for shard in range(args.shards):
        make_source_shard(folder, shard, args.samples, size=128)
    reader = SampleReader(folder)
    keys = [k for s in range(args.shards) for k in reader._view(s, "", None)[0][1].keys()]
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for header in (False, True):
            times[header].append(per_member_us(folder, args.shards, keys, header))
    digest, both = statistics.median(times[False]), statistics.median(times[True])
    print(f"reader_member_us_digest_only: {digest:.1f}")
    print(f"reader_member_us_digest_and_header: {both:.1f}")
    print(f"ratio_header_check_cost: {both / digest:.3f}")


if __name__ == "__main__":
    main()
