"""What the conversions to and from the hub's Graph200K cost, measured side by side in one run.

    .venv/bin/python benchmarks/bench_interop.py [--samples 300] [--size 192] [--rounds 2]

(1) `export --format hf` (our shards -> a save_to_disk DatasetDict) and (2) the import
(`pipelines.ingest --source <save_to_disk folder>`: source shards + one sidecar per stage),
each against `datasets` iterating the same rows doing nothing, two ways:
  - `for row in ds: pass` (the default format: what a user's loop costs; its Image
    feature decodes every image), on the first `--default-rows` rows;
  - Arrow batches to Python rows, images left as bytes (the floor: no decoding at all).
Target: >= 0.5 (a conversion costs at most one extra pass over the bytes).
Samples hold every member kind (tests/interop_samples.py), variants as real shards do.
Prints `name: value`, ratios last; best of `--rounds`, files in the page cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from graph200k.dataset import part_in, write_part  # noqa: E402
from graph200k.shards import ShardWriter  # noqa: E402
from interop_samples import full_sample  # noqa: E402

PER_SHARD = 100


def build(folder: Path, samples: int, size: int) -> int:
    """Plain shards of `samples` full samples (4 distinct ones, re-keyed); returns bytes."""
    base = [full_sample("x", i, size) for i in range(4)]
    total = 0
    for shard in range((samples + PER_SHARD - 1) // PER_SHARD):
        part = part_in(str(folder), shard)
        with ShardWriter(part.url) as w:
            for i in range(shard * PER_SHARD, min(samples, (shard + 1) * PER_SHARD)):
                s = dict(base[i % 4])
                meta = json.loads(s["meta.json"])
                meta["key"] = s["__key__"] = f"{i:07d}"
                s["meta.json"] = json.dumps(meta, sort_keys=True).encode()
                w.write(s)
        write_part(part, w.record, {"shard": shard, "written": w.count})
        total += Path(part.url).stat().st_size
    return total


def iterate(folder: Path) -> int:
    """`datasets` reading every row of a save_to_disk DatasetDict, doing nothing with it."""
    import datasets

    n = 0
    for ds in datasets.load_from_disk(str(folder)).values():
        for batch in ds.with_format("arrow").iter(batch_size=64):
            n += len(batch.to_pylist())
    return n


def iterate_default(folder: Path, limit: int) -> int:
    """`for row in ds: pass` over the first `limit` rows of the DatasetDict's splits."""
    import datasets

    n = 0
    for ds in datasets.load_from_disk(str(folder)).values():
        for _row in ds.select(range(min(limit - n, ds.num_rows))):
            n += 1
        if n >= limit:
            break
    return n


def best(fn, rounds: int) -> float:
    return min(timeit.repeat(fn, setup="gc.enable()", number=1, repeat=max(1, rounds)))  # gc on, as in use


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--size", type=int, default=192, help="image side (px)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--default-rows", type=int, default=40,
                    help="rows the default-format loop is timed on (it decodes every image)")
    args = ap.parse_args(argv)

    import datasets  # noqa: F401  (imported before timing: both sides share it)

    from graph200k.export_hf import export_hf
    from pipelines.import_graph200k import import_release

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nbytes = build(tmp / "ours", args.samples, args.size)
        n = args.samples

        def do_export():
            export_hf(tmp / "ours", tmp / "hf", test_fraction=0.1)

        export_s = best(do_export, args.rounds)
        assert iterate(tmp / "hf") == n
        export_iter_s = best(lambda: iterate(tmp / "hf"), args.rounds)

        def do_import():
            shutil.rmtree(tmp / "back", ignore_errors=True)
            import_release(str(tmp / "hf"), str(tmp / "back" / "source"), shard_size=PER_SHARD,
                           log=lambda *_: None)

        import_s = best(do_import, args.rounds)
        m = iterate_default(tmp / "hf", args.default_rows)
        default_s = best(lambda: iterate_default(tmp / "hf", args.default_rows), args.rounds)
        arrow_rate, default_rate = n / export_iter_s, m / default_s
        print(f"samples: {n}")
        print(f"shard_mb: {nbytes / 2 ** 20:.1f}")
        print(f"export_hf_rows_per_s: {n / export_s:.1f}")
        print(f"import_rows_per_s: {n / import_s:.1f}")
        print(f"datasets_iterate_default_rows_per_s: {default_rate:.1f}")
        print(f"datasets_iterate_arrow_bytes_rows_per_s: {arrow_rate:.1f}")
        print(f"ratio_export_hf_vs_datasets_iterate_arrow_bytes: {n / export_s / arrow_rate:.2f}")
        print(f"ratio_import_vs_datasets_iterate_arrow_bytes: {n / import_s / arrow_rate:.2f}")
        print(f"ratio_export_hf_vs_datasets_iterate_default: {n / export_s / default_rate:.2f}")
        print(f"ratio_import_vs_datasets_iterate_default: {n / import_s / default_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
