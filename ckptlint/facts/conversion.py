"""What a conversion did instead, when a pair its table made does not hold.

A conversion table only says which tensors should meet (``q_proj.weight`` is rows 0:256 of
``in_proj_weight``); the values decide. When they differ, the values usually still say what went
wrong: the target holds another part's values (q and k swapped), the pretrained values
transposed, or rows from another offset of the fused tensor. A pair explained so is
``misconverted``; one that is not keeps its verdict (a LayerNorm left at its init stays
``reinitialized``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from ckptlint.facts.pair import TransferPairFacts
from ckptlint.graph.build import split_key
from ckptlint.io.checkpoint import Checkpoint, parse_row_view, row_view_key

CONVERTED = ("renamed", "split", "fused")  # how a conversion table pairs tensors
EXPLAINED = ("unrelated", "resized")  # verdicts a misplacement produces


def explain(pair: TransferPairFacts, by_source: Mapping[str, TransferPairFacts],
            target_file: Checkpoint, pretrained: Checkpoint) -> tuple[str, str] | None:
    """(error, cause) when the target holds the pretrained values misplaced, else None (a
    constant proves nothing: zeros equal zeros)."""
    if pair.target_facts["is_constant"]:
        return None
    target, source = pair.target_facts.array(), pair.source_facts.array()
    try:
        for other in _neighbours(pair["source"], target.shape, pretrained):
            if _same(target, pretrained.read(other)):
                return _misplaced(pair, other, by_source.get(other))
        if target.ndim == 2 and target.T.shape == source.shape and _same(target.T, source):
            return "transposed", "is stored transposed"
        return _offset(pair, target, source, (target_file, pretrained))
    finally:
        pair.source_facts.release()


def _misplaced(pair: TransferPairFacts, other: str, other_pair: TransferPairFacts | None) -> tuple[str, str]:
    if other_pair is not None and _same(other_pair.target_facts.array(), pair.source_facts.array()):
        return "swapped", f"is swapped with {_beside(pair['target'], other_pair['target'])} (holds {other})"
    return "misplaced", f"holds {other}"


def _beside(key: str, other: str) -> str:
    """``other`` named from where it and ``key`` part (``k_proj.weight`` beside ``q_proj.weight``)."""
    mine, theirs = key.split("."), other.split(".")
    common = 0
    while common < min(len(mine), len(theirs)) - 1 and mine[common] == theirs[common]:
        common += 1
    return ".".join(theirs[common:])


def _offset(pair: TransferPairFacts, target: np.ndarray, source: np.ndarray, checkpoints: tuple[Checkpoint, Checkpoint],
            ) -> tuple[str, str] | None:
    """Rows of a fused tensor taken from another offset than the table's: the part (on either
    side) found at another offset of the fused tensor (on the other)."""
    for fused_side, part, key in ((1, target, pair["source"]), (0, source, pair["target"])):
        view = parse_row_view(key)
        if view is None or not part.ndim:
            continue
        base, start, stop = view
        whole = checkpoints[fused_side].read(base)
        rows = stop - start
        first = (whole.reshape(whole.shape[0], -1) == part.reshape(rows, -1)[0]).all(axis=1)
        for offset in (int(o) for o in np.flatnonzero(first)):
            if offset != start and offset + rows <= whole.shape[0] and _same(part, whole[offset:offset + rows]):
                if fused_side == 1:
                    return "offset", f"holds rows {offset}:{offset + rows} of {base}, not {start}:{stop}"
                return "offset", f"is not what {pair['source']} holds: rows {offset}:{offset + rows} of {base}"
    return None


def _neighbours(source: str, shape: tuple[int, ...], pretrained: Checkpoint) -> Iterator[str]:
    """The other tensors a conversion may have confused with ``source``: the other parts of its
    fused tensor, the tensors of the same shape in its module, and those of the same name and
    shape in the modules beside it (``k_proj.weight`` beside ``q_proj.weight``)."""
    view = parse_row_view(source)
    if view is not None:
        base, start, stop = view
        rows = stop - start
        for begin in range(0, pretrained.tensors[base].shape[0] - rows + 1, rows):
            if begin != start:
                yield row_view_key(base, begin, begin + rows)
        return
    module, leaf = split_key(source)
    parent = module.rpartition(".")[0]
    for key, ref in pretrained.tensors.items():
        if key == source or ref.shape != shape:
            continue
        other_module, other_leaf = split_key(key)
        if other_module == module or (other_leaf == leaf and other_module.rpartition(".")[0] == parent):
            yield key


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b.astype(a.dtype, copy=False)))
