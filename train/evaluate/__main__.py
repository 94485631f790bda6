"""`python -m train.evaluate --config configs/eval/<name>.yaml [--reuse] [key=value ...]`

The papers' metric tables for a trained Fill LoRA (per task x in-context rows) or
CogVideoX adapters (per task x FCD mask variant); docs/evaluation.md. Under
`accelerate launch` each process evaluates its share and process 0 writes the merged figures.
"""

from __future__ import annotations

import argparse
import sys

from train.evaluate.config import EvalConfig
from train.evaluate.generate import load_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="evaluation YAML (configs/eval/)")
    p.add_argument("--reuse", action="store_true",
                   help="keep generated images already in <out_dir>/images; recompute the metrics only")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. data.per_task=5 model.loras=[runs/fill/lora]")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(EvalConfig, args.config, args.overrides)
    from train.evaluate.run import evaluate

    evaluate(cfg, reuse=args.reuse)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
