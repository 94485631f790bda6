"""`make annotate SHARD=…`: run the configured annotators over shards with Ray Data.

    python -m pipelines.annotate --shards 3 [--stages canny,hed] [--config configs/annotate.yaml]
                                 [--src shards/source] [--out shards/graph200k] [--force]

One source shard -> one annotated shard `{out}/{shard:06d}.tar` with the same keys in the
same order, source members byte for byte, new members added, `meta.json` `nodes` updated,
plus `{shard:06d}.stats.json`. The plan: a read step (one task per shard, its output cut
into blocks of `rows_per_block` samples inside the same task) -> one `map_batches` per
stage in dependency order (CPU stages as tasks, model stages as actor pools) -> result rows
stream back to this process, which writes each shard with our own writer (temporary name
-> rename), sample by sample as the rows come in, in source order.

Lean by design: only the key, a few bookkeeping columns and the members a stage reads
(`target.jpg` for canny) go through Ray, and each stage passes on only what later stages
still read plus what it produced. The writer re-reads the other members from the same
shard file and copies them byte for byte.

Resume: rerun the same command; a shard whose stats file lists every requested stage is
skipped. Incremental: when the annotated shard exists it is the input, so a new stage only
computes its own members. `--force` recomputes the requested stages.
Without RAY_ADDRESS, Ray starts locally with `--num-cpus`; with it, the job runs on that
cluster unchanged (shard paths must then be on storage every node sees).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from annotators.base import (
    ERROR_COLUMN,
    FAILED,
    OK,
    SKIPPED,
    MissingDependency,
    members_of,
    seconds_column,
    status_column,
)
from graph200k.nodes import META_MEMBER, node_type
from graph200k.shards import (
    ShardError,
    ShardStats,
    ShardWriter,
    list_shards,
    read_stats,
    shard_index,
    shard_path,
    stats_path,
    write_json_atomic,
)
from pipelines.annotate_config import (
    ConfigError,
    Stage,
    load_config,
    parse_shards,
    select_stages,
)
from pipelines.shard_rows import (
    COUNT,
    INDEX,
    INPUT,
    SHARD,
    Reread,
    merge_sample,
    read_shards_udf,
)

DEFAULT_CONFIG = "configs/annotate.yaml"


@dataclass
class ShardJob:
    shard: int
    paths: list[str]  # inputs in order of preference
    drop: list[str]  # members discarded before the stages run (--force)
    advice: str  # what to do when the input cannot be read


@dataclass
class RunReport:
    written: dict[int, dict] = field(default_factory=dict)  # shard -> its stats
    skipped: list[int] = field(default_factory=list)  # complete before this run
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def is_complete(out: Path, shard: int, stage_names: list[str]) -> bool:
    stats = read_stats(out, shard)
    return (
        stats is not None
        and shard_path(out, shard).exists()
        and set(stage_names) <= set(stats.get("stages", {}))
    )


def plan_jobs(shards, src: Path, out: Path, stages: list[Stage], force: bool, report: RunReport):
    names = [s.name for s in stages]
    produced = [m for s in stages for n in s.cls.produces for m in node_type(n).members]
    jobs = []
    for n in shards:
        source, annotated = shard_path(src, n), shard_path(out, n)
        if not force and is_complete(out, n, names):
            report.skipped.append(n)
            continue
        if annotated.exists():
            # The annotated shard is the input: existing members stay byte for byte.
            paths = [str(annotated)] + ([str(source)] if force else [])
            advice = (f"rebuild it from {source} with --force (that recomputes the "
                      f"requested stages)" if not force else
                      f"re-create {source} with `python -m pipelines.ingest` and rerun")
        elif source.exists():
            paths = [str(source)]
            advice = f"re-create it with `python -m pipelines.ingest` (shard {n}), then rerun"
        else:
            report.errors[n] = (f"shard {n:06d}: source shard {source} does not exist; run "
                                f"`python -m pipelines.ingest` first or fix --src/--shards")
            continue
        jobs.append(ShardJob(n, paths, produced if force else [], advice))
    return jobs


def init_ray(num_cpus: int | None):
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # the cluster's own resources; num_cpus applies to a local Ray only
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)


def stage_plan(stages: list[Stage]) -> list[tuple[list[str], list[str]]]:
    """(input members, output members) of each stage, in run order."""
    return [(list(members_of(s.cls.needs)), list(members_of(s.cls.produces))) for s in stages]


def columns_to_drop(stages: list[Stage]) -> list[list[str]]:
    """For each stage, the member columns nothing after it reads: dropped from its output,
    so a stage passes on only later stages' inputs and the members produced so far."""
    plan = stage_plan(stages)
    drops = []
    for k in range(len(plan)):
        produced = {m for _, outputs in plan[: k + 1] for m in outputs}
        later = {m for inputs, _ in plan[k + 1:] for m in inputs}
        drops.append(sorted({m for inputs, _ in plan[: k + 1] for m in inputs} - produced - later))
    return drops


