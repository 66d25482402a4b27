"""The target against the model the user's own code builds: what ``load_state_dict`` would say.

Keys are matched exactly (after the reader removed wrapper prefixes), as ``load_state_dict``
matches them; only names and shapes matter, so no tensor values are compared.
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any, Iterator, Mapping

from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.pair import PairFacts
from ckptlint.facts.tensor import TensorFacts
from ckptlint.graph.align import Pair
from ckptlint.io.checkpoint import Checkpoint


class ModelContext:
    """A Reference (see facts.transfer) built from the model's state dict."""

    def __init__(self, target: Checkpoint, model_facts: CheckpointFacts) -> None:
        self.target, self.model = target, model_facts.checkpoint
        self.model_facts = model_facts  # shared by every target checked against the same model
        self.unexpected = set(target.tensors) - set(self.model.tensors)

    def tensor_extra(self, key: str) -> dict[str, Any]:
        return {}

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]:
        return {}

    def pair_facts(self, key: str, target: TensorFacts) -> PairFacts | None:
        """Only for a shape mismatch: equal shapes load fine, whatever the values."""
        ref = self.model.tensors.get(key)
        if ref is None or tuple(target["shape"]) == ref.shape:
            return None
        return PairFacts(Pair(key, key, "model", key), target, self.model_facts.tensor(key), "copied", False, 0.0,
                         reference="model")

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None:
        if key not in self.unexpected:
            return None
        return ChainMap({"reference": "model", "transfer_scope": "", "ambiguous_with": []}, tensor)

    def unused_facts(self) -> Iterator[TensorFacts]:
        for key in self.model.tensors:
            if key not in self.target.tensors:
                yield self.model_facts.tensor(key, extra={"reference": "model", "counterpart_module": None,
                                                          "is_head": False})
