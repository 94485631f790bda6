"""`make annotate SHARD=…`: run the configured annotators over shards with Ray Data.

    python -m pipelines.annotate --shards 3 [--stages canny,hed] [--config configs/annotate.yaml]
        [--src shards/source] [--out shards/graph200k] [--force | --retry-failed] [--verify]

`--src` and `--out` are local folders or fsspec URLs (s3://bucket/graph200k, gs://…). The
output is a stages-layout dataset (graph200k.dataset): every stage writes, per shard, a
sidecar `{out}/{stage}/{shard:06d}.tar` with only its own members (+ `.index.json`, and a
`.stats.json` written last that marks it complete). The source shards are never copied, so a
stage costs the bytes it produces; `python -m graph200k.publish` assembles one tar per shard.

Design — the driver carries no samples:
- The driver plans: per (stage, shard) it reads the stats files to decide done / to do /
  retry (`--retry-failed`: only the samples whose last status was failed), takes a lease
  per (stage, shard) so that concurrent runs never do the same work, and groups the stages
  into waves (a stage after those it reads from; actor pools of a wave fit the cluster).
- Per wave, one Ray Data pipeline: the driver cuts each shard into slices of
  `rows_per_block` rows (from the count its source stats record); a read per slice (source
  tar + the sidecars holding the inputs, by offset, digests checked), fused by Ray into the
  first stage's task -> each stage's operators (CPU stage: one task op; model
  stage: prepare tasks -> an actor pool that only runs the model -> encode tasks) -> a write
  op per stage that writes each block's results as a *part* -> a collect op. The driver sees
  only part ids; when a shard's parts cover all its rows it starts a join task that writes
  the sidecar (pipelines.annotate_io). Shard bytes are identical whatever the block size,
  worker count or cluster size.
- Resume = rerun the same command: complete (stage, shard)s are skipped (size checked; with
  `--verify` the sha256 too), leftovers of a killed run are swept, and what was missing is
  computed to the same bytes. `--force` recomputes the requested stages from the source.

Exit code: 0 done; 1 a shard could not be annotated (unreadable source, missing input);
2 a bad config or command line; 3 written, but a stage failed more than
`max_failed_fraction` of its samples (rerun with `--retry-failed`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from annotators.base import FAILED, OK, SKIPPED, MissingDependency, members_of
from annotators.side_inputs import load_side_input
from graph200k import storage
from graph200k.config import ConfigError
from graph200k.dataset import ShardSet, part_fingerprint
from graph200k.shards import ShardError, read_json
from pipelines import annotate_io, leases
from pipelines.annotate_config import (Stage, load_config, parse_shards,
                                       plan_waves, producers, run_options, select_stages)
from pipelines.stage_ops import (StageRunner, annot_column, do_column, seconds_column,
                                 status_column)

DEFAULT_CONFIG = "configs/annotate.yaml"
REPORT_DIR = "_report"
SOURCE_NODES = ("target", "reference")  # what ingest writes into every source shard


@dataclass
class RunReport:
    written: dict = field(default_factory=dict)  # (stage, shard) -> stats
    skipped: list = field(default_factory=list)  # (stage, shard) complete before this run
    busy: dict = field(default_factory=dict)  # (stage, shard) -> who holds the lease
    errors: dict = field(default_factory=dict)  # (stage, shard) or shard -> message
    too_many_failed: list = field(default_factory=list)  # stage names
    seconds: float = 0.0
    coordinator_cpu: float = 0.0  # CPU seconds of the waves' coordinator actors

    @property
    def exit_code(self) -> int:
        if self.errors:
            return 1
        return 3 if self.too_many_failed else 0

    def shards_written(self) -> list[int]:
        return sorted({shard for _, shard in self.written})


# -- planning ------------------------------------------------------------------------------
def stage_state(shard_set: ShardSet, stage: str, shard: int, verify: bool = False
                ) -> tuple[str, dict | None, str]:
    """("done" | "todo", stats, why) of one stage's sidecar of one shard."""
    part = shard_set.stage_part(stage, shard)
    stats = read_json(part.stats_url)
    if stats is None:
        return "todo", None, "not annotated yet"
    recorded = stats.get("file") or {}
    try:
        size = storage.size(part.url)
    except FileNotFoundError:
        return "todo", stats, f"{part.url} is missing"
    if size != recorded.get("size"):
        return "todo", stats, (f"{part.url} holds {size} bytes, its stats say "
                               f"{recorded.get('size')} (truncated or replaced)")
    source = part_fingerprint(shard_set.source_part(shard))
    was = stats.get("source") or {}
    if was.get("sha256") and source.get("sha256") and was["sha256"] != source["sha256"]:
        return "todo", stats, "its source shard changed since it was annotated"
    if verify:  # the tar's sha256, and its index (rebuilt from the tar when bad)
        return annotate_io.verify_sidecar(part, stats)
    return "done", stats, "complete"


