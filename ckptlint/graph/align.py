"""Align a target checkpoint's tensors with a pretrained checkpoint's, recording how each pair
was found. Strategies run in order; each only sees the keys the earlier ones left:

1. user maps (``--map OLD=NEW``: target prefix OLD is pretrained prefix NEW) — always win;
2. exact names;
3. inferred prefixes (``backbone.0.body.`` <-> root, ``module.``, ``resnet.``), chosen by votes;
4. naming-scheme tables (``data/naming_schemes.toml``): both sides rewritten to torchvision
   names, then 2 and 3 again;
5. longest common dotted suffix (detectron2's method); a pretrained key that two target keys
   would claim is reported as ambiguous, never guessed;
6. bit-identical content (a hash per tensor), whatever the names — only between still-unmatched
   tensors of the same shape and dtype, so few tensors are read.

No step compares every key with every other: each is a dictionary lookup per key and dot.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ckptlint.graph.schemes import schemes
from ckptlint.io.checkpoint import TensorRef

MIN_SUFFIX_PARTS = 2  # "weight" alone says nothing; "conv1.weight" starts to
PREFIX_DEPTH = 4  # deepest pretrained-side prefix considered (``model.backbone.body.``)


@dataclass(frozen=True)
class Pair:
    target: str
    pretrained: str
    how: str  # user-map, exact, prefix, scheme:<name>, suffix, content
    canonical: str  # the pretrained key in torchvision names without its wrapper prefix


@dataclass
class Alignment:
    """The pairs, the target scope that should come from the pretrained model, and what is left."""

    pairs: list[Pair]
    scope: str  # target module path ("" = the whole model)
    unmatched_target: list[str]  # inside the scope, no counterpart
    unused_pretrained: list[str]
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # target -> candidates
    prefix: tuple[str, str] = ("", "")  # (target side, pretrained side) when inferred


def _suffixes(key: str) -> list[tuple[str, str]]:
    """(prefix, suffix) at every dot boundary: ``a.b.c`` -> (``a.``, ``b.c``), (``a.b.``, ``c``)."""
    parts = key.split(".")
    return [(".".join(parts[:i]) + ".", ".".join(parts[i:])) for i in range(1, len(parts))]


def _common_prefixes(keys: Sequence[str]) -> list[str]:
    """Prefixes (up to PREFIX_DEPTH parts) that at least half of ``keys`` carry, and ""."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(PREFIX_DEPTH, len(parts) - 1) + 1):
            counts[".".join(parts[:depth]) + "."] += 1
    return [""] + [p for p, n in counts.items() if n * 2 >= len(keys)]


def _infer_prefix(targets: Sequence[str], pretrained: Sequence[str]) -> tuple[str, str]:
    """The (target prefix, pretrained prefix) that explains the most keys (at least two)."""
    votes: Counter[tuple[str, str]] = Counter()
    for p_prefix in _common_prefixes(pretrained):
        stripped = {k[len(p_prefix):] for k in pretrained if k.startswith(p_prefix)}
        for key in targets:
            if key in stripped and p_prefix:
                votes[("", p_prefix)] += 1
            for t_prefix, suffix in _suffixes(key):
                if suffix in stripped:
                    votes[(t_prefix, p_prefix)] += 1
    if not votes:
        return "", ""
    best, count = max(votes.items(), key=lambda item: (item[1], -len(item[0][0]) - len(item[0][1])))
    return best if count >= 2 else ("", "")


class _Matcher:
    """The keys still unmatched on both sides, and the pairs found so far."""

    def __init__(self, target: Sequence[str], pretrained: Sequence[str]) -> None:
        self.left_t = dict.fromkeys(target)
        self.left_p = dict.fromkeys(pretrained)
        self.pairs: list[Pair] = []
        self.prefix = ("", "")

    def take(self, t: str, p: str, how: str, canonical: str) -> None:
        self.pairs.append(Pair(t, p, how, canonical))
        del self.left_t[t]
        del self.left_p[p]

    def by_names(self, view: Callable[[str], str], how: str) -> None:
        """Exact, then prefixed, matches between the keys as ``view`` renames them."""
        view_t = {view(k): k for k in self.left_t}
        view_p = {view(k): k for k in self.left_p}
        for name, t in view_t.items():
            if name in view_p:
                self.take(t, view_p[name], how or "exact", name)
        view_t = {n: k for n, k in view_t.items() if k in self.left_t}
        view_p = {n: k for n, k in view_p.items() if k in self.left_p}
        t_prefix, p_prefix = _infer_prefix(list(view_t), list(view_p))
        if (t_prefix, p_prefix) == ("", ""):
            return
        self.prefix = (t_prefix, p_prefix)
        for name, t in view_t.items():
            if name.startswith(t_prefix):
                relative = name[len(t_prefix):]
                p = view_p.get(p_prefix + relative)
                if p is not None and p in self.left_p:
                    self.take(t, p, how or "prefix", relative)


