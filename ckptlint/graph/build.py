"""Build a networkx graph of a checkpoint's modules: one node per module path, tensors attached."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from ckptlint.graph.kinds import Shaped, infer_kind

ROOT = ""


def split_key(key: str) -> tuple[str, str]:
    """``backbone.0.body.conv1.weight`` -> (``backbone.0.body.conv1``, ``weight``)."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def parent_of(module: str) -> str:
    return module.rpartition(".")[0]


def build_module_graph(tensors: Mapping[str, Shaped]) -> nx.DiGraph:
    """One node per module path (the root is ``""``), ``contains`` edges parent -> child.

    Node attributes: ``kind`` (one of vocabulary.MODULE_KINDS) and ``tensors`` (leaf name -> tensor key).
    """
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_node(ROOT, tensors={})
    for key in tensors:
        module, leaf = split_key(key)
        _add_module(graph, module)
        graph.nodes[module]["tensors"][leaf] = key
    for module, data in graph.nodes(data=True):
        data["kind"] = infer_kind(module, {leaf: tensors[key] for leaf, key in data["tensors"].items()})
    return graph


def _add_module(graph: nx.DiGraph, module: str) -> None:
    if module in graph:
        return
    parent = parent_of(module)
    _add_module(graph, parent)
    graph.add_node(module, tensors={})
    graph.add_edge(parent, module, relation="contains")
