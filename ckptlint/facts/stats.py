"""Summary statistics of a tensor's values, in one pass over the array, bounded in memory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CHUNK = 1 << 22  # elements converted to float64 at a time
TINY = 64  # below this many elements plain Python beats numpy's per-call overhead


def summarize(values: np.ndarray) -> dict[str, Any]:
    """Moments and extremes of the finite values, and counts of the non-finite ones."""
    flat = values.reshape(-1)
    if np.iscomplexobj(flat):
        flat = np.abs(flat)
    if flat.size <= TINY:
        return _summary(*_tiny_moments([float(v) for v in flat.tolist()]))
    is_float = np.issubdtype(flat.dtype, np.floating)
    nan = posinf = neginf = zeros = 0
    total = 0.0
    lo, hi = math.inf, -math.inf
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK].astype(np.float64)
        if is_float:
            finite = np.isfinite(chunk)
            if not finite.all():
                nan += int(np.isnan(chunk).sum())
                posinf += int(np.isposinf(chunk).sum())
                neginf += int(np.isneginf(chunk).sum())
                chunk = chunk[finite]
        if chunk.size:
            zeros += int(np.count_nonzero(chunk == 0))
            total += float(chunk.sum())
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    count = flat.size - nan - posinf - neginf
    mean = total / count if count else None
    m2 = m4 = 0.0
    if count:
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start:start + CHUNK].astype(np.float64)
            centred = (chunk[np.isfinite(chunk)] if is_float else chunk) - mean
            squared = centred * centred
            m2 += float(squared.sum())
            m4 += float((squared * squared).sum())
    return _summary(count, mean, lo, hi, m2, m4, zeros, nan, posinf, neginf)


def _tiny_moments(xs: list[float]) -> tuple[Any, ...]:
    nan = sum(1 for x in xs if x != x)
    posinf = sum(1 for x in xs if x == math.inf)
    neginf = sum(1 for x in xs if x == -math.inf)
    finite = [x for x in xs if math.isfinite(x)]
    if not finite:
        return 0, None, math.inf, -math.inf, 0.0, 0.0, 0, nan, posinf, neginf
    mean = math.fsum(finite) / len(finite)
    squared = [(x - mean) ** 2 for x in finite]
    return (len(finite), mean, min(finite), max(finite), math.fsum(squared), math.fsum(s * s for s in squared),
            sum(1 for x in finite if x == 0), nan, posinf, neginf)


def _summary(count: int, mean: float | None, lo: float, hi: float, m2: float, m4: float, zeros: int,
             nan: int, posinf: int, neginf: int) -> dict[str, Any]:
    variance = m2 / count if count else None
    return {
        "count": int(count),
        "mean": mean,
        "std": variance ** 0.5 if variance is not None else None,
        "min": lo if count else None,
        "max": hi if count else None,
        "abs_max": max(abs(lo), abs(hi)) if count else None,
        "nan_count": nan,
        "posinf_count": posinf,
        "neginf_count": neginf,
        "nonfinite_count": nan + posinf + neginf,
        "zero_fraction": zeros / count if count else None,
        "is_constant": bool(count) and lo == hi,
        "kurtosis": (m4 / count) / variance**2 - 3.0 if variance else None,
    }
