"""Annotate's Ray side: the stage operators, one Ray Data pipeline per wave, and the
coordinator actor that runs it beside the driver and starts the join tasks.

The driver only plans, waits and reports; the coordinator (one per driver job) holds the
Ray Data executor and the part bookkeeping, so the driver's CPU and memory do not grow with
the samples. Ray's own logging (Ray Data's operators, its issue detectors) goes to a file
the driver names (`{out}/_logs/…`), never to the terminal: only our progress shows there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections import Counter, defaultdict

import numpy as np

from pipelines import annotate_io, leases, ray_reaper
from pipelines.annotate_config import Stage
from pipelines.annotate_progress import Progress, summary_line
from pipelines.stage_ops import (KEY, StageRunner, annot_column, do_column,
                                 seconds_column, status_column)


def _runner(cls, config: dict, seed: int, side: dict) -> StageRunner:
    return StageRunner(cls(config), seed, side)


def annotate_op(batch, cls, config, seed, side):
    return _runner(cls, config, seed, side).annotate_batch(batch)


def prepare_op(batch, cls, config, seed, side):
    return _runner(cls, config, seed, side).prepare_batch(batch)


def encode_op(batch, cls, config, seed, side):
    return _runner(cls, config, seed, side).encode_batch(batch)


# (stage class, its config) -> its annotator with the model loaded, per worker process: a
# model stage run as tasks (`ray.actors: false`) loads its weights once per worker, not
# once per block. A run has one entry per model stage; the oldest go beyond that.
_LOADED: dict = {}
_MAX_LOADED = 32


def model_op(batch, cls, config, seed, side, batch_size):
    """prepare -> predict -> encode of a model stage in one task; predict sees `batch_size`
    rows at a time, as the stage's actor would."""
    ident = (cls, json.dumps(config, sort_keys=True, default=str))
    annotator = _LOADED.get(ident)
    if annotator is None:
        annotator = cls(config)
        annotator.ensure_loaded()
        _LOADED[ident] = annotator
        while len(_LOADED) > _MAX_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
    runner = StageRunner(annotator, seed, side)  # this run's seed and side inputs
    batch = runner.prepare_batch(batch)
    n, step = len(batch[KEY]), max(1, int(batch_size))
    if n > step:
        parts = [runner.predict_batch({k: v[a:a + step] for k, v in batch.items()})
                 for a in range(0, n, step)]
        names = list(dict.fromkeys(k for p in parts for k in p))
        batch = {k: np.concatenate([p[k] if k in p else np.full(len(p[KEY]), None, object)
                                    for p in parts]) for k in names}
    else:
        batch = runner.predict_batch(batch)
    return runner.encode_batch(batch)


class PredictActor:
    """A model stage's actor: the annotator and its weights, loaded once. An actor given
    GPUs (`num_gpus`) that sees no CUDA refuses to load, unless its block says `device: cpu`."""

    def __init__(self, cls, config, seed, side, num_gpus: float = 0.0):
        from annotators.models import require_gpu

        self.runner = _runner(cls, config, seed, side)
        options = getattr(self.runner.annotator, "options", None)
        require_gpu(self.runner.stage, num_gpus, getattr(options, "device", "auto"))
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
# `max_retries` / `max_task_retries`, which Ray 2.60 accepts only as deprecated
# `ray_remote_args`. An actor itself restarts without bound (Ray Data's default, which its
# actor pool assumes): a long run may lose an actor to a sticky CUDA error more than a few
# times (device_faults exits it), and each time its batch is rerun on the restarted actor,
# at most `max_retries` times per batch (a batch that kills every actor fails its block).
_RAY_REMOTE_ARGS_WARNING = ".*ray_remote_args. is deprecated"


