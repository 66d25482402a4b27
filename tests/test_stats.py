"""Tensor statistics agree with numpy's, non-finite values excluded and counted."""

from __future__ import annotations

import numpy as np
import pytest

from ckptlint.facts import stats


@pytest.mark.parametrize("size", [1, 2, 7, 64, 5000, stats.CHUNK + 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.bool_])
def test_statistics_match_numpy(size: int, dtype: type) -> None:
    values = (np.random.default_rng(size).standard_normal(size) * 3).astype(dtype)
    if np.issubdtype(dtype, np.floating) and size > 3:
        values[1], values[2], values[3] = np.nan, np.inf, -np.inf
    summary = {**stats.finiteness(values), **stats.constancy(values), **stats.extremes(values),
               **stats.moments(values)}
    finite = values[np.isfinite(values)] if np.issubdtype(dtype, np.floating) else values
    finite = finite.astype(np.float64)
    assert summary["count"] == finite.size
    assert summary["nonfinite_count"] == values.size - finite.size
    assert summary["nan_count"] == int(np.isnan(values.astype(np.float64)).sum())
    assert summary["mean"] == pytest.approx(finite.mean())
    assert summary["std"] == pytest.approx(finite.std(), rel=1e-9, abs=1e-12)
    assert (summary["min"], summary["max"]) == (finite.min(), finite.max())
    assert summary["zero_fraction"] == pytest.approx(np.count_nonzero(finite == 0) / finite.size)
    assert summary["is_constant"] == (finite.min() == finite.max())


def test_all_nonfinite_and_empty() -> None:
    nothing_finite = np.array([np.nan, np.inf], dtype=np.float32)
    assert stats.extremes(nothing_finite)["count"] == 0 and stats.moments(nothing_finite)["std"] is None
    assert stats.finiteness(nothing_finite) == {"nan_count": 1, "posinf_count": 1, "neginf_count": 0,
                                                "nonfinite_count": 2}
    empty = np.zeros(0, dtype=np.float32)
    assert stats.constancy(empty)["is_constant"] is False and stats.moments(empty)["mean"] is None


def test_constancy_and_overflow_are_exact() -> None:
    almost = np.full(100_000, 0.5, dtype=np.float32)
    almost[12_345] = 0.25  # not on the probe's stride: the full pass must find it
    assert stats.constancy(almost)["is_constant"] is False
    assert stats.constancy(np.full(100_000, 2.0, dtype=np.float32))["is_constant"] is True
    huge = np.full(1000, 3e38, dtype=np.float32)  # the dot product overflows; no value is Inf
    assert stats.finiteness(huge)["nonfinite_count"] == 0


@pytest.mark.parametrize("size", [2, 63, 64, 65, 1000, 16384])
def test_ks_distance_by_blocks_equals_the_full_computation(size: int) -> None:
    """The block search must find the same supremum as evaluating the CDF at every point, for
    samples near the candidate (small distance: many blocks stay open) and far from it."""
    import functools

    from ckptlint.facts import init_fingerprint as fp

    rng = np.random.default_rng(size)
    samples = [rng.standard_normal(size) * 0.02, rng.uniform(-0.03, 0.03, size), rng.laplace(0, 0.015, size),
               rng.standard_normal(size) * 0.05 + 0.01]
    cdfs = [functools.partial(fp._scaled_normal_cdf, scale=0.02), functools.partial(fp._uniform_cdf, scale=0.03)]
    for sample in samples:
        xs = np.sort(sample)
        for cdf in cdfs:
            every = cdf(xs)
            at = np.arange(size)
            full = float(max(((at + 1) / size - every).max(), (every - at / size).max()))
            assert fp._ks_distance(xs, cdf) == full
