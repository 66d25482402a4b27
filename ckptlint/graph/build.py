"""Build a networkx graph of a checkpoint's modules: one node per module path, tensors attached."""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from ckptlint.gc_pause import paused_gc
from ckptlint.graph.kinds import Shaped, infer_kind

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
        # A module's kind depends on its path only when it has a ``weight``; the others' kinds are
        # found once per set of leaf names (a million ``unitN.scale`` modules are one lookup each).
        by_leaves: dict[tuple[str, ...], str] = {}
        self.kinds: dict[str, str] = {}
        kinds = self.kinds
        for module, held in leaves.items():
            if "weight" in held:
                kinds[module] = infer_kind(module, {leaf: tensors[key] for leaf, key in held.items()})
                continue
            names = tuple(held)
            kind = by_leaves.get(names)
            if kind is None:
                kind = by_leaves[names] = infer_kind(module, {leaf: tensors[key] for leaf, key in held.items()})
            kinds[module] = kind

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
