"""Facts about one target/pretrained pair: how it was found and what happened to the values."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ckptlint.facts.compare import compare, narrower, shape_cause
from ckptlint.facts.lazy import LazyFacts, provides
from ckptlint.facts.tensor import TensorFacts
from ckptlint.graph.align import Pair

VERDICTS = ("copied", "cast", "modified", "resized", "reinitialized", "unrelated", "missing")
COMPARISON = ("bit_equal equal_after_cast max_abs_error rel_error cosine std_ratio verdict init "
              "within_drift shape_cause shape_cause_kind histogram")
HISTOGRAM_VERDICTS = ("reinitialized", "modified", "unrelated")
HISTOGRAM_BINS = 24
STAGE = re.compile(r"^(?:(conv1|bn1)\.|(layer\d+)\.)")
# What an init must look like for a differing tensor to count as re-initialised.
INIT_STD_TOLERANCE = 0.1
MODIFIED_MIN_COSINE = 0.5


def _histograms(target: np.ndarray, pretrained: np.ndarray) -> dict[str, list[float]] | None:
    """Both sides' value histograms over one shared range, for the HTML report."""
    t = target.astype(np.float64).reshape(-1)
    p = pretrained.astype(np.float64).reshape(-1)
    t, p = t[np.isfinite(t)], p[np.isfinite(p)]
    if not t.size or not p.size:
        return None
    low, high = min(t.min(), p.min()), max(t.max(), p.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    return {"edges": [float(e) for e in edges],
            "target": [int(c) for c in np.histogram(t, edges)[0]],
            "pretrained": [int(c) for c in np.histogram(p, edges)[0]]}


def stage_of(canonical: str) -> str:
    """ResNet stage of a torchvision-named key: stem, layer1..layer4, or other."""
    match = STAGE.match(canonical)
    if not match:
        return "other"
    return "stem" if match.group(1) else match.group(2)


class PairFacts(LazyFacts):
    """``pair.*`` in rules; ``target`` and ``pretrained`` are the two sides' tensor facts."""

    def __init__(self, pair: Pair, target: TensorFacts, pretrained: TensorFacts, expect: str, frozen: bool,
                 max_drift: float, reference: str = "pretrained") -> None:
        super().__init__({
            "reference": reference,  # "pretrained" (a transfer) or "model" (the model's own code)
            "target": pair.target,
            "pretrained": pair.pretrained,
            "how": pair.how,
            "canonical": pair.canonical,
            "stage": stage_of(pair.canonical),
            "expect": expect,
            "frozen": frozen,
            "max_drift": max_drift,
            "shape_equal": target["shape"] == pretrained["shape"],
            "target_shape": target["shape"],
            "pretrained_shape": pretrained["shape"],
            "target_dtype": target["dtype"],
            "pretrained_dtype": pretrained["dtype"],
            "narrower": narrower(target["dtype"], pretrained["dtype"]),
            "module_kind": target["module_kind"],
            "numel": pretrained["numel"],
        })
        self.target_facts, self.pretrained_facts = target, pretrained

    def _compare(self) -> None:
        t_values, p_values = self.target_facts.values(), self.pretrained_facts.values()
        facts: dict[str, Any] = dict.fromkeys(COMPARISON.split())
        if self["shape_equal"]:
            facts.update(compare(t_values, p_values, self["target_dtype"], self["pretrained_dtype"]))
            facts["verdict"], facts["init"] = self._verdict(facts)
        else:
            facts["verdict"] = "resized"
            facts["shape_cause_kind"], facts["shape_cause"] = shape_cause(
                t_values, p_values, tuple(self["target_shape"]), tuple(self["pretrained_shape"]))
        facts["within_drift"] = facts["verdict"] in ("copied", "cast") or (
            facts["verdict"] == "modified" and facts["rel_error"] <= self["max_drift"])
        if facts["verdict"] in HISTOGRAM_VERDICTS:
            facts["histogram"] = _histograms(t_values, p_values)
        self.pretrained_facts.release()  # the runner releases the target side with its module
        self._cache.update(facts)

    def _verdict(self, facts: dict[str, Any]) -> tuple[str, str | None]:
        if facts["bit_equal"]:
            return "copied", None
        if facts["equal_after_cast"]:
            return "cast", None
        target, pretrained = self.target_facts, self.pretrained_facts
        if target["is_constant"] and not pretrained["is_constant"]:
            return "reinitialized", f"constant {target['min']:g}"  # BatchNorm's 1/0 defaults
        if facts["cosine"] >= MODIFIED_MIN_COSINE:
            return "modified", None  # still correlated with the pretrained values: it moved
        init = self._init_resembled()
        return ("reinitialized", init) if init else ("unrelated", None)

    def _init_resembled(self) -> str | None:
        target = self.target_facts
        if not target["is_float"] or target["ndim"] < 2:
            return None
        best = target["init_best"]
        if best and best["ks"] <= best["ks_critical"] and abs(best["std_ratio"] - 1) <= INIT_STD_TOLERANCE:
            return str(best["name"])
        return None

    providers = provides(COMPARISON, _compare)

    def summary(self) -> dict[str, Any]:
        """What the JSON report keeps of a pair."""
        keys = ("bit_equal", "equal_after_cast", "max_abs_error", "rel_error", "cosine", "std_ratio",
                "init", "shape_cause")
        return {k: self[k] for k in keys if self[k] is not None}
