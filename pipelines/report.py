"""`python -m pipelines.report --out shards/graph200k`: the state of a whole annotate output.

From the per-(stage, shard) stats files alone (no tar is read): which shards are complete
for which stages and which are missing, the totals per stage (ok / skipped / failed), the
most common failure reasons across shards, and the stage throughputs. `--json` prints
the same as JSON. Exit codes: 0 every stage complete; 1 a stage misses shards; 2 bad
arguments (a folder with no source shards, an unknown stage).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from annotators.base import FAILED, OK, SKIPPED
from graph200k.dataset import ShardSet
from graph200k.shards import ShardError, read_json


def collect(out: str, stages: list[str] | None = None) -> dict:
    shard_set = ShardSet(out)
    shards = shard_set.shards()
    names = stages or shard_set.stages
    report = {"root": shard_set.root, "source": shard_set.source, "shards": len(shards),
              "stages": {}}
    for stage in names:
        totals = Counter()
        reasons = Counter()
        missing, seconds = [], 0.0
        for n in shards:
            stats = read_json(shard_set.stage_part(stage, n).stats_url)
            if stats is None:
                missing.append(n)
                continue
            totals.update({k: int(stats.get(k, 0)) for k in (OK, SKIPPED, FAILED)})
            reasons.update(f["reason"] for f in stats.get("failed_keys", []))
            seconds += float(stats.get("seconds", 0.0))
        report["stages"][stage] = {
            "complete": len(shards) - len(missing), "missing": missing,
            **{k: totals[k] for k in (OK, SKIPPED, FAILED)},
            "top_failures": [{"reason": r, "count": c} for r, c in reasons.most_common(5)],
            "worker_seconds": round(seconds, 3),
            "samples_per_worker_s": round(totals[OK] / seconds, 2) if seconds else 0.0,
        }
    return report


def _ranges(numbers: list[int]) -> str:
    out, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="annotate output folder or URL")
    p.add_argument("--stages", default="", help="comma-separated (default: every stage found)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s] or None
    try:
        shard_set = ShardSet(args.out)
    except ShardError as e:
        print(f"error: --out {args.out}: {e}", file=sys.stderr)
        return 2
    if not shard_set.shards():
        print(f"error: --out {args.out}: no annotate output there (no source shards "
              f"NNNNNN.tar in {shard_set.source}); name the folder annotate wrote (--out)",
              file=sys.stderr)
        return 2
    unknown = [s for s in stages or () if s not in shard_set.stages]
    if unknown:
        print(f"error: --stages: {', '.join(unknown)} not in {shard_set.root} (its stages: "
              f"{', '.join(shard_set.stages) or 'none'})", file=sys.stderr)
        return 2
    report = collect(args.out, stages)
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print(f"{report['root']}: {report['shards']} source shard(s) in {report['source']}")
        print(f"{'stage':<14}{'complete':>10}{'ok':>10}{'skipped':>9}{'failed':>9}{'img/worker-s':>14}")
        for name, e in report["stages"].items():
            print(f"{name:<14}{e['complete']:>10}{e[OK]:>10}{e[SKIPPED]:>9}{e[FAILED]:>9}"
                  f"{e['samples_per_worker_s']:>14.1f}")
            if e["missing"]:
                print(f"    missing shards: {_ranges(e['missing'])} (make annotate "
                      f"SHARD={_ranges(e['missing'])} STAGES={name})")
            for f in e["top_failures"]:
                print(f"    {f['count']:>6} x {f['reason']}")
    return 1 if any(e["missing"] for e in report["stages"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
