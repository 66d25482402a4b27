"""Facts about a transfer, from the alignment on: each pair's facts and verdict, the expectation
they were judged under, what the target's modules and the unused pretrained tensors have to say,
the score entries, and how the report describes the target."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from ckptlint.align.schemes import canonical_name
from ckptlint.align.transfer import TransferAlignment, is_head
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.compare import shrank_cause, sliced_cause
from ckptlint.facts.conversion import CONVERTED, EXPLAINED, explain
from ckptlint.facts.expectation import Expectation, infer_expectation
from ckptlint.facts.lazy import Layered
from ckptlint.facts.pair import PairFacts, TransferPairFacts, stage_of
from ckptlint.facts.score import ScoreEntry
from ckptlint.facts.tensor import TensorFacts
from ckptlint.graph.build import split_key
from ckptlint.io.checkpoint import parse_row_view
from ckptlint.options import TransferOptions
from ckptlint.results import OutsideScope, Score, TargetTransfer
from ckptlint.vocabulary import CARRIED, COUNTER_LEAF, TRANSFER, TRANSFER_CANDIDATES


class Reference(Protocol):
    """What the runner asks of a reference the target is judged against (a pretrained
    checkpoint, or the model the user's code builds)."""

    name: str  # "pretrained" or "model": which rules judge what it pairs

    def tensor_extra(self, key: str) -> dict[str, Any]: ...

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]: ...

    def pairs_of(self, key: str, target: TensorFacts) -> Sequence[PairFacts]: ...

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None: ...

    def unused_facts(self) -> Iterator[TensorFacts]: ...


