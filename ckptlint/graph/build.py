"""Build a networkx graph of a checkpoint's modules: one node per module path, tensors attached."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from ckptlint.gc_pause import paused_gc
from ckptlint.graph.kinds import Shaped, infer_kind, kind_by_names

ROOT = ""


def split_key(key: str) -> tuple[str, str]:
    """``backbone.0.body.conv1.weight`` -> (``backbone.0.body.conv1``, ``weight``)."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def parent_of(module: str) -> str:
    return module.rpartition(".")[0]


class ModuleTable:
    """The module graph as plain dictionaries: what a check walks. A networkx graph costs about
    a kilobyte and several allocations per module (node, successor, predecessor and edge
    dictionaries); with a million modules that was seconds and most of the memory, so the check
    uses this table and the graph is made from it only when asked (``graph()``)."""

    __slots__ = ("children", "kinds", "leaves")

    def __init__(self, tensors: Mapping[str, Shaped]) -> None:
        # module path -> leaf name -> tensor key, in the order modules are met (the root first,
        # ancestors before descendants); the graph's node order
        self.leaves: dict[str, dict[str, str]] = {ROOT: {}}
        self.children: dict[str, list[str]] = {}  # parent -> children, in the order they were met
        with paused_gc():  # a million modules: each collection would walk them all
            self._add(tensors)

    def _add(self, tensors: Mapping[str, Shaped]) -> None:
        leaves, children = self.leaves, self.children
        for key in tensors:
            module, _, leaf = key.rpartition(".")
            held = leaves.get(module)
            if held is None:
                missing = [module]  # it and its ancestors not met yet, deepest first
                parent = module.rpartition(".")[0]
                while parent not in leaves:
                    missing.append(parent)
                    parent = parent.rpartition(".")[0]
                for child in reversed(missing):  # top-down, as when added one by one from the root
                    leaves[child] = {}
                    parent = child.rpartition(".")[0]
                    siblings = children.get(parent)
                    if siblings is None:
                        children[parent] = [child]
                    else:
                        siblings.append(child)
                held = leaves[module]
            held[leaf] = key
        # Most modules' kinds follow from their leaf names alone: found once per set of names (a
        # million ``unitN.scale`` modules are one lookup each); the others need their tensors.
        by_names: dict[tuple[str, ...], str | None] = {}
        self.kinds: dict[str, str] = {}
        for module, held in leaves.items():
            names = tuple(held)
            if names not in by_names:
                by_names[names] = kind_by_names(names)
            kind = by_names[names]
            self.kinds[module] = kind if kind is not None else \
                infer_kind(module, {leaf: tensors[key] for leaf, key in held.items()})

    def preorder(self) -> list[str]:
        """The modules depth-first from the root, children in the order they were met (what
        ``networkx.dfs_preorder_nodes(graph, "")`` gives)."""
        children, order, stack = self.children, [], [ROOT]
        while stack:
            path = stack.pop()
            order.append(path)
            below = children.get(path)
            if below:
                stack.extend(reversed(below))
        return order

    def graph(self) -> nx.DiGraph:
        """The networkx graph of these modules (see ``build_module_graph``)."""
        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from((module, {"tensors": held, "kind": self.kinds[module]})
                             for module, held in self.leaves.items())
        graph.add_edges_from(((parent, child) for parent in self.leaves for child in self.children.get(parent, ())),
                             relation="contains")
        return graph


def build_module_graph(tensors: Mapping[str, Shaped]) -> nx.DiGraph:
    """One node per module path (the root is ``""``), ``contains`` edges parent -> child.

    Node attributes: ``kind`` (one of vocabulary.MODULE_KINDS) and ``tensors`` (leaf name -> tensor key).
    """
    return ModuleTable(tensors).graph()
