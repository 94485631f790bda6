"""Sample visual-cloze tasks from a manifest: family -> variant -> rows -> samples -> mask -> prompt.

    python -m graph200k.sample_tasks --manifest shards/graph200k/manifest.parquet \\
        --num 1000 --seed 0 --out tasks.jsonl --stats

One JSON object per line: task_id, family, variant, nodes, columns (slot per grid column,
the task's target last), rows (per row, per column: {key, node, slot}; the last row is the
query), mask {row, col}, prompt {layout, task, content, keep_task, keep_content, dropped,
text}, seed (for the task's online work such as degradations).

Exit codes: 0 done; 1 the output could not be written; 2 bad input (arguments, manifest,
shards, task config, an --out that cannot be written).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

from graph200k import storage
from graph200k.reader import CHECKS, load_manifest
from graph200k.shards import ShardError
from graph200k.tasks import DEFAULT_TASKS_CONFIG, TaskConfig, TaskError, TaskSampler


def histogram(tasks) -> str:
    fams = collections.Counter(t.family for t in tasks)
    variants = collections.Counter((t.family, t.variant) for t in tasks)
    rows = collections.Counter(len(t.rows) for t in tasks)
    lines = [f"{len(tasks)} tasks, rows per task: "
             + ", ".join(f"{k}={v}" for k, v in sorted(rows.items()))]
    for fam, n in fams.most_common():
        per = sorted(((m, v) for (f, v), m in variants.items() if f == fam), reverse=True)
        lines.append(f"  {fam}: {n} tasks over {len(per)} variants: "
                     + ", ".join(f"{v} {m}" for m, v in per))
    return "\n".join(lines)


def gate_report(config, removed: dict) -> str:
    """What the task config's `quality:` gates removed, per node and gate."""
    if not config.quality.active:
        return "quality gates: off (every stored variant is drawn)"
    lines = [f"quality gates: {sum(removed.values())} variant(s) removed"]
    lines += [f"  {name:<40} {n:>7}" for name, n in sorted(removed.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m graph200k.sample_tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", help="manifest parquet (graph200k.manifest)")
    ap.add_argument("--shards", help="build the manifest from this shard folder instead")
    ap.add_argument("--num", type=int, default=1000, help="tasks to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", help="comma list of families (default: all in the config)")
    ap.add_argument("--config", default=str(DEFAULT_TASKS_CONFIG), help="task families YAML")
    ap.add_argument("--paths", action="store_true",
                    help="also sample every simple type-graph path of 2-4 images (family graph_paths)")
    ap.add_argument("--split", choices=("train", "test", "unseen"), default="train",
                    help="train: the config's seen variants on the manifest's train samples; "
                         "test: the same variants on its held-out test samples; unseen: only "
                         "the unseen variants")
    ap.add_argument("--out", help="JSONL file or URL ('-' for stdout); omit to only print --stats")
    ap.add_argument("--stats", action="store_true", help="print a family/variant histogram")
    ap.add_argument("--on-stale", choices=CHECKS, default="error",
                    help="a manifest that no longer matches its shards: refuse (error), warn, "
                         "or trust it (ignore)")
    args = ap.parse_args(argv)

    if bool(args.manifest) == bool(args.shards):
        ap.error("give exactly one of --manifest or --shards")
    if args.num < 1:
        ap.error(f"--num must be at least 1, got {args.num}")
    if args.out and args.out != "-" and (why := storage.unwritable(args.out)):
        print(f"sample_tasks: error: --out {why}", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.manifest, args.shards, args.on_stale)
        config = TaskConfig.load(args.config)
    except (OSError, ShardError, TaskError) as e:
        print(f"sample_tasks: error: {e}", file=sys.stderr)
        return 2
    if args.paths:
        config = config.with_paths()
    families = [f.strip() for f in args.families.split(",")] if args.families else None
    try:
        sampler = TaskSampler(manifest, config, seed=args.seed, families=families, split=args.split)
    except TaskError as e:
        print(f"sample_tasks: error: {e}", file=sys.stderr)
        return 2
    if sampler.unsatisfiable:
        names = sorted({v.name for v in sampler.unsatisfiable})
        print(f"sample_tasks: {len(names)} variant(s) have no sample with all their node types "
              f"and are left out, e.g. {', '.join(names[:4])}", file=sys.stderr)
    tasks = sampler.take(args.num)
    if args.out:
        lines = "".join(json.dumps(t.to_json(), sort_keys=True) + "\n" for t in tasks)
        if args.out == "-":
            sys.stdout.write(lines)
        else:  # a local file or an fsspec URL (s3://...), written atomically either way
            try:
                storage.atomic_write(args.out, lines.encode())
            except OSError as e:
                print(f"sample_tasks: error: cannot write {args.out} ({e})", file=sys.stderr)
                return 1
            print(f"sample_tasks: {len(tasks)} tasks from {len(manifest)} samples -> {args.out}")
    if args.stats:
        print(histogram(tasks))
        print(gate_report(config, sampler.gate_counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
