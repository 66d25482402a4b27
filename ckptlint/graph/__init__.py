"""Module graphs of checkpoints (and, with a pretrained checkpoint, their alignment)."""

from ckptlint.graph.build import build_module_graph, split_key
from ckptlint.graph.export import FORMATS as GRAPH_FORMATS

__all__ = ["GRAPH_FORMATS", "build_module_graph", "split_key"]
