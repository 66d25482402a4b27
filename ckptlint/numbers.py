"""Numbers as every report shows them: counts shortened, scores rounded down."""

from __future__ import annotations

import math


def human_count(n: int) -> str:
    """25610205 -> 25.6M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def percent(score: float | None) -> str:
    """A score as a percentage rounded down: 99.95% reads 99.9%, never 100.0%; "-" for nothing
    to score."""
    if score is None:
        return "-"
    return f"{math.floor(round(score * 1000, 6)) / 10:.1f}%"
