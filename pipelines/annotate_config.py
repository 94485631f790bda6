"""configs/annotate.yaml -> the run's settings, its stages in dependency order, and its waves.

Every key is checked: an unknown key anywhere (top level, `ray:`, a stage block, a side
input) is an error naming the close match.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from annotators.base import Annotator
from graph200k.config import ConfigError, build, check_keys, unknown_key_message

# Keys of a stage block the pipeline reads; the rest is the annotator's own Options.
RESOURCE_KEYS = ("class", "num_cpus", "num_gpus", "batch_size", "concurrency", "max_retries",
                 "resources", "accelerator_type", "task_num_cpus")
TOP_KEYS = ("src", "out", "seed", "ray", "side_inputs", "stages", "lease_seconds",
            "max_failed_fraction")


@dataclass
class RayOptions:
    num_cpus: int | None = 2  # a local Ray only (no RAY_ADDRESS); a cluster brings its own
    # samples per Ray block: each shard is read in slices of this many rows, each slice
    # one task of the first stage (its read fused in)
    rows_per_block: int = 128
    reserve_per_operator: bool = False  # Ray Data's per-operator CPU reservation
    join_num_cpus: float = 0.25  # per join task (mostly I/O)
    # Ray Data's own operator bars, in the coordinator's log (Ray's session logs); ours are
    # on the terminal either way
    progress: bool = False
    # 0: every actor pool of a wave starts at once and loads its weights in parallel (a
    # pool no node can host is refused before the run starts). A positive value makes
    # each pool wait this long for its minimum actors before the next pool starts (Ray
    # Data's gate: one pool after the other) and fail with a timeout after that.
    actor_start_timeout_s: float = 0.0
    # true: each model stage runs in an actor pool of its own (its weights loaded once per
    # actor). false: its predict runs inside the stage's tasks, the model kept per worker
    # process, so one wave is one fused task per block and every stage shares a few
    # reused workers. For tiny models (tests, the demo): there an actor's start — a
    # process importing torch and the model libraries, ~5 s of CPU — is most of its work.
    actors: bool = True


@dataclass
class RunOptions:
    src: str = "shards/source"
    out: str = "shards/graph200k"
    seed: int = 0  # per-sample seeds derive from (seed, key, stage, variant)
    # A lease not renewed for this long is taken over: the run renews its leases every
    # lease_seconds / 4, so a killed run's shards are free again within this time, any host.
    lease_seconds: float = 120.0
    max_failed_fraction: float = 0.05  # exit 3 when a stage fails more of its samples
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass
class Stage:
    name: str
    cls: type[Annotator]
    config: dict
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 32
    concurrency: tuple[int, int] = (1, 1)  # model stages: actor pool (min, max)
    max_retries: int = 3
    resources: dict = field(default_factory=dict)
    accelerator_type: str | None = None  # e.g. "H100", "A100": the GPU kind an actor needs
    # A model stage's CPU tasks (prepare, encode, write), apart from its actors' num_cpus:
    # decoding and resizing take a core; a small share would let Ray start a worker process
    # per concurrent task, each importing the model libraries.
    task_num_cpus: float = 1.0

    @property
    def task_cpus(self) -> float:
        """CPUs per task of this stage: a CPU stage's tasks are its `num_cpus`."""
        return self.task_num_cpus if self.uses_actors else self.num_cpus

    @property
    def uses_actors(self) -> bool:
        # A model stage loads its weights once per actor; its CPU steps run as tasks.
        return self.cls.is_model_stage()

    def held_resources(self) -> dict[str, float]:
        """What the stage's actor pool holds for the whole wave at its smallest (a CPU
        stage's tasks hold nothing between batches)."""
        if not self.uses_actors:
            return {}
        n = self.concurrency[0]
        need = {"CPU": self.num_cpus * n}
        if self.num_gpus:
            need["GPU"] = self.num_gpus * n
        for k, v in self.resources.items():
            need[k] = float(v) * n
        return need

    def actor_resources(self) -> dict[str, float]:
        """What one actor of the stage asks a node for (Ray's names: an accelerator type is
        the node resource `accelerator_type:<kind>`)."""
        need = {"CPU": self.num_cpus}
        if self.num_gpus:
            need["GPU"] = self.num_gpus
        if self.accelerator_type:
            need[f"accelerator_type:{self.accelerator_type}"] = 0.001
        need.update({k: float(v) for k, v in self.resources.items()})
        return {k: v for k, v in need.items() if v}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"annotate config {path} not found (see configs/annotate.yaml)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line} ({getattr(e, 'problem', e)})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: must be a mapping of settings (src, out, ray, stages, ...)")
    check_keys(config, TOP_KEYS, str(path))
    if not isinstance(config.get("stages"), dict) or not config["stages"]:
        raise ConfigError(f"{path}: needs a non-empty `stages:` mapping")
    side = config.get("side_inputs") or {}
    if not isinstance(side, dict):
        raise ConfigError(f"{path}: `side_inputs:` must map names to {{kind, path, ...}}")
    config["_source"] = str(path)
    return config


