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
