"""Statistics of a tensor's values, in groups so a check pays only for what it reads.

finiteness: NaN/Inf counts, usually one BLAS dot product. constancy: whether every value is the
same, usually decided on a sample. extremes: min and max. moments: mean, std, kurtosis, zero
fraction, in float64 chunks (memory bounded by the chunk, not the tensor).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CHUNK = 1 << 22  # elements converted to float64 at a time
PROBE = 4096  # evenly spaced elements that usually settle constancy without a full pass
NO_NONFINITE = {"nan_count": 0, "posinf_count": 0, "neginf_count": 0, "nonfinite_count": 0}


def _flat(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    return np.abs(flat) if np.iscomplexobj(flat) else flat


def _tiny_finiteness(flat: list[float]) -> dict[str, int]:
    if math.isfinite(sum(flat)):
        return dict(NO_NONFINITE)
    nan = sum(1 for value in flat if value != value)
    posinf, neginf = flat.count(math.inf), flat.count(-math.inf)
    return {"nan_count": nan, "posinf_count": posinf, "neginf_count": neginf, "nonfinite_count": nan + posinf + neginf}


def _finite(flat: np.ndarray) -> np.ndarray:
    """The finite values (the array itself when all are, as is usual: no copy)."""
    if not np.issubdtype(flat.dtype, np.floating) or np.isfinite(flat).all():
        return flat
    return flat[np.isfinite(flat)]


# Up to this many values, finiteness is counted on Python floats: numpy's fixed cost per call
# (~8 us for a dot product and its checks) would be most of a check of a million tiny tensors.
TINY = 64


def finiteness(values: np.ndarray) -> dict[str, int]:
    """Counts of NaN and infinite values.

    A NaN or Inf anywhere makes the dot product of the values with themselves NaN or Inf, so a
    finite dot product (one fast BLAS pass, no temporary) proves there are none; an overflow only
    sends the check down the exact path. A tiny real array is summed as Python floats instead, on
    the same principle.
    """
    if values.size <= TINY and values.dtype.kind == "f":
        return _tiny_finiteness(values.ravel().tolist())
    flat = _flat(values)
    if not np.issubdtype(flat.dtype, np.floating):
        return dict(NO_NONFINITE)
    if flat.dtype in (np.float32, np.float64) and flat.flags.c_contiguous:
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(float(np.dot(flat, flat))):
                return dict(NO_NONFINITE)
    if np.isfinite(flat).all():
        return dict(NO_NONFINITE)
    nan, posinf, neginf = int(np.isnan(flat).sum()), int(np.isposinf(flat).sum()), int(np.isneginf(flat).sum())
    return {"nan_count": nan, "posinf_count": posinf, "neginf_count": neginf, "nonfinite_count": nan + posinf + neginf}


def constancy(values: np.ndarray) -> dict[str, bool]:
    """Whether every finite value is the same (and there is one): two different values in an
    evenly spaced probe settle it without reading the rest."""
    flat = _flat(values)
    probe = flat[:: max(1, flat.size // PROBE)]
    probe = probe[np.isfinite(probe)] if np.issubdtype(probe.dtype, np.floating) else probe
    if probe.size and probe.min() != probe.max():
        return {"is_constant": False}
    finite = _finite(flat)
    return {"is_constant": bool(finite.size) and bool(finite.min() == finite.max())}


def extremes(values: np.ndarray) -> dict[str, Any]:
    """How many values are finite, and the smallest and largest of them."""
    finite = _finite(_flat(values))
    if not finite.size:
        return {"count": 0, "min": None, "max": None, "abs_max": None}
    lo, hi = float(finite.min()), float(finite.max())
    return {"count": int(finite.size), "min": lo, "max": hi, "abs_max": max(abs(lo), abs(hi))}


def moments(values: np.ndarray) -> dict[str, Any]:
    """Mean, standard deviation, excess kurtosis and share of zeros of the finite values."""
    finite = _finite(_flat(values))
    count = finite.size
    if not count:
        return {"mean": None, "std": None, "kurtosis": None, "zero_fraction": None}
    total = math.fsum(float(finite[s:s + CHUNK].sum(dtype=np.float64)) for s in range(0, count, CHUNK))
    mean = total / count
    m2 = m4 = 0.0
    zeros = 0
    for start in range(0, count, CHUNK):
        chunk = finite[start:start + CHUNK]
        zeros += int(np.count_nonzero(chunk == 0))
        centred = chunk.astype(np.float64) - mean
        squared = centred * centred
        m2 += float(squared.sum())
        m4 += float(squared @ squared)
    variance = m2 / count
    return {"mean": mean, "std": math.sqrt(variance), "zero_fraction": zeros / count,
            "kurtosis": (m4 / count) / variance**2 - 3.0 if variance else None}
