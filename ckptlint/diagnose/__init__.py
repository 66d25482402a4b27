"""Diagnoses: the findings that share one cause, grouped and said once, with a fix.

Runs on a finished report (after the baseline), so it groups exactly what the reports show. The
kinds of cause are data (``ckptlint/data/diagnoses.toml``: which findings each claims, when a
group of them is that cause, its title and fix); this package holds only the mechanics they need:
what a finding is about (``index``), the smallest subtrees covering a group (``cover``), the key
prefixes a loader missed (``prefix``), a group's facts (``group``) and the claim loop (``engine``).
"""

from ckptlint.diagnose.engine import diagnose

__all__ = ["diagnose"]
