"""The target against the model the user's own code builds: what loading it would say.

Keys are matched exactly (after the reader removed wrapper prefixes), as ``load_state_dict``
matches them; only names and shapes matter, so no tensor values are compared. When the model's
library renames keys as it loads them (transformers' conversion mapping, see
ckptlint.load_mapping), each checkpoint key is first given the name it loads as: findings on the
checkpoint keep its on-disk name, and a shape mismatch names the model tensor it was compared
with. ``mapping`` says what was applied.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.pair import PairFacts
from ckptlint.facts.tensor import TensorFacts
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.load_mapping import AppliedMapping, LoadMapping


class ModelReference:
    """A Reference (see facts.transfer) built from the model's state dict."""

    name = "model"

    def __init__(self, target: Checkpoint, model_facts: CheckpointFacts) -> None:
        self.target, self.model = target, model_facts.checkpoint
        self.model_facts = model_facts  # shared by every target checked against the same model
        load: LoadMapping | None = getattr(self.model, "load_mapping", None)  # set by user_model
        self.mapping: AppliedMapping | None = load.apply(target.tensors, self.model.tensors) if load else None
        mapping = self.mapping or AppliedMapping("", 0)
        converted = mapping.converted
        # checkpoint key -> the model tensor it loads into, for keys the model has a place for
        self.loads_into = {key: mapping.name(key) for key in target.tensors
                           if mapping.name(key) in self.model.tensors and key not in converted
                           and key not in mapping.shadowed}
        self.unexpected = {key for key in target.tensors if mapping.name(key) not in self.model.tensors}
        self.reached = set(self.loads_into.values()) | {name for names in converted.values() for name in names}

    def tensor_extra(self, key: str) -> dict[str, Any]:
        return {}

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]:
        return {}

    def pairs_of(self, key: str, target: TensorFacts) -> list[PairFacts]:
        """Every checkpoint key and the model tensor it loads into: names, shapes and dtypes
        (nothing is read unless a rule asks why a shape changed)."""
        name = self.loads_into.get(key)
        return [] if name is None else [PairFacts(key, name, "model", target, self.model_facts.tensor(name))]

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None:
        if key not in self.unexpected:
            return None
        return tensor

    def unused_facts(self) -> Iterator[TensorFacts]:
        for key in self.model.tensors:
            if key not in self.reached:
                yield self.model_facts.tensor(key)
