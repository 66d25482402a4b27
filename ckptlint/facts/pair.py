"""Facts about one target/pretrained pair: how it was found and what happened to the values."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ckptlint.align.alignment import Pair
from ckptlint.facts.compare import compare, narrower, shape_cause
from ckptlint.facts.lazy import LazyFacts, provides
from ckptlint.facts.tensor import TensorFacts, resembled_init
from ckptlint.vocabulary import CARRIED, COUNTER_LEAF

COMPARISON = ("bit_equal equal_after_cast cast_through max_abs_error rel_error cosine correlation std_ratio verdict "
              "init "
              "within_drift shape_cause shape_cause_kind slice_equal conversion_error conversion_cause")
HISTOGRAM_VERDICTS = ("reinitialized", "modified", "unrelated")
HISTOGRAM_BINS = 24
# A ResNet stage anywhere in a torchvision-named key (``resnet.conv1.weight`` is the stem too).
STAGE = re.compile(r"(?:^|\.)(?:(conv1|bn1)|(layer\d+))\.")
MODIFIED_MIN_CORRELATION = 0.5
# ... and significantly so: the correlation's t statistic r * sqrt(n - 2) / sqrt(1 - r^2) (p < 0.001
# from about ten values on). Four independent BatchNorm channels correlate by 0.75 by chance; a
# fine-tuned tensor of any size correlates by 0.99 and more.
MODIFIED_MIN_T = 4.0
# When one side is constant there is no correlation; only closeness can say "it moved" (from
# an untrained file's BatchNorm at 1 and 0, say), so it must be close.
CONSTANT_MAX_REL_ERROR = 0.05  # within 5%: independent trained BatchNorm weights sit ~20% from 1


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


def related_values(correlation: float | None, count: int, rel_error: float) -> bool:
    """Whether differing values still derive from the pretrained ones (changed, not replaced)."""
    if correlation is None or count <= 2:  # a constant side, or too few values to correlate
        return rel_error <= CONSTANT_MAX_REL_ERROR
    if correlation >= 1.0:
        return True
    t = correlation * math.sqrt(count - 2) / math.sqrt(1 - correlation * correlation)
    return correlation >= MODIFIED_MIN_CORRELATION and t >= MODIFIED_MIN_T


def stage_of(canonical: str) -> str:
    """ResNet stage of a torchvision-named key: stem, layer1..layer4, or other."""
    match = STAGE.search(canonical)
    if not match:
        return "other"
    return "stem" if match.group(1) else match.group(2)


class PairFacts(LazyFacts):
    """``pair.*`` in rules: a target tensor and the tensor of a reference it meets (``source``),
    for any reference: a pretrained checkpoint or the model the user's code builds. ``target``
    and ``source`` are the two sides' tensor facts."""

    def __init__(self, target_key: str, source_key: str, reference: str, target: TensorFacts,
                 source: TensorFacts, **eager: Any) -> None:
        super().__init__({
            "reference": reference,
            "target": target_key,
            "source": source_key,
            "leaf": target_key.rpartition(".")[2],
            "shape_equal": target["shape"] == source["shape"],
            "target_shape": target["shape"],
            "source_shape": source["shape"],
            "target_dtype": target["dtype"],
            "source_dtype": source["dtype"],
            "module_kind": target["module_kind"],
            **eager,
        })
        self.target_facts, self.source_facts = target, source

    def _shape_cause(self) -> None:
        kind = cause = None
        if not self["shape_equal"]:
            kind, cause, _ = shape_cause(self.target_facts.array(), self.source_facts.array(),
                                         tuple(self["target_shape"]), tuple(self["source_shape"]))
        self._cache.update(shape_cause_kind=kind, shape_cause=cause)

    providers = provides("shape_cause_kind shape_cause", _shape_cause)


