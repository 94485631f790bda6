"""Run `pipelines.annotate` on a multi-node Ray cluster made on this machine
(`ray.cluster_utils.Cluster`: a head and worker nodes, each its own raylet), optionally
removing one worker node while the run is going. Used by tests/test_annotate_cluster.py in
a subprocess: a test process already holds its own local Ray.

    python tests/cluster_run.py SRC OUT CONFIG [--workers 2] [--kill-after 2.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("config")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-after", type=float, default=None)
    args = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    path = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "env_vars": {"PYTHONPATH": path}})
    nodes = [cluster.add_node(num_cpus=1, env_vars={"PYTHONPATH": path})
             for _ in range(args.workers)]
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    cluster.wait_for_nodes()
    print(f"cluster: {len(ray.nodes())} nodes", flush=True)
    from pipelines import annotate

    if args.kill_after is not None:
        def kill():
            time.sleep(args.kill_after)
            cluster.remove_node(nodes[-1])
            print("cluster: removed a worker node", flush=True)

        threading.Thread(target=kill, daemon=True).start()
    try:
        rc = annotate.main(["--shards", "all", "--config", args.config, "--src", args.src,
                            "--out", args.out])
    except Exception as e:  # a run that died with its node: the test reruns it
        print(f"cluster: run failed: {type(e).__name__}: {e}", flush=True)
        rc = 1
    print(f"cluster: rc {rc}", flush=True)
    ray.shutdown()
    cluster.shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
