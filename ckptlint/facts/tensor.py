"""Facts about one tensor: eager ones from its header, value ones from a single read."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ckptlint.facts.init_fingerprint import fans, matching_inits
from ckptlint.facts.lazy import LazyFacts, provides
from ckptlint.facts.stats import constancy, extremes, finiteness, moments
from ckptlint.io.checkpoint import TensorRef

# Value facts by group; a group is computed when a rule first reads one of its facts.
FINITENESS = "nan_count posinf_count neginf_count nonfinite_count"
CONSTANCY = "is_constant"
EXTREMES = "count min max abs_max"
MOMENTS = "mean std kurtosis zero_fraction"
INIT = "init_fits init_best"
# What an init must look like, besides passing the fingerprint, for a weight to be called fresh.
INIT_STD_TOLERANCE = 0.1


@functools.lru_cache(maxsize=4096)
def _shape_facts(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(numel, fan_in, fan_out): checkpoints repeat a few shapes over many tensors."""
    return (math.prod(shape), *fans(shape))


class TensorFacts(LazyFacts):
    """``tensor.*`` in rules. Values are read at most once and kept until ``release`` (the runner
    releases a module's tensors when it is done with the module), so every value group a rule
    asks for comes from one read, and groups no rule asks for are never computed."""

    __slots__ = ("_read", "_values")

    def __init__(self, ref: TensorRef, module_kind: str, read: Callable[[str], np.ndarray],
                 extra: dict[str, Any] | None = None) -> None:
        # Built in one dictionary display, without calls that are not needed: with a million
        # tiny tensors this runs a million times.
        key, shape, dtype = ref.key, ref.shape, ref.dtype
        module, _, leaf = key.rpartition(".")  # split_key, inlined
        numel, fan_in, fan_out = _shape_facts(shape)
        self._cache = {
            "key": key,
            "module": module,
            "leaf": leaf,
            "module_kind": module_kind,
            "dtype": dtype.name,
            "dtype_kind": dtype.kind,
            "is_float": dtype.is_float,
            "shape": list(shape),
            "ndim": len(shape),
            "numel": numel,
            "nbytes": numel * dtype.itemsize,
            "is_parameter": ref.is_parameter,
            "fan_in": fan_in,
            "fan_out": fan_out,
            "paired": False,
            "transfer_role": None,  # with --pretrained: paired, unmatched (in scope) or outside-scope
        }
        if extra:
            self._cache.update(extra)
        self._read = read
        self._values: np.ndarray | None = None

    def array(self) -> np.ndarray:
        """The tensor's values, read on first use."""
        if self._values is None:
            self._values = self._read(self._cache["key"])
        return self._values

    def release(self) -> None:
        """Drop the values (memory); a later request reads them again."""
        self._values = None

    def _compute(self, group: str) -> None:
        self._cache.update(_GROUP_FUNCTIONS[group](self.array(), self))

    providers: ClassVar[dict[str, Callable[[Any], None]]] = {
        **provides(FINITENESS, lambda self: self._compute("finiteness")),
        **provides(CONSTANCY, lambda self: self._compute("constancy")),
        **provides(EXTREMES, lambda self: self._compute("extremes")),
        **provides(MOMENTS, lambda self: self._compute("moments")),
        **provides(INIT, lambda self: self._compute("init")),
    }


def _init_facts(values: np.ndarray, facts: TensorFacts) -> dict[str, Any]:
    judged = facts["is_float"] and facts["ndim"] >= 2
    fits = matching_inits(values, facts["module_kind"]) if judged else []
    return {"init_fits": fits, "init_best": fits[0] if fits else None}


_GROUP_FUNCTIONS: dict[str, Callable[[np.ndarray, TensorFacts], dict[str, Any]]] = {
    "finiteness": lambda values, _: finiteness(values),
    "constancy": lambda values, _: constancy(values),
    "extremes": lambda values, _: extremes(values),
    "moments": lambda values, _: moments(values),
    "init": _init_facts,
}


def resembled_init(facts: TensorFacts) -> str | None:
    """The default initialisation a float weight's values are drawn from, if any (None for
    vectors: too few values to tell)."""
    if not facts["is_float"] or facts["ndim"] < 2:
        return None
    best = facts["init_best"]
    if best and best["ks"] <= best["ks_critical"] and abs(best["std_ratio"] - 1) <= INIT_STD_TOLERANCE:
        return str(best["name"])
    return None
