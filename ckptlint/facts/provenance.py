"""Which of several pretrained files a target came from (``--pretrained a --pretrained b ...``).

Each candidate is ranked by the share of the target's in-scope parameters it explains: copied,
cast, or within ``--max-drift`` of it (related values, as a fine-tuned tensor's are). The share is
counted as the transfer score counts: every in-scope pair, every unused pretrained tensor and every
in-scope target tensor without a source, heads and step counters excepted.

The first file given is the expected one: the full transfer analysis already judged every pair
against it, so its verdicts are reused. Every other file is aligned the same way and judged
cheaply, hash first and values only where needed: a pair whose first values are bit-identical is
copied when the content hashes agree (the target's hashes are computed once, for all candidates);
otherwise the first ``PROBE`` values decide whether the rest is worth reading (replaced values are
uncorrelated already there), and only a related pair is compared whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from ckptlint.align.schemes import canonical_name
from ckptlint.align.transfer import TransferAlignment, align_transfer, is_head
from ckptlint.facts.compare import PROBE, compare
from ckptlint.facts.pair import related_values
from ckptlint.facts.score import floor_score
from ckptlint.facts.transfer import TransferAnalysis
from ckptlint.io.checkpoint import Checkpoint
from ckptlint.options import TransferOptions
from ckptlint.results import Candidate
from ckptlint.vocabulary import COUNTER_LEAF


@dataclass
class _Tally:
    """What one candidate explains of the target, in parameters."""

    parameters: int = 0
    copied: int = 0
    cast: int = 0
    finetuned: int = 0
    tensors: int = 0

    def add(self, how: str | None, numel: int) -> None:
        if how == "copied":
            self.copied += numel
        elif how == "cast":
            self.cast += numel
        elif how == "fine-tuned":
            self.finetuned += numel


def _digest(values: np.ndarray) -> bytes:
    """A content hash of a tensor's raw bytes (its dtype and shape are compared apart)."""
    return hashlib.blake2b(np.ascontiguousarray(values).reshape(-1).view(np.uint8).data, digest_size=16).digest()


class _TargetHashes:
    """The target's content hashes, each computed the first time a candidate needs it."""

    def __init__(self, target: Checkpoint) -> None:
        self.target = target
        self._digests: dict[str, bytes] = {}

    def __call__(self, key: str, values: np.ndarray) -> bytes:
        if key not in self._digests:
            self._digests[key] = _digest(values)
        return self._digests[key]


def _judge(target: np.ndarray, source: np.ndarray, target_dtype: str, source_dtype: str, max_drift: float,
           target_digest: Callable[[np.ndarray], bytes]) -> str | None:
    """copied, cast, fine-tuned (related and within ``max_drift``), or None (not explained)."""
    t, p = target.reshape(-1), source.reshape(-1)
    head = slice(0, min(PROBE, t.size))
    same_dtype = target_dtype == source_dtype
    if same_dtype and t[head].tobytes() == p[head].tobytes():
        if t.size <= PROBE or target_digest(target) == _digest(source):
            return "copied"
    elif t.size > PROBE:
        probe = compare(t[head], p[head], target_dtype, source_dtype)
        if not (probe["bit_equal"] or probe["equal_after_cast"]
                or related_values(probe["correlation"], head.stop, probe["rel_error"])):
            return None  # replaced values: unrelated in their first few thousand already
    numbers = compare(t, p, target_dtype, source_dtype)
    if numbers["bit_equal"]:
        return "copied"
    if numbers["equal_after_cast"] or (not same_dtype and numbers["max_abs_error"] == 0.0):
        return "cast"
    if related_values(numbers["correlation"], t.size, numbers["rel_error"]) and numbers["rel_error"] <= max_drift:
        return "fine-tuned"
    return None


def _in_scope(scope: str, key: str) -> bool:
    return not scope or key.startswith(scope + ".")


def _denominator(aligned: TransferAlignment, target: Checkpoint, candidate: Checkpoint) -> int:
    """The unused pretrained tensors and the unmatched in-scope target tensors, as the score
    counts them (the pairs are added as they are judged)."""
    alignment = aligned.alignment
    unused = sum(candidate.ref(key).numel for key in alignment.unused_pretrained
                 if not is_head(canonical_name(key)) and not key.endswith(COUNTER_LEAF))
    unmatched = sum(target.ref(key).numel for key in alignment.unmatched_target if not key.endswith(COUNTER_LEAF))
    return unused + unmatched


def _tally_other(target: Checkpoint, candidate: Checkpoint, options: TransferOptions,
                 hashes: _TargetHashes) -> _Tally:
    """Align the target with a candidate that is not the expected file and judge each pair cheaply."""
    aligned = align_transfer(target, candidate, options)
    tally = _Tally(parameters=_denominator(aligned, target, candidate))
    scope = aligned.alignment.scope
    for pair in aligned.alignment.pairs:
        if not _in_scope(scope, pair.target):
            continue
        tally.tensors += 1
        if is_head(pair.canonical) or pair.target.endswith(COUNTER_LEAF):
            continue
        t_ref, p_ref = target.ref(pair.target), candidate.ref(pair.pretrained)  # a key may be a row view
        tally.parameters += p_ref.numel
        if t_ref.shape != p_ref.shape:
            continue  # resized: not the candidate's values
        t_values, p_values = target.read(pair.target), candidate.read(pair.pretrained)
        how = _judge(t_values, p_values, t_ref.dtype.name, p_ref.dtype.name, options.max_drift,
                     partial(hashes, pair.target))
        tally.add(how, p_ref.numel)
    return tally


def _tally_expected(analysis: TransferAnalysis) -> _Tally:
    """The expected file's share, from the verdicts the transfer analysis already gave: a drift
    within ``--max-drift`` counts as fine-tuned whatever the expectation, as for the others."""
    tally = _Tally(parameters=sum(entry.parameters for entry in analysis.score_entries()))
    for facts in analysis.pairs.values():
        tally.tensors += 1
        if is_head(facts["canonical"]) or facts["is_counter"]:
            continue
        verdict = facts["verdict"]
        if verdict in ("copied", "cast", "fine-tuned"):
            tally.add(verdict, facts["numel"])
        elif verdict == "modified" and facts["within_drift"]:
            tally.add("fine-tuned", facts["numel"])
    return tally


def _or_less(share: float | None) -> float:
    """A share to sort by: nothing to count ranks below 0%."""
    return -1.0 if share is None else share


def rank_candidates(target: Checkpoint, analysis: TransferAnalysis, others: Sequence[Checkpoint],
                    options: TransferOptions) -> tuple[Candidate, ...]:
    """The expected file (the analysis' pretrained one) and ``others``, ranked by the share of the
    target each explains (ties keep the order given); empty without others."""
    if not others:
        return ()
    hashes = _TargetHashes(target)
    tallies = [(analysis.pretrained.path, _tally_expected(analysis))]
    tallies += [(candidate.path, _tally_other(target, candidate, options, hashes)) for candidate in others]
    shares = [floor_score(t.copied + t.cast + t.finetuned, t.parameters) for _, t in tallies]
    order = sorted(range(len(tallies)), key=lambda i: (-_or_less(shares[i]), i))
    return tuple(Candidate(path=tallies[i][0], rank=rank, expected=i == 0, share=shares[i],
                           parameters=tallies[i][1].parameters, copied=tallies[i][1].copied,
                           cast=tallies[i][1].cast, finetuned=tallies[i][1].finetuned,
                           tensors=tallies[i][1].tensors)
                 for rank, i in enumerate(order, start=1))
