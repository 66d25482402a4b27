"""Facts about a transfer: the alignment of a target with its pretrained checkpoint, each pair's
facts and verdict, the expectation they were judged under, what the target's modules and the
unused pretrained tensors have to say, and the score."""

from __future__ import annotations

import difflib
from collections import ChainMap, defaultdict
from fnmatch import fnmatchcase
from typing import Any, Iterator, Mapping, Protocol, Sequence

from ckptlint.errors import ConfigError
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.compare import shrank_cause, sliced_cause
from ckptlint.facts.expectation import Expectation, infer_expectation
from ckptlint.facts.pair import PairFacts, stage_of
from ckptlint.facts.score import ScoreEntry
from ckptlint.facts.tensor import TensorFacts
from ckptlint.align.alignment import Alignment, align
from ckptlint.graph.build import split_key
from ckptlint.align.schemes import canonical_name
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.options import TransferOptions
from ckptlint.presets import preset, presets

# The ImageNet classifier a detector drops (torchvision/timm ``fc``, HF ``classifier``, timm ``head``).
HEAD_PATTERNS = ("fc.*", "classifier.*", "head.*")


def is_head(canonical: str) -> bool:
    return any(fnmatchcase(canonical, pattern) for pattern in HEAD_PATTERNS)


class Reference(Protocol):
    """What the runner asks of a reference the target is judged against (a pretrained
    checkpoint, or the model the user's code builds)."""

    def tensor_extra(self, key: str) -> dict[str, Any]: ...

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]: ...

    def pair_facts(self, key: str, target: TensorFacts) -> PairFacts | None: ...

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None: ...

    def unused_facts(self) -> Iterator[TensorFacts]: ...


