"""`make demo`, read with `make -n` (nothing runs): every step once, the steps after the
manifest two at a time, and every path under DEMO."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

STEPS = {  # module -> how many times the demo runs it
    "graph200k.fixtures": 1, "pipelines.ingest": 1, "annotators.tiny_models": 1,
    "pipelines.annotate": 1, "graph200k.manifest": 1, "graph200k.sample_tasks": 1,
    "graph200k.preview": 2, "graph200k.verify": 1, "graph200k.publish": 1,
    "graph200k.load_release": 1, "train.fill": 1, "train.infer_fill": 1, "train.cogvideox": 1,
    "train.infer_cogvideox": 1, "train.evaluate.tiny_models": 1, "train.evaluate": 2,
}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_demo_runs_every_step_once_and_the_later_ones_side_by_side(tmp_path):
    demo = tmp_path / "demo"
    # Under `make test` the parent make's variables would make this one a sub-make that prints
    # "Entering/Leaving directory" lines: run it as a make of its own.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    out = subprocess.run(["make", "-n", "demo", f"DEMO={demo}"], cwd=REPO, capture_output=True,
                         text=True, check=True, env=env).stdout
    runs = re.findall(r"-m ([\w.]+)", out)
    assert {m: runs.count(m) for m in STEPS} == STEPS
    assert "-j2" in out and "demo-steps" in out
    annotate_at = out.index("-m pipelines.annotate ")
    manifest_at = out.index("-m graph200k.manifest ")
    assert annotate_at < manifest_at < out.index("-m train.fill ")  # after the manifest
    steps = [line for line in out.splitlines() if " -m " in line]
    assert not [line for line in steps if "build/demo" in line]  # DEMO reaches every path
    assert str(demo / "eval-models") in out and str(demo / "runs" / "fill-tiny") in out
    assert out.rstrip().splitlines()[-1].startswith("echo \"demo: look at it in a browser")
