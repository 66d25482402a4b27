"""ckptlint: static analysis for deep-learning checkpoints.

``import ckptlint`` is cheap and never imports torch; ``lint`` and the report types load on
first use.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["CheckpointError", "CkptlintError", "Finding", "Report", "__version__", "diff", "lint", "lint_many",
           "merge_reports", "open_checkpoint"]

_LAZY = {
    "lint": "ckptlint.python_api",
    "diff": "ckptlint.python_api",
    "lint_many": "ckptlint.python_api",
    "merge_reports": "ckptlint.merge",
    "Report": "ckptlint.results",
    "Finding": "ckptlint.results",
    "open_checkpoint": "ckptlint.io.open",
    "CkptlintError": "ckptlint.errors",
    "CheckpointError": "ckptlint.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ckptlint' has no attribute {name!r}")