def _module_paths(keys: Sequence[str]) -> set[str]:
    paths = set()
    for key in keys:
        parts = key.split(".")[:-1]
        paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def _did_you_mean(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _has_module(keys: Sequence[str], path: str) -> bool:
    return not path or any(key.startswith(path + ".") for key in keys)


def resolve_scope(target: Checkpoint, options: TransferOptions) -> tuple[str | None, dict[str, Any]]:
    """The scope asked for (``--scope``, else the preset's) and the preset, both checked against
    the file: a scope or preset that matches nothing is a usage error, never a silent no-op."""
    keys = list(target.tensors)
    chosen = preset(options.preset)
    found = None
    if chosen:
        scopes = chosen["scopes"]
        found = next((scope for scope in scopes if _has_module(keys, scope)), None)
        if found is None:
            fitting = sorted(name for name, other in presets().items()
                             if any(_has_module(keys, scope) for scope in other["scopes"]))
            hint = f"; did you mean --preset {' or --preset '.join(fitting)}?" if fitting else ""
            raise ConfigError(f"--preset {options.preset}: {target.path} has none of its backbone modules "
                              f"({', '.join(scopes)}){hint}")
    if options.scope is not None:
        if not _has_module(keys, options.scope):
            raise ConfigError(f"--scope {options.scope}: no module of that name in {target.path}"
                              f"{_did_you_mean(options.scope, _module_paths(keys))}")
        return options.scope, chosen
    return found, chosen


def check_maps(alignment: Alignment, target: Checkpoint, pretrained: Checkpoint,
               maps: Sequence[tuple[str, str]]) -> None:
    """Every ``--map OLD=NEW`` must pair something."""
    for old, new in maps:
        if (old, new) in alignment.maps_used:
            continue
        if not any(key.startswith(old) for key in target.tensors):
            prefixes = {path + "." for path in _module_paths(list(target.tensors))}
            raise ConfigError(f"--map {old}={new}: no key of {target.path} starts with {old!r}"
                              f"{_did_you_mean(old, prefixes)}")
        prefixes = {path + "." for path in _module_paths(list(pretrained.tensors))}
        raise ConfigError(f"--map {old}={new}: no key of {pretrained.path} starts with {new!r} followed by "
                          f"the rest of a mapped key{_did_you_mean(new, prefixes) if new else ''}")


class TransferContext:
    """Everything the runner needs to judge a target against a pretrained checkpoint.

    Building it compares every pair (each tensor read once, then released): whether the target
    is a copy or fine-tuned, and which tensors were frozen, are decided from all pairs together
    before any rule runs.
    """

    def __init__(self, target_facts: CheckpointFacts, pretrained_facts: CheckpointFacts,
                 options: TransferOptions) -> None:
        """``pretrained_facts`` is shared by every target checked against the same file, so its
        module graph is built once."""
        target, pretrained = target_facts.checkpoint, pretrained_facts.checkpoint
        scope, chosen = resolve_scope(target, options)
        self.options = options
        self.target, self.pretrained = target, pretrained
        self.alignment = align(
            target.tensors, pretrained.tensors, options.maps, scope,
            read_target=lambda key: target.read(key).tobytes(),
            read_pretrained=lambda key: pretrained.read(key).tobytes(),
            scope_from=lambda pair: not is_head(pair.canonical),  # a copied head says nothing of a backbone
        )
        check_maps(self.alignment, target, pretrained, options.maps)
        self.pretrained_facts = pretrained_facts
        self.unmatched = set(self.alignment.unmatched_target)
        self._module_map: dict[str, str] = {}  # pretrained module -> target module
        for pair in self.alignment.pairs:
            self._module_map.setdefault(split_key(pair.pretrained)[0], split_key(pair.target)[0])
        # Only pairs inside the scope are judged: a narrower --scope says what should come from
        # the pretrained file, and the expectation is inferred from the same tensors it applies to.
        self.pairs = {pair.target: PairFacts(pair, target_facts.tensor(pair.target),
                                             pretrained_facts.tensor(pair.pretrained), options.expect, False,
                                             options.max_drift)
                      for pair in self.alignment.pairs if self._in_scope(pair.target)}
        self._compare_all()
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
            facts["verdict"]
            facts.target_facts.release()

    def _consistent_causes(self) -> None:
        """One cause for all resized tensors of a module: channels sliced only when every one
        of them equals the pretrained leading slice and one proves it (constants prove nothing)."""
        by_module: dict[str, list[PairFacts]] = defaultdict(list)
        for facts in self.pairs.values():
            if facts["verdict"] == "resized" and facts["shape_cause_kind"] in ("sliced", "smaller"):
                by_module[split_key(facts["target"])[0]].append(facts)
        for members in by_module.values():
            sliced = (all(m["slice_equal"] for m in members)
                      and any(m["shape_cause_kind"] == "sliced" for m in members))
            for m in members:
                shapes = (tuple(m["target_shape"]), tuple(m["pretrained_shape"]))
                if sliced:
                    m.revise_cause("sliced", sliced_cause(*shapes))
                else:
                    m.revise_cause("smaller", shrank_cause(*shapes))

    def tensor_extra(self, key: str) -> dict[str, Any]:
        role = "paired" if key in self.pairs else "unmatched" if key in self.unmatched else "outside-scope"
        return {"paired": key in self.pairs, "transfer_role": role}

    def pair_facts(self, key: str, target: TensorFacts) -> PairFacts | None:
        """The pair's facts, judged when the context was built."""
        return self.pairs.get(key)

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None:
        """``tensor.*`` for a target tensor in the scope with no counterpart, or None."""
        if key not in self.unmatched:
            return None
        return ChainMap({"reference": "pretrained", "transfer_scope": self.alignment.scope,
                         "ambiguous_with": self.alignment.ambiguous.get(key, [])}, tensor)

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]:
        """The pretrained module this target module came from, and whether it has statistics."""
        pretrained_module = next((split_key(self.pairs[k]["pretrained"])[0] for k in tensors.values()
                                  if k in self.pairs), None)
        graph = self.pretrained_facts.graph
        leaves = graph.nodes[pretrained_module]["tensors"] if pretrained_module in graph else {}
        return {"pretrained_module": pretrained_module,
                "pretrained_has_running_stats": {"running_mean", "running_var"} <= set(leaves)}

    def unused_facts(self) -> Iterator[TensorFacts]:
        """Facts of each pretrained tensor nothing took, with the target module that took its
        siblings (so rules can tell "this layer lost its statistics" from "this layer is gone")."""
        for key in self.alignment.unused_pretrained:
            module = split_key(key)[0]
            yield self.pretrained_facts.tensor(key, extra={"counterpart_module": self._module_map.get(module),
                                                            "reference": "pretrained",
                                                            "is_head": is_head(canonical_name(key))})

    def score_entries(self) -> list[ScoreEntry]:
        """One entry per tensor the target should carry: every pair in the scope, every unused
        pretrained tensor, every in-scope target tensor without a source (heads and step
        counters excepted)."""
        entries = []
        for facts in self.pairs.values():
            if is_head(facts["canonical"]) or facts["is_counter"]:
                continue
            entries.append(ScoreEntry(facts["stage"], split_key(facts["target"])[0], facts["numel"],
                                      facts["verdict"] in ("copied", "cast", "fine-tuned"), facts["verdict"]))
        for key in self.alignment.unused_pretrained:
            canonical = canonical_name(key)
            if not is_head(canonical) and not key.endswith("num_batches_tracked"):
                entries.append(ScoreEntry(stage_of(canonical), None,
                                          self.pretrained.tensors[key].numel, False, "missing"))
        scope = self.alignment.scope
        for key in self.alignment.unmatched_target:
            if not key.endswith("num_batches_tracked"):
                relative = key[len(scope) + 1:] if scope else key
                entries.append(ScoreEntry(stage_of(canonical_name(relative)), split_key(key)[0],
                                          self.target.tensors[key].numel, False, "unmatched"))
        return entries

    def outside_scope(self) -> dict[str, Any]:
        """The target's top-level modules outside the scope: expected to be new, not judged as
        fresh initialisation (a detector's transformer and heads)."""
        keys = [k for k in self.target.tensors if not self._in_scope(k)]
        modules = sorted({self._outside_root(k) for k in keys})
        return {"modules": modules, "tensors": len(keys),
                "parameters": sum(self.target.tensors[k].numel for k in keys)}

    def _outside_root(self, key: str) -> str:
        """The first module on the key's path that is not an ancestor of the scope."""
        scope_parts = self.alignment.scope.split(".") if self.alignment.scope else []
        parts = key.split(".")
        depth = 0
        while depth < min(len(scope_parts), len(parts) - 1) and parts[depth] == scope_parts[depth]:
            depth += 1
        return ".".join(parts[:depth + 1]) if depth + 1 < len(parts) else ".".join(parts[:-1]) or key

    def describe(self) -> dict[str, Any]:
        """What the report says about this target's transfer besides the score."""
        return {"pretrained": self.pretrained.path,
                "expect": self.expectation.expect, "expect_reason": self.expectation.reason,
                "frozen": len(self.expectation.frozen), "frozen_reason": self.expectation.frozen_reason,
                "scope": self.alignment.scope, "outside_scope": self.outside_scope()}
