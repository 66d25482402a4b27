"""Facts about a transfer: the alignment of a target with its pretrained checkpoint, each pair's
facts, what the target's modules and the unused pretrained tensors have to say, and the score."""

from __future__ import annotations

from collections import ChainMap, defaultdict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterator, Mapping, Protocol

from ckptlint.errors import ConfigError
from ckptlint.facts.checkpoint import CheckpointFacts
from ckptlint.facts.pair import PairFacts, stage_of
from ckptlint.facts.tensor import TensorFacts
from ckptlint.graph.align import align
from ckptlint.graph.build import split_key
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.presets import EXPECTATIONS, preset

# The ImageNet classifier a detector drops (torchvision/timm ``fc``, HF ``classifier``, timm ``head``).
HEAD_PATTERNS = ("fc.*", "classifier.*", "head.*")


@dataclass(frozen=True)
class TransferOptions:
    """How the target should relate to the pretrained checkpoint."""

    expect: str = "copied"
    preset: str | None = None
    scope: str | None = None
    maps: tuple[tuple[str, str], ...] = ()
    max_drift: float = 0.25  # relative L2 change a fine-tuned trainable tensor may show


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


class TransferContext:
    """Everything the runner needs to judge a target against a pretrained checkpoint."""

    def __init__(self, target: Checkpoint, pretrained_facts: CheckpointFacts, options: TransferOptions) -> None:
        """``pretrained_facts`` is shared by every target checked against the same file, so its
        module graph is built once."""
        pretrained = pretrained_facts.checkpoint
        if options.expect not in EXPECTATIONS:
            raise ConfigError(f"--expect must be one of {', '.join(EXPECTATIONS)}")
        chosen = preset(options.preset)
        self.options = options
        self.frozen_patterns = tuple(chosen.get("frozen", ()))
        self.target, self.pretrained = target, pretrained
        self.alignment = align(
            target.tensors, pretrained.tensors, options.maps, options.scope or chosen.get("scope"),
            read_target=lambda key: target.read(key).tobytes(),
            read_pretrained=lambda key: pretrained.read(key).tobytes(),
        )
        self.pretrained_facts = pretrained_facts
        self.by_target = {pair.target: pair for pair in self.alignment.pairs}
        self.unmatched = set(self.alignment.unmatched_target)
        self._module_map: dict[str, str] = {}  # pretrained module -> target module
        for pair in self.alignment.pairs:
            self._module_map.setdefault(split_key(pair.pretrained)[0], split_key(pair.target)[0])
        self.judged: list[PairFacts] = []

    def tensor_extra(self, key: str) -> dict[str, Any]:
        return {"paired": key in self.by_target}

    def pair_facts(self, key: str, target: TensorFacts) -> PairFacts | None:
        """The pair's facts, judged now: the report's pairs and score need every verdict."""
        pair = self.by_target.get(key)
        if pair is None:
            return None
        frozen = any(fnmatchcase(pair.canonical, p) for p in self.frozen_patterns)
        facts = PairFacts(pair, target, self.pretrained_facts.tensor(pair.pretrained), self.options.expect,
                          frozen, self.options.max_drift)
        facts["verdict"]
        self.judged.append(facts)
        return facts

    def unmatched_facts(self, key: str, tensor: TensorFacts) -> Mapping[str, Any] | None:
        """``tensor.*`` for a target tensor in the scope with no counterpart, or None."""
        if key not in self.unmatched:
            return None
        return ChainMap({"reference": "pretrained", "transfer_scope": self.alignment.scope,
                         "ambiguous_with": self.alignment.ambiguous.get(key, [])}, tensor)

    def module_extra(self, path: str, tensors: dict[str, str]) -> dict[str, Any]:
        """The pretrained module this target module came from, and whether it has statistics."""
        pretrained_module = next((split_key(self.by_target[k].pretrained)[0] for k in tensors.values()
                                  if k in self.by_target), None)
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
                                                            "is_head": is_head(self._relative(key))})

    def _relative(self, key: str) -> str:
        """A pretrained key without the wrapper prefix the alignment found (``resnet.``)."""
        prefix = self.alignment.prefix[1]
        return key[len(prefix):] if key.startswith(prefix) else key

    def score_entries(self) -> list[tuple[str, str | None, int, bool, str]]:
        """(stage, target module, parameters, faithfully carried, verdict) per pretrained tensor."""
        entries = []
        finetuned = self.options.expect == "finetuned"
        for facts in self.judged:
            if is_head(facts["canonical"]) or facts["canonical"].endswith("num_batches_tracked"):
                continue
            exact = facts["verdict"] in ("copied", "cast")
            carried = facts["within_drift"] if finetuned and not facts["frozen"] else exact
            entries.append((facts["stage"], split_key(facts["target"])[0], facts["numel"], carried, facts["verdict"]))
        for key in self.alignment.unused_pretrained:
            canonical = self._relative(key)
            if not is_head(canonical) and not key.endswith("num_batches_tracked"):
                entries.append((stage_of(canonical), None, self.pretrained.tensors[key].numel, False, "missing"))
        return entries


def _stage_order(stage: str) -> tuple[int, str]:
    """stem, layer1, layer2, ..., then anything else."""
    if stage == "stem":
        return 0, ""
    if stage.startswith("layer") and stage[5:].isdigit():
        return 1, f"{int(stage[5:]):04d}"
    return 2, stage


def transfer_summary(entries: list[tuple[str, str | None, int, bool, str]]) -> dict[str, Any]:
    """Fractions of pretrained parameters faithfully carried: overall, per stage, per module."""
    def score(carried: int, total: int) -> float:
        return round(carried / total, 6) if total else 1.0

    stages: dict[str, dict[str, Any]] = defaultdict(lambda: {"carried": 0, "parameters": 0, "verdicts": {}})
    modules: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for stage, module, numel, carried, verdict in entries:
        row = stages[stage]
        row["parameters"] += numel
        row["carried"] += numel if carried else 0
        row["verdicts"][verdict] = row["verdicts"].get(verdict, 0) + 1
        if module is not None:
            modules[module][0] += numel if carried else 0
            modules[module][1] += numel
    total = sum(row["parameters"] for row in stages.values())
    carried = sum(row["carried"] for row in stages.values())
    return {
        "score": score(carried, total),
        "parameters": total,
        "by_stage": {name: {"score": score(row["carried"], row["parameters"]), "parameters": row["parameters"],
                            "verdicts": dict(sorted(row["verdicts"].items()))}
                     for name, row in sorted(stages.items(), key=lambda item: _stage_order(item[0]))},
        "by_module": {name: score(c, t) for name, (c, t) in sorted(modules.items())},
    }