@dataclass
class Plan:
    todo: dict = field(default_factory=dict)  # (stage, shard) -> "all" | [keys to retry]
    count: dict = field(default_factory=dict)  # shard -> samples (from the source stats)


def plan(shard_set, stages, shards, force, retry_failed, verify, report, log) -> Plan:
    p = Plan()
    for shard in shards:
        source = read_json(shard_set.source_part(shard).stats_url) or {}
        p.count[shard] = int(source.get("written", 0) or (source.get("file") or {}).get(
            "samples", 0) or 0)
        for s in stages:
            if force:
                p.todo[(s.name, shard)] = "all"
                continue
            state, stats, why = stage_state(shard_set, s.name, shard, verify)
            if state == "todo":
                if stats is not None:
                    log(f"shard {shard:06d} {s.name}: {why}; annotating it again")
                p.todo[(s.name, shard)] = "all"
            elif retry_failed and stats.get("failed", 0):
                p.todo[(s.name, shard)] = [f["key"] for f in stats.get("failed_keys", [])]
            else:
                report.skipped.append((s.name, shard))
    return p


def missing_inputs(shard_set, stage: Stage, shard: int, producer: dict[str, str],
                   input_members=None) -> str | None:
    """Why `stage` cannot run on `shard` now (an input no sidecar holds), or None.
    `input_members`: what the configured instance reads (an option may drop a need)."""
    for node in stage.cls.needs + stage.cls.optional:
        if node in SOURCE_NODES:
            continue
        if input_members is not None and not set(members_of([node])) & set(input_members):
            continue
        owner = producer.get(node)
        if owner is None and node in stage.cls.optional:
            continue  # read when there, and no configured stage makes it
        if owner is None:
            return (f"needs node {node!r}, which no stage of the config produces: add the "
                    "stage that makes it")
        if stage_state(shard_set, owner, shard)[0] != "done":
            return (f"needs {node!r} from stage {owner!r}, which shard {shard:06d} lacks: run "
                    f"`--stages {owner}` first (or together)")
    for other in stage.cls.reads_annotations_of():
        if stage_state(shard_set, other, shard)[0] != "done":
            return f"reads the meta entry of stage {other!r}, which shard {shard:06d} lacks"
    return None


# -- Ray operators -------------------------------------------------------------------------
def _runner(cls, config: dict, seed: int, side: dict) -> StageRunner:
    return StageRunner(cls(config), seed, side)


def annotate_op(batch, cls, config, seed, side):
    return _runner(cls, config, seed, side).annotate_batch(batch)


def prepare_op(batch, cls, config, seed, side):
    return _runner(cls, config, seed, side).prepare_batch(batch)


def encode_op(batch, cls, config, seed, side):
    return _runner(cls, config, seed, side).encode_batch(batch)


class PredictActor:
    """A model stage's actor: the annotator and its weights, loaded once."""

    def __init__(self, cls, config, seed, side):
        self.runner = _runner(cls, config, seed, side)
        self.runner.annotator.ensure_loaded()

    def __call__(self, batch):
        return self.runner.predict_batch(batch)


def _named(fn, name: str):
    def op(batch, **kwargs):
        return fn(batch, **kwargs)

    op.__name__ = op.__qualname__ = name  # the name Ray's progress bars show
    return op


# Ray Data retries a task whose worker died forever by default: a sample that crashes its
# worker every time (a segfault in a native library) would loop. Bounding it takes
# `max_retries` / `max_restarts`, which Ray 2.60 accepts only as deprecated `ray_remote_args`.
_RAY_REMOTE_ARGS_WARNING = ".*ray_remote_args. is deprecated"


