"""Load a (nested) dataclass from a YAML file plus `key=value` overrides. Model-agnostic.

API
---
``load_config(cls, path=None, overrides=(), data=None) -> cls``
    Build ``cls`` (a dataclass whose fields may themselves be dataclasses, i.e. YAML
    sections) from the YAML at ``path`` (or the dict ``data``), then apply overrides
    such as ``"optim.lr=3e-4"`` or ``"train.max_steps=10"``. Values of overrides are
    parsed as YAML scalars/lists (``true``, ``1e-4``, ``[a, b]``, ``null``).
    A key that is not a field raises :class:`ConfigError` naming the key, the file and
    the known keys — no silent defaults for typos.

``parse_args(cls, argv=None, description="") -> cls``
    The CLI used by every recipe: ``python -m train.X --config file.yaml key=value ...``.

``to_dict(cfg) -> dict``
    Plain nested dict (saved next to checkpoints so a run records what it ran).

``require(ok, key, value, rule)``
    Raises :class:`ConfigError` "``key=value``: rule" when not ``ok``: nonsense sizes
    (``data.micro_batch_size=0``, ``train.max_steps=-1``) stop before any model is loaded.
``check_train(train)`` / ``check_loader(loader, prefix)``
    Those rules for the shared ``train:`` section and the DataLoader fields of ``data:``.
``steps_of_accumulation(global_batch, micro_batch, processes) -> int``

YAML keys are the dataclass field names (nanoGPT/torchtune habit): what you read in the
config is what you grep for in the recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from graph200k.config import ConfigError, build, field_types, unknown_key_message  # noqa: F401


# The model-agnostic part lives in graph200k.config (annotators use it too).
_field_types = field_types
_build = build


def _set_override(data: dict, cls, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key=value (e.g. optim.lr=3e-4)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node, typ = data, cls
    for i, part in enumerate(parts):
        types = _field_types(typ)
        if part not in types:
            where = ".".join(parts[:i]) or "<root>"
            raise ConfigError(unknown_key_message("command line", key, types, where))
        if i == len(parts) - 1:
            node[part] = yaml.safe_load(raw) if raw != "" else ""
        else:
            typ = types[part]
            if not dataclasses.is_dataclass(typ):
                raise ConfigError(f"command line: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]


def load_config(cls, path: str | Path | None = None, overrides: Sequence[str] = (), data: dict | None = None):
    source = str(path) if path is not None else "<dict>"
    if path is not None:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    data = dict(data or {})
    # Validate the file before overrides so an error names the file, not the CLI.
    _build(cls, data, source)
    for ov in overrides:
        _set_override(data, cls, ov)
    return _build(cls, data, f"{source} + overrides")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_args(cls, argv: Sequence[str] | None = None, description: str = ""):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="recipe YAML (keys = dataclass field names)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return load_config(cls, args.config, args.overrides)


@dataclass
class TrainConfig:
    """The `train:` section both recipes share (loop length, batch, precision, checkpoints)."""

    out_dir: str = "runs/train"
    max_steps: int = 20_000
    global_batch_size: int = 64  # = micro_batch_size x processes x accumulation
    seed: int = 0
    mixed_precision: str = "bf16"  # accelerate: "no" | "bf16" | "fp16"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    tensorboard: bool = True
    wandb_project: str | None = None
    # Process-group timeout (s): ranks wait in a collective while rank 0 writes and hashes a
    # checkpoint (FLUX-Fill: ~11 GB of optimizer state + 5.5 GB of LoRA); NCCL's default is 600.
    collective_timeout_s: int = 3600


@dataclass
class LoaderConfig:
    """DataLoader fields both recipes' `data:` sections carry (see train.common.loader)."""

    num_workers: int = 0  # processes composing grids / pairs ahead of the step; 0 = in the training loop
    persistent_workers: bool = True
    pin_memory: bool = True  # page-locked image tensors, copied to the GPU asynchronously (CUDA only)
    prefetch_factor: int = 2  # items each worker keeps ready
    max_skipped_share: float = 0.01  # fail when more of the tasks seen so far could not be built
    manifest_check: str = "error"  # a manifest that no longer matches the shards: error | warn | ignore


def require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_train(t: TrainConfig) -> None:
    require(_is_int(t.max_steps) and t.max_steps >= 1, "train.max_steps", t.max_steps,
            "must be an integer >= 1 (optimizer steps to train; a run with none would save an untrained LoRA)")
    require(_is_int(t.global_batch_size) and t.global_batch_size >= 1, "train.global_batch_size", t.global_batch_size,
            "must be an integer >= 1 (samples per optimizer step, over all processes)")
    require(_is_int(t.checkpoint_every) and t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every,
            "must be an integer >= 0 (0 = only at the end and on SIGTERM)")
    require(_is_int(t.keep_checkpoints) and t.keep_checkpoints >= 0, "train.keep_checkpoints", t.keep_checkpoints,
            "must be an integer >= 0 (0 = keep all)")
    require(t.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", t.mixed_precision,
            "must be one of no, bf16, fp16")
    require(_is_int(t.collective_timeout_s) and t.collective_timeout_s >= 60, "train.collective_timeout_s",
            t.collective_timeout_s, "must be an integer >= 60 (seconds a rank waits in a collective, e.g. "
            "while rank 0 writes a checkpoint)")


def check_loader(d, prefix: str = "data") -> None:
    require(_is_int(d.micro_batch_size) and d.micro_batch_size >= 1, f"{prefix}.micro_batch_size",
            d.micro_batch_size, "must be an integer >= 1 (samples per forward pass on each process)")
    require(_is_int(d.res) and d.res >= 16, f"{prefix}.res", d.res, "must be an integer >= 16 (cell side in pixels)")
    require(_is_int(d.num_workers) and d.num_workers >= 0, f"{prefix}.num_workers", d.num_workers,
            "must be an integer >= 0 (0 = build the data in the training process)")
    require(_is_int(d.prefetch_factor) and d.prefetch_factor >= 1, f"{prefix}.prefetch_factor", d.prefetch_factor,
            "must be an integer >= 1")
    require(isinstance(d.max_skipped_share, (int, float)) and 0 <= d.max_skipped_share <= 1,
            f"{prefix}.max_skipped_share", d.max_skipped_share, "must be a share between 0 and 1 (0.01 = 1 %)")
    require(d.manifest_check in ("error", "warn", "ignore"), f"{prefix}.manifest_check", d.manifest_check,
            "must be error (refuse a stale manifest), warn or ignore")


def check_optim(o, prefix: str = "optim") -> None:
    require(o.lr > 0, f"{prefix}.lr", o.lr, "must be > 0")
    require(o.grad_clip > 0, f"{prefix}.grad_clip", o.grad_clip,
            "must be > 0 (the global gradient norm is clipped to it)")
    require(_is_int(o.warmup_steps) and o.warmup_steps >= 0, f"{prefix}.warmup_steps", o.warmup_steps,
            "must be an integer >= 0")
    require(o.weight_decay >= 0, f"{prefix}.weight_decay", o.weight_decay, "must be >= 0")


def steps_of_accumulation(global_batch: int, micro_batch: int, processes: int) -> int:
    per_step = micro_batch * processes
    require(global_batch % per_step == 0, "train.global_batch_size", global_batch,
            f"must be a multiple of data.micro_batch_size x processes = {micro_batch} x {processes} = {per_step}")
    return global_batch // per_step
