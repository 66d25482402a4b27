"""What a finding is about, looked up in its file's pairs: the tensors (with their sizes), the
verdicts of their pairs, and the module tree they are covered in."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ckptlint.diagnose.cover import KeyTree, parent
from ckptlint.diagnose.prefix import missed_prefix
from ckptlint.results import Finding, PairRecord, TargetTransfer
from ckptlint.vocabulary import CARRIED, COUNTER_LEAF

# Module-scope rules judge BatchNorm statistics: their findings are about these tensors.
MODULE_TENSORS = ("running_mean", "running_var")


@dataclass(frozen=True)
class Subject:
    """One finding's part in a diagnosis."""

    node: str | None  # the key or module it is about, placed in the module tree; None for a whole file
    is_module: bool
    tensors: dict[str, int]  # tensor key -> number of values
    paired: tuple[PairRecord, ...]  # the pairs of those tensors
    verdict: str | None  # its pair's verdict; for a module the one its pairs share
    module_verdicts: tuple[str, ...]  # distinct verdicts of the pairs in its module

    @property
    def leaf(self) -> str:
        return (self.node or "").rpartition(".")[2]


def _numel(evidence: dict[str, Any]) -> int:
    """A tensor's size from the evidence rules record for unpaired keys."""
    if isinstance(evidence.get("numel"), int):
        return evidence["numel"]
    for name in ("shape", "source_shape"):  # the reference's size, as a pair counts it
        if isinstance(evidence.get(name), list):
            return math.prod(evidence[name])
    return 0


class FileIndex:
    """One checked file: its pairs by key and by module, its transfer block, and the key tree
    (both sides' paired keys) that covers are computed in."""

    def __init__(self, file: str, pairs: Sequence[PairRecord], transfer: TargetTransfer | None,
                 stripped_prefix: str) -> None:
        self.file = file
        self.transfer = transfer
        self.scope = transfer.scope if transfer else None
        self.pretrained_stripped = stripped_prefix  # what the reader removed from the pretrained file's keys
        self.pairs = {p.target: p for p in pairs}
        self.by_module: dict[str, list[PairRecord]] = defaultdict(list)  # step counters say nothing of a module
        for pair in pairs:
            if not pair.target.endswith(COUNTER_LEAF):
                self.by_module[parent(pair.target)].append(pair)
        self.tree = KeyTree([*self.pairs, *(p.pretrained for p in pairs)])

    def in_scope(self, key: str) -> bool:
        return self.scope is not None and (not self.scope or key == self.scope or key.startswith(self.scope + "."))

    def short(self, key: str) -> str:
        """A key relative to the transfer scope (``layer4`` for ``backbone.0.body.layer4``)."""
        return key[len(self.scope) + 1:] if self.scope and key.startswith(self.scope + ".") else key

    @cached_property
    def scoped_pairs(self) -> list[PairRecord]:
        """The pairs that say whether the transfer happened: in the scope, no step counters."""
        return [p for p in self.pairs.values() if self.in_scope(p.target) and not p.target.endswith(COUNTER_LEAF)]

    @cached_property
    def scope_summary(self) -> dict[str, Any] | None:
        if self.transfer is None:
            return None
        verdicts = Counter(p.verdict for p in self.scoped_pairs)
        return {"module": self.scope, "pairs": len(self.scoped_pairs),
                "carried": sum(verdicts[v] for v in CARRIED), "verdicts": dict(sorted(verdicts.items()))}

    @cached_property
    def prefix(self) -> dict[str, str] | None:
        return missed_prefix(self.scoped_pairs, self.pretrained_stripped) if self.transfer else None

    @cached_property
    def naming(self) -> str | None:
        """How most pairs were matched (exact, prefix, scheme:hf-resnet, ...)."""
        hows = Counter(p.how for p in self.scoped_pairs)
        return hows.most_common(1)[0][0] if hows else None

    def subject(self, finding: Finding, rule: dict[str, Any]) -> Subject:
        """What ``finding`` (of ``rule``, as the report describes it) is about."""
        key = finding.key
        if not key or rule["subject"] in ("file", "pickle-global", "transfer"):
            return Subject(None, False, {}, (), None, ())
        if rule["subject"] == "module":
            pairs = tuple(self.by_module.get(key, ()))
            verdicts = tuple(sorted({p.verdict for p in pairs}))
            tensors = {f"{key}.{leaf}": self._size(f"{key}.{leaf}", finding.evidence.get("channels"))
                       for leaf in MODULE_TENSORS}
            return Subject(key, True, tensors, tuple(p for p in pairs if p.target in tensors),
                           verdicts[0] if len(verdicts) == 1 else None, verdicts)
        # a key only the reference has names the reference's tensor, not the target's
        pair = None if rule["only_in"] == "reference" else self.pairs.get(key)
        size = pair.numel if pair else _numel(finding.evidence)
        siblings = tuple(sorted({p.verdict for p in self.by_module.get(parent(key), ())})) if pair else ()
        return Subject(key, False, {key: size}, (pair,) if pair else (), pair.verdict if pair else None, siblings)

    def _size(self, key: str, fallback: Any) -> int:
        pair = self.pairs.get(key)
        return pair.numel if pair else fallback if isinstance(fallback, int) else 0