def _drop(batch: dict, names: list[str]) -> dict:
    for name in names:
        batch.pop(name, None)
    return batch


def _task_stage(stage: Stage, drop: list[str]):
    cls, config = stage.cls, stage.config

    def run(batch):
        # A CPU task stage is cheap to build; building it per batch keeps tasks stateless
        # (a model stage runs as actors instead, which build it once).
        return _drop(cls(config)(batch), drop)

    run.__name__ = run.__qualname__ = stage.name  # the name Ray's progress bars show
    return run


class _ActorStage:
    """A model stage in an actor: builds the annotator once, drops what later stages do not read."""

    def __init__(self, cls, config: dict, drop: list[str]):
        self.annotator = cls(config)
        self.drop = drop

    def __call__(self, batch):
        return _drop(self.annotator(batch), self.drop)


def _actor_stage(stage: Stage):
    # A subclass named after the stage: the name Ray's progress bars show.
    return type(stage.name, (_ActorStage,), {"__module__": __name__})


# Ray Data retries a task whose worker died forever by default: a sample that crashes its
# worker every time (a segfault in a native library) would loop. Bounding it takes
# `max_retries` / `max_restarts`, which Ray 2.60 accepts only as deprecated `ray_remote_args`
# (removal announced for 2.64, no named replacement yet): hence the silenced warning.
# The read step keeps Ray's default (it runs no native code on samples): any remote
# argument of its own would stop Ray from fusing it with the block cutting below.
_RAY_REMOTE_ARGS_WARNING = ".*ray_remote_args. is deprecated"


def build_dataset(jobs: list[ShardJob], stages: list[Stage], ray_config: dict):
    import ray

    rows_per_block = int(ray_config.get("rows_per_block", 32))
    items = [{
        "shard": j.shard,
        "paths": json.dumps(j.paths),
        "drop": json.dumps(j.drop),
        "advice": j.advice,
    } for j in jobs]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RAY_REMOTE_ARGS_WARNING)
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(read_shards_udf, batch_size=1, batch_format="numpy",
                            fn_kwargs={"plan": stage_plan(stages),
                                       "rows_per_block": rows_per_block},
                            num_cpus=float(ray_config.get("read_num_cpus", 1)))
        # A shard is read by one task; blocks of rows_per_block samples let every worker
        # share its samples. Ray fuses this into the read task (its output is cut into
        # blocks as it is produced): no extra step, no extra copy.
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
        for stage, drop in zip(stages, columns_to_drop(stages)):
            common = dict(batch_size=stage.batch_size, batch_format="numpy",
                          num_cpus=stage.num_cpus, zero_copy_batch=True)
            if stage.uses_actors:
                ds = ds.map_batches(
                    _actor_stage(stage), fn_constructor_args=(stage.cls, stage.config, drop),
                    concurrency=stage.concurrency or 1, num_gpus=stage.num_gpus,
                    max_restarts=stage.max_retries, max_task_retries=stage.max_retries, **common)
            else:
                ds = ds.map_batches(_task_stage(stage, drop), max_retries=stage.max_retries,
                                    **common)
    # Ray Data's per-operator reservation splits the CPUs between the operators: while the
    # read step still holds blocks the first stage has not taken, the stage gets only its
    # share (on 2 CPUs: one canny task at a time; measured 1.05-1.3 tasks busy on average
    # against 1.8-1.9 without it). Our read step is one short task per shard, so the stages
    # should have every CPU; the global object-store limit still bounds the read-ahead.
    if not ray_config.get("reserve_per_operator", False):
        ds.context.op_resource_reservation_enabled = False
    return ds