def build_wave(jobs: list[dict], stages: list[Stage], root: str, seed: int, side: dict,
               ray_options, producer: dict[str, str]):
    import ray

    instances = {s.name: s.cls(s.config) for s in stages}
    needed = [list(instances[s.name].input_members) for s in stages]
    reads = sorted({r for s in stages for r in s.cls.reads})
    inputs = sorted({producer[n] for s in stages for n in s.cls.needs + s.cls.optional
                     if n in producer}
                    | {o for s in stages for o in s.cls.reads_annotations_of()})
    wave = {"root": root, "stages": [s.name for s in stages], "inputs": inputs,
            "members": sorted({m for ms in needed for m in ms}), "reads": reads}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RAY_REMOTE_ARGS_WARNING)
        items = [{"job": json.dumps(j)} for j in slices(jobs, ray_options.rows_per_block)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        # Ray fuses consecutive task ops whose remote arguments match: the read takes the
        # first stage op's (num_cpus, max_retries), so read -> canny -> write -> collect
        # runs as one task per slice, its block never copied through the object store. A
        # slice is a block: no repartition step (measured, bench_annotate on 2 CPUs: a
        # read task per shard + repartition ran 1.31x the raw loop, slices fused 1.4x+).
        retries = stages[0].max_retries
        first_cpus = stages[0].task_cpus
        ds = ds.map_batches(_named(annotate_io.read_shards, "read"), batch_size=1,
                            batch_format="numpy", num_cpus=first_cpus, max_retries=retries,
                            fn_kwargs={"wave": wave, "rows_per_block": ray_options.rows_per_block})
        for k, s in enumerate(stages):
            args = {"cls": s.cls, "config": s.config, "seed": seed,
                    "side": {n: side[n] for n in instances[s.name].side_inputs}}
            common = dict(batch_format="numpy", batch_size=s.batch_size, num_cpus=s.num_cpus)
            # Task ops work sample by sample: they take whole blocks (batch_size None). A
            # batch size on one would make Ray bundle that many rows into each fused task,
            # i.e. up to batch_size slices (every slice of a small job) into one task.
            task = dict(common, batch_size=None, num_cpus=s.task_cpus, max_retries=retries,
                        fn_kwargs=args)
            if s.uses_actors:
                ds = ds.map_batches(_named(prepare_op, f"{s.name}.prepare"), **task)
                actor = type(s.name, (PredictActor,), {"__module__": __name__})
                ds = ds.map_batches(actor, fn_constructor_kwargs=args, concurrency=s.concurrency,
                                    num_gpus=s.num_gpus or None, resources=s.resources or None,
                                    accelerator_type=s.accelerator_type,
                                    max_restarts=s.max_retries, max_task_retries=s.max_retries,
                                    **common)
                ds = ds.map_batches(_named(encode_op, f"{s.name}.encode"), **task)
            else:
                ds = ds.map_batches(_named(annotate_op, s.name), **task)
            later = {m for ms in needed[k + 1:] for m in ms}
            outputs = list(instances[s.name].output_members)
            drop = ([m for m in needed[k] if m not in later] + outputs +
                    [do_column(s.name), status_column(s.name), seconds_column(s.name),
                     annot_column(s.name)])
            ds = ds.map_batches(_named(annotate_io.write_parts, f"{s.name}.write"),
                                batch_format="numpy", batch_size=None, num_cpus=s.task_cpus,
                                max_retries=retries,
                                fn_kwargs={"stage": s.name, "root": root,
                                           "output_members": outputs, "drop": drop})
        ds = ds.map_batches(_named(annotate_io.collect, "collect"), batch_format="numpy",
                            batch_size=None, num_cpus=stages[-1].task_cpus, max_retries=retries,
                            fn_kwargs={"stages": [s.name for s in stages]})
    ds.context.wait_for_min_actors_s = actor_gate(ray_options)
    if not ray_options.reserve_per_operator:
        # Ray Data splits the CPUs between operators by default; our read step is one short
        # task per shard, so the stages should have every CPU (measured: 1.05-1.3 canny tasks
        # busy on average with the reservation against 1.8-1.9 without it, on 2 CPUs).
        ds.context.op_resource_reservation_enabled = False
    return ds


def slices(jobs: list[dict], rows_per_block: int) -> list[dict]:
    """Each shard job cut into read jobs of `rows_per_block` rows ([start, end) in `rows`),
    from the sample count the planner read (`count`); a shard whose count is unknown (or
    0: an empty shard) stays one job, cut into blocks by its read task."""
    step = max(1, int(rows_per_block))
    out = []
    for job in jobs:
        count = int(job.get("count") or 0)
        base = {k: v for k, v in job.items() if k != "count"}
        if count <= 0:
            out.append(base)
            continue
        out += [dict(base, rows=[a, min(a + step, count)]) for a in range(0, count, step)]
    return out


def actor_gate(ray_options) -> float:
    """Ray Data's `wait_for_min_actors_s`: -1 (no wait: all pools load at once) unless the
    config asks for the blocking gate. Measured on the tiny demo (2 CPUs, 14 model stages):
    gated, the pools started one after the other, 7 s apart, and annotate took 222 s;
    started at once, 163 s."""
    t = float(ray_options.actor_start_timeout_s)
    return t if t > 0 else -1


# -- running -------------------------------------------------------------------------------
def init_ray(num_cpus: int | None):
    """Ray, for the driver: it never touches Ray Data (the coordinator actor runs it and
    sets its progress bars), so the driver skips Ray Data's context and its imports."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # the cluster's own resources; num_cpus applies to a local Ray only
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
    return ray


class Progress:
    """Samples done per stage: on a terminal a tqdm bar per stage (count/total, rate, ETA);
    in a log file a plain line every `interval` seconds and one at the end, no bar redraws."""

    def __init__(self, totals: dict[str, int], tty: bool, interval: float = 30.0,
                 file=None, clock=time.perf_counter):
        self.totals, self.done = totals, Counter()
        self.interval, self.clock, self.file = interval, clock, file
        self.start = self.last = clock()
        self.unprinted = False
        self.bars = {}
        if tty:
            from tqdm import tqdm

            width = max(map(len, totals), default=0)
            self.bars = {stage: tqdm(total=total, unit="sample", desc=stage.ljust(width),
                                     position=i, file=file or sys.stderr)
                         for i, (stage, total) in enumerate(totals.items())}

    def update(self, done: dict[str, int]) -> None:
        if dict(done) == dict(self.done):
            return
        for stage, bar in self.bars.items():
            bar.update(done.get(stage, 0) - self.done[stage])
        self.done = Counter(done)
        self.unprinted = True
        if not self.bars and self.clock() - self.last >= self.interval:
            self._print()

    def _print(self) -> None:
        self.last = self.clock()
        self.unprinted = False
        print(self.line(), file=self.file or sys.stdout, flush=True)

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        parts = []
        for stage, total in self.totals.items():
            done = self.done[stage]
            rate = done / elapsed
            eta = (total - done) / rate if rate > 0 else float("inf")
            parts.append(f"{stage} {done}/{total} ({rate:.1f}/s, ETA {eta:.0f} s)")
        return "progress: " + ", ".join(parts)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if not self.bars and self.unprinted:
            self._print()


class WaveCoordinator:
    """Runs one wave in a Ray actor beside the driver (no CPU reserved): the Ray Data
    executor, the part bookkeeping and the join tasks live here, so that the driver process
    only plans, waits and reports — its CPU and memory do not grow with the samples.
    `done()` says how many samples each stage has finished, for the driver's progress."""

    def __init__(self, progress_bars: bool = False):
        import threading

        from ray.data import DataContext

        self._done: Counter = Counter()
        self._lock = threading.Lock()  # done() runs in a second thread while run() works
        DataContext.get_current().enable_progress_bars = progress_bars

    def done(self) -> dict:
        with self._lock:
            return dict(self._done)

    def run(self, stages, jobs, root, seed, side, opts, producer, run_id) -> dict:
        with self._lock:
            self._done = Counter()  # one coordinator serves every wave of a driver's job
        return coordinate_wave(self, stages, jobs, root, seed, side, opts, producer, run_id)

    def count(self, stage: str, samples: int) -> None:
        with self._lock:
            self._done[stage] += samples


# The wave's work, outside the actor class: Ray disassembles an actor class's code when
# the driver exports it (~40 ms of the driver's CPU for this one when the body was inline).
def coordinate_wave(actor: WaveCoordinator, stages, jobs, root, seed, side, opts, producer,
                    run_id) -> dict:
    import ray

    cpu = time.process_time()
    ds = build_wave(jobs, stages, root, seed, side, opts.ray, producer)
    join = ray.remote(num_cpus=opts.ray.join_num_cpus, max_retries=2)(annotate_io.join_parts)
    todo = [(s.name, j["shard"]) for j in jobs for s in stages if s.name in j["stages"]]
    coverage: dict = defaultdict(set)
    pending = {}
    configs = {s.name: s.config for s in stages}
    result = {"written": {}, "errors": {}, "lines": []}
    failed_shards = set()
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for i in range(len(batch["kind"])):
            shard = int(batch["shard"][i])
            if batch["kind"][i] == "error":
                failed_shards.add(shard)
                result["errors"][shard] = str(batch["message"][i])
                continue
            stage = str(batch["stage"][i])
            start, end, count = (int(batch[k][i]) for k in ("start", "end", "count"))
            ranges = coverage[(stage, shard)]
            if (start, end) in ranges:
                continue
            ranges.add((start, end))
            actor.count(stage, end - start)
            if sum(e - s for s, e in ranges) == count and (stage, shard) not in pending:
                pending[(stage, shard)] = join.remote(root, stage, shard, count,
                                                      sorted(ranges), configs[stage], run_id)
    for (stage, shard), ref in pending.items():
        try:
            stats = ray.get(ref)
        except Exception as e:  # a join that failed names the shard and stage
            result["errors"][(stage, shard)] = f"shard {shard:06d} {stage}: {e}"
            continue
        result["written"][(stage, shard)] = stats
        result["lines"].append(summary_line(stats))
    for key in todo:
        if key not in pending and key[1] not in failed_shards:
            stage, shard = key
            result["errors"][key] = (f"shard {shard:06d} {stage}: only part of its rows "
                                     "came back from the pipeline; rerun")
    result["cpu_seconds"] = time.process_time() - cpu
    return result


# The driver's coordinator: started once per Ray job, as soon as Ray is up (its process
# start and imports, ~1.2-1.5 s here, overlap the planning), and reused by every wave and
# every later run of the same driver. Measured (bench_annotate, 1000 samples): a fresh
# coordinator per wave put the first block's part 3.2-4.7 s into a 7-9 s run.
_COORDINATOR: dict = {}


def coordinator(ray, progress_bars: bool):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    key = (ray.get_runtime_context().get_job_id(), bool(progress_bars))
    actor = _COORDINATOR.get(key)
    if actor is not None:
        try:
            ray.get(actor.done.remote(), timeout=60)
            return actor
        except Exception:  # it died (its node lost): start another
            drop_coordinator(ray)
    _COORDINATOR.clear()  # handles of an earlier Ray session or other progress settings
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=2)(WaveCoordinator).options(
        scheduling_strategy=here).remote(progress_bars)
    _COORDINATOR[key] = actor
    return actor


