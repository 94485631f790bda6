"""Graph200K in the formats of the people who use it (docs/formats.md has the column table).

    python -m graph200k.export --src shards/graph200k --format hf --out build/graph200k-hf
    python -m graph200k.export --src shards/graph200k --format visualcloze --out build/visualcloze

`hf`: a `save_to_disk` DatasetDict (`train`, `test`) with the released Graph200K's columns
and types (`datasets.load_from_disk(out)`). `visualcloze`: images and `data.json` per split
as the reference trainer's `processing.py` writes them (point its
`configs/data/visualcloze.yaml` at `{out}/train/data.json`). The split is the manifest's when
`--manifest` is given, else the released split an imported sample carries, else the hash of
the key (`--test-fraction`, graph200k.splits).
"""

from __future__ import annotations

import argparse
import sys

from graph200k.export_rows import ExportError
from graph200k.shards import ShardError
from graph200k.splits import DEFAULT_TEST_FRACTION

FORMATS = ("hf", "visualcloze")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="annotated dataset folder (or a release)")
    ap.add_argument("--format", choices=FORMATS, required=True)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--manifest", default=None, help="manifest parquet whose split to keep")
    ap.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                    help="without a manifest: share of keys in split test (hash of the key)")
    args = ap.parse_args(argv)

    from graph200k.dataset import ShardSet

    shard_set = ShardSet(args.src)
    if not shard_set.shards():
        print(f"error: no shards (NNNNNN.tar) in {shard_set.source}", file=sys.stderr)
        return 1
    manifest = None
    if args.manifest:
        from graph200k.manifest import Manifest

        manifest = Manifest.load(args.manifest)
    try:
        if args.format == "hf":
            from graph200k.export_hf import export_hf

            report = export_hf(shard_set, args.out, manifest, args.test_fraction)
        else:
            from graph200k.export_visualcloze import export_visualcloze

            report, counts = export_visualcloze(shard_set, args.out, manifest, args.test_fraction)
            for split, c in counts.items():
                print(f"export: {split}: " + (", ".join(f"{k} {v}" for k, v in c.items())
                                               or "no conditions"))
    except (ExportError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"export: {args.format} -> {args.out}: {report.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
