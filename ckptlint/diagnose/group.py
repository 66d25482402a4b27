"""A group of findings that may share one cause, and the facts its kind's conditions and
templates see (listed in ``ckptlint/data/diagnoses.toml``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ckptlint.diagnose.cover import cover
from ckptlint.diagnose.index import FileIndex, Subject
from ckptlint.diagnose.prefix import renamed_prefix
from ckptlint.numbers import human_count
from ckptlint.results import Finding, PairRecord

# How an init is said per kind of module: "xavier_uniform convolutions", "BatchNorm at defaults".
KIND_LABELS = {"conv": "convolutions", "linear": "linear layers", "embedding": "embeddings",
               "multihead_attention": "attention layers", "batchnorm": "BatchNorm", "frozen_batchnorm": "BatchNorm",
               "layernorm": "LayerNorm", "groupnorm": "GroupNorm"}
LABEL_ORDER = [*dict.fromkeys(KIND_LABELS.values()), "other tensors"]
NORMS = ("BatchNorm", "LayerNorm", "GroupNorm")
NORM_DEFAULTS = {"constant 0", "constant 1"}  # weight 1, bias 0, mean 0, variance 1
LISTED = 3  # modules named one by one; beyond this they are counted


def many(count: int, noun: str) -> str:
    """``1 tensor``, ``50 tensors``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Member:
    """A finding, what it is about, and the file index that says so."""

    finding: Finding
    subject: Subject
    index: FileIndex


def init_phrases(pairs: Iterable[PairRecord]) -> list[str]:
    """The inits re-initialised tensors resemble, per kind of module, the most common one when
    they differ (small tensors resemble several). A constant in a weight layer is its bias (every
    init zeroes it), so it is named only when nothing else is."""
    inits: dict[str, Counter[str]] = defaultdict(Counter)
    for pair in pairs:
        if pair.verdict == "reinitialized" and pair.evidence.get("init"):
            inits[KIND_LABELS.get(pair.module_kind, "other tensors")][pair.evidence["init"]] += 1
    phrases = []
    for label in sorted(inits, key=LABEL_ORDER.index):
        names = inits[label]
        if label in NORMS and set(names) <= NORM_DEFAULTS:
            phrases.append(f"{label} at defaults")
            continue
        drawn = Counter({n: c for n, c in names.items() if label in NORMS or not n.startswith("constant")}) or names
        top = min(drawn, key=lambda name: (-drawn[name], name))
        said = top if len(drawn) == 1 else f"mostly {top}"
        phrases.append(f"{label} {said}" if label in NORMS else f"{said} {label}")
    return phrases


def _common(modules: Sequence[str]) -> str:
    parts = [m.split(".") for m in modules]
    shared = []
    for column in zip(*parts):  # noqa: B905 - stops at the shortest path by design
        if len(set(column)) != 1:
            break
        shared.append(column[0])
    return ".".join(shared)


def where(modules: Sequence[str]) -> str:
    """``layer4``; ``conv1, layer1.0.conv2``; ``19 modules under backbone.0.body.layer3``;
    ``42 modules in layer2, layer3, layer4``."""
    if len(modules) <= LISTED:
        return ", ".join(modules)
    common = _common(modules)
    if common and common not in modules:
        return f"{len(modules)} modules under {common}"
    tops = sorted({m.split(".")[0] for m in modules})
    return f"{len(modules)} modules in {', '.join(tops)}" if len(tops) <= 4 else f"{len(modules)} modules"


class Group:
    """Findings of one file (or of one pretrained file and its targets) claimed by one kind."""

    def __init__(self, file: str, members: Sequence[Member], home: FileIndex) -> None:
        self.file = file
        self.members = list(members)
        self.home = home  # the index of ``file``

    @cached_property
    def findings(self) -> list[Finding]:
        return [m.finding for m in self.members]

    @cached_property
    def tensors(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for member in self.members:
            sizes.update(member.subject.tensors)
        return dict(sorted(sizes.items()))

    @cached_property
    def paired(self) -> list[PairRecord]:
        return list({p.target: p for m in self.members for p in m.subject.paired}.values())

    @staticmethod
    def _cover(members: Sequence[Member]) -> list[tuple[str, FileIndex]]:
        """The covering modules, each with the index of its file (a group may span files)."""
        by_index: dict[int, list[Member]] = defaultdict(list)
        for member in members:
            if member.subject.node is not None:
                by_index[id(member.index)].append(member)
        covered = []
        for group in by_index.values():
            index = group[0].index
            nodes = [(m.subject.node, m.subject.is_module) for m in group if m.subject.node is not None]
            tensors = [key for m in group for key in m.subject.tensors]
            covered += [(module, index) for module in cover(nodes, tensors, index.tree, index.scope)]
        return covered

    @cached_property
    def covered(self) -> list[tuple[str, FileIndex]]:
        return self._cover(self.members)

    @cached_property
    def modules(self) -> list[str]:
        return [module for module, _ in self.covered]

    def modules_of(self, rule: str) -> list[str]:
        """The modules covering one rule's findings, relative to the scope."""
        members = [m for m in self.members if m.finding.name == rule]
        return [index.short(module) for module, index in self._cover(members)]

    def values(self, name: str, rule: str | None = None) -> list[Any]:
        """One evidence value of every finding (of ``rule``) that has it: ``values('rel_error') | max``."""
        return [f.evidence[name] for f in self.findings
                if name in f.evidence and f.evidence[name] is not None and rule in (None, f.name)]

    def rename(self) -> dict[str, str] | None:
        """A renamed module explaining missing and unexpected keys (checked against model code)."""
        def keys(rule: str) -> list[tuple[str, int]]:
            return [(key, size) for m in self.members if m.finding.name == rule
                    for key, size in m.subject.tensors.items()]

        missing, unexpected = keys("missing-key"), keys("unexpected-key")
        return renamed_prefix(missing, unexpected) if missing and unexpected else None

    def facts(self) -> dict[str, Any]:
        """What the kind's conditions and templates see."""
        home = self.home
        short_modules = [index.short(module) for module, index in self.covered]
        return {
            "findings": self.findings,
            "rules": dict(Counter(f.name for f in self.findings)),
            "file": self.file,
            "pretrained_file": home.transfer.pretrained if home.transfer else self.file,
            "transfer": home.transfer,
            "scope": home.scope_summary,
            "modules": self.modules,
            "short_modules": short_modules,
            "where": where(short_modules),
            "modules_of": self.modules_of,
            "brief": where,
            "tensors": len(self.tensors),
            "parameters": sum(self.tensors.values()),
            "inits": init_phrases(self.paired),
            "prefix": home.prefix,
            "naming": home.naming,
            "rename": self.rename(),
            "values": self.values,
            "short": home.short,
            "human": human_count,
            "many": many,
        }