def drop_coordinator(ray) -> None:
    for actor in _COORDINATOR.values():
        try:
            ray.kill(actor)
        except Exception:
            pass
    _COORDINATOR.clear()


def run_wave(ray, stages, jobs, shard_set, counts, seed, side, opts, report, log, tty,
             producer, run_id):
    """One wave, run by the WaveCoordinator actor on this node; the driver polls its
    progress (a second thread of the actor answers while the wave runs)."""
    progress_bars = tty if opts.ray.progress is None else opts.ray.progress
    actor = coordinator(ray, progress_bars)
    progress = Progress({s.name: sum(counts.get(j["shard"], 0) for j in jobs
                                     if s.name in j["stages"]) for s in stages}, tty)
    finished = False
    try:
        ref = actor.run.remote(stages, jobs, shard_set.root, seed, side, opts, producer, run_id)
        while not ray.wait([ref], timeout=1.0 if tty else 10.0)[0]:
            progress.update(ray.get(actor.done.remote()))
        result = ray.get(ref)
        progress.update(ray.get(actor.done.remote()))
        finished = True
    finally:
        progress.close()
        if not finished:  # interrupted or failed: stop its wave, start clean next time
            drop_coordinator(ray)
    for line in result["lines"]:
        log(line)
    for key, message in result["errors"].items():
        report.errors[key] = message
        log(f"shard {key if isinstance(key, int) else key[1]:06d}: ERROR {message}", error=True)
    report.written.update(result["written"])
    report.coordinator_cpu += result["cpu_seconds"]