def run_options(config: dict) -> RunOptions:
    data = {k: v for k, v in config.items() if k in TOP_KEYS and k not in ("stages", "side_inputs")}
    where = config.get("_source", "annotate config")
    opts = build(RunOptions, data, where)
    if opts.ray.num_cpus is not None and opts.ray.num_cpus < 1:
        raise ConfigError(f"{where}: ray.num_cpus must be at least 1 (got {opts.ray.num_cpus}); "
                          "remove it to let Ray count the CPUs")
    if not opts.lease_seconds > 0:
        raise ConfigError(f"{where}: lease_seconds must be positive (got {opts.lease_seconds}); "
                          "a lease is renewed every lease_seconds / 4 while its shard is worked on")
    return opts


def import_class(dotted: str, stage: str) -> type[Annotator]:
    module, _, attr = str(dotted).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"stage {stage!r}: cannot import class {dotted!r} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Annotator)):
        raise ConfigError(f"stage {stage!r}: {dotted} is not an annotators.base.Annotator")
    return cls


def _concurrency(name: str, value) -> tuple[int, int]:
    if value is None:
        return (1, 1)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (value, value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 1 <= value[0] <= value[1]):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"stage {name!r}: concurrency must be N >= 1 or [min, max] with "
                      f"1 <= min <= max (an autoscaling actor pool), got {value!r}")


def _positive(name: str, key: str, value, kind=float, allow_zero=False):
    try:
        v = kind(value)
    except (TypeError, ValueError):
        v = None
    if v is None or isinstance(value, bool) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"stage {name!r}: {key} must be a number {bound}, got {value!r}")
    return v


def build_stage(name: str, block: dict) -> Stage:
    if not isinstance(block, dict) or "class" not in block:
        raise ConfigError(f"stage {name!r}: needs a `class:` (e.g. annotators.canny.Canny)")
    cls = import_class(block["class"], name)
    if cls.name != name:
        raise ConfigError(f"stage {name!r}: class {block['class']} is named {cls.name!r}")
    cls.check_dependencies()  # fail on the driver, before any Ray work starts
    known = set(RESOURCE_KEYS) | set(cls.option_names())
    unknown = [k for k in block if k not in known]
    if unknown:
        raise ConfigError(unknown_key_message(f"stage {name!r}", unknown[0], known, name))
    options = {k: v for k, v in block.items() if k not in RESOURCE_KEYS}
    cls.parse_options(options)
    if cls.is_model_stage() and not block.get("batch_size"):
        raise ConfigError(f"stage {name!r}: a model stage needs batch_size (inputs per forward pass)")
    if not cls.is_model_stage() and block.get("concurrency") is not None:
        raise ConfigError(f"stage {name!r}: concurrency sizes a model stage's actor pool; "
                          f"{cls.__name__} is a CPU stage (tasks): drop it")
    resources = block.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"stage {name!r}: resources must map names to amounts")
    return Stage(
        name=name, cls=cls, config=options,
        num_cpus=_positive(name, "num_cpus", block.get("num_cpus", 1), allow_zero=True),
        num_gpus=_positive(name, "num_gpus", block.get("num_gpus", 0), allow_zero=True),
        batch_size=int(_positive(name, "batch_size", block.get("batch_size") or 32, int)),
        concurrency=_concurrency(name, block.get("concurrency")),
        max_retries=int(_positive(name, "max_retries", block.get("max_retries", 3), int,
                                  allow_zero=True)),
        resources={k: _positive(name, f"resources.{k}", v) for k, v in resources.items()},
        accelerator_type=block.get("accelerator_type"),
        task_num_cpus=_positive(name, "task_num_cpus", block.get("task_num_cpus", 1),
                                allow_zero=True),
    )


def producers(stages: list[Stage]) -> dict[str, str]:
    producer = {}
    for s in stages:
        for node in s.cls.produces:
            if node in producer:
                raise ConfigError(f"node type {node!r} produced by both {producer[node]!r} and {s.name!r}")
            producer[node] = s.name
    return producer


