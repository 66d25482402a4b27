"""Facts about one module: what tensors it holds and, lazily, the state of its statistics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckptlint.facts.lazy import LazyFacts, provides
from ckptlint.facts.tensor import TensorFacts


class ModuleFacts(LazyFacts):
    """``module.*`` in rules. Value facts come from the tensors' own (shared, cached) facts."""

    __slots__ = ("_tensor_facts", "_tensors")

    def __init__(self, path: str, kind: str, tensors: dict[str, str],
                 tensor_facts: Callable[[str], TensorFacts], extra: dict[str, Any] | None = None) -> None:
        weight = tensors.get("weight")
        channels = None
        if weight:
            shape = tensor_facts(weight)["shape"]
            channels = shape[0] if shape else None
        self._cache = {
            "path": path,
            "kind": kind,
            "leaves": sorted(tensors),
            "has_weight": weight is not None,
            "has_bias": "bias" in tensors,
            "has_running_mean": "running_mean" in tensors,
            "has_running_var": "running_var" in tensors,
            "has_running_stats": "running_mean" in tensors and "running_var" in tensors,
            "has_num_batches_tracked": "num_batches_tracked" in tensors,
            "channels": channels,
            "pretrained_module": None,
            "pretrained_has_running_stats": False,
        }
        if extra:
            self._cache.update(extra)
        self._tensors = tensors
        self._tensor_facts = tensor_facts

    def _stats_state(self) -> None:
        mean_key, var_key = self._tensors.get("running_mean"), self._tensors.get("running_var")
        at_defaults = None
        if mean_key and var_key:
            mean, var = self._tensor_facts(mean_key), self._tensor_facts(var_key)
            at_defaults = (mean["min"] == 0 == mean["max"]) and (var["min"] == 1 == var["max"])
        self._cache["stats_at_defaults"] = at_defaults

    providers = provides("stats_at_defaults", _stats_state)