def summary_line(stats: dict) -> str:
    return (f"shard {stats['shard']:06d} {stats['stage']}: ok {stats[OK]} skipped "
            f"{stats[SKIPPED]} failed {stats[FAILED]} of {stats['samples']} "
            f"({stats['seconds']:.1f} worker-s, {stats['images_per_s']:.0f} img/s)")


def run(shards: str, stage_names: list[str] | None = None, config_path: str = DEFAULT_CONFIG,
        src: str | None = None, out: str | None = None, force: bool = False,
        num_cpus: int | None = None, retry_failed: bool = False, verify: bool = False,
        log=None) -> RunReport:
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def say(message: str, error: bool = False) -> None:
        if log is not None:
            log(message)
        print(message, file=sys.stderr if error else sys.stdout, flush=True)

    if force and retry_failed:
        raise ConfigError("--force recomputes everything; --retry-failed only the failed "
                          "samples: choose one")
    config = load_config(config_path)
    opts = run_options(config)
    stages = select_stages(config, stage_names)
    all_stages = select_stages(config, None)  # who produces what, for the inputs check
    src_url = storage.normalize(src or opts.src)
    out_url = storage.normalize(out or opts.out)
    probe = ShardSet(src_url)
    if probe.layout != "plain":
        raise ConfigError(f"--src {src_url} is an annotate output; give the source shards it "
                          f"annotates ({probe.source})")
    available = probe.shards()
    if not available:
        raise ConfigError(f"--src {src_url} holds no source shards (NNNNNN.tar): run "
                          "`python -m pipelines.ingest` first, or fix --src")
    selected = parse_shards(shards, available)
    report = RunReport()
    for n in sorted(set(selected) - set(available)):
        report.errors[n] = (f"shard {n:06d}: no source shard {n:06d}.tar in {src_url}; run "
                            "`python -m pipelines.ingest` for it or fix --shards")
    selected = [n for n in selected if n in available]
    try:
        shard_set = ShardSet.create(out_url, src_url)
    except ShardError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot write to --out {out_url} ({e})") from None

    side_specs = config.get("side_inputs") or {}
    side = {}
    instances = {s.name: s.cls(s.config) for s in stages}  # cheap: options only
    for name in sorted({n for a in instances.values() for n in a.side_inputs}):
        if name not in side_specs:
            users = [s for s, a in instances.items() if name in a.side_inputs]
            raise ConfigError(f"stage(s) {users} draw from side input {name!r}: declare it under "
                              "`side_inputs:` in the config (kind, path)")
        side[name] = load_side_input(name, side_specs[name])

    p = plan(shard_set, stages, selected, force, retry_failed, verify, report, say)
    held = {"owner": leases.run_owner(), "leases": {}}
    complete: dict[str, set[int]] = defaultdict(set)
    for stage, shard in report.skipped:
        complete[stage].add(shard)
    for stage, shards in sorted(complete.items()):
        say(f"{stage}: {len(shards)} shard(s) complete, skipped")
        leases.sweep_stale(shard_set.root, stage, shards, held["owner"])
    if not p.todo:
        report.seconds = time.perf_counter() - start
        return report

    ray = init_ray(num_cpus or opts.ray.num_cpus)
    coordinator(ray, tty if opts.ray.progress is None else opts.ray.progress)  # starts now
    capacity = {k: float(v) for k, v in ray.cluster_resources().items()}
    by_name = {s.name: s for s in stages}
    # CPU left beside the actor pools: enough for one task of any stage (and the reads)
    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    waves = plan_waves(stages, capacity,
                       task_cpus=max(s.task_cpus for s in stages),
                       nodes=nodes)
    if len(waves) > 1:
        say("waves: " + " -> ".join("+".join(s.name for s in w) for w in waves))
    producer = producers(all_stages)
    try:
        for wave in waves:
            shard_set.refresh()
            jobs: dict[int, dict] = {}
            for s in wave:
                for shard in selected:
                    todo = p.todo.get((s.name, shard))
                    if todo is None:
                        continue
                    if shard in report.errors:
                        continue
                    why = missing_inputs(shard_set, by_name[s.name], shard, producer,
                                         instances[s.name].input_members)
                    if why is not None:
                        report.errors[(s.name, shard)] = f"shard {shard:06d} {s.name}: {why}"
                        say(f"shard {shard:06d} {s.name}: ERROR {why}", error=True)
                        continue
                    lease = leases.acquire(shard_set.root, s.name, shard, held["owner"],
                                           opts.lease_seconds)
                    if isinstance(lease, str):
                        report.busy[(s.name, shard)] = lease
                        say(f"shard {shard:06d} {s.name}: skipped, {lease}")
                        continue
                    held["leases"][(s.name, shard)] = lease
                    sweep(shard_set, s.name, shard)
                    jobs.setdefault(shard, {"shard": shard, "count": p.count.get(shard, 0),
                                                "stages": {}})["stages"][s.name] = todo
            if not jobs:
                continue
            try:
                run_wave(ray, wave, sorted(jobs.values(), key=lambda j: j["shard"]), shard_set,
                         p.count, opts.seed, side, opts, report, say, tty, producer,
                         held["owner"]["run"])
            finally:
                for key in [k for k in held["leases"] if k[0] in {s.name for s in wave}]:
                    leases.release(held["leases"].pop(key))
    finally:
        for lease in held["leases"].values():
            leases.release(lease)
    report.seconds = time.perf_counter() - start
    report.too_many_failed = _too_many_failed(report, opts.max_failed_fraction)
    write_report(shard_set, report, stages)
    return report


