"""configs/annotate.yaml -> the stages to run, in dependency order, and the shards to run them on."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from annotators.base import Annotator
from graph200k.config import ConfigError, unknown_key_message

# Keys of a stage block the pipeline reads; the rest is the annotator's own config.
RESOURCE_KEYS = ("class", "num_cpus", "num_gpus", "batch_size", "concurrency", "max_retries")


@dataclass
class Stage:
    name: str
    cls: type[Annotator]
    config: dict
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 32
    concurrency: int | None = None
    max_retries: int = 3
    resources: dict = field(default_factory=dict)

    @property
    def uses_actors(self) -> bool:
        # A model stage loads weights once per actor; a GPU fraction only makes sense there.
        return self.concurrency is not None or self.num_gpus > 0


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"annotate config {path} not found (see configs/annotate.yaml)") from None
    if not isinstance(config.get("stages"), dict) or not config["stages"]:
        raise ConfigError(f"{path}: needs a non-empty `stages:` mapping")
    return config


def import_class(dotted: str, stage: str) -> type[Annotator]:
    module, _, attr = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"stage {stage!r}: cannot import class {dotted!r} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, Annotator)):
        raise ConfigError(f"stage {stage!r}: {dotted} is not an annotators.base.Annotator")
    return cls


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
    cls.parse_options({k: v for k, v in block.items() if k not in RESOURCE_KEYS})
    stage = Stage(
        name=name,
        cls=cls,
        config={k: v for k, v in block.items() if k not in RESOURCE_KEYS},
        num_cpus=float(block.get("num_cpus", 1)),
        num_gpus=float(block.get("num_gpus", 0)),
        batch_size=block.get("batch_size", 32),
        concurrency=block.get("concurrency"),
        max_retries=int(block.get("max_retries", 3)),
    )
    if stage.uses_actors and not block.get("batch_size"):
        raise ConfigError(f"stage {name!r}: an actor stage (concurrency/num_gpus) needs batch_size")
    return stage


def dependency_order(stages: list[Stage]) -> list[Stage]:
    """Stages sorted so each runs after the stages producing what it needs (ties: by name)."""
    producer = {}
    for s in stages:
        for node in s.cls.produces:
            if node in producer:
                raise ConfigError(f"node type {node!r} produced by both {producer[node]!r} and {s.name!r}")
            producer[node] = s.name
    names = {s.name for s in stages}
    after = {s.name: ({producer[n] for n in s.cls.needs if n in producer}
                      | {r for r in s.cls.reads_annotations_of() if r in names}) - {s.name}
             for s in stages}
    by_name = {s.name: s for s in stages}
    order: list[Stage] = []
    while after:
        ready = sorted(n for n, deps in after.items() if not deps)
        if not ready:
            raise ConfigError(f"stages depend on each other in a cycle: {sorted(after)}")
        for n in ready:
            order.append(by_name[n])
            del after[n]
        for deps in after.values():
            deps.difference_update(ready)
    return order


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