class TransferPairFacts(PairFacts):
    """A pair of a transfer: how the alignment found it, the comparison of the values and the
    verdict, and — once ``settle`` has run — the expectation it was judged under."""

    def __init__(self, pair: Pair, target: TensorFacts, source: TensorFacts, max_drift: float,
                 histogram: bool = False) -> None:
        """``histogram``: keep both sides' value histograms of a pair that did not carry the
        values (only the HTML report draws them)."""
        super().__init__(
            pair.target, pair.pretrained, "pretrained", target, source,
            how=pair.how, canonical=pair.canonical, stage=stage_of(pair.canonical),
            is_counter=pair.target.rpartition(".")[2] == COUNTER_LEAF, max_drift=max_drift,
            narrower=narrower(target["dtype"], source["dtype"]), numel=source["numel"])
        self._want_histogram = histogram
        self.histogram: dict[str, list[float]] | None = None

    def judge(self) -> None:
        """Compare the values now (both sides are read once, the source side released) and
        decide the raw verdict, once; ``settle`` may still turn a drift into ``fine-tuned``."""
        if "verdict" not in self._cache:
            self._compare()

    def _compare(self) -> None:
        t_values, p_values = self.target_facts.array(), self.source_facts.array()
        facts: dict[str, Any] = dict.fromkeys(COMPARISON.split())
        if self["shape_equal"]:
            facts.update(compare(t_values, p_values, self["target_dtype"], self["source_dtype"]))
            facts["verdict"], facts["init"] = self._verdict(facts)
        else:
            facts["verdict"] = "resized"
            facts["shape_cause_kind"], facts["shape_cause"], facts["slice_equal"] = shape_cause(
                t_values, p_values, tuple(self["target_shape"]), tuple(self["source_shape"]))
        facts["within_drift"] = self._within_drift(facts["verdict"], facts["rel_error"])
        if self._want_histogram and facts["verdict"] in HISTOGRAM_VERDICTS:
            self.histogram = _histograms(t_values, p_values)
        self.source_facts.release()  # the runner releases the target side with its module
        self._cache.update(facts)

    def _within_drift(self, verdict: str, rel_error: float | None) -> bool:
        return verdict in CARRIED or (verdict == "modified" and rel_error is not None
                                      and rel_error <= self["max_drift"])

    def _verdict(self, facts: dict[str, Any]) -> tuple[str, str | None]:
        if facts["bit_equal"]:
            return "copied", None
        if facts["equal_after_cast"]:
            return "cast", None
        target, source = self.target_facts, self.source_facts
        if target["is_constant"] and not source["is_constant"]:
            return "reinitialized", f"constant {target['min']:g}"  # BatchNorm's 1/0 defaults
        if related_values(facts["correlation"], self["numel"], facts["rel_error"]):
            return "modified", None  # still correlated with the pretrained values: it moved
        init = resembled_init(target)
        return ("reinitialized", init) if init else ("unrelated", None)

    def settle(self, expect: str, frozen_by: str | None) -> None:
        """Fix the expectation the transfer was judged under (decided from all pairs at once),
        whether training left this tensor frozen (and why we think so), and what that makes of a
        drifted tensor: ``fine-tuned`` when training may move it."""
        frozen = frozen_by is not None
        self._cache.update(expect=expect, frozen=frozen, frozen_by=frozen_by)
        if expect == "finetuned" and not frozen and self["verdict"] == "modified" \
                and self["rel_error"] <= self["max_drift"]:
            self._cache["verdict"] = "fine-tuned"  # within_drift was already true for it

    def misconverted(self, error: str, cause: str) -> None:
        """A conversion's pair whose target holds the pretrained values misplaced (what the
        conversion did instead: ``facts/conversion.py``)."""
        self._cache.update(verdict="misconverted", conversion_error=error, conversion_cause=cause,
                           within_drift=False)

    def revise_cause(self, kind: str, explanation: str) -> None:
        """Replace a shape change's cause with the one its whole module supports."""
        self._cache.update(shape_cause_kind=kind, shape_cause=explanation)

    providers = provides(COMPARISON, _compare)

    def summary(self) -> dict[str, Any]:
        """What the JSON report keeps of a pair."""
        keys = ("bit_equal", "equal_after_cast", "max_abs_error", "rel_error", "cosine", "correlation",
                "std_ratio", "init", "shape_cause", "conversion_cause")
        return {k: self[k] for k in keys if self[k] is not None}