def stage_stats(rows: list[dict], stage: Stage, previous: dict | None) -> dict:
    counts = {OK: 0, SKIPPED: 0, FAILED: 0}
    failed = []
    for r in rows:
        status = r.get(status_column(stage.name)) or f"{FAILED}: stage did not run"
        if status.startswith(FAILED):
            counts[FAILED] += 1
            failed.append({"key": r["__key__"], "reason": status.split(": ", 1)[-1]})
        else:
            counts[status] += 1
    seconds = float(sum(r.get(seconds_column(stage.name)) or 0.0 for r in rows))
    entry = {
        **counts,
        "failed_keys": failed,
        "seconds": round(seconds, 3),  # worker seconds spent in the stage
        "images_per_s": round(counts[OK] / seconds, 1) if seconds > 0 and counts[OK] else 0.0,
        "config": stage.config,
    }
    if previous:
        previous = {k: v for k, v in previous.items() if k != "previous"}
        entry["previous"] = previous  # the run that computed members this run kept
    return entry


class ShardAssembler:
    """Writes one annotated shard as its result rows come back, in source order.

    Rows arrive in any order; each is held only until the rows before it are in. The
    writer re-reads the input shard alongside (the file the read step used) and merges
    each sample's untouched members, byte for byte, with the row's new members. The shard
    is written under a temporary name and renamed when complete; its stats file follows.
    """

    def __init__(self, job: ShardJob, stages: list[Stage], out: Path, src: Path):
        self.job, self.stages, self.out, self.src = job, stages, out, src
        self.count: int | None = None
        self.next = 0
        self.waiting: dict[int, dict] = {}  # rows that came before their turn
        self.records: list[dict] = []  # key + stage status/seconds of every written row
        self.node_counts: dict[str, int] = defaultdict(int)
        self.writer: ShardWriter | None = None
        self.reread: Reread | None = None
        self.seconds = 0.0  # time spent merging and writing

    def add(self, row: dict) -> bool:
        """Take one row; write what is ready. True once the shard is complete."""
        start = time.perf_counter()
        index = int(row[INDEX])
        if self.count is None:
            self.count = int(row[COUNT])
        if index in self.waiting or not self.next <= index < self.count:
            raise ShardError(f"shard {self.job.shard:06d}: rows duplicated in the pipeline; rerun")
        self.waiting[index] = row
        while self.next in self.waiting:
            self._write(self.waiting.pop(self.next))
            self.next += 1
        self.seconds += time.perf_counter() - start
        return self.next == self.count

    def _write(self, row: dict) -> None:
        if self.writer is None:
            self.reread = Reread(str(row[INPUT]))
            self.writer = ShardWriter(shard_path(self.out, self.job.shard))
        sample = merge_sample(self.reread.next(row["__key__"]), row, self.job.drop)
        self.writer.write(sample)
        if META_MEMBER in sample:
            for node in json.loads(sample[META_MEMBER]).get("nodes", []):
                self.node_counts[node] += 1
        self.records.append({k: v for k, v in row.items()
                             if k == "__key__" or k.startswith(("__status__:", "__seconds__:"))})

    def abort(self) -> None:
        """Drop the temporary file: no partial shard ever appears under its final name."""
        if self.reread is not None:
            self.reread.close()
        if self.writer is not None:
            self.writer.abort()

    def finish(self, report: RunReport) -> None:
        start = time.perf_counter()
        shard, stages, out = self.job.shard, self.stages, self.out
        self.reread.finish()
        path = self.writer.close()
        old = read_stats(out, shard) or {}
        stats = ShardStats(shard=shard, samples=len(self.records), written=self.writer.count)
        per_stage = {}
        for stage in stages:
            per_stage[stage.name] = stage_stats(self.records, stage,
                                                old.get("stages", {}).get(stage.name))
            for f in per_stage[stage.name]["failed_keys"]:
                stats.failed.append({"key": f["key"], "stage": stage.name, "reason": f["reason"]})
        # Stages this run did not request keep their record (their members were kept).
        for name, entry in old.get("stages", {}).items():
            per_stage.setdefault(name, entry)
        stats.seconds = sum(per_stage[s.name]["seconds"] for s in stages)
        stats.seconds += self.seconds + time.perf_counter() - start
        stats.extra = {
            "source": str(shard_path(self.src, shard)),
            "stages": per_stage,
            "nodes": dict(sorted(self.node_counts.items())),
        }
        # The stats file marks the shard complete, so it is written after the shard is in place.
        write_json_atomic(stats_path(out, shard), stats.to_json())
        report.written[shard] = stats.to_json()
        print(summary_line(shard, len(self.records), per_stage, stages, path), flush=True)


