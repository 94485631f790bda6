"""One annotate run, on the driver: load the config, plan, lease the (stage, shard)s to do,
run the waves on Ray, release, report. `python -m pipelines.annotate` is its command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from annotators.base import FAILED, OK, SKIPPED
from annotators.side_inputs import load_side_input
from graph200k import storage
from graph200k.config import ConfigError
from graph200k.dataset import ShardSet
from graph200k.shards import ShardError
from pipelines import annotate_ray, leases
from pipelines.annotate_config import (load_config, parse_shards, plan_waves, producers,
                                       run_options, select_stages)
from pipelines.annotate_plan import missing_inputs, plan, sweep

DEFAULT_CONFIG = "configs/annotate.yaml"
REPORT_DIR = "_report"
LOGS_DIR = "_logs"

# Exit codes (the README and docs/annotate.md carry this table).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_FAILED, EXIT_LEASED = 0, 1, 2, 3, 4


@dataclass
class RunReport:
    written: dict = field(default_factory=dict)  # (stage, shard) -> stats
    skipped: list = field(default_factory=list)  # (stage, shard) complete before this run
    busy: dict = field(default_factory=dict)  # (stage, shard) -> who holds the lease
    errors: dict = field(default_factory=dict)  # (stage, shard) or shard -> message
    too_many_failed: list = field(default_factory=list)  # stage names
    seconds: float = 0.0
    coordinator_cpu: float = 0.0  # CPU seconds of the waves' coordinator actors
    log_path: str | None = None  # Ray's own logs of this run (a local file)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_FAILED
        if self.busy:
            return EXIT_LEASED
        return EXIT_TOO_MANY_FAILED if self.too_many_failed else EXIT_OK

    def shards_written(self) -> list[int]:
        return sorted({shard for _, shard in self.written})


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

    if num_cpus is not None and num_cpus < 1:
        raise ConfigError(f"--num-cpus must be a whole number of CPUs, at least 1 (got "
                          f"{num_cpus}); leave it out to use the config's ray.num_cpus")
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
    owner = leases.run_owner()
    complete: dict[str, set[int]] = defaultdict(set)
    for stage, shard in report.skipped:
        complete[stage].add(shard)
    for stage, shards in sorted(complete.items()):
        say(f"{stage}: {len(shards)} shard(s) complete, skipped")
        leases.sweep_stale(shard_set.root, stage, shards, owner)
    if not p.todo:
        report.seconds = time.perf_counter() - start
        return report

    report.log_path = log_path(out_url)
    say(f"annotate: Ray's own logs -> {report.log_path}")
    try:
        with annotate_ray.ray_logging_to(report.log_path, "ray"):
            _run_waves(shard_set, stages, all_stages, instances, selected, p, side, opts,
                       num_cpus, owner, report, say, tty)
    finally:
        keep_log(report.log_path, out_url)
    report.seconds = time.perf_counter() - start
    report.too_many_failed = _too_many_failed(report, opts.max_failed_fraction)
    write_report(shard_set, report, stages)
    return report


def _run_waves(shard_set, stages, all_stages, instances, selected, p, side, opts, num_cpus,
               owner, report, say, tty) -> None:
    """Ray's part of a run: start it, plan the waves, lease and run each wave, release."""
    ray = annotate_ray.init_ray(num_cpus if num_cpus is not None else opts.ray.num_cpus)
    annotate_ray.coordinator(ray, bool(opts.ray.progress))  # starts now
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
    heartbeat = leases.Heartbeat(opts.lease_seconds, say)
    try:
        for wave in waves:
            shard_set.refresh()
            jobs: dict[int, dict] = {}
            fences: dict = {}  # (stage, shard) -> this run's lease, checked by its join
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
                    lease = leases.acquire(shard_set.root, s.name, shard, owner,
                                           opts.lease_seconds)
                    if isinstance(lease, str):
                        report.busy[(s.name, shard)] = lease
                        say(f"shard {shard:06d} {s.name}: skipped, {lease}")
                        continue
                    heartbeat.add((s.name, shard), lease)
                    fences[(s.name, shard)] = lease
                    sweep(shard_set, s.name, shard)
                    jobs.setdefault(shard, {"shard": shard, "count": p.count.get(shard, 0),
                                                "stages": {}})["stages"][s.name] = todo
            if not jobs:
                continue
            try:
                annotate_ray.run_wave(ray, wave, sorted(jobs.values(), key=lambda j: j["shard"]),
                                      shard_set, p.count, opts.seed, side, opts, report, say,
                                      tty, producer, owner["run"], fences, report.log_path)
            finally:
                for key in fences:
                    lease = heartbeat.pop(key)
                    if lease is not None:
                        leases.release(lease)
    finally:
        for lease in heartbeat.stop():
            leases.release(lease)


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
            "exit_code": report.exit_code, "ray_log": report.log_path}
    storage.atomic_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    report.summary, report.report_path = summary, path
    return path


def log_path(out_url: str) -> str:
    """Where this run's Ray logs go: `{out}/_logs/` for a local output; for a URL a local
    file first (Ray's loggers write files), copied beside the output at the end."""
    name = f"annotate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    if storage.is_url(out_url):
        import tempfile

        return os.path.join(tempfile.gettempdir(), "graph200k-annotate-logs", name)
    return storage.join(out_url, LOGS_DIR, name)


def keep_log(path: str | None, out_url: str) -> None:
    if path and storage.is_url(out_url) and os.path.exists(path):
        storage.put_file(path, storage.join(out_url, LOGS_DIR, os.path.basename(path)))
