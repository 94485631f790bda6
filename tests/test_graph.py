import networkx as nx

from graph200k import graph
from graph200k.nodes import NODE_NAMES


def test_type_graph_is_a_bidirectional_star_around_target():
    g = graph.type_graph()
    assert set(g.nodes) == set(NODE_NAMES)
    assert g.number_of_edges() == 2 * (len(NODE_NAMES) - 1)
    assert nx.is_strongly_connected(g)
    for n in NODE_NAMES:
        if n != "target":
            assert g.has_edge(n, "target") and g.has_edge("target", n)
    assert not g.has_edge("canny", "depth")


def test_sample_graph_holds_only_the_samples_nodes():
    sg = graph.sample_graph("0000042", ["target", "canny", "reference"])
    assert set(sg.nodes) == {"0000042/target", "0000042/canny", "0000042/reference"}
    assert sg.has_edge("0000042/canny", "0000042/target")
    assert sg.number_of_edges() == 4


def test_enumerated_paths_are_simple_paths_with_two_to_four_images():
    paths = graph.enumerate_paths(2, 4)
    g = graph.type_graph()
    assert ("canny", "target") in paths and ("target", "canny") in paths
    assert ("canny", "target", "depth") in paths
    # instantstyle (2 images) -> target -> reduxstyle (2 images) is 5 images: excluded
    assert ("instantstyle", "target", "reduxstyle") not in paths
    assert ("instantstyle", "target") in paths
    for p in paths:
        assert graph.is_path(p, g) and 2 <= graph.path_images(p) <= 4
    assert graph.enumerate_paths(2, 4, end="depth") == [p for p in paths if p[-1] == "depth"]
