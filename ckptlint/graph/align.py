"""Align a target checkpoint's tensors with a pretrained checkpoint's, recording how each pair
was found. Strategies run in order; each only sees the keys the earlier ones left:

1. user maps (``--map OLD=NEW``: target prefix OLD is pretrained prefix NEW) — always win;
2. exact names;
3. one inferred prefix on either side (``backbone.0.body.`` <-> root), chosen by votes;
4. longest common dotted suffix (detectron2's method); a pretrained key that two target keys
   would claim is reported as ambiguous, never guessed;
5. bit-identical content (a hash per tensor), whatever the names — only between tensors of the
   same shape and dtype that are still unmatched, so few tensors are read.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from ckptlint.io.checkpoint import TensorRef

MIN_SUFFIX_PARTS = 2  # "weight" alone says nothing; "conv1.weight" starts to


@dataclass(frozen=True)
class Pair:
    target: str
    pretrained: str
    how: str  # user-map, exact, prefix, suffix, content


@dataclass
class Alignment:
    """The pairs, the target scope that should come from the pretrained model, and what is left."""

    pairs: list[Pair]
    scope: str  # target module path ("" = the whole model)
    unmatched_target: list[str]  # inside the scope, no counterpart
    unused_pretrained: list[str]
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # target -> candidates
    prefix: tuple[str, str] = ("", "")  # (target side, pretrained side) when inferred

    def pretrained_of(self) -> dict[str, Pair]:
        return {pair.target: pair for pair in self.pairs}


def _suffixes(key: str) -> list[tuple[str, str]]:
    """(prefix, suffix) at every dot boundary, longest suffix first: ``a.b.c`` -> (``a.``, ``b.c``), ..."""
    parts = key.split(".")
    return [(".".join(parts[:i]) + ".", ".".join(parts[i:])) for i in range(1, len(parts))]


def _infer_prefix(targets: Sequence[str], pretrained: set[str]) -> tuple[str, str]:
    """The (target prefix, pretrained prefix) pair that explains the most keys."""
    votes: Counter[tuple[str, str]] = Counter()
    for key in targets:
        for prefix, suffix in _suffixes(key):
            if suffix in pretrained:
                votes[(prefix, "")] += 1
    target_set = set(targets)
    for key in pretrained:
        for prefix, suffix in _suffixes(key):
            if suffix in target_set:
                votes[("", prefix)] += 1
    if not votes:
        return "", ""
    (best, count), = votes.most_common(1)
    return best if count >= 2 else ("", "")


def _content_hash(read: Callable[[str], bytes], key: str) -> str:
    return hashlib.blake2b(read(key), digest_size=16).hexdigest()


def align(target: Mapping[str, TensorRef], pretrained: Mapping[str, TensorRef],
          user_maps: Sequence[tuple[str, str]] = (), scope: str | None = None,
          read_target: Callable[[str], bytes] | None = None,
          read_pretrained: Callable[[str], bytes] | None = None) -> Alignment:
    """Pair target keys with pretrained keys; see the module docstring for the order."""
    left_t = list(target)
    left_p = dict.fromkeys(pretrained)
    pairs: list[Pair] = []

    def take(t: str, p: str, how: str) -> None:
        pairs.append(Pair(t, p, how))
        del left_p[p]

    def run(strategy: Callable[[str], tuple[str, str] | None]) -> None:
        nonlocal left_t
        remaining = []
        for key in left_t:
            found = strategy(key)
            if found and found[0] in left_p:
                take(key, *found)
            else:
                remaining.append(key)
        left_t = remaining

    for old, new in user_maps:
        run(lambda k, o=old, n=new: (n + k[len(o):], "user-map") if k.startswith(o) else None)
    run(lambda k: (k, "exact"))
    prefix = _infer_prefix(left_t, set(left_p))
    t_prefix, p_prefix = prefix
    if prefix != ("", ""):
        run(lambda k: (p_prefix + k[len(t_prefix):], "prefix") if k.startswith(t_prefix) else None)
    ambiguous = _match_suffixes(left_t, left_p, take)
    left_t = [k for k in left_t if k not in {p.target for p in pairs}]
    if read_target and read_pretrained:
        _match_content(left_t, left_p, target, pretrained, read_target, read_pretrained, take)
        left_t = [k for k in left_t if k not in {p.target for p in pairs}]
    if scope is None:
        scope = _infer_scope([p.target for p in pairs])
    in_scope = [k for k in left_t if not scope or k.startswith(scope + ".")]
    return Alignment(pairs, scope, in_scope, list(left_p), ambiguous, prefix)


def _match_suffixes(targets: list[str], left_p: dict[str, None], take: Callable[[str, str, str], None]
                    ) -> dict[str, list[str]]:
    by_suffix: dict[str, list[str]] = defaultdict(list)
    for key in left_p:
        parts = key.split(".")
        for i in range(len(parts) - MIN_SUFFIX_PARTS + 1):
            by_suffix[".".join(parts[i:])].append(key)
    claims: dict[str, list[str]] = defaultdict(list)
    for key in targets:
        parts = key.split(".")
        for i in range(len(parts) - MIN_SUFFIX_PARTS + 1):
            candidates = by_suffix.get(".".join(parts[i:]))
            if candidates:
                claims[key] = candidates
                break
    ambiguous: dict[str, list[str]] = {}
    claimed_by: Counter[str] = Counter(c[0] for c in claims.values() if len(c) == 1)
    for key, candidates in claims.items():
        if len(candidates) == 1 and claimed_by[candidates[0]] == 1:
            take(key, candidates[0], "suffix")
        else:
            ambiguous[key] = sorted(candidates)
    return ambiguous


def _match_content(targets: list[str], left_p: dict[str, None], target: Mapping[str, TensorRef],
                   pretrained: Mapping[str, TensorRef], read_target: Callable[[str], bytes],
                   read_pretrained: Callable[[str], bytes], take: Callable[[str, str, str], None]) -> None:
    signature = lambda ref: (ref.shape, ref.dtype.name)  # noqa: E731
    wanted = {signature(target[k]) for k in targets}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for key in left_p:
        if signature(pretrained[key]) in wanted and pretrained[key].numel:
            by_hash[_content_hash(read_pretrained, key)].append(key)
    offered = {signature(pretrained[k]) for keys in by_hash.values() for k in keys}
    for key in targets:
        if signature(target[key]) in offered and target[key].numel:
            candidates = [c for c in by_hash.get(_content_hash(read_target, key), []) if c in left_p]
            if len(candidates) == 1:
                take(key, candidates[0], "content")


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
