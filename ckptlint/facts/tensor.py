"""Facts about one tensor: eager ones from its header, value ones from a single read."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ckptlint.facts.init_fingerprint import fans, fingerprint
from ckptlint.facts.lazy import LazyFacts, provides
from ckptlint.facts.stats import summarize
from ckptlint.graph.build import split_key
from ckptlint.io.checkpoint import TensorRef

STATS = ("count mean std min max abs_max nan_count posinf_count neginf_count nonfinite_count "
         "zero_fraction is_constant kurtosis")
INIT = "init_fits init_best"
# Value facts by the pass that computes them; one read of the tensor serves every pass wanted.
VALUE_GROUPS = {"stats": STATS.split(), "init": INIT.split()}


class TensorFacts(LazyFacts):
    """``tensor.*`` in rules. Reading values happens once, for every value group wanted."""

    def __init__(self, ref: TensorRef, module_kind: str, read: Callable[[str], np.ndarray],
                 wanted: frozenset[str] | None = None, extra: dict[str, Any] | None = None) -> None:
        module, leaf = split_key(ref.key)
        fan_in, fan_out = fans(ref.shape)
        super().__init__({
            "key": ref.key,
            "module": module,
            "leaf": leaf,
            "module_kind": module_kind,
            "dtype": ref.dtype.name,
            "dtype_kind": ref.dtype.kind,
            "is_float": ref.dtype.is_float,
            "shape": list(ref.shape),
            "ndim": len(ref.shape),
            "numel": ref.numel,
            "nbytes": ref.nbytes,
            "is_parameter": ref.is_parameter,
            "fan_in": fan_in,
            "fan_out": fan_out,
            "paired": False,
            **(extra or {}),
        })
        self._read = read
        self._wanted_groups = {g for g, names in VALUE_GROUPS.items() if wanted is None or wanted & set(names)}

    def _compute_values(self, group: str) -> None:
        self.set_values(self._read(self["key"]), {group})

    def set_values(self, values: np.ndarray, groups: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Compute ``groups`` and every wanted group not yet known from ``values``, which the
        caller read once (a pair comparison hands its arrays over this way)."""
        for group in (self._wanted_groups | set(groups)) - self._known_groups():
            self._cache.update(_GROUP_FUNCTIONS[group](values, self))

    def _known_groups(self) -> set[str]:
        return {group for group, names in VALUE_GROUPS.items() if self.computed(names[0])}

    providers = {
        **provides(STATS, lambda self: self._compute_values("stats")),
        **provides(INIT, lambda self: self._compute_values("init")),
    }


def _init_facts(values: np.ndarray, facts: TensorFacts) -> dict[str, Any]:
    judged = facts["is_float"] and facts["ndim"] >= 2
    fits = fingerprint(values, facts["module_kind"]) if judged else []
    return {"init_fits": fits, "init_best": fits[0] if fits else None}


_GROUP_FUNCTIONS: dict[str, Callable[[np.ndarray, TensorFacts], dict[str, Any]]] = {
    "stats": lambda values, _: summarize(values),
    "init": _init_facts,
}
