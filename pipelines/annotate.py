"""`make annotate SHARD=…`: run the configured annotators over shards with Ray Data.

    python -m pipelines.annotate --shards 3 [--stages canny,hed] [--config configs/annotate.yaml]
        [--src shards/source] [--out shards/graph200k] [--force | --retry-failed] [--verify]
        [--num-cpus N]

`--src` and `--out` are local folders or fsspec URLs (s3://bucket/graph200k, gs://…). The
output is a stages-layout dataset (graph200k.dataset): every stage writes, per shard, a
sidecar `{out}/{stage}/{shard:06d}.tar` with only its own members (+ `.index.json`, and a
`.stats.json` written last that marks it complete). `python -m graph200k.publish`
assembles one tar per shard. docs/annotate.md describes the whole run.

This module is the command line only. The run itself: pipelines.annotate_run (the driver:
config, leases, waves, report), pipelines.annotate_plan (done / to do / retry),
pipelines.annotate_ray (the operators, the wave's Ray Data pipeline, its coordinator),
pipelines.annotate_progress (bars and log lines), pipelines.leases (who works on a shard).

Exit code: 0 done; 1 a shard could not be annotated (unreadable source, missing input);
2 a bad config or command line; 3 written, but a stage failed more than
`max_failed_fraction` of its samples (rerun with `--retry-failed`); 4 shards left undone
because another run holds their lease (rerun when it ends: complete shards are skipped).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from annotators.base import FAILED, OK, SKIPPED, MissingDependency
from graph200k.config import ConfigError
from pipelines.annotate_run import (DEFAULT_CONFIG, EXIT_LEASED, EXIT_TOO_MANY_FAILED,
                                    EXIT_USAGE, RunReport, run)


def print_summary(report: RunReport) -> None:
    summary = getattr(report, "summary", None) or {}
    if summary:
        print(f"{'stage':<14}{'shards':>8}{'ok':>9}{'skipped':>9}{'failed':>9}{'samples/s':>11}")
        for name, e in summary.items():
            print(f"{name:<14}{e['shards_written']:>8}{e[OK]:>9}{e[SKIPPED]:>9}{e[FAILED]:>9}"
                  f"{e['samples_per_s']:>11.1f}")
            for f in e["top_failures"]:
                print(f"    {f['count']:>6} x {f['reason']}")
        remaining = sum(e[FAILED] for e in summary.values())
        if remaining:
            print(f"annotate: {remaining} failed sample(s) remain; `--retry-failed` reruns only them")
    if getattr(report, "report_path", None):
        print(f"annotate: report -> {report.report_path}")
    if report.log_path:
        print(f"annotate: Ray's own logs -> {report.log_path}")


def shard_ranges(shards) -> str:
    """[0, 1, 2, 5] -> '000000-000002, 000005'."""
    runs: list[list[int]] = []
    for n in sorted(shards):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a:06d}" if a == b else f"{a:06d}-{b:06d}" for a, b in runs)


def busy_line(busy: dict) -> str:
    by_stage: dict[str, list[int]] = defaultdict(list)
    for stage, shard in busy:
        by_stage[stage].append(shard)
    where = "; ".join(f"{stage} {shard_ranges(shards)}" for stage, shards in sorted(by_stage.items()))
    return (f"annotate: {len(busy)} stage sidecar(s) left undone, leased by another run: "
            f"{where}. Rerun the same command when that run ends (complete shards are "
            f"skipped); exit {EXIT_LEASED}")


def positive_cpus(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of CPUs: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n}); leave it out to use "
                                         "the config's ray.num_cpus")
    return n


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block: the command is in the log
        self.exit(EXIT_USAGE, f"error: {message} (see `python -m pipelines.annotate --help`)\n")


def main(argv: list[str] | None = None) -> int:
    p = _OneLineParser(prog="python -m pipelines.annotate", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="N, N-M, N,M,... or all")
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all in config)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--src", default=None, help="source shards: folder or URL (default: config `src`)")
    p.add_argument("--out", default=None, help="output dataset: folder or URL (default: config `out`)")
    p.add_argument("--force", action="store_true", help="recompute the requested stages")
    p.add_argument("--retry-failed", action="store_true",
                   help="recompute only the samples whose last status was failed")
    p.add_argument("--verify", action="store_true",
                   help="check complete sidecars against their sha256, not only their size")
    p.add_argument("--num-cpus", type=positive_cpus, default=None,
                   help="CPUs of a local Ray (no RAY_ADDRESS); at least 1")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # a usage error (2) or --help (0), as a return code
        return int(e.code or 0)
    stage_names = [s.strip() for s in args.stages.split(",") if s.strip()] or None
    try:
        report = run(args.shards, stage_names, args.config, args.src, args.out, args.force,
                     args.num_cpus, args.retry_failed, args.verify)
    except (ConfigError, MissingDependency) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(report)
    print(f"annotate: {len(report.written)} stage sidecar(s) written over "
          f"{len(report.shards_written())} shard(s), {len(report.skipped)} already complete, "
          f"{len(report.busy)} leased by another run, {len(report.errors)} failed")
    for key, message in sorted(report.errors.items(), key=lambda kv: str(kv[0])):
        print(f"  FAILED {message}", file=sys.stderr)
    if report.busy:
        print(busy_line(report.busy), file=sys.stderr)
    if report.too_many_failed:
        print(f"annotate: stage(s) {report.too_many_failed} failed more than the allowed share "
              f"of their samples (max_failed_fraction); exit {EXIT_TOO_MANY_FAILED}",
              file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