def sweep(shard_set: ShardSet, stage: str, shard: int) -> None:
    """Leftovers of a killed run on a (stage, shard) this run now holds: its parts and the
    temporary files of its sidecar. Never listed, never published; removed here."""
    storage.remove(annotate_io.parts_folder(shard_set.root, stage, shard))
    folder = storage.join(shard_set.root, stage)
    for name in storage.listdir(folder):
        if storage.is_tmp(name) and name[1:7] == f"{shard:06d}":
            storage.remove(storage.join(folder, name))


def _too_many_failed(report: RunReport, fraction: float) -> list[str]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (stage, _), stats in report.written.items():
        totals[stage][0] += stats[FAILED]
        totals[stage][1] += stats["samples"]
    return sorted(s for s, (f, n) in totals.items() if n and f / n > fraction)


def summarise(report: RunReport, stages) -> dict:
    out = {}
    for s in stages:
        entries = [st for (name, _), st in report.written.items() if name == s.name]
        reasons = Counter(f["reason"] for st in entries for f in st["failed_keys"])
        seconds = sum(st["seconds"] for st in entries)
        ok = sum(st[OK] for st in entries)
        out[s.name] = {
            "shards_written": len(entries),
            "shards_skipped": sum(1 for name, _ in report.skipped if name == s.name),
            OK: ok, SKIPPED: sum(st[SKIPPED] for st in entries),
            FAILED: sum(st[FAILED] for st in entries),
            "top_failures": [{"reason": r, "count": c} for r, c in reasons.most_common(5)],
            "worker_seconds": round(seconds, 3),
            "samples_per_s": round(ok / report.seconds, 2) if report.seconds else 0.0,
        }
    return out