def summary_line(shard, samples, per_stage, stages, path) -> str:
    parts = [f"shard {shard:06d}: {samples} samples"]
    for s in stages:
        e = per_stage[s.name]
        parts.append(f"{s.name} ok {e[OK]} skipped {e[SKIPPED]} failed {e[FAILED]} "
                     f"({e['seconds']:.1f} s, {e['images_per_s']:.0f} img/s)")
    parts.append(f"-> {path}")
    return " | ".join(parts)


def run(shards: str, stage_names: list[str] | None = None, config_path: str = DEFAULT_CONFIG,
        src: str | None = None, out: str | None = None, force: bool = False,
        num_cpus: int | None = None) -> RunReport:
    config = load_config(config_path)
    stages = select_stages(config, stage_names)
    # Absolute paths: Ray workers do not share this process's working directory.
    src_dir = Path(src or config.get("src", "shards/source")).resolve()
    out_dir = Path(out or config.get("out", "shards/graph200k")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    ray_config = config.get("ray", {}) or {}
    available = [shard_index(p) for p in list_shards(src_dir)]
    report = RunReport()
    jobs = plan_jobs(parse_shards(shards, available), src_dir, out_dir, stages, force, report)
    for n in report.skipped:
        print(f"shard {n:06d}: complete ({stats_path(out_dir, n)} lists every stage), skipped")
    for n, message in report.errors.items():
        print(f"shard {n:06d}: ERROR {message}", file=sys.stderr)
    if not jobs:
        return report

    init_ray(num_cpus or ray_config.get("num_cpus", 2))
    ds = build_dataset(jobs, stages, ray_config)
    by_shard = {j.shard: j for j in jobs}
    open_shards: dict[int, ShardAssembler] = {}
    failed: set[int] = set()

    def fail(shard: int, message: str) -> None:
        failed.add(shard)
        report.errors[shard] = message
        if shard in open_shards:
            open_shards.pop(shard).abort()
        print(f"shard {shard:06d}: ERROR {message}", file=sys.stderr, flush=True)

    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            columns = list(batch)
            for i in range(len(batch[SHARD])):
                row = {c: batch[c][i] for c in columns}
                shard = int(row[SHARD])
                if shard in failed:
                    continue
                if row.get(ERROR_COLUMN):
                    fail(shard, row[ERROR_COLUMN])
                    continue
                assembler = open_shards.get(shard)
                if assembler is None:
                    assembler = open_shards[shard] = ShardAssembler(
                        by_shard[shard], stages, out_dir, src_dir)
                try:
                    if assembler.add(row):
                        assembler.finish(report)
                        del open_shards[shard]
                except ShardError as e:
                    fail(shard, str(e))
        for shard, assembler in list(open_shards.items()):
            fail(shard, f"shard {shard:06d}: only {assembler.next + len(assembler.waiting)} "
                        f"of {assembler.count} rows came back; rerun")
    finally:
        for assembler in open_shards.values():  # an exception (disk full...) leaves no partial shard
            assembler.abort()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.annotate", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="N, N-M, N,M,... or all")
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all in config)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--src", default=None, help="source shard folder (default: config `src`)")
    p.add_argument("--out", default=None, help="annotated shard folder (default: config `out`)")
    p.add_argument("--force", action="store_true", help="recompute the requested stages")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (no RAY_ADDRESS)")
    args = p.parse_args(argv)
    stage_names = [s.strip() for s in args.stages.split(",") if s.strip()] or None
    try:
        report = run(args.shards, stage_names, args.config, args.src, args.out, args.force,
                     args.num_cpus)
    except (ConfigError, MissingDependency) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"annotate: {len(report.written)} shard(s) written, {len(report.skipped)} already "
          f"complete, {len(report.errors)} failed")
    for shard, message in sorted(report.errors.items()):
        print(f"  FAILED {message}", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
