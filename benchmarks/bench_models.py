"""Model stages, side by side in one run: our batched stage vs the per-image way.

    .venv/bin/python benchmarks/bench_models.py [--images 8] [--stages hed,depth] [--gpu]

Each annotator family contributes a module `benchmarks/models_<family>.py` exposing
`run(args) -> list[tuple[str, float]]`: for each of its stages, at the production input
size with random weights of the real architecture (not the tiny test models), (a) our
stage end to end (decode -> model -> encode) on a batch and (b) the per-image way users
run it today (controlnet_aux's detector, the transformers pipeline), on the same images.
Lines are `name: value`; every `ratio_*` line comes last. CPU by default (float32); with
`--gpu`, half precision at `--batch-size` (16-64) on a CUDA machine.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def families() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(ROOT / "benchmarks")])
                  if m.name.startswith("models_"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8, help="images per stage (CPU default 8)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="our stage's batch (default: --images on CPU, 32 with --gpu)")
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    p.add_argument("--families", default="", help="e.g. models_dense (default: all)")
    p.add_argument("--gpu", action="store_true", help="CUDA, half precision, big batches")
    p.add_argument("--rounds", type=int, default=1, help="best of N timings")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="our dense stages' dtype (default: float16 with --gpu, else float32)")
    args = p.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    if args.batch_size is None:
        args.batch_size = 32 if args.gpu else args.images
    chosen = [f for f in args.families.split(",") if f] or families()
    lines: list[tuple[str, float]] = []
    for name in chosen:
        lines += importlib.import_module(name).run(args)
    ratios = [line for line in lines if line[0].startswith("ratio_")]
    for key, value in [line for line in lines if not line[0].startswith("ratio_")] + ratios:
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
