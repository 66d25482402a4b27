"""How every report format says a diagnosis: the tensors it names, the rule it is filed under."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ckptlint.severity import severity_rank

if TYPE_CHECKING:  # reporters read the results; results.Report.render calls them
    from ckptlint.results import Diagnosis


def tensor_list(diagnosis: Diagnosis, limit: int) -> str:
    """``Tensors (50): a, b, ... and 30 more.`` (empty for a whole-file cause)."""
    if not diagnosis.tensors:
        return ""
    named = ", ".join(diagnosis.tensors[:limit])
    more = f" and {len(diagnosis.tensors) - limit} more" if len(diagnosis.tensors) > limit else ""
    return f"Tensors ({len(diagnosis.tensors)}): {named}{more}."


def primary_code(diagnosis: Diagnosis) -> str:
    """The rule of its worst findings, the most frequent among them (where SARIF files it)."""
    counts = Counter((severity_rank(f.severity), f.code) for f in diagnosis.findings)
    return max(counts, key=lambda item: (item[0], counts[item], item[1]))[1]