def _canonical(key: str) -> str:
    for scheme in schemes():
        key = scheme.canonical(key)
    return key


def align(target: Mapping[str, TensorRef], pretrained: Mapping[str, TensorRef],
          user_maps: Sequence[tuple[str, str]] = (), scope: str | None = None,
          read_target: Callable[[str], bytes] | None = None,
          read_pretrained: Callable[[str], bytes] | None = None) -> Alignment:
    """Pair target keys with pretrained keys; see the module docstring for the order."""
    match = _Matcher(list(target), list(pretrained))
    for old, new in user_maps:
        for t in [k for k in match.left_t if k.startswith(old)]:
            p = new + t[len(old):]
            if p in match.left_p:
                match.take(t, p, "user-map", _canonical(t[len(old):]))
    match.by_names(lambda k: k, "")
    for scheme in schemes():
        if any(scheme.canonical(k) != k for k in (*match.left_t, *match.left_p)):
            match.by_names(scheme.canonical, f"scheme:{scheme.name}")
    ambiguous = _match_suffixes(match)
    if read_target and read_pretrained:
        _match_content(match, target, pretrained, read_target, read_pretrained)
    if scope is None:
        scope = _infer_scope([p.target for p in match.pairs])
    in_scope = [k for k in match.left_t if not scope or k.startswith(scope + ".")]
    return Alignment(match.pairs, scope, in_scope, list(match.left_p), ambiguous, match.prefix)


def _match_suffixes(match: _Matcher) -> dict[str, list[str]]:
    by_suffix: dict[str, list[str]] = defaultdict(list)
    for key in match.left_p:
        parts = key.split(".")
        for i in range(len(parts) - MIN_SUFFIX_PARTS + 1):
            by_suffix[".".join(parts[i:])].append(key)
    claims: dict[str, list[str]] = {}
    for key in match.left_t:
        parts = key.split(".")
        for i in range(len(parts) - MIN_SUFFIX_PARTS + 1):
            candidates = by_suffix.get(".".join(parts[i:]))
            if candidates:
                claims[key] = candidates
                break
    claimed_by = Counter(c[0] for c in claims.values() if len(c) == 1)
    ambiguous: dict[str, list[str]] = {}
    for key, candidates in claims.items():
        if len(candidates) == 1 and claimed_by[candidates[0]] == 1:
            match.take(key, candidates[0], "suffix", _canonical(candidates[0]))
        else:
            ambiguous[key] = sorted(candidates)
    return ambiguous


def _match_content(match: _Matcher, target: Mapping[str, TensorRef], pretrained: Mapping[str, TensorRef],
                   read_target: Callable[[str], bytes], read_pretrained: Callable[[str], bytes]) -> None:
    def signature(ref: TensorRef) -> tuple[tuple[int, ...], str]:
        return ref.shape, ref.dtype.name

    wanted = {signature(target[k]) for k in match.left_t}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for key in match.left_p:
        if signature(pretrained[key]) in wanted and pretrained[key].numel:
            by_hash[hashlib.blake2b(read_pretrained(key), digest_size=16).hexdigest()].append(key)
    offered = {signature(pretrained[k]) for keys in by_hash.values() for k in keys}
    for key in list(match.left_t):
        if signature(target[key]) in offered and target[key].numel:
            digest = hashlib.blake2b(read_target(key), digest_size=16).hexdigest()
            candidates = [c for c in by_hash.get(digest, []) if c in match.left_p]
            if len(candidates) == 1:
                match.take(key, candidates[0], "content", _canonical(candidates[0]))


def _infer_scope(paired_targets: list[str]) -> str:
    """The deepest module path under which every paired target key lies."""
    if not paired_targets:
        return ""
    common = paired_targets[0].split(".")[:-1]
    for key in paired_targets[1:]:
        parts = key.split(".")[:-1]
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return ".".join(common)
