"""Load a published release the way its users will: `datasets.load_dataset`, features from
the card. Prints the rows and columns it got, and how many rows hold each member.

    python -m graph200k.load_release build/demo/release
"""

from __future__ import annotations

import argparse
import sys
import tempfile


def load(release: str, cache_dir: str):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(release, split="train", cache_dir=cache_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.load_release", description=__doc__)
    ap.add_argument("release", help="a published release folder (README.md + NNNNNN.tar)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graph200k-load-") as cache:
        try:
            ds = load(args.release, cache)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: datasets.load_dataset({args.release!r}) failed: {e}", file=sys.stderr)
            return 1
        members = [c for c in ds.column_names if not c.startswith("__")]
        print(f"load_release: datasets.load_dataset({args.release!r}): {ds.num_rows} rows, "
              f"{len(ds.column_names)} columns")
        data = ds.with_format("arrow").data
        held = {c: ds.num_rows - data.column(c).null_count for c in members}
        print("rows holding each member: " + ", ".join(f"{c} {n}" for c, n in held.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
