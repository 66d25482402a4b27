"""Summary statistics of a tensor's values, in one pass over the array, bounded in memory."""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 22  # elements converted to float64 at a time


def summarize(values: np.ndarray) -> dict[str, float | int | bool | None]:
    """Moments and extremes of the finite values, and counts of the non-finite ones."""
    flat = values.reshape(-1)
    if np.iscomplexobj(flat):
        flat = np.abs(flat)
    is_float = np.issubdtype(flat.dtype, np.floating)
    nan = posinf = neginf = zeros = 0
    total = 0.0
    lo, hi = np.inf, -np.inf
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
            chunk = chunk[np.isfinite(chunk)] - mean if is_float else chunk - mean
            sq = chunk * chunk
            m2 += float(sq.sum())
            m4 += float((sq * sq).sum())
    variance = m2 / count if count else None
    std = variance ** 0.5 if variance is not None else None
    kurtosis = (m4 / count) / variance**2 - 3.0 if variance else None
    return {
        "count": int(count),
        "mean": mean,
        "std": std,
        "min": lo if count else None,
        "max": hi if count else None,
        "abs_max": max(abs(lo), abs(hi)) if count else None,
        "nan_count": nan,
        "posinf_count": posinf,
        "neginf_count": neginf,
        "nonfinite_count": nan + posinf + neginf,
        "zero_fraction": zeros / count if count else None,
        "is_constant": bool(count) and lo == hi,
        "kurtosis": kurtosis,
    }