def actor_retries(max_retries: int) -> dict:
    """Ray's restart settings of a model stage's actor pool (see above)."""
    return {"max_restarts": -1 if max_retries else 0, "max_task_retries": max_retries}


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
            if s.uses_actors and not ray_options.actors:  # one task: the model per worker
                ds = ds.map_batches(_named(model_op, s.name), **dict(
                    task, fn_kwargs=dict(args, batch_size=s.batch_size),
                    num_gpus=s.num_gpus or None, resources=s.resources or None))
            elif s.uses_actors:
                ds = ds.map_batches(_named(prepare_op, f"{s.name}.prepare"), **task)
                actor = type(s.name, (PredictActor,), {"__module__": __name__})
                ds = ds.map_batches(actor, fn_constructor_kwargs=dict(args, num_gpus=s.num_gpus),
                                    concurrency=s.concurrency, num_gpus=s.num_gpus or None,
                                    resources=s.resources or None,
                                    accelerator_type=s.accelerator_type,
                                    **actor_retries(s.max_retries), **common)
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
    sets its progress bars), so the driver skips Ray Data's context and its imports.
    The workers' output is not forwarded to the driver (`log_to_driver=False`): it stays in
    Ray's session logs (the driver's own Ray logging: `ray_logging_to`)."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            # the cluster's own resources; num_cpus applies to a local Ray only
            ray.init(log_to_driver=False)
        else:
            # a local Ray started here ends with this process, even a SIGKILLed one
            ray_reaper.start()
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


@contextlib.contextmanager
def ray_logging_to(path: str | None, *names: str):
    """While inside: the records of the named loggers go to the file `path` only (not to
    the terminal). No-op without a path."""
    if not path:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers, logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


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

    def run(self, stages, jobs, root, seed, side, opts, producer, run_id, fences,
            log_path=None) -> dict:
        with self._lock:
            self._done = Counter()  # one coordinator serves every wave of a driver's job
        with ray_logging_to(log_path, "ray", "ray.data"):
            return coordinate_wave(self, stages, jobs, root, seed, side, opts, producer,
                                   run_id, fences)

    def count(self, stage: str, samples: int) -> None:
        with self._lock:
            self._done[stage] += samples


# The wave's work, outside the actor class: Ray disassembles an actor class's code when
# the driver exports it (~40 ms of the driver's CPU for this one when the body was inline).
def coordinate_wave(actor: WaveCoordinator, stages, jobs, root, seed, side, opts, producer,
                    run_id, fences: dict) -> dict:
    """`fences`: (stage, shard) -> the run's Lease, checked by the join before it commits."""
    import ray

    cpu = time.process_time()
    ds = build_wave(jobs, stages, root, seed, side, opts.ray, producer)
    join = ray.remote(num_cpus=opts.ray.join_num_cpus, max_retries=2)(annotate_io.join_parts)
    todo = [(s.name, j["shard"]) for j in jobs for s in stages if s.name in j["stages"]]
    coverage: dict = defaultdict(set)
    pending = {}
    configs = {s.name: s.config for s in stages}
    result = {"written": {}, "errors": {}, "busy": {}, "lines": []}
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
                                                      sorted(ranges), configs[stage], run_id,
                                                      lease=fences.get((stage, shard)))
    for (stage, shard), ref in pending.items():
        try:
            stats = ray.get(ref)
        except leases.LeaseLost as e:  # taken over: the other run does it, ours is not kept
            result["busy"][(stage, shard)] = str(e.args[0] if e.args else e)
            continue
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
             producer, run_id, fences, log_path=None):
    """One wave, run by the WaveCoordinator actor on this node; the driver polls its
    progress (a second thread of the actor answers while the wave runs)."""
    actor = coordinator(ray, bool(opts.ray.progress))
    progress = Progress({s.name: sum(counts.get(j["shard"], 0) for j in jobs
                                     if s.name in j["stages"]) for s in stages}, tty)
    finished = False
    try:
        ref = actor.run.remote(stages, jobs, shard_set.root, seed, side, opts, producer, run_id,
                               fences, log_path)
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
    for key, message in result["busy"].items():
        report.busy[key] = message
        log(f"shard {key[1]:06d} {key[0]}: not kept, {message}", error=True)
    report.written.update(result["written"])
    report.coordinator_cpu += result["cpu_seconds"]

