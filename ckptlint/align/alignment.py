"""Align a target checkpoint's tensors with a pretrained checkpoint's, recording how each pair
was found. Strategies run in order; each only sees the keys the earlier ones left:

1. user maps (``--map OLD=NEW``: target prefix OLD is pretrained prefix NEW) — always win;
2. exact names;
2b. conversion tables (``data/conversions.toml``: another codebase's names, and the tensors it
   keeps fused — ``in_proj_weight`` — where this one keeps them split, or the reverse): pairs
   ``renamed``, ``split`` (a target tensor is rows ``a:b`` of a pretrained one, whose key is then
   ``name[a:b]``) and ``fused`` (rows ``a:b`` of a target tensor are a pretrained tensor);
3. inferred prefixes (``backbone.0.body.`` <-> root, ``module.``, ``resnet.``), chosen by votes;
4. naming-scheme tables (``data/naming_schemes.toml``): both sides rewritten to torchvision
   names, then 2 and 3 again;
5. longest common dotted suffix (detectron2's method: equal shapes, and a suffix naming at
   least two modules or leaves, so ``1.weight`` proves nothing); a pretrained key that two
   target keys would claim is reported as ambiguous, never guessed;
6. bit-identical content (a hash per tensor, or per block of rows: a split or fused tensor),
   whatever the names — only between still-unmatched tensors of the same dtype and trailing
   shape, so few tensors are read.

No step compares every key with every other: each is a dictionary lookup per key and dot.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ckptlint.align.conversions import Canonical, conversions
from ckptlint.align.schemes import canonical_name, schemes
from ckptlint.io.checkpoint import TensorRef, lookup_ref, row_view_key

MIN_SUFFIX_PARTS = 2  # "weight" alone says nothing; "conv1.weight" starts to
MIN_PREFIX_SHARE = 0.25  # of the smaller side's unmatched keys
MAX_VOTERS = 4  # a suffix shared by more pretrained keys than this does not vote


@dataclass(frozen=True)
class Pair:
    target: str
    pretrained: str
    how: str  # user-map, exact, renamed, split, fused, prefix, scheme:<name>, suffix, content
    canonical: str  # the pretrained key in torchvision names from the ResNet's root on (schemes.canonical_name)


@dataclass
class Alignment:
    """The pairs, the target scope that should come from the pretrained model, and what is left."""

    pairs: list[Pair]
    scope: str  # target module path ("" = the whole model)
    unmatched_target: list[str]  # inside the scope, no counterpart
    unused_pretrained: list[str]
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # target -> candidates
    prefix: tuple[str, str] = ("", "")  # (target side, pretrained side) when inferred
    maps_used: set[tuple[str, str]] = field(default_factory=set)  # user maps that paired something


class _WithRowViews(Mapping[str, TensorRef]):
    """The tensors, and the row views (``name[a:b]``) the conversion step makes of them."""

    def __init__(self, tensors: Mapping[str, TensorRef]) -> None:
        self._tensors = tensors

    def __getitem__(self, key: str) -> TensorRef:
        return lookup_ref(self._tensors, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _suffixes(key: str) -> list[tuple[str, str]]:
    """(prefix, suffix) at every dot boundary: ``a.b.c`` -> (``a.``, ``b.c``), (``a.b.``, ``c``)."""
    parts = key.split(".")
    return [(".".join(parts[:i]) + ".", ".".join(parts[i:])) for i in range(1, len(parts))]


def _infer_prefix(targets: Sequence[str], pretrained: Sequence[str]) -> tuple[str, str]:
    """The (target prefix, pretrained prefix) that explains the most keys, if it explains a
    real share of them (a few coincidences such as ``layers.0.weight`` must not count).

    Each target key votes once, with its longest dotted suffix (of at least two parts) that
    ends some pretrained key; a suffix ending more than a few keys says nothing and is skipped.
    """
    by_suffix: dict[str, list[str]] = defaultdict(list)
    for key in pretrained:
        for prefix, suffix in [("", key), *_suffixes(key)]:
            if suffix.count(".") + 1 >= MIN_SUFFIX_PARTS:
                by_suffix[suffix].append(prefix)
    votes: Counter[tuple[str, str]] = Counter()
    for key in targets:
        for t_prefix, suffix in [("", key), *_suffixes(key)]:
            candidates = by_suffix.get(suffix)
            if candidates:
                if len(candidates) <= MAX_VOTERS:
                    votes.update((t_prefix, p_prefix) for p_prefix in candidates)
                break
    votes.pop(("", ""), None)
    if not votes:
        return "", ""
    best, count = max(votes.items(), key=lambda item: (item[1], -len(item[0][0]) - len(item[0][1])))
    needed = max(2, MIN_PREFIX_SHARE * min(len(targets), len(pretrained)))
    return best if count >= needed else ("", "")


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

    @staticmethod
    def split(left: dict[str, None], key: str, rows: list[int]) -> list[str]:
        """Replace ``key`` among the unmatched by its row blocks (each of ``rows`` rows)."""
        del left[key]
        views, start = [], 0
        for count in rows:
            views.append(row_view_key(key, start, start + count))
            start += count
        left.update(dict.fromkeys(views))
        return views

    def by_names(self, view: Callable[[str], str], how: str) -> None:
        """Exact, then prefixed, matches between the keys as ``view`` renames them."""
        view_t = {view(k): k for k in self.left_t}
        view_p = {view(k): k for k in self.left_p}
        for name, t in view_t.items():
            if name in view_p:
                self.take(t, view_p[name], how or "exact", canonical_name(name))
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
                    self.take(t, p, how or "prefix", canonical_name(relative))


def align(target: Mapping[str, TensorRef], pretrained: Mapping[str, TensorRef],
          user_maps: Sequence[tuple[str, str]] = (), scope: str | None = None,
          read_target: Callable[[str], bytes] | None = None,
          read_pretrained: Callable[[str], bytes] | None = None,
          scope_from: Callable[[Pair], bool] = lambda pair: True) -> Alignment:
    """Pair target keys with pretrained keys; see the module docstring for the order."""
    target, pretrained = _WithRowViews(target), _WithRowViews(pretrained)
    match = _Matcher(list(target), list(pretrained))
    maps_used = set()
    for old, new in user_maps:
        for t in [k for k in match.left_t if k.startswith(old)]:
            p = new + t[len(old):]
            if p in match.left_p:
                match.take(t, p, "user-map", canonical_name(p))
                maps_used.add((old, new))
    match.by_names(lambda k: k, "")
    for conversion in conversions():
        if any(conversion.renames(k) for k in (*match.left_t, *match.left_p)):
            _match_conversion(match, conversion.canonical, target, pretrained)
    for scheme in schemes():
        if any(scheme.canonical(k) != k for k in (*match.left_t, *match.left_p)):
            match.by_names(scheme.canonical, f"scheme:{scheme.name}")
    ambiguous = _match_suffixes(match, target, pretrained)
    if read_target and read_pretrained:
        _match_content(match, target, pretrained, read_target, read_pretrained)
    if scope is None:
        scope = _infer_scope([p.target for p in match.pairs if scope_from(p)])
    in_scope = [k for k in match.left_t if not scope or k.startswith(scope + ".")]
    return Alignment(match.pairs, scope, in_scope, list(match.left_p), ambiguous, match.prefix, maps_used)


def _fits(rows: list[int], whole: TensorRef, parts: list[TensorRef]) -> bool:
    """Whether ``parts`` stacked along the first dimension make ``whole``'s shape."""
    return bool(whole.shape) and sum(rows) == whole.shape[0] and all(p.shape[1:] == whole.shape[1:] for p in parts)


