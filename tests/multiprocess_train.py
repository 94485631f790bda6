"""Several recipe runs in one pair of processes, for tests/test_train_multiprocess.py.

    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 tests/multiprocess_train.py STEPS.json

STEPS.json is a list of steps, run in order by every rank:
  ["fill", arg, ...]       train.fill's command line (`main(argv)`, what `python -m train.fill` runs)
  ["cogvideox", arg, ...]  train.cogvideox's
  ["cut", src, dst, step]  rank 0 copies run folder src to dst as if it had been stopped after
                           `step`: later checkpoints, the LoRA and later validation images removed,
                           the logs kept whole (the resumed run must drop their later rows)

Why one launch for many runs: on 2 shared cores, starting torch, diffusers and the process
group costs more than the tiny runs themselves.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def cut(src: str, dst: str, step: int) -> None:
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    for folder in ("checkpoints", "validation"):
        for p in (dst / folder).glob("step_*"):
            if int(p.name.split("_")[1].split(".")[0]) > step:
                shutil.rmtree(p)
    shutil.rmtree(dst / "lora", ignore_errors=True)


def main(steps_file: str) -> None:
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    from train.realgeneral.recipe import main as cogvideox
    from train.visualcloze.recipe import main as fill

    for step in json.loads(Path(steps_file).read_text()):
        kind, args = step[0], step[1:]
        # A fresh run may use another mixed precision; the process group (PartialState) stays.
        AcceleratorState._reset_state()
        if kind == "fill":
            fill(args)
        elif kind == "cogvideox":
            cogvideox(args)
        elif kind == "cut":
            state = PartialState()
            if state.is_main_process:
                cut(args[0], args[1], int(args[2]))
            state.wait_for_everyone()
        else:
            raise ValueError(f"unknown step {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1])
