"""Tensor statistics agree with numpy's, on the small-array path and the chunked one alike."""

from __future__ import annotations

import numpy as np
import pytest

from ckptlint.facts import stats


@pytest.mark.parametrize("size", [1, 2, 7, stats.TINY, stats.TINY + 1, 5000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_summary_matches_numpy(size: int, dtype: type) -> None:
    values = (np.random.default_rng(size).standard_normal(size) * 3).astype(dtype)
    if np.issubdtype(dtype, np.floating) and size > 3:
        values[1], values[2], values[3] = np.nan, np.inf, -np.inf
    summary = stats.summarize(values)
    finite = values[np.isfinite(values)].astype(np.float64) if np.issubdtype(dtype, np.floating) \
        else values.astype(np.float64)
    assert summary["count"] == finite.size
    assert summary["nonfinite_count"] == values.size - finite.size
    assert summary["mean"] == pytest.approx(finite.mean())
    assert summary["std"] == pytest.approx(finite.std(), abs=1e-12)
    assert (summary["min"], summary["max"]) == (finite.min(), finite.max())
    assert summary["zero_fraction"] == pytest.approx(np.count_nonzero(finite == 0) / finite.size)
    assert summary["is_constant"] == (finite.min() == finite.max())


def test_all_nonfinite_and_empty() -> None:
    assert stats.summarize(np.array([np.nan, np.inf], dtype=np.float32))["count"] == 0
    empty = stats.summarize(np.zeros(0, dtype=np.float32))
    assert (empty["count"], empty["mean"], empty["is_constant"]) == (0, None, False)