class TransferAnalysis:
    """Everything the runner needs to judge a target against a pretrained checkpoint.

    Building it compares every pair (each tensor read once, then released): whether the target
    is a copy or fine-tuned, and which tensors were frozen, are decided from all pairs together
    before any rule runs.
    """

    name = "pretrained"

    def __init__(self, target_facts: CheckpointFacts, pretrained_facts: CheckpointFacts,
                 aligned: TransferAlignment, options: TransferOptions, histograms: bool = False) -> None:
        """``pretrained_facts`` is shared by every target checked against the same file, so its
        module graph is built once. ``histograms``: keep value histograms for the HTML report."""
        target, pretrained = target_facts.checkpoint, pretrained_facts.checkpoint
        chosen = aligned.preset
        self.options = options
        self.target, self.pretrained = target, pretrained
        self.alignment = aligned.alignment
        self.pretrained_facts = pretrained_facts
        self.unmatched = set(self.alignment.unmatched_target)
        self._module_map: dict[str, str] = {}  # pretrained module -> target module
        for pair in self.alignment.pairs:
            self._module_map.setdefault(split_key(pair.pretrained)[0], split_key(pair.target)[0])
        # Only pairs inside the scope are judged: a narrower --scope says what should come from
        # the pretrained file, and the expectation is inferred from the same tensors it applies to.
        self.pairs = {pair.target: TransferPairFacts(pair, target_facts.tensor(pair.target),
                                                     pretrained_facts.tensor(pair.pretrained), options.max_drift,
                                                     histograms)
                      for pair in self.alignment.pairs if self._in_scope(pair.target)}
        self._fused: dict[str, list[TransferPairFacts]] = defaultdict(list)  # real key -> its row blocks' pairs
        for key, facts in self.pairs.items():
            view = parse_row_view(key)
            if view is not None and key not in target.tensors:
                self._fused[view[0]].append(facts)
        self._compare_all()
        self._explain_conversions()
        self._consistent_causes()
        judged = [p for p in self.pairs.values() if not is_head(p["canonical"])]
        self.expectation: Expectation = infer_expectation(
            judged, target.training_state, options.expect, tuple(chosen.get("frozen", ())), options.preset)
        for key, facts in self.pairs.items():
            facts.settle(self.expectation.expect, self.expectation.frozen.get(key))

    def _in_scope(self, key: str) -> bool:
        scope = self.alignment.scope
        return not scope or key.startswith(scope + ".")

    def _compare_all(self) -> None:
        """Compare every pair now (values are released as soon as each is judged)."""
        for facts in self.pairs.values():
            facts.judge()
            facts.target_facts.release()

    def _explain_conversions(self) -> None:
        """Say what a conversion did instead where one of its pairs does not hold."""
        by_source = {facts["source"]: facts for facts in self.pairs.values()}
        for facts in self.pairs.values():
            if facts["how"] in CONVERTED and facts["verdict"] in EXPLAINED:
                found = explain(facts, by_source, self.target, self.pretrained)
                if found:
                    facts.misconverted(*found)
                facts.target_facts.release()

    def _consistent_causes(self) -> None:
        """One cause for all resized tensors of a module: channels sliced only when every one
        of them equals the pretrained leading slice and one proves it (constants prove nothing)."""
        by_module: dict[str, list[TransferPairFacts]] = defaultdict(list)
        for facts in self.pairs.values():
            if facts["verdict"] == "resized" and facts["shape_cause_kind"] in ("sliced", "smaller"):
                by_module[split_key(facts["target"])[0]].append(facts)
        for members in by_module.values():
            sliced = (all(m["slice_equal"] for m in members)
                      and any(m["shape_cause_kind"] == "sliced" for m in members))
            for m in members:
                shapes = (tuple(m["target_shape"]), tuple(m["source_shape"]))
                if sliced:
                    m.revise_cause("sliced", sliced_cause(*shapes))
                else:
                    m.revise_cause("smaller", shrank_cause(*shapes))

    def tensor_extra(self, key: str) -> dict[str, Any]:
        paired = key in self.pairs or key in self._fused
        role = "paired" if paired else "unmatched" if key in self.unmatched else "outside-scope"
        return {"paired": role == "paired", "transfer_role": role}

    def pairs_of(self, key: str, target: TensorFacts) -> list[TransferPairFacts]:
        """The target tensor's pairs, judged when the context was built: one, or one per row
        block of a tensor fused from several pretrained ones."""
        pair = self.pairs.get(key)
        return [pair] if pair is not None else self._fused.get(key, [])

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None:
        """``tensor.*`` for a target tensor in the scope with no counterpart, or None."""
        if key not in self.unmatched:
            return None
        return Layered({"transfer_scope": self.alignment.scope,
                         "ambiguous_with": self.alignment.ambiguous.get(key, [])}, tensor)

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]:
        """The pretrained module this target module came from, and whether it has statistics."""
        pretrained_module = next((split_key(self.pairs[k]["source"])[0] for k in tensors.values()
                                  if k in self.pairs), None)
        graph = self.pretrained_facts.graph
        leaves = graph.nodes[pretrained_module]["tensors"] if pretrained_module in graph else {}
        return {"pretrained_module": pretrained_module,
                "pretrained_has_running_stats": {"running_mean", "running_var"} <= set(leaves)}

    def unused_facts(self) -> Iterator[TensorFacts]:
        """Facts of each pretrained tensor nothing took, with the target module that took its
        siblings (so rules can tell "this layer lost its statistics" from "this layer is gone"),
        and the fused tensor it is a block of when a conversion took the other blocks."""
        for key in self.alignment.unused_pretrained:
            module = split_key(key)[0]
            view = parse_row_view(key)
            yield self.pretrained_facts.tensor(key, extra={"counterpart_module": self._module_map.get(module),
                                                            "is_head": is_head(canonical_name(key)),
                                                            "part_of": view[0] if view else None})

    def score_entries(self) -> list[ScoreEntry]:
        """One entry per tensor the target should carry: every pair in the scope, every unused
        pretrained tensor, every in-scope target tensor without a source (heads and step
        counters excepted)."""
        entries = []
        for facts in self.pairs.values():
            if is_head(facts["canonical"]) or facts["is_counter"]:
                continue
            entries.append(ScoreEntry(facts["stage"], split_key(facts["target"])[0], facts["numel"],
                                      facts["verdict"] in CARRIED, facts["verdict"]))
        for key in self.alignment.unused_pretrained:
            canonical = canonical_name(key)
            if not is_head(canonical) and not key.endswith(COUNTER_LEAF):
                entries.append(ScoreEntry(stage_of(canonical), None,
                                          self.pretrained.ref(key).numel, False, "missing"))
        scope = self.alignment.scope
        for key in self.alignment.unmatched_target:
            if not key.endswith(COUNTER_LEAF):
                relative = key[len(scope) + 1:] if scope else key
                entries.append(ScoreEntry(stage_of(canonical_name(relative)), split_key(key)[0],
                                          self.target.ref(key).numel, False, "unmatched"))
        return entries

    def outside_scope(self) -> OutsideScope:
        """The target's top-level modules outside the scope: expected to be new, not judged as
        fresh initialisation (a detector's transformer and heads)."""
        keys = [k for k in self.target.tensors if not self._in_scope(k)]
        return OutsideScope(tuple(sorted({self._outside_root(k) for k in keys})), len(keys),
                            sum(self.target.tensors[k].numel for k in keys))

    def _outside_root(self, key: str) -> str:
        """The first module on the key's path that is not an ancestor of the scope."""
        scope_parts = self.alignment.scope.split(".") if self.alignment.scope else []
        parts = key.split(".")
        depth = 0
        while depth < min(len(scope_parts), len(parts) - 1) and parts[depth] == scope_parts[depth]:
            depth += 1
        return ".".join(parts[:depth + 1]) if depth + 1 < len(parts) else ".".join(parts[:-1]) or key

    def result(self, score: Score | None) -> TargetTransfer:
        """How this target was judged, as the report shows it, with its own ``score``."""
        return TargetTransfer(
            **(score or Score(None, 0, None, 0)).only_score(), pretrained=self.pretrained.path,
            expect=self.expectation.expect, expect_reason=self.expectation.reason,
            frozen=len(self.expectation.frozen), frozen_reason=self.expectation.frozen_reason,
            scope=self.alignment.scope, outside_scope=self.outside_scope(),
            unmatched=tuple(sorted(self.alignment.unmatched_target)))


def transfer_facts(target: TargetTransfer) -> dict[str, Any]:
    """``transfer.*`` in rules: how a target was judged and its score, as plain data."""
    described = {name: getattr(target, name) for name in TRANSFER - TRANSFER_CANDIDATES}
    best, expected = target.best_candidate, target.expected_candidate
    return {**described, "outside_scope": asdict(target.outside_scope),
            "candidates": [{**asdict(c), "how": c.how} for c in target.candidates],
            "best_candidate": best.path if best else None, "best_candidate_share": best.share if best else None,
            "best_candidate_how": best.how if best else None, "expected_share": expected.share if expected else None}
