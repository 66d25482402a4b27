"""Facts about one checkpoint as a whole, and the factories for its tensor and module facts."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import networkx as nx

from ckptlint.facts.module import ModuleFacts
from ckptlint.facts.tensor import TensorFacts
from ckptlint.graph.build import build_module_graph, split_key
from ckptlint.io.checkpoint import Checkpoint


class CheckpointFacts:
    """Builds facts on demand: per file at once, per module and tensor as the runner walks."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.graph = build_module_graph(checkpoint.tensors)
        self.file: dict[str, Any] = {
            "path": checkpoint.path,
            "format": checkpoint.format,
            "layout": checkpoint.layout,
            "tensor_count": len(checkpoint.tensors),
            "parameter_count": checkpoint.parameter_count,
            "bytes": checkpoint.total_bytes,
            "stripped_prefix": checkpoint.stripped_prefix,
            "pickle_global_count": len(checkpoint.pickle_globals),
        }

    def tensor(self, key: str, extra: dict[str, Any] | None = None) -> TensorFacts:
        """Fresh facts for one tensor; callers keep them as long as they need them."""
        module, _ = split_key(key)
        return TensorFacts(self.checkpoint.tensors[key], self.graph.nodes[module]["kind"],
                           self.checkpoint.read, extra)

    def module_groups(self, tensor_extra: Callable[[str], dict[str, Any]] | None = None,
                      module_extra: Callable[[str, dict[str, str]], dict[str, Any]] | None = None,
                      ) -> Iterator[tuple[ModuleFacts, dict[str, TensorFacts]]]:
        """Each module with facts for its own tensors, in graph order; facts live per module so
        memory stays bounded by the largest module, not the checkpoint."""
        for path in nx.dfs_preorder_nodes(self.graph, ""):
            data = self.graph.nodes[path]
            tensors = {key: self.tensor(key, tensor_extra(key) if tensor_extra else None)
                       for key in data["tensors"].values()}
            extra = module_extra(path, data["tensors"]) if module_extra else {}
            yield ModuleFacts(path, data["kind"], data["tensors"], tensors.__getitem__, extra), tensors