def depends_on(stage: Stage, producer: dict[str, str], names) -> set[str]:
    """Stages (among `names`) whose members or meta entries `stage` reads."""
    deps = {producer[n] for n in stage.cls.needs + stage.cls.optional if n in producer}
    deps |= {r for r in stage.cls.reads_annotations_of()}
    return (deps & set(names)) - {stage.name}


def dependency_order(stages: list[Stage]) -> list[Stage]:
    """Stages sorted so each runs after the stages producing what it reads (ties: by name)."""
    return [s for wave in dependency_levels(stages) for s in wave]


def dependency_levels(stages: list[Stage]) -> list[list[Stage]]:
    producer = producers(stages)
    names = [s.name for s in stages]
    after = {s.name: depends_on(s, producer, names) for s in stages}
    by_name = {s.name: s for s in stages}
    levels: list[list[Stage]] = []
    while after:
        ready = sorted(n for n, deps in after.items() if not deps)
        if not ready:
            raise ConfigError(f"stages depend on each other in a cycle: {sorted(after)}")
        levels.append([by_name[n] for n in ready])
        for n in ready:
            del after[n]
        for deps in after.values():
            deps.difference_update(ready)
    return levels


def plan_waves(stages: list[Stage], capacity: dict[str, float],
               task_cpus: float = 1.0, nodes: list[dict] | None = None) -> list[list[Stage]]:
    """Stages -> waves run one after the other. A stage runs in a wave after every stage it
    reads from (its inputs come from their sidecars), and the actor pools of one wave hold
    at most the cluster's resources at their smallest, leaving `task_cpus` for the read and
    CPU tasks; so a cluster with fewer GPUs than all pools together still finishes, wave by
    wave. A stage that cannot fit even alone is an error naming what it lacks, and so is
    one whose single actor no node of `nodes` (each node's total resources) can host: the
    pools start without a blocking wait, so this is what keeps a misfit from hanging."""
    room = dict(capacity)
    room["CPU"] = capacity.get("CPU", 0) - task_cpus
    waves: list[list[Stage]] = []
    for level in dependency_levels(stages):
        current: list[Stage] = []
        used: dict[str, float] = {}
        for s in level:
            need = s.held_resources()
            short = {k: v for k, v in need.items() if v > room.get(k, 0) + 1e-9}
            if short:
                have = {k: room.get(k, 0) for k in short}
                raise ConfigError(
                    f"stage {s.name!r}: its actor pool needs {short} at its smallest, but the "
                    f"cluster has {have} (CPU after {task_cpus:g} kept for tasks): lower its "
                    "concurrency, num_gpus or num_cpus, or add nodes with those resources")
            if current and any(used.get(k, 0) + v > room.get(k, 0) + 1e-9
                               for k, v in need.items()):
                waves.append(current)
                current, used = [], {}
            current.append(s)
            for k, v in need.items():
                used[k] = used.get(k, 0) + v
        if current:
            waves.append(current)
    if nodes is not None:
        check_placeable(stages, nodes)
    return waves


def check_placeable(stages: list[Stage], nodes: list[dict]) -> None:
    for s in stages:
        if not s.uses_actors:
            continue
        need = s.actor_resources()
        if any(all(node.get(k, 0) + 1e-9 >= v for k, v in need.items()) for node in nodes):
            continue
        offered = sorted({k for node in nodes for k in node if not k.startswith("node:")
                          and not k.endswith("memory")})
        raise ConfigError(
            f"stage {s.name!r}: no node of the cluster can host one of its actors, which "
            f"needs {need}; the {len(nodes)} node(s) offer at most "
            f"{ {k: max(node.get(k, 0) for node in nodes) for k in need} } (resources seen: "
            f"{', '.join(offered)}): lower num_gpus/num_cpus, drop or fix accelerator_type/"
            "resources, or add a node that has them")


def select_stages(config: dict, names: list[str] | None) -> list[Stage]:
    blocks = config["stages"]
    names = names or list(blocks)
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; configured: {sorted(blocks)}")
    return dependency_order([build_stage(n, blocks[n]) for n in names])


def parse_shards(spec: str, available: list[int]) -> list[int]:
    """'3', '0-99', '1,4,7-9' or 'all' (every source shard present) -> sorted shard numbers."""
    spec = str(spec).strip()
    if spec == "all":
        return sorted(available)
    shards: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ConfigError(f"bad shard spec {spec!r}: use N, N-M, N,M or all") from None
        if a < 0 or b < a:
            raise ConfigError(f"bad shard range {part!r} in {spec!r}")
        shards.update(range(a, b + 1))
    return sorted(shards)
