"""Manifest + type graph vs one networkx graph over every sample; task sampling speed.

Builds a synthetic 200,000-sample manifest with realistic availability, then prints
side by side: build time and RSS increase of ours (columnar manifest + 50-node type
graph), tasks/s on one core, and the naive approach (one networkx graph holding every
sample's nodes) measured on a 10,000-sample slice and extrapolated linearly.

    python benchmarks/bench_sampler.py [--samples 200000] [--naive-slice 10000]

Targets (issue 2): <= 3 s and <= 200 MB for 200K; >= 20,000 tasks/s; naive/ours memory >= 40.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

import networkx as nx
import psutil

from graph200k.graph import type_graph
from graph200k.manifest import Manifest
from graph200k.nodes import NODE_NAMES, NODE_TYPES
from graph200k.tasks import TaskConfig, TaskSampler

# Fraction of samples that have each stored node (the annotators' yield, roughly:
# openpose only finds people; grounding fails on some items; styles/edits are filtered).
AVAILABILITY = {"reference": 1.0, "canny": 0.99, "hed": 0.99, "mlsd": 0.97, "depth": 0.99,
                "normal": 0.99, "openpose": 0.35, "uniformer": 0.98, "sam2_mask": 0.95,
                "mask": 0.9, "foreground": 0.95, "background": 0.95, "instantstyle": 0.85,
                "reduxstyle": 0.85, "filledit": 0.75, "depthedit": 0.75}
WORDS = ("red", "wooden", "leather", "ceramic", "vintage", "glass", "small", "modern",
         "chair", "mug", "backpack", "lamp", "sneaker", "bottle", "camera", "vase")


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        nodes = ["target"] + [k for k, p in AVAILABILITY.items() if rng.random() < p]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30)))
        recs.append({"key": f"{i:07d}", "shard": i // 1000, "nodes": nodes,
                     "item": rng.choice(WORDS), "description": f"A photo of a {words}.",
                     "quality": {"compositeStructure": 5, "objectConsistency": rng.randint(3, 5),
                                 "imageQuality": 5}})
    return recs


def rss_mb() -> float:
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def naive_graph(records) -> nx.DiGraph:
    """One graph, every sample's nodes (stored + online degradations) linked to its target."""
    online = [n for n, t in NODE_TYPES.items() if t.kind == "degradation"]
    g = nx.DiGraph()
    for r in records:
        key = r["key"]
        hub = f"{key}/target"
        g.add_node(hub, kind="image", description=r["description"], item=r["item"],
                   shard=r["shard"])
        for n in r["nodes"][1:] + online:
            nid = f"{key}/{n}"
            g.add_node(nid, kind=NODE_TYPES[n].kind)
            g.add_edge(nid, hub)
            g.add_edge(hub, nid)
    return g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--naive-slice", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=100_000)
    args = ap.parse_args(argv)
    records = synthetic_records(args.samples)

    base = rss_mb()
    t0 = time.perf_counter()
    manifest = Manifest.from_records(records)
    tg = type_graph()
    build_s = time.perf_counter() - t0
    ours_mb = rss_mb() - base
    assert tg.number_of_nodes() == len(NODE_NAMES)

    sampler = TaskSampler(manifest, TaskConfig.load(), seed=0)
    sampler.take(1000)  # warm the per-variant eligibility caches
    t0 = time.perf_counter()
    sampler.take(args.tasks)
    tasks_per_s = args.tasks / (time.perf_counter() - t0)

    part = records[: args.naive_slice]
    base = rss_mb()
    t0 = time.perf_counter()
    g = naive_graph(part)
    naive_s = time.perf_counter() - t0
    naive_mb = rss_mb() - base
    scale = args.samples / args.naive_slice
    naive_nodes = g.number_of_nodes()
    del g

    print(f"samples: {args.samples}")
    print(f"ours_build_s: {build_s:.2f}")
    print(f"ours_rss_mb: {ours_mb:.1f}")
    print(f"tasks_per_s: {tasks_per_s:.0f}")
    print(f"naive_slice_samples: {args.naive_slice}")
    print(f"naive_slice_nodes: {naive_nodes}")
    print(f"naive_slice_build_s: {naive_s:.2f}")
    print(f"naive_slice_rss_mb: {naive_mb:.1f}")
    print(f"naive_extrapolated_build_s: {naive_s * scale:.1f}")
    print(f"naive_extrapolated_rss_mb: {naive_mb * scale:.0f}")
    print(f"build_time_ratio_naive_over_ours: {naive_s * scale / build_s:.1f}")
    print(f"memory_ratio_naive_over_ours: {naive_mb * scale / max(ours_mb, 1e-6):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