def _match_conversion(match: _Matcher, canonical: Callable[[str], Canonical],
                      target: Mapping[str, TensorRef], pretrained: Mapping[str, TensorRef]) -> None:
    """Pairs by a conversion table's names: renamed tensors, and fused tensors with their parts
    (shapes must fit; the values decide later whether the pair holds)."""
    names_t = {k: canonical(k) for k in match.left_t}
    whole_p: dict[str, str] = {}
    parts_p: dict[str, dict[int, str]] = defaultdict(dict)  # fused name -> part -> pretrained key
    counts_p: dict[str, int] = {}
    for k in match.left_p:
        c = canonical(k)
        if c.parts == 1:
            whole_p[c.name] = k
        else:
            parts_p[c.name][c.part], counts_p[c.name] = k, c.parts
    split_t: dict[str, dict[int, str]] = defaultdict(dict)
    for t, c in names_t.items():
        if c.parts == 1 and whole_p.get(c.name) in match.left_p:
            match.take(t, whole_p[c.name], "renamed", canonical_name(c.name))
        elif c.parts == 1 and c.name in counts_p and len(parts_p[c.name]) == counts_p[c.name]:
            _fuse(match, t, [parts_p[c.name][i] for i in sorted(parts_p[c.name])], target, pretrained, c.name)
        elif c.parts > 1 and parts_p.get(c.name, {}).get(c.part) in match.left_p:
            match.take(t, parts_p[c.name][c.part], "renamed", canonical_name(c.name))
        elif c.parts > 1:
            split_t[c.name][c.part] = t
    for name, parts in split_t.items():
        p = whole_p.get(name)
        count = names_t[next(iter(parts.values()))].parts
        if p is None or p not in match.left_p or not pretrained[p].shape or pretrained[p].shape[0] % count:
            continue
        rows = [pretrained[p].shape[0] // count] * count
        if any(target[t].shape != (rows[0], *pretrained[p].shape[1:]) for t in parts.values()):
            continue
        views = match.split(match.left_p, p, rows)
        for part, t in sorted(parts.items()):
            match.take(t, views[part], "split", canonical_name(name))


def _fuse(match: _Matcher, t: str, parts: list[str], target: Mapping[str, TensorRef],
          pretrained: Mapping[str, TensorRef], name: str) -> None:
    """Pair the row blocks of a fused target tensor with the pretrained parts, when they fit."""
    rows = [pretrained[p].shape[0] if pretrained[p].shape else 0 for p in parts]
    if not all(rows) or not _fits(rows, target[t], [pretrained[p] for p in parts]):
        return
    for view, p in zip(match.split(match.left_t, t, rows), parts, strict=True):
        match.take(view, p, "fused", canonical_name(name))


def _telling_suffixes(key: str) -> list[str]:
    """Suffixes, longest first, that name at least MIN_SUFFIX_PARTS non-numeric parts."""
    parts = key.split(".")
    named = [i for i, part in enumerate(parts) if not part.isdigit()]
    if len(named) < MIN_SUFFIX_PARTS:
        return []
    return [".".join(parts[i:]) for i in range(named[-MIN_SUFFIX_PARTS] + 1)]


def _match_suffixes(match: _Matcher, target: Mapping[str, TensorRef],
                    pretrained: Mapping[str, TensorRef]) -> dict[str, list[str]]:
    by_suffix: dict[str, list[str]] = defaultdict(list)
    for key in match.left_p:
        for suffix in _telling_suffixes(key):
            by_suffix[suffix].append(key)
    claims: dict[str, list[str]] = {}
    for key in match.left_t:
        for suffix in _telling_suffixes(key):
            candidates = [c for c in by_suffix.get(suffix, ()) if pretrained[c].shape == target[key].shape]
            if candidates:
                claims[key] = candidates
                break
    claimed_by = Counter(c[0] for c in claims.values() if len(c) == 1)
    ambiguous: dict[str, list[str]] = {}
    for key, candidates in claims.items():
        if len(candidates) == 1 and claimed_by[candidates[0]] == 1:
            match.take(key, candidates[0], "suffix", canonical_name(candidates[0]))
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
            by_hash[_digest(read_pretrained(key))].append(key)
    offered = {signature(pretrained[k]) for keys in by_hash.values() for k in keys}
    for key in list(match.left_t):
        if signature(target[key]) in offered and target[key].numel:
            candidates = [c for c in by_hash.get(_digest(read_target(key)), []) if c in match.left_p]
            if len(candidates) == 1:
                match.take(key, candidates[0], "content", canonical_name(candidates[0]))
    _match_blocks(match, target, pretrained, read_target, read_pretrained, split=True)
    _match_blocks(match, pretrained, target, read_pretrained, read_target, split=False)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _match_blocks(match: _Matcher, parts: Mapping[str, TensorRef], wholes: Mapping[str, TensorRef],
                  read_part: Callable[[str], bytes], read_whole: Callable[[str], bytes], split: bool) -> None:
    """Bit-identical blocks of rows, whatever the names: a target tensor that is rows ``a:b`` of a
    pretrained one (``split``), or the reverse (fused). Only still-unmatched tensors of the same
    dtype and trailing shape whose row counts divide are read."""
    left_parts, left_wholes = (match.left_t, match.left_p) if split else (match.left_p, match.left_t)
    rows_wanted: dict[tuple[tuple[int, ...], str], set[int]] = defaultdict(set)
    for key in left_parts:
        ref = parts[key]
        if ref.shape and ref.numel:
            rows_wanted[ref.shape[1:], ref.dtype.name].add(ref.shape[0])
    blocks: dict[str, list[tuple[str, int, int]]] = defaultdict(list)  # digest -> (whole, first row, rows)
    for key in list(left_wholes):
        ref = wholes[key]
        counts = [n for n in rows_wanted.get((ref.shape[1:], ref.dtype.name), ()) if ref.shape and
                  n < ref.shape[0] and ref.shape[0] % n == 0]
        if not counts:
            continue
        data = read_whole(key)
        row_bytes = len(data) // ref.shape[0]
        for rows in counts:
            for start in range(0, ref.shape[0], rows):
                blocks[_digest(data[start * row_bytes:(start + rows) * row_bytes])].append((key, start, rows))
    if not blocks:
        return
    for key in list(left_parts):
        ref = parts[key]
        if not ref.shape or not ref.numel or (ref.shape[1:], ref.dtype.name) not in rows_wanted:
            continue
        found = [b for b in blocks.get(_digest(read_part(key)), []) if b[2] == ref.shape[0]]
        if len(found) != 1:
            continue
        whole, start, rows = found[0]
        view = row_view_key(whole, start, start + rows)
        if view not in left_wholes:
            if whole not in left_wholes:
                continue
            match.split(left_wholes, whole, [rows] * (wholes[whole].shape[0] // rows))
        if split:
            match.take(key, view, "split", canonical_name(whole))
        else:
            match.take(view, key, "fused", canonical_name(key))


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
