"""Which framework default initialisation a weight's values look drawn from, if any.

Each candidate is a fully specified distribution (its scale follows from fan-in/fan-out), so
the test is a one-sample Kolmogorov-Smirnov distance with nothing fitted: the distribution's
shape must match, not only its spread. Trained weights of a similar scale have other shapes
(heavier tails, offsets) and land far above the critical distance.

Some trained layers keep a marginal close to their init, so a marginal that passes is only half
the evidence: the values must also look like independent draws (``iid.py``: spectrum, channel
norms, neighbours), which training breaks even where the marginal survives.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypedDict

import numpy as np

from ckptlint.facts import iid

SAMPLE = 16384  # evenly spaced elements; initialisation is i.i.d., so spacing loses nothing
PLAUSIBLE_STD_RATIO = (0.5, 2.0)  # candidates whose scale is further off are not tested at all
KS_CRITICAL_COEFFICIENT = 1.949  # Kolmogorov distribution at alpha = 0.001
KS_BLOCK = 64  # sample points per block of the KS search


class KsFit(TypedDict):
    """One candidate init (``candidates``' name) and how the values' marginal fits it."""

    name: str
    ks: float
    ks_critical: float
    std_ratio: float
    expected_std: float
    sample_size: int


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """fan_in and fan_out as torch.nn.init computes them (receptive field times channels)."""
    if len(shape) < 2:
        return (shape[0] if shape else 1), (shape[0] if shape else 1)
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def candidates(shape: tuple[int, ...], kind: str) -> list[tuple[str, str, float]]:
    """(name, family, scale) for every default init plausible for this weight.

    family "uniform": U(-scale, scale); "normal": N(0, scale).
    """
    fan_in, fan_out = fans(shape)
    found = [
        ("pytorch default (kaiming_uniform, a=sqrt(5))", "uniform", 1 / math.sqrt(fan_in)),
        ("kaiming_uniform (fan_in)", "uniform", math.sqrt(6 / fan_in)),
        ("kaiming_uniform (fan_out)", "uniform", math.sqrt(6 / fan_out)),
        ("kaiming_normal (fan_in)", "normal", math.sqrt(2 / fan_in)),
        ("kaiming_normal (fan_out)", "normal", math.sqrt(2 / fan_out)),
        ("xavier_uniform", "uniform", math.sqrt(6 / (fan_in + fan_out))),
        ("xavier_normal", "normal", math.sqrt(2 / (fan_in + fan_out))),
        ("normal(0, 0.02)", "normal", 0.02),
        ("normal(0, 0.01)", "normal", 0.01),
    ]
    if kind == "embedding":
        found.append(("normal(0, 1) (nn.Embedding default)", "normal", 1.0))
    return found


def _uniform_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip((x + scale) / (2 * scale), 0.0, 1.0)


def _scaled_normal_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    return _normal_cdf(x / scale)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf of its own.
    x = np.abs(z) / math.sqrt(2)
    t = 1 / (1 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1 - poly * np.exp(-x * x)
    return 0.5 * (1 + np.sign(z) * erf)


def _ks_distance(xs: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    """sup |ECDF - cdf| over the sorted sample ``xs``, exactly, evaluating ``cdf`` at few points.

    Both the ECDF and ``cdf`` rise, so inside a block of points a..b the distance is at most
    max((b+1)/n - cdf(x_a), cdf(x_b) - a/n). The cdf is taken at every block's ends first; only
    blocks whose bound beats the best distance found there are evaluated point by point. A
    trained weight's distance is large and decided by a few blocks (the normal CDF was half the
    cost of a fingerprint).
    """
    n = xs.size
    starts = np.arange(0, n, KS_BLOCK)
    ends = np.minimum(starts + KS_BLOCK - 1, n - 1)
    at_start, at_end = cdf(xs[starts]), cdf(xs[ends])
    best = max(_distance(starts, at_start, n), _distance(ends, at_end, n))
    bound = np.maximum((ends + 1) / n - at_start, at_end - starts / n)
    open_blocks = starts[bound > best]
    if open_blocks.size:
        points = (open_blocks[:, None] + np.arange(KS_BLOCK)).reshape(-1)
        points = points[points < n]
        best = max(best, _distance(points, cdf(xs[points]), n))
    return best


def _distance(points: np.ndarray, cdf: np.ndarray, n: int) -> float:
    """The largest gap between the ECDF (just after and just before each point) and ``cdf``."""
    return float(max(((points + 1) / n - cdf).max(), (cdf - points / n).max()))


def sample(values: np.ndarray) -> np.ndarray:
    """Up to SAMPLE evenly spaced finite elements, in the values' own float type (unsorted)."""
    flat = values.reshape(-1)
    step = max(1, flat.size // SAMPLE)
    picked = flat[::step][:SAMPLE]
    return picked[np.isfinite(picked)]


def ks_fits(values: np.ndarray, kind: str) -> list[KsFit]:
    """Each candidate init of a plausible scale with its KS distance, critical distance and std
    ratio, best first (empty when no init of this weight's fans has a similar spread). The
    marginal alone: what ``fingerprint`` judged before the i.i.d. checks."""
    picked = sample(values)
    std = float(picked.std(dtype=np.float64)) if picked.size >= 2 else 0.0
    if not std:
        return []
    plausible = [(name, family, scale, scale / math.sqrt(3) if family == "uniform" else scale)
                 for name, family, scale in candidates(tuple(values.shape), kind)]
    plausible = [c for c in plausible if PLAUSIBLE_STD_RATIO[0] <= std / c[3] <= PLAUSIBLE_STD_RATIO[1]]
    if not plausible:
        return []  # the sort below is most of the cost: trained weights usually stop here
    # Sorting the narrow type is twice as fast and widening keeps the order.
    xs = np.sort(picked).astype(np.float64)
    critical = KS_CRITICAL_COEFFICIENT / math.sqrt(xs.size)
    fits: list[KsFit] = []
    for name, family, scale, expected_std in plausible:
        if family == "uniform":
            cdf = functools.partial(_uniform_cdf, scale=scale)
        else:
            cdf = functools.partial(_scaled_normal_cdf, scale=scale)
        fits.append({
            "name": name,
            "ks": round(_ks_distance(xs, cdf), 6),
            "ks_critical": round(critical, 6),
            "std_ratio": round(std / expected_std, 6),
            "expected_std": round(expected_std, 9),
            "sample_size": int(xs.size),
        })
    return sorted(fits, key=lambda fit: (fit["ks"], fit["name"]))


def matching_inits(values: np.ndarray, kind: str) -> list[dict[str, object]]:
    """The inits ``values`` are consistent with, best first: candidates whose KS distance is
    within the critical one, each with the i.i.d. evidence (``iid.evidence``: spectral_ratio,
    row_norm_z, neighbour_corr, ...) that the values are independent draws. Empty when the KS
    test rejects every candidate or the values fail the i.i.d. checks (trained structure); only
    a weight whose marginal passed pays for those."""
    fits = [fit for fit in ks_fits(values, kind) if fit["ks"] <= fit["ks_critical"]]
    if not fits:
        return []
    found = iid.evidence(values)
    if not iid.consistent(found):
        return []
    return [{**fit, **found} for fit in fits]
