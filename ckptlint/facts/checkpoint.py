"""Facts about one checkpoint as a whole, and the factories for its tensor and module facts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

import networkx as nx

from ckptlint.facts.lazy import LazyFacts, provides
from ckptlint.facts.module import ModuleFacts
from ckptlint.facts.tensor import TensorFacts, resembled_init
from ckptlint.graph.build import ModuleTable, split_key
from ckptlint.io.checkpoint import Checkpoint


class CheckpointFacts:
    """Builds facts on demand: per file at once, per module and tensor as the runner walks."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.modules = ModuleTable(checkpoint.tensors)

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The module graph, made on first use (a check walks ``modules``, the same in plain
        dictionaries)."""
        return self.modules.graph()

    def file_facts(self, role: str) -> FileFacts:
        """``file.*`` for this checkpoint checked as ``role`` (target or pretrained)."""
        return FileFacts(self, role)

    def tensor(self, key: str, extra: dict[str, Any] | None = None) -> TensorFacts:
        """Fresh facts for one tensor; callers keep them as long as they need them."""
        module, _ = split_key(key)
        return TensorFacts(self.checkpoint.ref(key), self.modules.kinds[module],
                           self.checkpoint.read, extra)

    def module_groups(self, tensor_extra: Callable[[str], dict[str, Any]] | None = None,
                      module_extra: Callable[[str, dict[str, str]], dict[str, Any]] | None = None,
                      ) -> Iterator[tuple[ModuleFacts, dict[str, TensorFacts]]]:
        """Each module with facts for its own tensors, in graph order; facts live per module so
        memory stays bounded by the largest module, not the checkpoint."""
        refs, read = self.checkpoint.tensors, self.checkpoint.read
        leaves, kinds = self.modules.leaves, self.modules.kinds
        for path in self.modules.preorder():
            held, kind = leaves[path], kinds[path]
            if tensor_extra is None:
                if len(held) == 1:  # most modules of a million tiny tensors: no comprehension to call
                    (key,) = held.values()
                    tensors = {key: TensorFacts(refs[key], kind, read)}
                else:
                    tensors = {key: TensorFacts(refs[key], kind, read) for key in held.values()}
            else:
                tensors = {key: TensorFacts(refs[key], kind, read, tensor_extra(key)) for key in held.values()}
            extra = module_extra(path, held) if module_extra else None
            yield ModuleFacts(path, kind, held, tensors.__getitem__, extra), tensors


# A sample of the weights is enough to tell a trained file from a freshly initialised one.
UNTRAINED_SAMPLE = 16
UNTRAINED_MIN_ELEMENTS = 4096
UNTRAINED_KINDS = ("conv", "linear", "embedding")


class FileFacts(LazyFacts):
    """``file.*`` in rules: what the file is, and, when a rule asks, whether its weights look
    trained at all (a sample of its large weights fingerprinted, its BatchNorm statistics)."""

    __slots__ = ("_facts",)

    def __init__(self, facts: CheckpointFacts, role: str) -> None:
        checkpoint = facts.checkpoint
        super().__init__({
            "path": checkpoint.path,
            "role": role,
            "format": checkpoint.format,
            "layout": checkpoint.layout,
            "tensor_count": len(checkpoint.tensors),
            "parameter_count": checkpoint.parameter_count,
            "bytes": checkpoint.total_bytes,
            "stripped_prefix": checkpoint.stripped_prefix,
            "pickle_global_count": len(checkpoint.pickle_globals),
            "training_state": list(checkpoint.training_state),
        })
        self._facts = facts

    def _untrained(self) -> None:
        modules, checkpoint = self._facts.modules, self._facts.checkpoint
        weights = [key for key, ref in checkpoint.tensors.items()
                   if ref.dtype.is_float and len(ref.shape) >= 2 and ref.numel >= UNTRAINED_MIN_ELEMENTS
                   and modules.kinds[split_key(key)[0]] in UNTRAINED_KINDS]
        step = max(1, len(weights) // UNTRAINED_SAMPLE)
        sampled = weights[::step][:UNTRAINED_SAMPLE]
        inits = []
        for key in sampled:
            tensor = self._facts.tensor(key)
            inits.append(resembled_init(tensor))
            tensor.release()
        found = [init for init in inits if init]
        bn = [path for path, kind in modules.kinds.items() if kind in ("batchnorm", "frozen_batchnorm")
              and {"running_mean", "running_var"} <= set(modules.leaves[path])]
        at_defaults = [path for path in bn if self._stats_at_defaults(path)]
        self._cache.update({
            "weights_sampled": len(sampled),
            "weights_init_like": len(found),
            "init_like_share": len(found) / len(sampled) if sampled else 0.0,
            "init_names": sorted(set(found)),
            "bn_modules": len(bn),
            "bn_at_defaults": len(at_defaults),
            "bn_default_share": len(at_defaults) / len(bn) if bn else 0.0,
        })

    def _stats_at_defaults(self, path: str) -> bool:
        leaves = self._facts.modules.leaves[path]
        mean, var = (self._facts.checkpoint.read(leaves[leaf]) for leaf in ("running_mean", "running_var"))
        return bool((mean == 0).all() and (var == 1).all())

    providers = provides("weights_sampled weights_init_like init_like_share init_names bn_modules "
                         "bn_at_defaults bn_default_share", _untrained)
