"""Tiny random-initialised models of every annotator architecture, in production layout.

    python -m annotators.tiny_models --out build/tiny-models [--only hed,depth] [--seed 0]

Each builder writes `{out}/{name}/` exactly as the real weights are laid out (a
`from_pretrained` folder, or the checkpoint file names the real repo uses), so that the
stages load them through the very loaders that load real weights; `configs/annotate-tiny.yaml`
points every stage there. Random weights give nonsense pixels: tests assert shapes,
dtypes, ranges and determinism, not content. Builders live in the modules of this package
(one per annotator family) and register themselves with `@tiny_model("name")`; a
builder gets `torch.manual_seed(seed)` first, so the same seed writes the same weights, and
a folder already built with that seed is kept.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path
from typing import Callable

COMPLETE = ".tiny-complete"  # written last: a folder holding it was built whole
BUILDERS: dict[str, Callable[[Path, int], Path]] = {}


def tiny_model(name: str):
    """Register `fn(folder, seed) -> folder` as the builder of the tiny `name` model."""

    def register(fn):
        if name in BUILDERS:
            raise ValueError(f"two tiny-model builders named {name!r}")
        BUILDERS[name] = fn
        return fn

    return register


def discover() -> dict[str, Callable[[Path, int], Path]]:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):  # __main__ is the CLI, not a builder module
            importlib.import_module(f"{__name__}.{info.name}")
    return BUILDERS


def build(out, only=None, seed: int = 0, log=print) -> dict[str, Path]:
    builders = discover()
    names = list(only) if only else sorted(builders)
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise SystemExit(f"error: no tiny model named {unknown}; known: {sorted(builders)}")
    out = Path(out)
    done = {}
    for name in names:
        folder, start = out / name, time.perf_counter()
        marker = folder / COMPLETE
        if marker.exists() and marker.read_text().strip() == str(seed):
            done[name] = folder  # built before with this seed: the same weights
            continue
        import torch

        torch.manual_seed(seed)
        done[name] = builders[name](folder, seed)
        marker.write_text(f"{seed}\n")
        log(f"tiny_models: {name} -> {done[name]} ({time.perf_counter() - start:.1f} s)")
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m annotators.tiny_models",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default="build/tiny-models")
    p.add_argument("--only", default="", help="comma-separated builder names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    build(args.out, only, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
