"""Several Ray nodes on this machine: the same bytes as one node, and a node lost mid-run
then a rerun gives the same bytes too."""

from __future__ import annotations

import subprocess
import sys

from annotate_helpers import (  # noqa: F401  (ray_local is a fixture)
    TESTS_DIR,
    annotate_args,
    ray_local,
    slow_canny_setup,
)
from pipelines import annotate

SHARDS, SAMPLES = 4, 6


def _cluster(src, out, config, *extra, timeout=240):
    proc = subprocess.run([sys.executable, str(TESTS_DIR / "cluster_run.py"), str(src),
                           str(out), config, *extra], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _sidecars(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.glob("*/*.tar"))}


def test_multi_node_runs_and_a_lost_node_resume_to_the_single_node_bytes(ray_local, tmp_path):
    src, config = slow_canny_setup(tmp_path, SHARDS, SAMPLES)

    one = tmp_path / "one"
    assert annotate.main(annotate_args(src, one, config, "all")) == 0  # this process: one node
    expected = _sidecars(one)
    assert len(expected) == SHARDS

    multi = tmp_path / "multi"
    rc, log = _cluster(src, multi, config)
    assert rc == 0 and "cluster: 3 nodes" in log, log[-3000:]
    assert _sidecars(multi) == expected

    lost = tmp_path / "lost"
    rc, log = _cluster(src, lost, config, "--kill-after", "2.5")
    assert "removed a worker node" in log, log[-3000:]
    rc, log = _cluster(src, lost, config, "--workers", "1")  # rerun: finishes what is missing
    assert rc == 0, log[-3000:]
    assert _sidecars(lost) == expected
    assert not list(lost.glob("_parts/*/*/*.tar"))
