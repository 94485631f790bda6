"""Graph200K: the graph-structured multi-task image dataset of VisualCloze, built from Subjects200K."""

__version__ = "0.1.0"
