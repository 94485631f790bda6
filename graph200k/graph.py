"""The Graph200K type graph (50 node types: the paper's 49 and `reference`) and
per-sample graphs built on demand.

Every annotation has a bidirectional edge with `target`, so the graph is strongly
connected and a task is a path: the nodes before the end are conditions, the end node
is the task's target.

One networkx graph over all 200K samples x ~50 nodes costs ~9 GB (measured, see
benchmarks/bench_sampler.py); the sampler only needs the small type graph plus each
sample's availability bitmask (graph200k.manifest). Per-sample graphs are for preview
and debugging.
"""

from __future__ import annotations

import networkx as nx

from graph200k.nodes import NODE_NAMES, NODE_TYPES, node_type

HUB = "target"


def type_graph() -> nx.DiGraph:
    """The type graph: `target` <-> every other node type."""
    g = nx.DiGraph()
    for name, nt in NODE_TYPES.items():
        g.add_node(name, kind=nt.kind, num_images=nt.num_images, online=nt.online)
    for name in NODE_NAMES:
        if name != HUB:
            g.add_edge(name, HUB)
            g.add_edge(HUB, name)
    return g


def sample_graph(key: str, nodes) -> nx.DiGraph:
    """One sample's graph: its available node types, restricted from the type graph.

    Node ids are `"{key}/{node}"` so graphs of several samples can be composed.
    """
    nodes = list(nodes)
    for n in nodes:
        node_type(n)
    sub = type_graph().subgraph(nodes)
    return nx.relabel_nodes(sub, {n: f"{key}/{n}" for n in sub.nodes}, copy=True)


def path_images(path) -> int:
    return sum(NODE_TYPES[n].num_images for n in path)


def is_path(path, graph: nx.DiGraph | None = None) -> bool:
    g = graph if graph is not None else type_graph()
    return len(set(path)) == len(path) and all(g.has_edge(a, b) for a, b in zip(path, path[1:]))


def enumerate_paths(min_images: int = 2, max_images: int = 4, end: str | None = None,
                    graph: nx.DiGraph | None = None) -> list[tuple[str, ...]]:
    """Every simple path of the type graph whose images number in [min_images, max_images].

    `end` restricts to paths ending at that node type. Sorted, so the list is stable.
    """
    g = graph if graph is not None else type_graph()
    ends = [end] if end is not None else list(g.nodes)
    found = set()
    for target in ends:
        for source in g.nodes:
            if source == target:
                continue
            # A path of k images has at most k nodes.
            for p in nx.all_simple_paths(g, source, target, cutoff=max_images - 1):
                if min_images <= path_images(p) <= max_images:
                    found.add(tuple(p))
    return sorted(found)
