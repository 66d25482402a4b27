"""Whether a weight's values are consistent with independent draws, as every framework init makes.

The KS fingerprint only sees the marginal distribution, and some trained layers keep a marginal
close to their init (a BERT attention projection, a wide conv that moved little). Training leaves
structure that i.i.d. draws cannot have, whatever their marginal:

- a largest singular value above the Marchenko-Pastur / Bai-Yin edge sigma * (sqrt(m) + sqrt(n))
  of an i.i.d. m x n matrix (trained layers grow spectral spikes);
- output channels (rows) or input channels of unequal norm (a sum of squares of i.i.d. values
  has a known spread);
- correlated neighbouring kernel taps or neighbouring input channels (i.i.d.: none).

Every block of an i.i.d. tensor is i.i.d., so each statistic runs on one bounded block (about
1 ms in all, whatever the tensor's size), scaled so that truly random tensors land near 0 (near 1
for the spectral ratio), with thresholds whose false-alarm rate is below 1e-6 each. Each trained
weight in tests/test_init_detection.py whose marginal passes the KS test fails two or more of
them, the clearest by 5 to 13 times its limit.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_ELEMENTS = 65536  # the block's size: all statistics together take about 1 ms on it
MIN_ROWS = 32  # rows kept even for wide kernels, so the row and spectral statistics have power
POWER_ITERATIONS = 24  # a spike (trained) converges in a few; i.i.d. stays below the edge
# Tracy-Widom units above the edge: TW1 exceeds 8 with probability ~1e-9, the rest is margin for
# finite sizes (48,000 simulated fresh tensors from 8x1024 to 30522x64 peaked at 3.9 units), and
# power iteration's estimate is a lower bound on the largest singular value.
SPECTRAL_TW_UNITS = 8.0
DISPERSION_Z_LIMIT = 6.0  # both ways (too equal norms, as weight norm makes, are no i.i.d. draw)
NEIGHBOUR_Z_LIMIT = 6.0  # self-normalised sums: P(|z| > 6) < 2 exp(-18) ~ 3e-8 (Efron)
MIN_GROUPS = 8  # fewer rows/channels than this give no spread to compare
SQUARE_EXCESS_KURTOSIS = 12.0  # of x^2 for Gaussian x; uniform x gives less, so this is an upper bound


def block(values: np.ndarray) -> np.ndarray:
    """A float64 block [rows, channels, *kernel] of at most BLOCK_ELEMENTS values: evenly spaced
    output rows, a contiguous run of input channels (neighbours stay neighbours), whole kernels.
    Rows that are all zero are left out: nn.Embedding's padding_idx row is zeroed, not drawn."""
    if values.ndim < 2:
        values = values.reshape(1, -1)
    out, ins, kernel = values.shape[0], values.shape[1], values.shape[2:]
    taps = math.prod(kernel)
    rows = min(out, max(MIN_ROWS, math.isqrt(BLOCK_ELEMENTS // max(taps, 1))))
    chans = min(ins, max(1, BLOCK_ELEMENTS // (rows * taps)))
    rows = min(out, max(rows, BLOCK_ELEMENTS // (chans * taps)))
    picked = values[:: max(1, out // rows)][:rows, :chans].astype(np.float64)
    nonzero = picked.reshape(picked.shape[0], -1).any(axis=1)
    return picked if nonzero.all() else picked[nonzero]


def spectral_ratio(matrix: np.ndarray, sigma: float) -> tuple[float, float]:
    """Largest singular value over the i.i.d. edge sigma * (sqrt(m) + sqrt(n)), and the ratio an
    i.i.d. matrix of this shape stays below (the edge plus SPECTRAL_TW_UNITS of its Tracy-Widom
    fluctuation, which is (1/sqrt(m) + 1/sqrt(n))^(1/3) / (2 (sqrt(m) + sqrt(n))) in ratio units).
    Power iteration from a fixed start: a lower bound, cheap, and exact enough for a spike."""
    m, n = matrix.shape
    edge = math.sqrt(m) + math.sqrt(n)
    limit = 1 + SPECTRAL_TW_UNITS * (1 / math.sqrt(m) + 1 / math.sqrt(n)) ** (1 / 3) / (2 * edge)
    vector = np.random.default_rng(0).standard_normal((n,))
    for _ in range(POWER_ITERATIONS):
        vector = matrix.T @ (matrix @ vector)
        norm = float(np.linalg.norm(vector))
        if not norm:
            return 0.0, limit
        vector /= norm
    return float(np.linalg.norm(matrix @ vector)) / (sigma * edge), limit


def dispersion_z(squares: np.ndarray, axis: tuple[int, ...], square_var: float) -> float | None:
    """How far the spread of per-group sums of squares is from i.i.d. values', as a normal z.

    Each group sums g squares of variance ``square_var``, so under i.i.d. the groups' sample
    variance over (g * square_var) is ~ chi2(k-1)/(k-1), widened by the sums' own kurtosis
    (Satterthwaite) and mapped to z by Wilson-Hilferty, which stays accurate for few groups.
    """
    sums = squares.sum(axis=axis)
    k, g = sums.size, squares.size // max(sums.size, 1)
    if k < MIN_GROUPS or not square_var:
        return None
    ratio = float(sums.var(ddof=1)) / (g * square_var)
    dof = 2 / (2 / (k - 1) + SQUARE_EXCESS_KURTOSIS / (g * k))
    spread = 2 / (9 * dof)
    return (ratio ** (1 / 3) - (1 - spread)) / math.sqrt(spread)


def neighbour_z(values: np.ndarray, axes: tuple[int, ...], mean_square: float) -> tuple[float, float] | None:
    """Correlation of neighbours along ``axes`` (pooled; zero-mean values of variance
    ``mean_square``) and its self-normalised z, sum(ab) / sqrt(sum((ab)^2)), which is ~ N(0, 1)
    for independent zero-mean values of any distribution."""
    total = energy = 0.0
    pairs = 0
    for axis in axes:
        if values.shape[axis] < 2:
            continue
        before = (slice(None),) * axis
        products = values[before + (slice(None, -1),)] * values[before + (slice(1, None),)]
        total += float(products.sum())
        energy += float(np.square(products).sum())  # sums, not BLAS dot: its threads cost more here
        pairs += products.size
    if not energy:
        return None
    return total / (pairs * mean_square), total / math.sqrt(energy)


def evidence(values: np.ndarray) -> dict[str, float | int | None]:
    """The i.i.d. statistics of ``values`` (a weight: [out, in, *kernel]) on one block."""
    picked = block(values)
    if not picked.size or not np.isfinite(picked).all():
        return {"iid_elements": int(picked.size), "spectral_ratio": None, "spectral_limit": None,
                "row_norm_z": None, "channel_norm_z": None, "neighbour_corr": None, "neighbour_z": None}
    squares = picked * picked
    second = float(squares.mean())
    square_var = float((squares * squares).mean()) - second * second
    matrix = picked.reshape(picked.shape[0], -1)
    ratio, limit = spectral_ratio(matrix, math.sqrt(second)) if second else (0.0, 1.0)
    rest = tuple(range(1, picked.ndim))
    candidates = [neighbour_z(picked, axes, second) for axes in (tuple(range(2, picked.ndim)), (1,))]
    neighbours = [found for found in candidates if found is not None]
    corr, z = max(neighbours, key=lambda found: abs(found[1])) if neighbours else (None, None)
    return {
        "iid_elements": int(picked.size),
        "spectral_ratio": _round(ratio),
        "spectral_limit": _round(limit),
        "row_norm_z": _round(dispersion_z(squares, rest, square_var)),
        "channel_norm_z": _round(dispersion_z(squares, (0,) + rest[1:], square_var)),
        "neighbour_corr": _round(corr),
        "neighbour_z": _round(z),
    }


def consistent(found: dict[str, float | int | None]) -> bool:
    """True when no statistic rules out i.i.d. draws (one that could not be computed is silent)."""
    ratio, limit = found["spectral_ratio"], found["spectral_limit"]
    if ratio is None or limit is None:  # both or neither
        return False  # non-finite values (or nothing but zero rows): no draw of an init
    checks = (
        ratio <= limit,
        _within(found["row_norm_z"], DISPERSION_Z_LIMIT),
        _within(found["channel_norm_z"], DISPERSION_Z_LIMIT),
        _within(found["neighbour_z"], NEIGHBOUR_Z_LIMIT),
    )
    return all(checks)


def _within(z: float | int | None, limit: float) -> bool:
    return z is None or abs(z) <= limit


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