def write_report(shard_set: ShardSet, report: RunReport, stages) -> str:
    summary = summarise(report, stages)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = storage.join(shard_set.root, REPORT_DIR, f"annotate-{stamp}-{os.getpid()}.json")
    body = {"stages": summary, "seconds": round(report.seconds, 3),
            "errors": {str(k): v for k, v in report.errors.items()},
            "busy": {f"{k[0]}/{k[1]:06d}": v for k, v in report.busy.items()},
            "exit_code": report.exit_code}
    storage.atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    report.summary, report.report_path = summary, path
    return path


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.annotate", description=__doc__.split("\n")[0])
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
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (no RAY_ADDRESS)")
    args = p.parse_args(argv)
    stage_names = [s.strip() for s in args.stages.split(",") if s.strip()] or None
    try:
        report = run(args.shards, stage_names, args.config, args.src, args.out, args.force,
                     args.num_cpus, args.retry_failed, args.verify)
    except (ConfigError, MissingDependency) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(report)
    print(f"annotate: {len(report.written)} stage sidecar(s) written over "
          f"{len(report.shards_written())} shard(s), {len(report.skipped)} already complete, "
          f"{len(report.busy)} leased by another run, {len(report.errors)} failed")
    for key, message in sorted(report.errors.items(), key=lambda kv: str(kv[0])):
        print(f"  FAILED {message}", file=sys.stderr)
    if report.too_many_failed:
        print(f"annotate: stage(s) {report.too_many_failed} failed more than the allowed share "
              "of their samples (max_failed_fraction); exit 3", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
