"""Severities and their order: shared by rules, options, results and every reporter."""

from __future__ import annotations

SEVERITIES = ("info", "warning", "error")  # in increasing order
FAIL_ON = (*SEVERITIES, "never")  # what --fail-on takes: a severity, or never fail on findings


def severity_rank(severity: str) -> int:
    """info 0 < warning 1 < error 2 < never 3; anything else is a programming error (options are
    validated before a run, so an unknown value never silently ranks as "never")."""
    if severity in SEVERITIES:
        return SEVERITIES.index(severity)
    if severity == "never":
        return len(SEVERITIES)
    raise ValueError(f"unknown severity {severity!r} (one of {', '.join(FAIL_ON)})")
